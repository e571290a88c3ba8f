#!/usr/bin/env python
"""Peak memory of scoring one CT-sized volume (512x512x600) on the CPU.

    python scripts/bench_memory.py [--recipe ae2d] [--shape 512 512 600] [--no-overlays] [--where]
                                   [--copies 1] [--workers 1] [--also 300]

Writes a CT-like int16 NIfTI (0.7x0.7x0.8 mm, a body ellipse of soft tissue around a
brain-like core, air outside) into a temporary folder, builds a bundle of the recipe's default
architecture with random weights (as ``scripts/bench_score.py`` does: memory does not depend on
the weights), and runs the real batch job (``medae.batch.score_sources``: loading,
preprocessing, reconstruction, heat map, candidates, NIfTI and PNG outputs) in a child process,
so the peak resident set size printed is the job's own (``ru_maxrss`` of the child).
``--copies N`` scores a folder of N such volumes with ``--workers`` prefetch threads (``medae
score`` uses 2): a folder of CT volumes must need the memory of one.  ``--where`` also samples
the child's resident set every 5 ms and prints where each thread was (its medae frames) when it
was highest: the place to look for the next saving.  ``--also 300`` also scores a 512x512x300
volume and prints how the peak grows per voxel, and the largest volume that fits in 2 GB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def _write_volume(path: Path, shape: tuple[int, int, int], spacing=(0.7, 0.7, 0.8)) -> None:
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    nx, ny, nz = shape
    x = (np.arange(nx, dtype=np.float32) - nx / 2) / (0.45 * nx)
    y = (np.arange(ny, dtype=np.float32) - ny / 2) / (0.38 * ny)
    r2 = x[:, None] ** 2 + y[None, :] ** 2  # one slice's ellipse (built per slice: no 3D floats)
    body = r2 < 1
    core = r2 < 0.45
    vol = np.full(shape, -1000, dtype=np.int16)  # air
    for k in range(nz):
        sl = np.where(body, 40, -1000).astype(np.int16)
        sl[core] = 30 + int(10 * np.sin(k / 40))
        noise = rng.integers(-8, 9, size=(nx, ny), dtype=np.int16)
        sl[body] += noise[body]
        vol[:, :, k] = sl
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), path)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _medae_frames(frame) -> str:
    """The medae/ frames of one thread's stack, outermost first ('file:line function')."""
    import traceback
    return " > ".join(f"{Path(fs.filename).name}:{fs.lineno} {fs.name}"
                      for fs in traceback.extract_stack(frame) if "/medae/" in fs.filename)


def _sampler(stop, best: dict) -> None:
    """Every 5 ms: the resident set, and the stacks of every thread when it is the highest."""
    me = threading.get_ident()
    while not stop.is_set():
        rss = _rss_mib()
        if rss > best.get("mib", 0):
            best["mib"] = rss
            best["where"] = [w for t, f in sys._current_frames().items()
                             if t != me and (w := _medae_frames(f))]
        time.sleep(0.005)


def _job(run: Path, image: Path, out: Path, overlays: bool, where: bool = False,
         workers: int = 1) -> dict:
    from medae.batch import score_sources
    from medae.io.discover import discover
    from medae.scoring import load_model

    model = load_model(run, device="cpu")
    sources = discover(image)
    best: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sampler, args=(stop, best), daemon=True)
    if where:
        sampler.start()
    t0 = time.perf_counter()
    summary = score_sources(model, sources, out, workers=workers, progress=False,
                            overlays=overlays)
    wall = time.perf_counter() - t0
    stop.set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"scored": summary.scored, "failed": summary.failed, "wall": wall, "peak_mib": peak,
            "sampled_peak_mib": best.get("mib"), "where": best.get("where", [])}


