#!/usr/bin/env python
"""Would one model's threshold hold better if it were calibrated on every labelled patient it
can be (the held-out one and those it trained on, pooled) instead of the held-out one alone?

    python scripts/explore_poolcal.py RUN [RUN ...]     # benchmark run folders (BraTS folds)

Each RUN is a model of ``scripts/benchmark_brain.py``, trained on some patients and calibrated
on one it held out (``validation_cases`` in its ``model.json``).  The model maps every patient of
its fold (the training patients' lesions were masked out of training, so it never learned them)
and prints, at voxel level (no candidate size rule), the test patient's Dice at the voxel
threshold with the best Dice on: the held-out patient (``held``, what training does), all of the
fold's other patients pooled (``all3``), the training patients alone (``trained``), and the
median of the other patients' own best thresholds (``median3``); and the test patient's own best
(``best``, [Dice], an upper bound).  Brain-mask voxels, as ``medae evaluate`` counts them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medae.io.discover import read_manifest  # noqa: E402
from medae.scoring.scorer import load_model  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from explore_pooled import _pv  # noqa: E402  (one PooledVoxels over several scans)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        meta = json.loads((run / "model.json").read_text())
        held = (meta.get("validation_cases") or [None])[0]
        if held is None:
            print(f"{run}: no held-out calibration patient (skipped)")
            continue
        test = run.parent.name.removeprefix("test-")
        sources = {s.case_id: s for s in read_manifest(run.parent / "train.csv")}
        sources.update({s.case_id: s for s in read_manifest(run.parent / "test.csv")})
        model = load_model(run, device="cpu")
        per = {}
        for case, src in sources.items():
            scan, prep = model.load(src)
            m = model.scan_map(scan, prep)
            label = src.load_companion("label", scan)
            per[case] = (m.heatmap[m.brain_mask].astype(np.float32), label[m.brain_mask])
        own = _pv([per[test]])
        others = [c for c in per if c != test]
        thr = {"held": _pv([per[held]]).best_dice()[1],
               "all3": _pv([per[c] for c in others]).best_dice()[1],
               "trained": _pv([per[c] for c in others if c != held]).best_dice()[1],
               "median3": float(np.median([_pv([per[c]]).best_dice()[1] for c in others]))}
        row = {k: own.dice_at(t) for k, t in thr.items()} | {"best": own.best_dice()[0]}
        rows.append(row)
        print(f"{run.parent.name}/{run.name} (held out {held}) thresholds "
              + " ".join(f"{k} {t:.3f}" for k, t in thr.items()) + " | Dice "
              + " ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    if rows:
        print(f"mean of {len(rows)}: " + " ".join(
            f"{k} {np.mean([r[k] for r in rows]):.3f}" for k in rows[0]))


if __name__ == "__main__":
    main()
