#!/usr/bin/env python
"""Does ``preprocess.space: template`` help?  One figure on the shared BraTS scans: voxel AP of
the same quick model trained and scored in native space and in MNI template space.

    python scripts/bench_space.py [--test pat0001] [--steps 300] [--seed 0] [--out DIR]

The brain_flair recipe (its preprocessing and post-processing), at 2 mm in both spaces (the
template's grid is 2 mm) and with a smaller, shorter training (``--steps``, channels 16-128) so
both runs fit in minutes on a CPU: trained on the other BraTS 2013 patients' FLAIR slices with
the lesions left out (``data.lesion_samples: mask``, as in scripts/benchmark_brain.py),
calibrated on their lesion-free slices, scored on the test patient's FLAIR and evaluated against
its expert mask (``medae evaluate``: voxel AP, AUROC, best Dice).  Only ``preprocess.space``
differs between the two rows; the maps are on the scan's own grid in both.  One seed and one
test patient: a sign, not a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["preprocess.spacing=[2.0, 2.0, 2.0]", "preprocess.size=[96, 112, null]",
         "model.channels=[16, 32, 64, 128]", "model.num_res_units=1", "train.warmup_steps=20"]


def _medae(*args: str) -> None:
    res = subprocess.run([sys.executable, "-m", "medae", *args], capture_output=True, text=True,
                         cwd=ROOT)
    if res.returncode:
        raise SystemExit(f"medae {args[0]} failed: {res.stderr.strip()[-800:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--test", default="pat0001")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_space_"))
    out.mkdir(parents=True, exist_ok=True)
    brats = args.data / "brain" / "brats2013"
    pats = sorted(p for p in brats.glob("pat*") if p.is_dir())
    if args.test not in {p.name for p in pats}:
        raise SystemExit(f"{args.test}: not a BraTS patient in {brats}")

    def manifest(path: Path, patients) -> Path:
        rows = ["case_id,image,mask,label"] + [
            f"{p.name},{p / 'Flair_subtrMeanDivStd.nii.gz'},{p / 'brainmask.nii.gz'},"
            f"{p / 'OTMultiClass.nii.gz'}" for p in patients]
        path.write_text("\n".join(rows) + "\n")
        return path

    train_csv = manifest(out / "train.csv", [p for p in pats if p.name != args.test])
    test_csv = manifest(out / "test.csv", [p for p in pats if p.name == args.test])
    print(f"brain_flair, quick ({args.steps} steps, seed {args.seed}), trained on "
          f"{', '.join(p.name for p in pats if p.name != args.test)}, scored on {args.test}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| preprocess.space | voxel AP | voxel AUROC | best Dice | train s | score s |")
    print("|---|---|---|---|---|---|")
    for space in ("native", "template"):
        run = out / space
        sets = [*QUICK, f"train.steps={args.steps}", f"preprocess.space={space}"]
        t0 = time.perf_counter()
        _medae("train", "--config", str(ROOT / "configs" / "brain_flair.yaml"), "--data",
               str(train_csv), "--output", str(run), "--seed", str(args.seed), "--device",
               "cpu", "-q", *[a for s in sets for a in ("--set", s)])
        t1 = time.perf_counter()
        _medae("score", "--model", str(run), "--input", str(test_csv), "--output",
               str(run / "scores"), "--no-overlays", "--no-image", "-q")
        t2 = time.perf_counter()
        _medae("evaluate", "--predictions", str(run / "scores"), "--labels", str(test_csv),
               "--output", str(run / "report"))
        m = json.loads((run / "report" / "metrics.json").read_text())["voxel"]
        print(f"| {space} | {m['average_precision']:.3f} | {m['auroc']:.3f} | "
              f"{m['best_dice']:.3f} | {t1 - t0:.0f} | {t2 - t1:.0f} |", flush=True)
    print(f"(outputs in {out}; load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
