#!/usr/bin/env python
"""Scoring speed: seconds per BraTS-size scan (240x240x155), scans/s in batch, peak memory.

    python scripts/bench_score.py [--recipe ae2d] [--device auto] [--copies 2] [--workers 2]

Builds a bundle of the recipe's default architecture (random weights: speed does not depend on
them; thresholds calibrated on its own healthy-looking output), then runs the real batch job
(`medae.batch.score_sources`: loading, preprocessing, reconstruction, heat map, candidates, NIfTI
and PNG outputs) over the BraTS FLAIR scans, each repeated ``--copies`` times, in a child
process so that peak memory is the job's own.  I/O is included in every figure.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build_bundle(recipe: str, run: Path) -> None:
    import numpy as np
    import torch

    from medae.bundle import model_kwargs, save_bundle
    from medae.config import load_config
    from medae.models import create_model
    from medae.scoring.threshold import HealthyMap, calibrate

    torch.manual_seed(0)
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml")
    model = create_model(**model_kwargs(cfg))
    noise = np.random.default_rng(0).random((20, 25, 20)).astype(np.float32) * 0.5
    cal = calibrate([HealthyMap.crop(noise, np.ones(noise.shape, bool), 1.0)], [0.3],
                    "benchmark")
    save_bundle(run, model, cfg, training={"note": "random weights (benchmark)"}, intensity=[],
                val_cases=[], calibration=cal)


def _job(run: Path, manifest: Path, out: Path, device: str, workers: int, overlays: bool,
         serial: bool = False) -> dict:
    import medae.batch
    from medae.batch import score_sources
    from medae.io.discover import read_manifest
    from medae.scoring import load_model

    if serial:  # each case written before the next is scored (the comparison run)
        medae.batch.OVERLAP_VOXELS = 0
    model = load_model(run, device=device)
    sources = read_manifest(manifest)
    t0 = time.perf_counter()
    score_sources(model, sources, out, workers=workers, progress=False, overlays=overlays)
    wall = time.perf_counter() - t0
    import csv

    with open(out / "scores.csv") as f:
        per = [float(r["seconds"]) for r in csv.DictReader(f) if r["status"] == "ok"]
    stages: dict[str, float] = {}
    for rec in out.glob("*/result.json"):
        for name, sec in json.loads(rec.read_text()).get("stages", {}).items():
            stages[name] = stages.get(name, 0.0) + sec / len(per)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import torch

    gpu = torch.cuda.get_device_name() if model.device.type == "cuda" else None
    return {"n": len(per), "wall": wall, "per_scan_model": sum(per) / len(per),
            "peak_mib": peak, "device": gpu or f"CPU ({os.cpu_count()} cores)",
            "stages": stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--recipe", default="ae2d")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--copies", type=int, default=2, help="repeat each scan (more scans)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-overlays", action="store_true")
    ap.add_argument("--serial", action="store_true",
                    help="also run with each case written before the next is scored")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--child-serial", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run, manifest, out = map(Path, args.child)
        print(json.dumps(_job(run, manifest, out, args.device, args.workers,
                              not args.no_overlays, args.child_serial)))
        return
    pats = sorted((args.data / "brain" / "brats2013").glob("pat*"))
    if not pats:
        sys.exit(f"no BraTS scans under {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _build_bundle(args.recipe, tmp / "run")
        rows = ["case_id,image,mask"]
        for c in range(args.copies):
            rows += [f"{p.name}_{c},{p / 'Flair_subtrMeanDivStd.nii.gz'},{p / 'brainmask.nii.gz'}"
                     for p in pats]
        (tmp / "m.csv").write_text("\n".join(rows) + "\n")
        cmd = [sys.executable, __file__, "--child", str(tmp / "run"), str(tmp / "m.csv"),
               str(tmp / "out"), "--device", args.device, "--workers", str(args.workers)]
        if args.no_overlays:
            cmd.append("--no-overlays")
        runs = {}
        for mode in (["overlapped", "serial"] if args.serial else ["overlapped"]):
            res = subprocess.run(cmd + (["--child-serial"] if mode == "serial" else []),
                                 capture_output=True, text=True)
            if res.returncode:
                sys.exit(res.stderr)
            runs[mode] = json.loads(res.stdout.strip().splitlines()[-1])
            shutil.rmtree(tmp / "out", ignore_errors=True)
    r = runs["overlapped"]
    load = os.getloadavg()[0]
    print(f"Device: {r['device']}; {datetime.date.today().isoformat()}; {platform.machine()}, "
          f"Python {platform.python_version()}; recipe {args.recipe}, {r['n']} BraTS FLAIR scans "
          f"(240x240x155), {args.workers} prefetch workers, overlays "
          f"{'off' if args.no_overlays else 'on'}; load average {load:.1f} at the end.")
    print()
    print("| run | seconds per scan (wall, I/O included) | scans/s | per-scan seconds in "
          "scores.csv | peak MiB |")
    print("|---|---|---|---|---|")
    for mode, q in runs.items():
        print(f"| {mode} | {q['wall'] / q['n']:.2f} | {q['n'] / q['wall']:.2f} "
              f"| {q['per_scan_model']:.2f} | {q['peak_mib']:.0f} |")
    if "serial" in runs:
        ratio = runs["serial"]["wall"] / r["wall"]
        print(f"\nWriting each case while the next is scored: {ratio:.2f}x the throughput of "
              "writing before scoring the next (same run).")
    total = sum(r["stages"].values())
    if total:
        print("\nStage seconds per scan (overlapped run; loading runs in the prefetch threads and "
              "the writing in the writer thread, so stages overlap and their sum exceeds the "
              "wall time per scan):\n")
        print("| stage | seconds per scan | share of stage time |")
        print("|---|---|---|")
        for name, sec in r["stages"].items():
            print(f"| {name} | {sec:.2f} | {100 * sec / total:.0f}% |")


if __name__ == "__main__":
    main()
