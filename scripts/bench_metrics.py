#!/usr/bin/env python
"""Voxel-metric speed and memory: medae's streaming accumulator versus scikit-learn.

    python scripts/bench_metrics.py [--voxels 2e7] [--chunk 1e6] [--huge [--huge-voxels 1e9]]

Each measurement runs in its own child process on the same synthetic pooled voxels (float32
scores, 1% positives, seed 0): medae in exact mode (scores kept), medae in histogram mode, and
scikit-learn (``average_precision_score`` + ``roc_auc_score``).  Memory is the peak traced by
``tracemalloc`` during the metric work (the data itself excluded) and the process's peak RSS.
``--huge`` also streams ``--huge-voxels`` voxels through medae in chunks of 1e7 (scikit-learn
would need the whole set in memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc


def _data(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.random(n, np.float32) < 0.01
    s = rng.standard_normal(n, np.float32)
    s += 1.5 * y
    return s, y


def _child(what: str, n: int, chunk: int) -> dict:
    from medae.evaluation import PooledVoxels

    if what == "huge":
        tracemalloc.start()
        t0 = time.perf_counter()
        acc = PooledVoxels(exact_limit=0)
        for i in range(0, n, chunk):
            s, y = _data(min(chunk, n - i), seed=i // chunk)
            acc.add(s, y)
            del s, y
        ap, auc = acc.average_precision(), acc.roc_auc()
        seconds = time.perf_counter() - t0  # includes generating the data
    else:
        s, y = _data(n)
        tracemalloc.start()
        t0 = time.perf_counter()
        if what == "sklearn":
            from sklearn.metrics import average_precision_score, roc_auc_score

            ap, auc = average_precision_score(y, s), roc_auc_score(y, s)
        else:
            acc = PooledVoxels(exact_limit=n if what == "exact" else 0)
            for i in range(0, n, chunk):
                acc.add(s[i:i + chunk], y[i:i + chunk])
            ap, auc = acc.average_precision(), acc.roc_auc()
        seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    out = {"what": what, "voxels": n, "seconds": round(seconds, 2), "ap": ap, "auroc": auc,
           "traced_peak_mb": round(peak / 2**20, 1),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if what != "sklearn":
        out["exact"] = acc.exact
        out["ap_bounds"] = acc.bounds()["ap"]
    return out


def _run(what: str, n: int, chunk: int) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--voxels", str(n), "--chunk", str(chunk)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxels", type=float, default=2e7)
    ap.add_argument("--chunk", type=float, default=1e6, help="voxels per add (one scan ~1.5e6)")
    ap.add_argument("--huge", action="store_true", help="also stream --huge-voxels voxels")
    ap.add_argument("--huge-voxels", type=float, default=1e9)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n, chunk = int(args.voxels), int(args.chunk)
    if args.child:
        print(json.dumps(_child(args.child, n, chunk)))
        return
    rows = [_run(w, n, chunk) for w in ("exact", "histogram", "sklearn")]
    ref = rows[-1]
    print(f"{n:.3g} pooled voxels, 1% positives, float32 scores; fed to medae in chunks of "
          f"{chunk:.3g}")
    print(f"{'method':<16}{'seconds':>9}{'traced MB':>11}{'peak RSS MB':>13}"
          f"{'dAP vs sklearn':>16}{'dAUROC':>10}")
    for r in rows:
        print(f"{r['what']:<16}{r['seconds']:>9.2f}{r['traced_peak_mb']:>11.1f}"
              f"{r['peak_rss_mb']:>13.1f}{r['ap'] - ref['ap']:>16.1e}"
              f"{r['auroc'] - ref['auroc']:>10.1e}")
    for r in rows[:2]:
        print(f"medae {r['what']}: {ref['seconds'] / r['seconds']:.1f}x faster, "
              f"{ref['traced_peak_mb'] / max(r['traced_peak_mb'], 0.1):.1f}x less traced "
              f"memory than scikit-learn")
    if args.huge:
        h = _run("huge", int(args.huge_voxels), 10_000_000)
        print(f"medae streaming {h['voxels']:.3g} voxels in chunks of 1e7: {h['seconds']:.1f} s "
              f"(data generation included), traced peak {h['traced_peak_mb']:.0f} MB, peak RSS "
              f"{h['peak_rss_mb']:.0f} MB, AP {h['ap']:.5f} (bounds {h['ap_bounds']}), "
              f"AUROC {h['auroc']:.5f}")


if __name__ == "__main__":
    main()
