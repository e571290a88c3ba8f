"""Thresholds from heat maps of calibration scans: the operating point that decides what
``medae score`` flags.

The default rule follows the calibration data (``scoring.operating_point: auto``):

- calibration scans with lesion labels (patients, where no healthy scans exist): the threshold
  whose candidates have the highest Dice with the labels, pooled over every calibration scan
  (``dice``), or the FROC point (``froc``: the most lesions touched at no more than
  ``scoring.froc_fp`` false candidates per scan);
- truly healthy scans (no labels): the candidate rule as the field reports detection
  (``candidates``: the lowest threshold at which they average at most one false candidate of
  at least ``min_volume_mm3``), only with at least :data:`MIN_HEALTHY_SCANS` of them; with fewer,
  a warning and the voxel rule at 1% false-positive rate (``fpr``).

Under ``auto``, a labelled point that is degenerate on its own calibration scans (it catches
under half of their lesion voxels, or flags nothing on them: the model cannot see those lesions,
so the threshold that suits them is noise) gives way to the voxel rule, with a warning: it does
not hang on the lesion load of the calibration patient.

Voxel rules (the threshold that a chosen fraction of healthy voxels exceeds) are always
calibrated too, for ``--fpr``.  Every rule's figures on the calibration scans (Dice, lesion
voxels caught, lesions touched, false candidates per scan) are kept with it, and a point that
catches under half of the labelled lesion voxels is reported, never silent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medae.config import FROC_FP_PER_SCAN, OPERATING_POINTS
from medae.errors import MedaeError
from medae.masks import bounding_box

FPRS = (0.01, 0.05, 0.1)
SCAN_PERCENTILE = 95.0
#: false-positive candidates per healthy scan allowed by the candidate rule
MAX_FP_PER_SCAN = 1.0
#: the candidate rule needs at least this many healthy calibration scans
MIN_HEALTHY_SCANS = 3
#: below this share of the labelled lesion voxels caught, a calibration is reported as degenerate
MIN_SENSITIVITY = 0.5
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


@dataclass
class LabelledMap:
    """One calibration scan with its lesion label: the map over the analysed region and the
    lesion voxels inside the brain (cropped to the brain), so an operating point can be judged
    as evaluation judges it: lesion voxels caught, false candidates, Dice.

    A calibration scan without a label counts as lesion-free here (every candidate on it is a
    false one)."""

    heat: np.ndarray  # float32, 0 outside the analysed region
    lesion: np.ndarray  # bool, lesion voxels inside the brain
    voxel_mm3: float
    lesion_voxels: int = 0
    lesions: int = 0  # 26-connected lesion components

    def __post_init__(self) -> None:
        comp, n = ndimage.label(self.lesion, structure=_26)
        self._lesion_at = np.flatnonzero(self.lesion)
        self._lesion_comp = comp.reshape(-1)[self._lesion_at]
        self.lesion_voxels, self.lesions = int(self._lesion_at.size), int(n)

    @classmethod
    def crop(cls, heat: np.ndarray, analysed: np.ndarray, brain: np.ndarray,
             lesion: np.ndarray | None, voxel_mm3: float) -> LabelledMap:
        region = brain | analysed
        box = bounding_box(region) or tuple(slice(0, 0) for _ in heat.shape)
        inside = np.zeros(region[box].shape, bool) if lesion is None else \
            np.asarray(lesion[box], bool) & region[box]
        return cls(np.where(analysed[box], heat[box], 0).astype(np.float32), inside,
                   float(voxel_mm3))

    def counts(self, threshold: float, min_volume_mm3: float) -> tuple[int, int, int, int]:
        """At ``threshold``, the candidates medae would write (26-connected components of at
        least ``min_volume_mm3``): (lesion voxels caught, voxels called, false candidates,
        lesions touched by a candidate)."""
        labels, n = ndimage.label(self.heat > threshold, structure=_26)
        if n == 0:
            return 0, 0, 0, 0
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes * self.voxel_mm3 >= min_volume_mm3
        keep[0] = False
        at_lesion = labels.reshape(-1)[self._lesion_at]
        kept_at_lesion = keep[at_lesion]
        hits = np.bincount(at_lesion[kept_at_lesion], minlength=n + 1)
        false = int((keep & (hits == 0)).sum())
        touched = int(np.unique(self._lesion_comp[kept_at_lesion]).size)
        return int(kept_at_lesion.sum()), int(sizes[keep].sum()), false, touched


def _figures(maps: list[LabelledMap], threshold: float, min_volume_mm3: float) -> dict:
    """Pooled over ``maps``: Dice, lesion-voxel sensitivity, lesion recall and false candidates
    per scan of the candidates at ``threshold``."""
    tp = called = false = touched = 0
    flagged_labelled = 0
    for m in maps:
        t, c, f, h = m.counts(threshold, min_volume_mm3)
        tp, called, false, touched = tp + t, called + c, false + f, touched + h
        flagged_labelled += int(m.lesion_voxels > 0 and c > 0)
    positives = sum(m.lesion_voxels for m in maps)
    lesions = sum(m.lesions for m in maps)
    return {
        "threshold": float(threshold),
        "dice": 2.0 * tp / (called + positives) if called + positives else 0.0,
        "sensitivity": tp / positives if positives else None,
        "lesion_recall": touched / lesions if lesions else None,
        "fp_per_scan": false / len(maps),
        "voxels_called": int(called),
        "labelled_scans_flagged": flagged_labelled,
    }


def labelled_threshold(maps: list[LabelledMap], min_volume_mm3: float, rule: str = "dice",
                       max_fp: float = FROC_FP_PER_SCAN, points: int = 48, refine: int = 16
                       ) -> dict:
    """The operating point from labelled calibration scans, pooled over all of them (never one
    scan's best): ``dice``, the threshold whose candidates have the highest Dice with the
    labels; ``froc``, the one that touches the most lesions while the scans average at most
    ``max_fp`` false candidates (walking down from the top, stopping where that first fails:
    far below, the brain merges into few components and the count falls again).  A coarse
    grid of quantiles of the analysed voxels' scores, then a finer one around the best.
    Returns :func:`_figures` at the chosen threshold."""
    pooled = np.concatenate([m.heat[m.heat > 0].astype(np.float64) for m in maps] or
                            [np.zeros(0)])
    if pooled.size == 0:
        raise MedaeError("calibration: the calibration scans' maps are all zero")
    grid = np.unique(np.quantile(pooled, 1 - np.geomspace(1e-5, 0.5, points)))[::-1]

    key = "dice" if rule == "dice" else "lesion_recall"

    def best(thresholds) -> dict | None:
        """The best row over ``thresholds`` (descending; ties: the highest threshold), the
        FROC walk stopping at the first with too many false candidates."""
        top = None
        for t in thresholds:
            row = _figures(maps, float(t), min_volume_mm3)
            if rule == "froc" and row["fp_per_scan"] > max_fp:
                break
            if top is None or (row[key] or 0.0) > (top[key] or 0.0):
                top = row
        return top

    coarse = best(grid)
    if coarse is None:  # even the top of the grid gives too many false candidates
        return _figures(maps, float(pooled.max()), min_volume_mm3)
    i = int(np.flatnonzero(grid == coarse["threshold"])[0])
    # the neighbours of the best grid point (below it, the FROC walk stops where it must)
    hi, lo = grid[max(0, i - 1)], grid[min(len(grid) - 1, i + 1)]
    fine = best(np.unique(np.r_[np.linspace(lo, hi, refine), grid[i]])[::-1])
    return fine if fine is not None and (fine[key] or 0) >= (coarse[key] or 0) else coarse


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
              lesions: str = "lesion-labelled slices excluded",
              labelled: list[LabelledMap] | None = None, operating_point: str = "auto",
              froc_fp: float = FROC_FP_PER_SCAN) -> dict:
    """Every threshold of a model, and its default operating point, from calibration scans.

    Args:
        maps: per scan, its heat map and healthy voxels (:class:`HealthyMap`).
        scan_scores: per scan, its scan-level score computed on healthy tissue.
        source: where the calibration scans came from (``"validation"``, ``"training"``...).
        min_volume_mm3: the smallest candidate the model reports (scoring.min_volume_mm3).
        lesions: how labelled lesions were left out of the healthy voxels (for the rule text).
        labelled: per scan, its whole map and lesion label (:class:`LabelledMap`), when the
            calibration scans carry labels (None: truly healthy scans).
        operating_point: the default rule (:data:`OPERATING_POINTS`; see the module docstring).
        froc_fp: false candidates per scan the ``froc`` rule allows.
    """
    if operating_point not in OPERATING_POINTS:
        raise MedaeError(f"scoring.operating_point: expected one of {OPERATING_POINTS}, "
                         f"got {operating_point!r}")
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
    labelled = list(labelled or [])
    n_lesion = sum(m.lesion_voxels for m in labelled)
    n_patients = sum(m.lesion_voxels > 0 for m in labelled)
    warnings: list[str] = []
    rule = operating_point
    if rule == "auto":
        rule = "dice" if n_lesion else "candidates" if n >= MIN_HEALTHY_SCANS else "fpr"
        if rule == "fpr":
            warnings.append(f"only {n} healthy {source} scan(s) without lesion labels: the "
                            f"candidate rule needs at least {MIN_HEALTHY_SCANS}, so the default "
                            "is the 1% healthy-voxel rule (give more healthy scans, or "
                            "calibration scans with lesion labels)")
    elif rule in ("dice", "froc") and not n_lesion:
        warnings.append(f"scoring.operating_point {rule} needs calibration scans with lesion "
                        f"labels and {source} has none: the default is the 1% healthy-voxel "
                        "rule")
        rule = "fpr"
    elif rule == "candidates" and n < MIN_HEALTHY_SCANS:
        warnings.append(f"the candidate rule on only {n} {source} scan(s) (at least "
                        f"{MIN_HEALTHY_SCANS} are advised): one scan's bright spots decide it")
    mv = f"{min_volume_mm3:g}"
    rejected = problem = None
    if rule in ("dice", "froc"):
        point = labelled_threshold(labelled, min_volume_mm3, rule, froc_fp)
        problem = _degenerate(point, rule, n_patients, n_lesion)
        if problem and operating_point == "auto":
            warnings.append(problem + ": the default is the 1% healthy-voxel rule instead")
            rejected, rule, problem = {**point, "rule": rule}, "fpr", None
    if rule in ("dice", "froc"):
        what = (f"{n_patients} labelled {source} scan(s) with {n_lesion} lesion voxels"
                + (f" and {len(labelled) - n_patients} without lesions"
                   if len(labelled) > n_patients else ""))
        across = ", pooled" if len(labelled) > 1 else ""
        text = ("threshold whose candidates (>= " + mv + " mm3) have the highest Dice with the "
                f"lesion labels of {what}{across}" if rule == "dice" else
                f"threshold whose candidates (>= {mv} mm3) touch the most lesions of {what} at "
                f"<= {froc_fp:g} false candidate(s) per scan")
    else:
        point_thr = cand_thr if rule == "candidates" else voxel["0.01"]
        point = (_figures(labelled, point_thr, min_volume_mm3) if labelled else
                 {"threshold": point_thr, "dice": None, "sensitivity": None,
                  "lesion_recall": None, "fp_per_scan": cand_fp if rule == "candidates" else
                  None})
        text = (f"lowest voxel threshold at which {n} healthy {source} scan(s) average "
                f"<= {MAX_FP_PER_SCAN:g} candidate(s) of >= {mv} mm3" if rule == "candidates"
                else f"1% of the healthy brain voxels of {n} {source} scan(s) above it")
    point.update(rule=rule, requested=operating_point, scans=len(labelled) or n,
                 labelled_scans=int(n_patients), lesion_voxels=int(n_lesion),
                 lesions=int(sum(m.lesions for m in labelled)))
    if rule in ("dice", "froc") and n_patients == 1:
        warnings.append(f"one labelled {source} scan decides the {rule} threshold: its "
                        "maps alone set it (data.calibration=crossfit calibrates on every "
                        "training scan, pooled)")
    if rejected is not None:
        point["rejected"] = rejected
    if rule not in ("dice", "froc") and n_lesion:  # the labelled point was judged above
        problem = _degenerate(point, rule, n_patients, n_lesion)
    if problem:
        warnings.append(problem)
    figures = [f"{name} {point[k]:.3f}" for k, name in
               (("dice", "Dice"), ("sensitivity", "share of lesion voxels caught"),
                ("lesion_recall", "share of lesions touched")) if point.get(k) is not None]
    if point.get("fp_per_scan") is not None:
        figures.append(f"{point['fp_per_scan']:.2f} false candidates/scan")
    return {
        "default": rule,
        "default_threshold": float(point["threshold"]),
        "default_rule": text + (f" ({', '.join(figures)})" if figures else ""),
        "operating_point": point,
        "warnings": warnings,
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


def _degenerate(point: dict, rule: str, n_patients: int, n_lesion: int) -> str | None:
    """Why an operating point is degenerate on its labelled calibration scans (nothing flagged
    on them, or under :data:`MIN_SENSITIVITY` of their lesion voxels caught), or None."""
    sens = point["sensitivity"] or 0.0
    if point.get("labelled_scans_flagged", 0) == 0:
        return (f"degenerate calibration: at the {rule} operating point "
                f"({point['threshold']:.4g}) no candidate touches the {n_patients} labelled "
                "calibration scan(s)")
    if sens < MIN_SENSITIVITY:
        return (f"degenerate calibration: the {rule} operating point ({point['threshold']:.4g}) "
                f"catches {sens:.0%} of the {n_lesion} labelled lesion voxels of the "
                f"calibration scans (under {MIN_SENSITIVITY:.0%})")
    return None


def pick_threshold(calibration: dict | None, fpr: float | None = None,
                   threshold: float | None = None) -> tuple[float, str]:
    """The voxel threshold to use: a hand-set value, the calibrated one for ``fpr``, or by
    default the calibrated operating point (bundles calibrated before it existed: the candidate
    rule, and before that the 1% voxel rule)."""
    if threshold is not None:
        if not math.isfinite(threshold):
            raise MedaeError(f"--threshold {threshold}: expected a finite number")
        return float(threshold), "set by hand (--threshold)"
    if not calibration:
        raise MedaeError("this model has no calibrated threshold: pass --threshold")
    if fpr is None and calibration.get("default_threshold") is not None:
        return (float(calibration["default_threshold"]),
                "calibrated: " + str(calibration.get("default_rule", calibration["default"])))
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
