"""Thresholds that need no lesion labels, from heat maps of healthy validation scans.

Two operating points are calibrated: a voxel rule (the threshold that a chosen fraction of healthy
brain voxels exceeds) and the default, a candidate rule as the field reports detection (the
lowest threshold at which healthy scans average at most one false-positive candidate of at least
``min_volume_mm3``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medae.errors import MedaeError
from medae.masks import bounding_box

FPRS = (0.01, 0.05, 0.1)
SCAN_PERCENTILE = 95.0
#: false-positive candidates per healthy scan allowed by the default operating point
MAX_FP_PER_SCAN = 1.0
_CURVE = np.geomspace(1e-4, 0.5, 61)
_GRID = np.geomspace(1e-7, 0.3, 96)  # voxel FPRs whose thresholds the candidate rule searches
_26 = np.ones((3, 3, 3), bool)


@dataclass
class HealthyMap:
    """One healthy calibration scan: its map and the voxels that count as healthy (cropped)."""

    heat: np.ndarray  # float32
    healthy: np.ndarray  # bool, same shape
    voxel_mm3: float

    @classmethod
    def crop(cls, heat: np.ndarray, healthy: np.ndarray, voxel_mm3: float) -> HealthyMap:
        box = bounding_box(healthy) or tuple(slice(0, 0) for _ in heat.shape)
        return cls(np.where(healthy[box], heat[box], 0).astype(np.float32), healthy[box].copy(),
                   float(voxel_mm3))

    def count_candidates(self, threshold: float, min_volume_mm3: float) -> int:
        labels, n = ndimage.label(self.heat > threshold, structure=_26)
        if n == 0:
            return 0
        sizes = np.bincount(labels.ravel())[1:] * self.voxel_mm3
        return int((sizes >= min_volume_mm3).sum())


def candidate_threshold(maps: list[HealthyMap], thresholds: np.ndarray, min_volume_mm3: float,
                        max_fp: float = MAX_FP_PER_SCAN, stride: int = 4) -> tuple[float, float]:
    """The lowest of ``thresholds`` down to which, walking down from the top, the mean number of
    candidates per healthy scan stays at most ``max_fp``.  Returns (threshold, mean candidates
    per scan there).

    The walk stops at the first threshold that gives too many: far below it the count can fall
    again (the whole brain merges into one component), which must not count as a good
    threshold.  It steps ``stride`` grid points at a time, then refines.
    """
    grid = np.unique(np.asarray(thresholds, np.float64))
    top = float(max(float(m.heat.max(initial=0.0)) for m in maps))
    grid = np.append(grid[grid < top], top)[::-1]  # descending; at the top nothing exceeds

    def fp(i: int) -> float:
        return float(np.mean([m.count_candidates(grid[i], min_volume_mm3) for m in maps]))

    ok, ok_fp = 0, 0.0
    step = max(1, stride)
    while True:
        nxt = ok + step
        if nxt >= len(grid):
            if step == 1:
                break
            step = 1
            continue
        value = fp(nxt)
        if value <= max_fp:
            ok, ok_fp = nxt, value
        elif step == 1:
            break
        else:
            step = 1
    return float(grid[ok]), ok_fp


def calibrate(maps: list[HealthyMap], scan_scores: list[float], source: str,
              min_volume_mm3: float = 0.0,
              lesions: str = "lesion-labelled slices excluded") -> dict:
    """Voxel thresholds for target false-positive rates, the candidate-rule threshold and a
    scan-level threshold, from healthy calibration scans.

    Args:
        maps: per scan, its heat map and healthy voxels (:class:`HealthyMap`).
        scan_scores: per scan, its scan-level score computed on healthy tissue.
        source: where the healthy data came from (``"validation"`` or ``"training"``).
        min_volume_mm3: the smallest candidate the model reports (scoring.min_volume_mm3).
        lesions: how labelled lesions were left out of the healthy voxels (for the rule text).
    """
    if not maps or sum(int(m.healthy.sum()) for m in maps) == 0:
        raise MedaeError("calibration: no healthy voxels to calibrate thresholds on")
    pooled = np.concatenate([m.heat[m.healthy].astype(np.float64) for m in maps])
    voxel = {f"{f:g}": float(np.quantile(pooled, 1 - f)) for f in FPRS}
    curve = np.quantile(pooled, 1 - _CURVE)
    cand_thr, cand_fp = candidate_threshold(maps, np.quantile(pooled, 1 - _GRID),
                                            min_volume_mm3)
    scan_thr = float(np.percentile(scan_scores, SCAN_PERCENTILE)) if scan_scores else None
    values = [*voxel.values(), *curve, cand_thr]
    if scan_thr is not None:
        values.append(scan_thr)
    if not all(math.isfinite(v) for v in values):
        raise MedaeError("calibration: the healthy heat maps hold non-finite values")
    n = len(maps)
    return {
        "default": "candidates",
        "candidate_threshold": cand_thr,
        "candidate_fp_per_scan": cand_fp,
        "candidate_min_volume_mm3": float(min_volume_mm3),
        "candidate_rule": f"lowest voxel threshold at which {n} healthy {source} scan(s) average "
                          f"<= {MAX_FP_PER_SCAN:g} candidate(s) of >= {min_volume_mm3:g} mm3 "
                          f"({cand_fp:.2f} there)",
        "voxel_thresholds": voxel,
        "voxel_rule": f"(1 - fpr) quantile of {pooled.size} healthy brain voxels' scores from "
                      f"{n} {source} scan(s) ({lesions})",
        "fpr_curve": {"fpr": [float(f) for f in _CURVE], "threshold": [float(t) for t in curve]},
        "scan_threshold": scan_thr,
        "scan_rule": f"{SCAN_PERCENTILE:g}th percentile of {len(scan_scores)} healthy {source} "
                     "scan scores",
        "source": source,
        "n_scans": n,
        "n_voxels": int(pooled.size),
    }


def pick_threshold(calibration: dict | None, fpr: float | None = None,
                   threshold: float | None = None) -> tuple[float, str]:
    """The voxel threshold to use: a hand-set value, the calibrated one for ``fpr``, or by
    default the candidate rule (bundles calibrated before it existed: 1% voxel FPR)."""
    if threshold is not None:
        if not math.isfinite(threshold):
            raise MedaeError(f"--threshold {threshold}: expected a finite number")
        return float(threshold), "set by hand (--threshold)"
    if not calibration:
        raise MedaeError("this model has no calibrated threshold: pass --threshold")
    if fpr is None and calibration.get("candidate_threshold") is not None:
        return (float(calibration["candidate_threshold"]),
                "calibrated: " + str(calibration.get("candidate_rule", "candidate rule")))
    fpr = 0.01 if fpr is None else float(fpr)
    key = f"{fpr:g}"
    if key in calibration["voxel_thresholds"]:
        value = calibration["voxel_thresholds"][key]
    else:
        curve = calibration["fpr_curve"]
        lo, hi = curve["fpr"][0], curve["fpr"][-1]
        if not lo <= fpr <= hi:
            raise MedaeError(f"--fpr {fpr:g}: outside the calibrated range [{lo:g}, {hi:g}]")
        value = float(np.interp(np.log(fpr), np.log(curve["fpr"]), curve["threshold"]))
    return value, f"calibrated for {fpr:.3g} false-positive rate on healthy voxels"
