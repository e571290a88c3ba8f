"""From the scan and its reconstruction to the anomaly (heat) map, and a scan-level score.

Everything here works on the scan's own grid: the residual compares the scan's normalised voxels
with the reconstruction brought back to that grid, and the erosion and median filter sizes are
millimetres, so small lesions keep their extent whatever resolution the model ran at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from medae.errors import MedaeError
from medae.masks import bounding_box, outer_erosion

RESIDUALS = ("abs", "squared", "positive")


@dataclass(frozen=True)
class MapConfig:
    """Post-processing of the residual, stored in the bundle (``scoring`` section).

    Attributes:
        residual: ``"abs"`` |x - x̂|, ``"squared"`` (x - x̂)², or ``"positive"`` max(x - x̂, 0)
            (only brighter-than-expected voxels, e.g. lesions in FLAIR).
        erode_mm: leave out the outer rim of the brain mask, this many mm deep (the brain edge
            is reconstructed poorly by every autoencoder and is not a lesion).  Only the outer
            surface is eroded: holes inside the mask do not grow.
        median_mm: median filter width in mm at the scan's resolution: one width (every axis)
            or three (e.g. ``[5, 5, 0]``: within each axial slice); each becomes the largest odd
            number of voxels no wider than that (under 3 voxels: no filtering on that axis).
        min_volume_mm3: candidates smaller than this are dropped.
        scan_percentile: the scan score is this percentile of the map inside the brain.
        channels: multi-sequence models: the inputs (``preprocess.inputs`` names) whose
            residuals make the map (``None``: every input).  E.g. ``[flair, t2]``: lesions are
            bright there, while a T1-weighted input helps the reconstruction but its positive
            residual (bright vessels, enhancement) is not a lesion sign.

    Bundles written before maps were computed at the scan's resolution used ``erode`` and
    ``median`` in voxels of the model grid: :meth:`from_dict` converts them with the model's
    spacing.
    """

    residual: str = "abs"
    erode_mm: float = 4.0
    median_mm: float | tuple[float, float, float] = (3.0, 3.0, 0.0)
    min_volume_mm3: float = 20.0
    scan_percentile: float = 99.0
    channels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.channels is not None and (
                not isinstance(self.channels, tuple) or not self.channels
                or not all(isinstance(c, str) and c for c in self.channels)):
            raise MedaeError("scoring.channels: null or a list of input sequence names, "
                             f"got {self.channels!r}")
        if self.residual not in RESIDUALS:
            raise MedaeError(f"scoring.residual: expected one of {RESIDUALS}, "
                             f"got {self.residual!r}")
        widths = self.median_mm if isinstance(self.median_mm, tuple) else (self.median_mm,)
        if len(widths) not in (1, 3) or any(
                isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m < 1e3
                for m in widths):
            raise MedaeError("scoring.median_mm: one or three widths in mm (0 <= w < 1000), "
                             f"got {self.median_mm!r}")
        for key in ("erode_mm", "min_volume_mm3"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not 0 <= value < 1e9:
                raise MedaeError(f"scoring.{key}: expected a number >= 0, got {value!r}")
        if not 0 < self.scan_percentile <= 100:
            raise MedaeError("scoring.scan_percentile must be in (0, 100]")

    @classmethod
    def from_dict(cls, values: dict | None, model_spacing=None) -> MapConfig:
        """Validate a ``scoring`` section (legacy ``erode``/``median`` in model voxels are
        converted to mm with ``model_spacing``, 1 mm when the model kept the scan's grid)."""
        values = dict(values or {})
        spacing = np.asarray(model_spacing if model_spacing is not None else (1.0,) * 3, float)
        if "erode" in values:
            if "erode_mm" in values:
                raise MedaeError("scoring: give erode_mm (mm), not also erode (model voxels)")
            values["erode_mm"] = float(values.pop("erode")) * float(spacing.mean())
        if "median" in values:
            if "median_mm" in values:
                raise MedaeError("scoring: give median_mm (mm), not also median (model voxels)")
            m = values.pop("median")
            m = [m] * 3 if not isinstance(m, list | tuple) else list(m)
            if len(m) != 3:
                raise MedaeError(f"scoring.median: one or three sizes, got {m!r}")
            values["median_mm"] = [0.0 if v <= 1 else float(v) * float(s)
                                   for v, s in zip(m, spacing, strict=True)]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedaeError(f"scoring: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        for key in ("median_mm", "channels"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["channels"] is None:  # one-sequence bundles stay as they were
            del d["channels"]
        for key in ("median_mm", "channels"):
            if isinstance(d.get(key), tuple):
                d[key] = list(d[key])
        return d

    def median_size(self, spacing) -> tuple[int, int, int]:
        """The median filter's size in voxels of a grid with ``spacing`` (odd, >= 1)."""
        widths = self.median_mm if isinstance(self.median_mm, tuple) else (self.median_mm,) * 3
        return tuple(max(1, 2 * int(np.floor((w / s + 1e-6 - 1) / 2)) + 1)
                     for w, s in zip(widths, spacing, strict=True))


def residual(image: np.ndarray, recon: np.ndarray, kind: str) -> np.ndarray:
    diff = np.subtract(image, recon, dtype=np.float32)
    if kind == "abs":
        return np.abs(diff, out=diff)
    if kind == "squared":
        return np.multiply(diff, diff, out=diff)
    return np.maximum(diff, 0, out=diff)


#: axial slices of the scan per slab of the heat map (memory follows the slab, not the volume)
SLAB = 32

#: per channel, (image, reconstruction) on the scan's grid for the axial slices asked for
Channels = Callable[[slice], Sequence[tuple[np.ndarray, np.ndarray]]]


def anomaly_map(image, recon, mask: np.ndarray, config: MapConfig, spacing=(1.0, 1.0, 1.0)
                ) -> tuple[np.ndarray, np.ndarray]:
    """Residual inside the outer-eroded ``mask``, median-filtered (``spacing``: mm per axis of
    these arrays).  Returns (map float32, analysed region bool); the map is 0 outside it.

    ``image`` and ``recon`` are one array each, or one per channel (lists of the same length):
    a multi-channel map is the voxel-wise maximum of the channels' residuals (for ``positive``:
    the largest brighter-than-expected deviation in any sequence), then filtered.
    """
    images = [image] if isinstance(image, np.ndarray) else list(image)
    recons = [recon] if isinstance(recon, np.ndarray) else list(recon)
    if len(images) != len(recons) or not images:
        raise ValueError("anomaly_map: one reconstruction per image channel")
    return anomaly_map_slabs(
        lambda z: [(im[:, :, z], rc[:, :, z]) for im, rc in zip(images, recons, strict=True)],
        mask, config, spacing)


def anomaly_map_slabs(channels: Channels, mask: np.ndarray, config: MapConfig,
                      spacing=(1.0, 1.0, 1.0), slab: int | None = None, eroded: bool = False
                      ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`anomaly_map` computed in slabs of ``slab`` (default :data:`SLAB`) axial slices:
    ``channels(z)`` gives,
    per channel, the image and its reconstruction (X, Y, len(z)) for the scan slices ``z``.

    Each slab is read with a halo of ``median_size // 2`` slices, so the map equals the
    whole-volume one exactly; the full-size arrays are the map and the analysed region only.
    ``eroded``: ``mask`` is already the analysed region (``outer_erosion`` done; returned as is).
    """
    inside = mask if eroded else outer_erosion(mask, config.erode_mm, spacing)
    heat = np.zeros(mask.shape, np.float32)
    size = config.median_size(spacing)
    box = bounding_box(inside, margin=[s // 2 for s in size])
    if box is None:
        return heat, inside
    bx, by, bz = box
    halo = size[2] // 2
    step = max(1, int(SLAB if slab is None else slab))
    for z0 in range(bz.start, bz.stop, step):
        z1 = min(bz.stop, z0 + step)
        a, b = max(bz.start, z0 - halo), min(bz.stop, z1 + halo)
        res = None
        for im, rc in channels(slice(a, b)):
            r = residual(im[bx, by], rc[bx, by], config.residual)
            res = r if res is None else np.maximum(res, r, out=res)
        if res is None:
            raise ValueError("anomaly_map: one reconstruction per image channel")
        outside = ~inside[bx, by, a:b]
        res[outside] = 0
        if max(size) > 1:
            res = ndimage.median_filter(res, size=size)
            res[outside] = 0
        heat[bx, by, z0:z1] = res[:, :, z0 - a:z1 - a]
    return heat, inside


def scan_score(heat: np.ndarray, inside: np.ndarray, percentile: float) -> float:
    """A scan-level anomaly score: a high percentile of the map inside the brain."""
    values = heat[inside]  # a copy: the percentile may reorder it in place
    return float(np.percentile(values, percentile, overwrite_input=True)) if values.size else 0.0
