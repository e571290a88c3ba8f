#!/usr/bin/env python
"""Would a threshold pooled over several unseen patients transfer better than one held-out
patient's?  An emulation of cross-fitted calibration from the benchmark's scored maps alone.

    python scripts/explore_crossfit.py [--work runs/benchmark] [--recipe brain_flair_fp32]
                                       [--protocol c2302c2130e2] [--dataset brats]

The benchmark (``scripts/benchmark_brain.py``) trains one model per fold (test patient) and
seed, calibrated on one training patient it held out, and scores the test patient.  For a test
patient T and a seed, the other folds' models of that seed each scored their own test patient,
a patient they never saw.  Pooling those maps (every patient but T) and taking the voxel
threshold with the best Dice over them is what ``data.calibration: crossfit`` does (fold models'
maps of held-out patients, pooled), except that here a fold model may have seen T's lesion-free
slices.  Printed per fold and seed, at voxel level (no candidate size rule), on T's map: the
Dice at the bundle's calibrated threshold (one held-out patient, the default), at the pooled
threshold, and T's own best ([Dice], an upper bound).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medae import load_scan  # noqa: E402
from medae.evaluation.pooled import PooledVoxels  # noqa: E402
from medae.io.discover import read_manifest  # noqa: E402


def _run(fold: Path, seed: int, protocol: str) -> Path | None:
    found = [d for d in sorted(fold.glob(f"*-seed{seed}-{protocol}"))
             if d.is_dir() and (d / "scores").is_dir()]
    return found[0] if found else None


def _voxels(run: Path, case: str, label_path) -> tuple[np.ndarray, np.ndarray]:
    folder = run / "scores" / case
    heat = load_scan(folder / "anomaly_map.nii.gz").array
    brain = load_scan(folder / "brain_mask.nii.gz").array > 0
    label = load_scan(label_path).array > 0
    return heat[brain].astype(np.float32), label[brain]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmark")
    ap.add_argument("--dataset", default="brats")
    ap.add_argument("--protocol", default="c2302c2130e2",
                    help="the runs' protocol hash (the quick brain_flair float32 runs by default)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    folds = sorted(d for d in (args.work / args.dataset).glob("test-*") if d.is_dir())
    print("| test | seed | held-out patient | Dice at its threshold | Dice at the pooled "
          "threshold (patients) | [Dice] |")
    print("|---|---|---|---|---|---|")
    rows = []
    for seed in args.seeds:
        maps, thresholds, held = {}, {}, {}
        for fold in folds:
            run = _run(fold, seed, args.protocol)
            if run is None:
                continue
            test = fold.name.removeprefix("test-")
            [source] = read_manifest(fold / "test.csv")
            maps[test] = _voxels(run, test, source.label)
            meta = json.loads((run / "model.json").read_text())
            thresholds[test] = float(meta["calibration"]["default_threshold"])
            held[test] = ",".join(meta.get("validation_cases") or ["training"])
        for test, (x, y) in maps.items():
            others = [p for p in maps if p != test]
            if len(others) < 2:
                continue
            pooled = PooledVoxels()
            for p in others:
                pooled.add(*maps[p])
            thr = pooled.best_dice()[1]
            own = PooledVoxels()
            own.add(x, y)
            row = (own.dice_at(thresholds[test]), own.dice_at(thr), own.best_dice()[0])
            rows.append(row)
            print(f"| {test} | {seed} | {held[test]} | {row[0]:.3f} | {row[1]:.3f} "
                  f"({', '.join(others)}) | {row[2]:.3f} |", flush=True)
    if rows:
        mean = np.mean(rows, axis=0)
        print(f"| mean of {len(rows)} | | | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} |")


if __name__ == "__main__":
    main()
