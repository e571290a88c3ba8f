"""Preprocessing shared by training and scoring, stored with the model, invertible to the scan.

Steps, on a :class:`~medae.io.Scan` (already oriented closest to RAS+): resample to a target
spacing, find the foreground (brain) mask (given, or computed), normalise intensities inside the
mask (percentile scaling by default), crop/pad to the model's size around the mask's centre.
:func:`to_scan_space` undoes the geometric steps so maps land on the scan's voxels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medae.errors import MedaeError
from medae.io.nifti import MAX_VOXELS as _MAX_RESAMPLED
from medae.io.scan import Scan

Size3 = tuple[int | None, int | None, int | None]


@dataclass(frozen=True)
class PreprocessConfig:
    """How scans become model input.  Every field is stored in the model bundle.

    Attributes:
        spacing: target voxel size in mm (x, y, z of the RAS array); ``None`` keeps the scan's.
        size: crop/pad target in voxels per axis; ``None`` on an axis keeps that axis.
        mask: ``"auto"`` (the given mask, else a constant background, else Otsu), ``"given"``
            (a mask must be supplied), ``"computed"``, or ``"none"`` (everything is foreground).
        normalise: ``"percentile"`` (map the ``percentiles`` inside the mask to 0 and 1),
            ``"zscore"`` (mean 0, sd 1 inside the mask) or ``"none"``.
        percentiles: low and high percentiles for ``"percentile"``.
        clip: clip normalised values to [0, 1] (needed for BCE); off by default so bright
            lesions keep their contrast.
    """

    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    size: Size3 = (None, None, None)
    mask: str = "auto"
    normalise: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    clip: bool = False

    def __post_init__(self) -> None:
        if self.mask not in ("auto", "given", "computed", "none"):
            raise MedaeError(f"preprocess.mask: unknown value {self.mask!r}")
        if self.normalise not in ("percentile", "zscore", "none"):
            raise MedaeError(f"preprocess.normalise: unknown value {self.normalise!r}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise MedaeError(
                f"preprocess.spacing: need three positive mm values, got {self.spacing}")
        if len(self.size) != 3 or any(s is not None and int(s) < 1 for s in self.size):
            raise MedaeError(f"preprocess.size: need three sizes (or null), got {self.size}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise MedaeError(f"preprocess.percentiles: need 0 <= low < high <= 100, got {lo}, {hi}")

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedaeError(f"preprocess: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        v = dict(values)
        for key in ("spacing", "size", "percentiles"):
            if v.get(key) is not None:
                v[key] = tuple(v[key])
        return cls(**v)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class Prepared:
    """A preprocessed scan: model-space ``image`` and ``mask`` (x, y, z) and how to go back."""

    image: np.ndarray  # float32 (X, Y, Z)
    mask: np.ndarray  # bool (X, Y, Z)
    scan_shape: tuple[int, int, int]  # the Scan's array shape
    resampled_shape: tuple[int, int, int]
    offset: tuple[int, int, int]  # model-space origin inside the resampled volume (may be < 0)
    stats: dict = field(default_factory=dict)  # intensity statistics used for normalisation
    label: np.ndarray | None = None  # bool (X, Y, Z), when a lesion label was given


def _resize(array: np.ndarray, shape: tuple[int, int, int], nearest: bool) -> np.ndarray:
    if tuple(array.shape) == tuple(shape):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if nearest:
        out = F.interpolate(t, size=shape, mode="nearest-exact")
    else:
        out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def compute_mask(image: np.ndarray) -> np.ndarray:
    """Foreground of a scan: a constant background (skull-stripped data) or an Otsu threshold.

    The largest connected component is kept and its holes filled.
    """
    from skimage.filters import threshold_otsu

    lowest = float(image.min())
    at_lowest = image <= lowest
    if at_lowest.mean() > 0.1:  # skull-stripped: background is one constant value
        fg = ~at_lowest
    else:
        smooth = ndimage.gaussian_filter(image, 1.0)
        fg = smooth > threshold_otsu(smooth)
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        fg = labels == int(sizes.argmax())
    return ndimage.binary_fill_holes(fg)


def normalise(image: np.ndarray, mask: np.ndarray, config: PreprocessConfig
              ) -> tuple[np.ndarray, dict]:
    """Intensity normalisation inside ``mask``; zero outside.  Returns the image and statistics."""
    inside = image[mask]
    if inside.size == 0:
        raise MedaeError("the foreground mask is empty: nothing to normalise")
    if config.normalise == "percentile":
        lo, hi = (float(v) for v in np.percentile(inside, config.percentiles))
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            raise MedaeError("constant intensity inside the mask: cannot normalise")
        out = (image - lo) / (hi - lo)
        stats = {"low": lo, "high": hi}
    elif config.normalise == "zscore":
        mean, sd = float(inside.mean()), float(inside.std())
        if sd <= 1e-12 * max(1.0, abs(mean)):
            raise MedaeError("constant intensity inside the mask: cannot normalise")
        out = (image - mean) / sd
        stats = {"mean": mean, "sd": sd}
    else:
        out, stats = image.copy(), {}
    if config.clip:
        np.clip(out, 0.0, 1.0, out=out)
    out[~mask] = 0.0
    return out.astype(np.float32, copy=False), stats


def _crop_pad(array: np.ndarray, offset, size, fill=0) -> np.ndarray:
    out = np.full(size, fill, dtype=array.dtype)
    src, dst = [], []
    for o, s, n in zip(offset, size, array.shape, strict=True):
        a, b = max(o, 0), min(o + s, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - o, a - o + max(0, b - a)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def preprocess(scan: Scan, config: PreprocessConfig, mask: np.ndarray | None = None,
               label: np.ndarray | None = None) -> Prepared:
    """Turn a scan into model input.  ``mask``/``label`` are arrays on the scan's array grid."""
    if mask is not None and mask.shape != scan.shape:
        raise MedaeError(f"{scan.source}: mask shape {mask.shape} differs from scan {scan.shape}")
    if label is not None and label.shape != scan.shape:
        raise MedaeError(f"{scan.source}: label shape {label.shape} differs from scan {scan.shape}")
    if config.mask == "given" and mask is None:
        raise MedaeError(f"{scan.source}: this model needs a brain mask (manifest column mask)")
    if config.spacing is None:
        shape = scan.shape
    else:
        shape = tuple(max(1, round(n * s / t)) for n, s, t in
                      zip(scan.shape, scan.spacing, config.spacing, strict=True))
    if float(np.prod(shape, dtype=np.float64)) > _MAX_RESAMPLED:  # checked before allocating
        raise MedaeError(f"{scan.source}: resampling {scan.describe()} to {config.spacing} mm "
                         f"gives {'x'.join(map(str, shape))} voxels, more than "
                         f"{_MAX_RESAMPLED:.3g}")
    image = _resize(scan.array, shape, nearest=False)
    if config.mask == "none":
        fg = np.ones(shape, bool)
    else:
        if mask is None or config.mask == "computed":
            mask = compute_mask(scan.array)  # at native resolution: crisp edges
        fg = _resize(np.asarray(mask, np.float32) > 0, shape, nearest=True) > 0.5
    if not fg.any():
        raise MedaeError(f"{scan.source}: the foreground mask is empty")
    try:
        image, stats = normalise(image, fg, config)
    except MedaeError as exc:
        raise MedaeError(f"{scan.source}: {exc}") from None
    lab = None
    if label is not None:
        lab = _resize(np.asarray(label, np.float32) > 0, shape, nearest=True) > 0.5
    size = tuple(n if s is None else int(s) for n, s in zip(shape, config.size, strict=True))
    lo_hi = np.argwhere(fg)
    centre = (lo_hi.min(0) + lo_hi.max(0) + 1) / 2.0
    offset = tuple(round(c - s / 2.0) if s != n else 0
                   for c, s, n in zip(centre, size, shape, strict=True))
    return Prepared(image=_crop_pad(image, offset, size), mask=_crop_pad(fg, offset, size, False),
                    scan_shape=scan.shape, resampled_shape=shape, offset=offset, stats=stats,
                    label=None if lab is None else _crop_pad(lab, offset, size, False))


def to_scan_space(array: np.ndarray, prepared: Prepared, nearest: bool = False,
                  fill: float = 0.0) -> np.ndarray:
    """Map a model-space array (x, y, z) back onto the scan's array grid (undo crop/pad, resize)."""
    shape = prepared.resampled_shape
    # the inverse crop/pad: model voxel v sits at v + offset in the resampled volume
    inv = tuple(-o for o in prepared.offset)
    back = _crop_pad(np.asarray(array, np.float32), inv, shape, fill)
    return _resize(back, prepared.scan_shape, nearest=nearest)
