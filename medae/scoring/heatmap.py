"""From input and reconstruction to the anomaly (heat) map, and a scan-level score."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from medae.errors import MedaeError

RESIDUALS = ("abs", "squared", "positive")


@dataclass(frozen=True)
class MapConfig:
    """Post-processing of the residual, stored in the bundle (``scoring`` section).

    Attributes:
        residual: ``"abs"`` |x - x̂|, ``"squared"`` (x - x̂)², or ``"positive"`` max(x - x̂, 0)
            (only brighter-than-expected voxels, e.g. lesions in FLAIR).
        erode: erode the brain mask by this many model-space voxels (the brain edge is
            reconstructed poorly by every autoencoder and is not a lesion).
        median: median filter size in model-space voxels: one size (a cube) or three (e.g.
            ``[5, 5, 1]``: 5x5 within each axial slice); 0 or 1 switches it off.
        min_volume_mm3: candidates smaller than this are dropped.
        scan_percentile: the scan score is this percentile of the map inside the brain.
    """

    residual: str = "abs"
    erode: int = 2
    median: int | tuple[int, int, int] = 3
    min_volume_mm3: float = 20.0
    scan_percentile: float = 99.0

    def __post_init__(self) -> None:
        if self.residual not in RESIDUALS:
            raise MedaeError(f"scoring.residual: expected one of {RESIDUALS}, "
                             f"got {self.residual!r}")
        sizes = self.median if isinstance(self.median, tuple) else (self.median,)
        if len(sizes) not in (1, 3) or any(not isinstance(m, int) or m < 0 for m in sizes):
            raise MedaeError(f"scoring.median: one or three sizes >= 0, got {self.median!r}")
        if self.erode < 0 or self.min_volume_mm3 < 0:
            raise MedaeError("scoring: erode and min_volume_mm3 must be >= 0")
        if not 0 < self.scan_percentile <= 100:
            raise MedaeError("scoring.scan_percentile must be in (0, 100]")

    @classmethod
    def from_dict(cls, values: dict | None) -> MapConfig:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedaeError(f"scoring: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        if isinstance(values.get("median"), list):
            values["median"] = tuple(values["median"])
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


def eroded_mask(mask: np.ndarray, erode: int) -> np.ndarray:
    if erode <= 0:
        return mask.astype(bool)
    return ndimage.binary_erosion(mask, iterations=erode, border_value=0)


def anomaly_map(image: np.ndarray, recon: np.ndarray, mask: np.ndarray,
                config: MapConfig) -> tuple[np.ndarray, np.ndarray]:
    """Residual inside the eroded mask, median-filtered.  Returns (map, eroded mask)."""
    diff = image - recon
    if config.residual == "abs":
        res = np.abs(diff)
    elif config.residual == "squared":
        res = diff * diff
    else:
        res = np.maximum(diff, 0)
    inside = eroded_mask(mask, config.erode)
    res = np.where(inside, res, 0).astype(np.float32)
    if max(np.atleast_1d(config.median)) > 1:
        res = ndimage.median_filter(res, size=config.median)
        res[~inside] = 0
    return res, inside


def scan_score(heat: np.ndarray, inside: np.ndarray, percentile: float) -> float:
    """A scan-level anomaly score: a high percentile of the map inside the brain."""
    values = heat[inside]
    return float(np.percentile(values, percentile)) if values.size else 0.0
