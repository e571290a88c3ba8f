"""Fixed-memory histogram of float32 scores whose bins adapt to the range seen so far.

Each float32 maps to an order-preserving 32-bit key (the bit pattern, sign-corrected so that
negative values sort too).  A bin holds ``2**shift`` consecutive keys; ``shift`` is the smallest
that lets the keys seen so far fit into ``2**bits`` bins, so scores in a narrow range keep (nearly)
every float32 apart, and no range is needed in advance.  When new scores fall outside, pairs of
bins merge (counts stay exact) and the window re-centres.  Coarsest case (scores spanning all
float32 magnitudes): 22 bits give a relative resolution of 2**-13 ≈ 1.2e-4.
"""

from __future__ import annotations

import numpy as np


def _flip(i: np.ndarray) -> np.ndarray:
    """int32 float bit patterns ↔ monotone int32 keys, in place (the map is its own inverse)."""
    m = i >> 31
    m &= 0x7FFFFFFF
    i ^= m
    return i


def float_keys(values: np.ndarray) -> np.ndarray:
    """Monotone int64 keys in [0, 2**32) of finite float32 values; -0.0 and 0.0 share one."""
    i = _flip((values + np.float32(0)).view(np.int32))  # a copy; -0.0 + 0 = 0.0
    k = i.astype(np.int64)
    k += 1 << 31
    return k


def key_float(key: int) -> float:
    """The float32 value of a key (inverse of ``float_keys``)."""
    return float(_flip(np.array([key - (1 << 31)], np.int32)).view(np.float32)[0])


class ScoreHistogram:
    """Positive and total counts per bin of float32 scores (two int64 arrays of 2**bits)."""

    def __init__(self, bits: int = 22):
        self.nbins = 1 << bits
        self.total = np.zeros(self.nbins, np.int64)
        self.pos = np.zeros(self.nbins, np.int64)
        self.shift = 0
        self.origin = 0  # shifted key of bin 0
        self.lo: int | None = None  # smallest and largest key seen
        self.hi: int | None = None

    def add(self, values: np.ndarray, labels: np.ndarray) -> None:
        """Count finite float32 ``values`` (flat) with bool ``labels``."""
        if values.size == 0:
            return
        k = float_keys(values)
        lo, hi = int(k.min()), int(k.max())
        if self.lo is None:
            self._rebin(lo, hi)
        elif (lo >> self.shift) < self.origin or (hi >> self.shift) >= self.origin + self.nbins:
            self._rebin(min(lo, self.lo), max(hi, self.hi))
        self.lo = lo if self.lo is None else min(lo, self.lo)
        self.hi = hi if self.hi is None else max(hi, self.hi)
        k >>= self.shift
        k -= self.origin
        self.total += np.bincount(k, minlength=self.nbins)
        self.pos += np.bincount(k[labels], minlength=self.nbins)

    def _rebin(self, lo: int, hi: int) -> None:
        shift = self.shift
        while (hi >> shift) - (lo >> shift) >= self.nbins:
            shift += 1
        span = (hi >> shift) - (lo >> shift) + 1
        origin = (lo >> shift) - (self.nbins - span) // 2
        nz = np.flatnonzero(self.total)
        if nz.size:
            j = ((nz + self.origin) >> (shift - self.shift)) - origin
            self.total = np.bincount(j, self.total[nz], self.nbins).astype(np.int64)
            self.pos = np.bincount(j, self.pos[nz], self.nbins).astype(np.int64)
        self.shift, self.origin = shift, origin

    def groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin, positives, negatives) of the non-empty bins, highest scores first."""
        nz = np.flatnonzero(self.total)[::-1]
        tp = self.pos[nz]
        return nz, tp, self.total[nz] - tp

    def threshold_below(self, b: int) -> float:
        """The largest float32 below bin ``b``: ``x > t`` holds exactly for scores in bins ≥ b."""
        key = ((b + self.origin) << self.shift) - 1
        return -np.inf if key < 0 else key_float(key)

    def first_bin_above(self, threshold: float) -> int | None:
        """Bin b such that the scores > threshold are exactly those in bins ≥ b, else None."""
        t32 = np.float32(threshold)
        above = t32 if float(t32) > threshold else np.nextafter(t32, np.float32(np.inf))
        if not np.isfinite(above):
            return self.nbins if above > 0 else 0
        key = int(float_keys(np.array([above], np.float32))[0])
        if self.lo is None or key <= self.lo:
            return 0
        if key > self.hi:
            return self.nbins
        if key & ((1 << self.shift) - 1):
            return None
        return (key >> self.shift) - self.origin
