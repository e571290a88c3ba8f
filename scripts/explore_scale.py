#!/usr/bin/env python
"""Are FLAIR scans on one scale?  Thresholding FLAIR itself inside the brain, per dataset:

    python scripts/explore_scale.py            # BraTS 2013 and Lesjak MS from MEDAE_DATA

For each normalisation medae offers for brain recipes (``percentile``: the brain's 0.5th and
99.5th percentiles to 0 and 1; ``robust``: its median - 3.5 and + 2 interquartile ranges), it
prints the voxel AP of each patient (the same for both: a per-scan monotone map), the pooled voxel
AP over the dataset's patients (one threshold for all of them), and how a threshold transfers:
the Dice-optimal threshold of one patient (or of the other patients pooled) applied to another,
against that patient's own best Dice.  Raw voxels inside the brain mask, no post-processing; the
labels choose the calibration thresholds and are never seen on the patient tested.
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmark_brain import _datasets  # noqa: E402

from medae import load_scan  # noqa: E402
from medae.evaluation.pooled import PooledVoxels  # noqa: E402
from medae.preprocess import PreprocessConfig, apply_normalisation, intensity_stats  # noqa: E402


def _voxels(case: dict) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR inside the brain (the mask, or FLAIR > 0 where none is given) and the lesion."""
    flair = load_scan(case["flair"]).array
    brain = load_scan(case["mask"]).array > 0 if case["mask"] else flair > 0
    lesion = load_scan(case["label"]).array > 0
    return flair[brain], lesion[brain]


def _pooled(parts: list[tuple[np.ndarray, np.ndarray]]) -> PooledVoxels:
    pv = PooledVoxels()
    for x, y in parts:
        pv.add(x, y)
    return pv


def main() -> None:
    data = Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data"))
    for dname, cases in _datasets(data).items():
        raw = {name: _voxels(case) for name, case in cases.items()}
        print(f"{dname}: {', '.join(raw)}")
        for rule in ("percentile", "robust"):
            cfg = PreprocessConfig(normalise=rule)
            norm = {n: (apply_normalisation(v, intensity_stats(v, np.ones(v.shape, bool), cfg)),
                        y) for n, (v, y) in raw.items()}
            own = {n: _pooled([xy]).best_dice() for n, xy in norm.items()}
            aps = [_pooled([xy]).average_precision() for xy in norm.values()]
            pooled_ap = _pooled(list(norm.values())).average_precision()
            print(f"  {rule:10s} per-patient AP {' '.join(f'{a:.3f}' for a in aps)} "
                  f"(mean {statistics.mean(aps):.3f}), pooled AP {pooled_ap:.3f}")
            gaps = []
            for calib, test in itertools.permutations(norm, 2):
                thr = own[calib][1]
                dice = _pooled([norm[test]]).dice_at(thr)
                gaps.append(dice - own[test][0])
                print(f"    threshold of {calib} on {test}: Dice {dice:.3f} "
                      f"(its own best {own[test][0]:.3f})")
            print(f"    mean loss against each patient's best: {statistics.mean(gaps):+.3f} "
                  f"over {len(gaps)} pairs")
            if len(norm) > 2:
                for test in norm:
                    thr = _pooled([xy for n, xy in norm.items() if n != test]).best_dice()[1]
                    print(f"    threshold of the others pooled on {test}: Dice "
                          f"{_pooled([norm[test]]).dice_at(thr):.3f} "
                          f"(its own best {own[test][0]:.3f})")


if __name__ == "__main__":
    main()
