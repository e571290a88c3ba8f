"""From the scan and its reconstruction to the anomaly (heat) map, and a scan-level score.

Everything here works on the scan's own grid: the residual compares the scan's normalised voxels
with the reconstruction brought back to that grid, and the erosion and median filter sizes are
millimetres, so small lesions keep their extent whatever resolution the model ran at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

# the recipe's ``scoring`` section is defined with the other recipe sections; named here too
from medae.config import RESIDUALS, MapConfig  # noqa: F401
from medae.masks import bounding_box, outer_erosion


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