def _measure(tmp: Path, shape: tuple[int, int, int], args, where: bool) -> dict:
    """Score ``args.copies`` volumes of ``shape`` in a child process; its result, with
    ``peak_mib`` its own ru_maxrss (the whole job, loading to outputs)."""
    image = tmp / "scans"
    shutil.rmtree(image, ignore_errors=True)
    image.mkdir()
    _write_volume(image / "ct.nii.gz", shape)
    for k in range(1, args.copies):
        os.link(image / "ct.nii.gz", image / f"ct{k}.nii.gz")
    cmd = [sys.executable, __file__, "--child", str(tmp / "run"), str(image), str(tmp / "out")]
    if args.no_overlays:
        cmd.append("--no-overlays")
    if where:
        cmd.append("--where")
    cmd += ["--workers", str(args.workers)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(res.stderr)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    shutil.rmtree(tmp / "out", ignore_errors=True)
    if r["scored"] != args.copies:
        sys.exit(f"the volume was not scored: {r}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="ae2d")
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 600])
    ap.add_argument("--no-overlays", action="store_true")
    ap.add_argument("--where", action="store_true",
                    help="print where each thread was when the resident set was highest")
    ap.add_argument("--copies", type=int, default=1, help="volumes in the folder scored")
    ap.add_argument("--also", type=int, nargs="*", default=[], metavar="SLICES",
                    help="also score volumes of these many slices (same in-plane size): the "
                         "growth per voxel and the largest volume 2 GB holds")
    ap.add_argument("--workers", type=int, default=1, help="prefetch threads")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run, image, out = map(Path, args.child)
        print(json.dumps(_job(run, image, out, not args.no_overlays, args.where, args.workers)))
        return
    from bench_score import _build_bundle

    shapes = [tuple(args.shape)] + [(*args.shape[:2], k) for k in args.also]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _build_bundle(args.recipe, tmp / "run")
        for i, shape in enumerate(shapes):  # where the peak was: for the first size only
            results.append((shape, _measure(tmp, shape, args, args.where and i == 0)))
    print(f"CPU ({os.cpu_count()} cores); {datetime.date.today().isoformat()}; "
          f"{platform.machine()}, Python {platform.python_version()}; recipe {args.recipe}, "
          f"{args.copies} int16 volume(s) per row, overlays "
          f"{'off' if args.no_overlays else 'on'}, {args.workers} prefetch thread(s).")
    print()
    print("| volume | M voxels (MiB as float32) | wall seconds (load to outputs written) "
          "| peak RSS MiB (child) |")
    print("|---|---|---|---|")
    for shape, r in results:
        voxels = int(np.prod(shape))
        print(f"| {'x'.join(map(str, shape))} | {voxels / 1e6:.0f} ({voxels * 4 / 2**20:.0f}) "
              f"| {r['wall']:.1f} | {r['peak_mib']:.0f} |")
    if len(results) > 1:  # peak = a + b * voxels through the first two sizes
        (s0, r0), (s1, r1) = results[:2]
        p0, p1 = r0["peak_mib"], r1["peak_mib"]
        v0, v1 = int(np.prod(s0)), int(np.prod(s1))
        per_voxel = (p0 - p1) * 2**20 / (v0 - v1) if v0 != v1 else 0.0
        if per_voxel <= 0:
            print("\nNo growth with the volume measured between these sizes (too small?).")
        else:
            fixed = p0 - per_voxel * v0 / 2**20
            limit = (2e9 / 2**20 - fixed) * 2**20 / per_voxel
            slices = limit / (s0[0] * s0[1])
            print(f"\nGrowth with the volume: {per_voxel:.1f} bytes per voxel over a fixed "
                  f"{fixed:.0f} MiB (libraries, model, pictures); 2 GB (1907 MiB) holds up to "
                  f"{limit / 1e6:.0f} M voxels ({s0[0]}x{s0[1]}x{slices:.0f}).")
    r = results[0][1]
    if args.where:
        print(f"\nHighest sampled resident set: {r['sampled_peak_mib']:.0f} MiB, with the "
              "threads at:")
        for w in r["where"]:
            print(f"- {w}")


if __name__ == "__main__":
    main()
