"""Lesion-wise detection: 26-connected true lesions found by overlapping candidates."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from skimage.measure import label as cc_label

from medae.errors import MedaeError

SIZE_BINS_MM3 = (0.0, 100.0, 1000.0, 10000.0, np.inf)


def size_bin_names(edges: Sequence[float]) -> list[str]:
    """Labels of the size bins, e.g. ``"100-1000 mm3"`` and ``">=10000 mm3"``."""
    return [f">={lo:g} mm3" if np.isinf(hi) else f"{lo:g}-{hi:g} mm3"
            for lo, hi in pairwise(edges)]


def lesion_detection(truth: np.ndarray, candidates: np.ndarray, voxel_mm3: float = 1.0,
                     size_bins_mm3: Sequence[float] = SIZE_BINS_MM3) -> dict:
    """Lesion-wise detection in one scan.

    True lesions are the 26-connected components of ``truth``; one is detected when at least one
    candidate voxel lies inside it (a shared voxel; touching is not overlap).  A false-positive
    candidate is a candidate label that shares no voxel with ``truth``.

    Args:
        truth: (D, H, W) bool lesion mask.
        candidates: (D, H, W) int label image (0 = none, as from ``find_candidates``) or a bool
            mask (then labelled with 26-connectivity).
        voxel_mm3: volume of one voxel in mm³.
        size_bins_mm3: increasing lesion-volume bin edges in mm³ (last may be inf); a lesion of
            volume v falls in the bin with lo <= v < hi.

    Returns:
        Counts (``lesions``, ``detected``, ``candidates``, ``fp_candidates``), ``recall`` (None
        without lesions), ``fp_mm3`` (volume of false-positive candidates), per-lesion
        ``lesion_mm3`` and ``lesion_detected`` lists, and ``by_size``: per bin name
        ``{"lesions", "detected", "recall"}``.
    """
    truth, candidates = np.asarray(truth), np.asarray(candidates)
    if truth.shape != candidates.shape:
        raise MedaeError(f"lesion_detection: truth shape {truth.shape} does not match "
                         f"candidates {candidates.shape}")
    if candidates.dtype.kind not in "biu":
        raise MedaeError(f"lesion_detection: candidates must be int labels or bool, got "
                         f"{candidates.dtype}")
    edges = np.asarray(size_bins_mm3, np.float64)
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise MedaeError(f"lesion_detection: size bins must increase, got {list(size_bins_mm3)}")
    truth = truth.astype(bool, copy=False)
    if candidates.dtype == np.bool_:
        candidates = cc_label(candidates, connectivity=3)
    gt = cc_label(truth, connectivity=3)
    n_gt = int(gt.max())
    sizes = np.bincount(gt.ravel(), minlength=n_gt + 1)[1:] * float(voxel_mm3)
    hit = np.bincount(gt[candidates > 0], minlength=n_gt + 1)[1:] > 0
    cand_ids, cand_sizes = np.unique(candidates[candidates > 0], return_counts=True)
    touching = np.unique(candidates[truth & (candidates > 0)])
    false = ~np.isin(cand_ids, touching)
    which = np.digitize(sizes, edges) - 1  # lo <= v < hi
    by_size = {}
    for i, name in enumerate(size_bin_names(edges)):
        sel = which == i
        n, k = int(sel.sum()), int(hit[sel].sum())
        by_size[name] = {"lesions": n, "detected": k, "recall": k / n if n else None}
    return {
        "lesions": n_gt, "detected": int(hit.sum()),
        "recall": float(hit.mean()) if n_gt else None,
        "candidates": int(cand_ids.size), "fp_candidates": int(false.sum()),
        "fp_mm3": float(cand_sizes[false].sum() * voxel_mm3),
        "lesion_mm3": [float(v) for v in sizes], "lesion_detected": [bool(h) for h in hit],
        "size_bins_mm3": [float(e) for e in edges], "by_size": by_size,
    }


def summarise_detection(per_scan: Sequence[dict]) -> dict:
    """Pool ``lesion_detection`` results over scans (same size bins).

    Returns total ``recall`` (all lesions pooled; None without lesions), ``by_size`` recall,
    false-positive candidates per scan (``fp_per_scan_mean``, ``fp_per_scan_sd``: sample SD,
    0 for one scan) and FP volume per scan (``fp_mm3_mean``).
    """
    if not per_scan:
        raise MedaeError("summarise_detection: no scans")
    edges = per_scan[0]["size_bins_mm3"]
    if any(r["size_bins_mm3"] != edges for r in per_scan):
        raise MedaeError("summarise_detection: scans were scored with different size bins")
    lesions = sum(r["lesions"] for r in per_scan)
    detected = sum(r["detected"] for r in per_scan)
    by_size = {}
    for name in per_scan[0]["by_size"]:
        n = sum(r["by_size"][name]["lesions"] for r in per_scan)
        k = sum(r["by_size"][name]["detected"] for r in per_scan)
        by_size[name] = {"lesions": n, "detected": k, "recall": k / n if n else None}
    fp = np.array([r["fp_candidates"] for r in per_scan], np.float64)
    return {
        "scans": len(per_scan), "lesions": lesions, "detected": detected,
        "recall": detected / lesions if lesions else None, "by_size": by_size,
        "fp_per_scan_mean": float(fp.mean()),
        "fp_per_scan_sd": float(fp.std(ddof=1)) if fp.size > 1 else 0.0,
        "fp_mm3_mean": float(np.mean([r["fp_mm3"] for r in per_scan])),
        "size_bins_mm3": edges,
    }
