"""Voxel-level metrics pooled over a test set, accumulated scan by scan in bounded memory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import medae.curves as curves
from medae.errors import MedaeError
from medae.evaluation.histogram import ScoreHistogram


class PooledVoxels:
    """Streaming accumulator of (score, label) voxels for AP, AUROC and Dice.

    Pass only the voxels to evaluate (those inside the brain mask), one scan per ``add`` call.
    Up to ``exact_limit`` voxels the scores are kept and every metric is exact (identical to
    scikit-learn up to float rounding).  Beyond that the accumulator switches to a histogram of
    the float32 scores over their top ``bits`` bits (sign-corrected so order holds for negative
    values): 2**bits bins, two int64 arrays (64 MB at the default 22 bits), a relative score
    resolution of 2**(bits - 32 + 9) ≈ 1.2e-4, and no score range needed in advance.  A bin acts
    as one tie group; ``bounds()`` gives the interval that surely holds the unbinned AP/AUROC.

    Dice at the ``thresholds`` given at construction is counted exactly during ``add`` (a voxel
    is called positive when ``score > threshold``, as in ``medae.scoring.find_candidates``),
    pooled (``dice_at``) and per ``add`` call (``scan_dice``).

    Args:
        thresholds: score thresholds to count Dice at exactly (e.g. calibrated ones).
        exact_limit: most voxels kept for exact metrics before switching to the histogram.
        bits: histogram resolution (16 to 26 bits; memory 16 * 2**bits bytes).
    """

    def __init__(self, thresholds: Sequence[float] = (), exact_limit: int = 20_000_000,
                 bits: int = 22):
        if not 16 <= bits <= 26:
            raise MedaeError(f"PooledVoxels: bits must be within 16..26, got {bits}")
        self.thresholds = tuple(float(t) for t in thresholds)
        curves.check_finite(np.asarray(self.thresholds, np.float64), "PooledVoxels thresholds")
        self.exact_limit = int(exact_limit)
        self.bits = bits
        self._kept: list[tuple[np.ndarray, np.ndarray]] = []
        self._hist: ScoreHistogram | None = None
        self._scan_counts: list[np.ndarray] = []  # per add: (T, 2) = [tp, called]
        self._scan_pos: list[int] = []
        self._n = 0
        self._pos = 0
        self._groups: tuple[np.ndarray, ...] | None = None

    # -- accumulation -----------------------------------------------------------------------
    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add voxels: ``scores`` (any shape, finite) and ``labels`` (bool, same shape)."""
        scores, labels = np.asarray(scores), np.asarray(labels)
        labels = curves.check_pair(scores, labels, "PooledVoxels.add scores")
        scores = scores.ravel()
        if scores.dtype.kind != "f" or scores.dtype.itemsize > 8:
            scores = scores.astype(np.float64)
        pos_scores = scores[labels]
        counts = np.array([[np.count_nonzero(pos_scores > t), np.count_nonzero(scores > t)]
                           for t in self.thresholds], np.int64).reshape(-1, 2)
        self._scan_counts.append(counts)
        self._scan_pos.append(int(pos_scores.size))
        self._n += scores.size
        self._pos += pos_scores.size
        self._groups = None
        if self._hist is None and self._n <= self.exact_limit:
            self._kept.append((scores.copy(), labels.copy()))
            return
        if self._hist is None:
            self._hist = ScoreHistogram(self.bits)
            for s, lab in self._kept:
                self._bin(s, lab)
            self._kept = []
        self._bin(scores, labels)

    def _bin(self, scores: np.ndarray, labels: np.ndarray) -> None:
        with np.errstate(over="ignore"):
            s32 = scores.astype(np.float32, copy=False)
        if not np.isfinite(s32).all():
            raise MedaeError("PooledVoxels.add scores: values beyond the float32 range")
        self._hist.add(s32, labels)

    # -- results ----------------------------------------------------------------------------
    @property
    def counts(self) -> tuple[int, int]:
        """(voxels, positive voxels) added so far."""
        return self._n, self._pos

    @property
    def exact(self) -> bool:
        """True while every voxel is kept (metrics exact); False once binned."""
        return self._hist is None

    def _tie_groups(self) -> tuple[np.ndarray, ...]:
        """(key, tp, fp) per group in decreasing score; key = value (exact) or bin index."""
        if self._groups is None:
            if self._hist is None:
                if len(self._kept) == 1:
                    s, lab = self._kept[0]
                else:
                    s = np.concatenate([k[0] for k in self._kept]) if self._kept else np.zeros(0)
                    lab = np.concatenate([k[1] for k in self._kept]) if self._kept else \
                        np.zeros(0, bool)
                self._groups = curves.exact_groups(s, lab)
            else:
                self._groups = self._hist.groups()
        return self._groups

    def average_precision(self) -> float | None:
        """Voxel AP (area under the precision-recall curve); None when no voxel is positive."""
        _, tp, fp = self._tie_groups()
        return curves.average_precision(tp, fp)

    def roc_auc(self) -> float | None:
        """Voxel AUROC; None unless both positive and negative voxels were added."""
        _, tp, fp = self._tie_groups()
        return curves.roc_auc(tp, fp)

    def bounds(self) -> dict[str, tuple[float, float] | None]:
        """{"ap": (lo, hi), "auroc": (lo, hi)}: the exact values lie inside (binning error)."""
        if self.exact or self._hist.shift == 0:  # one float32 value per bin: no binning error
            ap, auc = self.average_precision(), self.roc_auc()
            return {"ap": None if ap is None else (ap, ap),
                    "auroc": None if auc is None else (auc, auc)}
        _, tp, fp = self._tie_groups()
        return curves.bounds(tp, fp)

    def best_dice(self) -> tuple[float, float]:
        """[Dice]: the best Dice over all thresholds, and that threshold (call ``score > thr``).

        Chosen with the labels, so an upper bound on deployable Dice; label it as such.  Exact
        mode sweeps every distinct score; histogram mode sweeps the bin edges (float32 scores).
        """
        keys, tp, fp = self._tie_groups()
        d = curves.dice_curve(tp, fp)
        k = int(np.argmax(d))  # top k groups called positive
        if k == len(keys):
            thr = -np.inf
        elif self.exact:
            thr = float(keys[k])
        else:
            thr = self._hist.threshold_below(int(keys[k - 1]) if k else int(keys[0]) + 1)
        return float(d[k]), thr

    def dice_at(self, threshold: float) -> float:
        """Pooled Dice of ``score > threshold``, counted exactly.

        Any threshold works in exact mode; in histogram mode, one given at construction or a bin
        edge (such as the one ``best_dice`` returns).
        """
        if float(threshold) in self.thresholds:
            i = self.thresholds.index(float(threshold))
            tp, called = np.sum([c[i] for c in self._scan_counts], axis=0, dtype=np.int64) \
                if self._scan_counts else (0, 0)
            return curves.dice_from_counts(int(tp), int(called), self._pos)
        keys, tp, fp = self._tie_groups()
        if self.exact:
            above = keys > threshold
        else:
            first = self._hist.first_bin_above(threshold)
            if first is None:
                raise MedaeError(f"dice_at: threshold {threshold} is neither one given to "
                                 "PooledVoxels(thresholds=...) nor a histogram bin edge")
            above = keys >= first
        return curves.dice_from_counts(int(tp[above].sum()), int((tp + fp)[above].sum()),
                                       self._pos)

    def scan_dice(self, threshold: float) -> list[float]:
        """Dice of ``score > threshold`` for each ``add`` call (one per scan), exact.

        The threshold must be one given at construction.
        """
        if float(threshold) not in self.thresholds:
            raise MedaeError(f"scan_dice: threshold {threshold} was not given to "
                             "PooledVoxels(thresholds=...)")
        i = self.thresholds.index(float(threshold))
        return [curves.dice_from_counts(int(c[i, 0]), int(c[i, 1]), p)
                for c, p in zip(self._scan_counts, self._scan_pos, strict=True)]

    def curve(self, max_points: int = 2000) -> dict[str, list[float]]:
        """Precision, recall and Dice against the threshold (``score > threshold``), from the
        highest threshold down, subsampled to at most ``max_points`` points (for plots)."""
        keys, tp, fp = self._tie_groups()
        if len(keys) == 0:
            return {"threshold": [], "precision": [], "recall": [], "dice": []}
        ctp, called = np.cumsum(tp), np.cumsum(tp + fp)
        idx = np.unique(np.linspace(0, len(keys) - 1, max_points).astype(np.int64))
        if self.exact:
            # calling the top k+1 groups positive = threshold just below group k's value
            nxt = np.r_[keys[1:], -np.inf]
            thr = nxt[idx]
        else:
            thr = np.array([self._hist.threshold_below(int(keys[i])) for i in idx])
        dice = curves.dice_curve(tp, fp)[1:]
        return {"threshold": thr.tolist(),
                "precision": (ctp[idx] / np.maximum(called[idx], 1)).tolist(),
                "recall": (ctp[idx] / max(self._pos, 1)).tolist(),
                "dice": dice[idx].tolist()}

    def summary(self) -> dict:
        """All pooled metrics as a JSON-ready dict."""
        best, thr = self.best_dice()
        return {"voxels": self._n, "positives": self._pos, "exact": self.exact,
                "ap": self.average_precision(), "auroc": self.roc_auc(),
                "bounds": self.bounds(), "best_dice_upper_bound": best,
                "best_dice_threshold": thr,
                "dice_at": {f"{t:g}": self.dice_at(t) for t in self.thresholds}}
