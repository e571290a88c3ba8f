"""FROC: lesion-wise recall against false-positive candidates per scan, over thresholds.

At each threshold, candidates are built as ``medae score`` builds them (26-connected components of
the map above the threshold, those under the model's minimum volume dropped); a true lesion
(26-connected component of the label) is found when a candidate shares a voxel with it, and a
candidate that shares no voxel with any lesion is a false positive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medae.masks import bounding_box

_26 = np.ones((3, 3, 3), bool)
#: fractions of the pooled brain voxels above each FROC threshold (the sweep)
FROC_LEVELS = np.geomspace(1e-6, 0.2, 24)


class FROC:
    """Accumulates detection counts per threshold, one scan at a time."""

    def __init__(self, thresholds: Sequence[float]):
        self.thresholds = np.unique(np.asarray(thresholds, np.float64))
        n = len(self.thresholds)
        self.found = np.zeros(n, np.int64)
        self.fp = np.zeros(n, np.int64)
        self.lesions = 0
        self.scans = 0

    def add(self, heat: np.ndarray, lesion: np.ndarray, voxel_mm3: float,
            min_volume_mm3: float = 0.0) -> None:
        self.scans += 1
        gt, n_gt = ndimage.label(lesion, structure=_26)
        self.lesions += int(n_gt)
        box = bounding_box((heat > self.thresholds[0]) | lesion) if len(self.thresholds) else None
        if box is None:
            return
        heat, gt = heat[box], gt[box]
        for i, thr in enumerate(self.thresholds):
            labels, n = ndimage.label(heat > thr, structure=_26)
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel(), minlength=n + 1) * float(voxel_mm3)
            keep = sizes >= min_volume_mm3
            keep[0] = False
            kept = keep[labels]
            if n_gt:
                self.found[i] += int(np.count_nonzero(
                    np.bincount(gt[kept], minlength=n_gt + 1)[1:]))
            on_lesion = np.zeros(n + 1, bool)
            on_lesion[np.unique(labels[kept & (gt > 0)])] = True
            self.fp[i] += int(np.count_nonzero(keep & ~on_lesion))

    def result(self) -> dict:
        scans = max(self.scans, 1)
        return {
            "thresholds": [float(t) for t in self.thresholds],
            "fp_per_scan": [float(v) / scans for v in self.fp],
            "recall": [float(v) / self.lesions if self.lesions else None for v in self.found],
            "lesions": self.lesions, "scans": self.scans,
            "note": "lesion-wise recall against false-positive candidates per scan; candidates "
                    "built as medae score builds them at each threshold",
        }
