"""Ranking curves from tie groups: AP, AUROC, best Dice and their resolution bounds (NumPy only:
evaluation and the detection-based model selection of training read them).

Every function takes per-group counts in decreasing order of score: ``tp[k]`` positives and
``fp[k]`` negatives share the k-th highest distinct score (or histogram bin).  Ties are handled as
scikit-learn does: a tie group is one threshold, AP = Σ (R_k − R_{k−1}) P_k over the groups and
AUROC is the trapezoid over the ROC steps.
"""

from __future__ import annotations

import numpy as np

from medae.errors import MedaeError


def check_pair(scores: np.ndarray, labels: np.ndarray, what: str = "scores") -> np.ndarray:
    """Validate a (scores, labels) pair of the same shape; returns labels as a flat bool array.

    Raises:
        MedaeError: shapes differ, labels are not 0/1, or scores hold NaN or infinity.
    """
    if scores.shape != labels.shape:
        raise MedaeError(f"{what}: shape {scores.shape} does not match labels {labels.shape}")
    if scores.dtype.kind not in "fiub":
        raise MedaeError(f"{what}: expected numbers, got dtype {scores.dtype}")
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():
        bad = "NaN" if np.isnan(scores).any() else "infinity"
        raise MedaeError(f"{what}: contains {bad} ({int((~np.isfinite(scores)).sum())} values); "
                         "mask or fix the map before evaluating")
    if labels.dtype != np.bool_:
        if labels.size and (labels.dtype.kind not in "iub" or labels.min() < 0 or labels.max() > 1):
            raise MedaeError(f"{what}: labels must be bool or 0/1, got dtype {labels.dtype}")
        labels = labels.astype(bool)
    return labels.ravel()


def exact_groups(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distinct score values (decreasing) with positives and negatives per value.

    ``scores`` and ``labels`` are flat, already validated; -0.0 and 0.0 are one value.
    """
    s = np.sort(scores)  # ascending; labels are not carried through the sort
    if s.size == 0:
        return s, np.zeros(0, np.int64), np.zeros(0, np.int64)
    new = np.empty(s.size, bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    del new
    values = s[starts]
    total = np.diff(np.r_[starts, s.size])
    del s, starts
    pos = np.sort(scores[labels])
    tp = np.searchsorted(pos, values, "right") - np.searchsorted(pos, values, "left")
    values, total, tp = values[::-1], total[::-1].astype(np.int64), tp[::-1].astype(np.int64)
    return values, tp, total - tp


def average_precision(tp: np.ndarray, fp: np.ndarray) -> float | None:
    """AP = Σ_k (R_k − R_{k−1}) P_k; None without positives (undefined)."""
    n_pos = int(tp.sum())
    if n_pos == 0:
        return None
    prec = np.cumsum(tp) / np.cumsum(tp + fp)
    return float(np.sum(tp * prec) / n_pos)


def roc_auc(tp: np.ndarray, fp: np.ndarray) -> float | None:
    """Area under the ROC curve (trapezoid); None unless both classes are present."""
    n_pos, n_neg = int(tp.sum()), int(fp.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    above = np.cumsum(tp) - tp  # positives strictly above each group
    return float(np.sum(fp * (above + 0.5 * tp)) / n_pos / n_neg)


def bounds(tp: np.ndarray, fp: np.ndarray) -> dict[str, tuple[float, float] | None]:
    """Range of AP and AUROC over every ordering of the samples inside each group.

    For histogram bins this brackets the value the unbinned scores would give; for genuine
    ties it brackets what any tie-breaking would give.
    """
    n_pos, n_neg = int(tp.sum()), int(fp.sum())
    out: dict[str, tuple[float, float] | None] = {"ap": None, "auroc": None}
    if n_pos:
        tp_before = np.cumsum(tp) - tp
        pred_before = np.cumsum(tp + fp) - tp - fp
        hi = tp * (tp_before + tp) / np.maximum(pred_before + tp, 1)  # positives first
        lo = tp * (tp_before + 1) / (pred_before + fp + 1)  # negatives first
        out["ap"] = (float(lo.sum() / n_pos), float(min(hi.sum() / n_pos, 1.0)))
    if n_pos and n_neg:
        auc = roc_auc(tp, fp)
        half = float(np.sum(tp * fp.astype(np.float64)) / 2 / n_pos / n_neg)
        out["auroc"] = (max(auc - half, 0.0), min(auc + half, 1.0))
    return out


def dice_curve(tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Dice when the top 0, 1, …, K groups are called positive (length K + 1).

    Both empty (no positives, nothing called) counts as Dice 1.
    """
    n_pos = int(tp.sum())
    ctp = np.r_[0, np.cumsum(tp)]
    called = np.r_[0, np.cumsum(tp + fp)]
    denom = called + n_pos
    return np.where(denom > 0, 2.0 * ctp / np.maximum(denom, 1), 1.0)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two bool masks of the same shape.

    Both empty gives 1.0 (perfect agreement on "nothing there").
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise MedaeError(f"dice: prediction shape {pred.shape} does not match truth {truth.shape}")
    pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
    return dice_from_counts(int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred)),
                            int(np.count_nonzero(truth)))


def dice_from_counts(tp: int, called: int, positives: int) -> float:
    """Dice from true positives, voxels called positive and true positive voxels."""
    return 1.0 if called + positives == 0 else 2.0 * tp / (called + positives)


def check_finite(values: np.ndarray, what: str) -> None:
    """Raise MedaeError when a float array holds NaN or infinity."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise MedaeError(f"{what}: contains NaN or infinity")
