"""Synthetic lesions in template space: an irregular blob (ellipsoid lobes, a roughened boundary)
with a soft edge and a smooth texture, blended into the template's T1."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from medae.synthetic.template import Template
from medae.synthetic.transform import rotation_matrix


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Smooth noise (sd about 1) over ``shape`` with features about ``cell`` voxels wide."""
    low = tuple(max(2, math.ceil(n / cell) + 1) for n in shape)
    coarse = rng.standard_normal(low)
    pos = [np.linspace(0, m - 1, n) for n, m in zip(shape, low, strict=True)]
    grid = np.meshgrid(*pos, indexing="ij")
    out = ndimage.map_coordinates(coarse, grid, order=3, mode="nearest")
    return out / max(float(out.std()), 1e-6)


def lesion_alpha(lesion: dict[str, Any], tpl: Template,
                  ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray | None]:
    """The lesion's box in the template grid, its opacity there (0..1, soft edge, inside the
    brain) and its texture (smooth noise, sd about 1)."""
    centre = np.asarray(lesion["centre_mm"], dtype=float)
    lobes = lesion["lobes"]
    edge = float(lesion["edge_mm"])
    reach = max(float(np.linalg.norm(lb["offset_mm"])) + max(lb["radii_mm"]) for lb in lobes)
    reach = reach * (1 + 3 * float(lesion["roughness"])) + 4 * edge + 2.0
    world2vox = np.linalg.inv(tpl.affine)
    c_vox = world2vox[:3, :3] @ centre + world2vox[:3, 3]
    half = np.abs(world2vox[:3, :3]) @ np.full(3, reach)
    lo = np.maximum(np.floor(c_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(c_vox + half).astype(int) + 1, tpl.shape)
    if np.any(hi <= lo):
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), np.float32), None
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    ii = np.meshgrid(*[np.arange(a, b, dtype=np.float64) for a, b in zip(lo, hi, strict=True)],
                     indexing="ij")
    world = [tpl.affine[d, 0] * ii[0] + tpl.affine[d, 1] * ii[1] + tpl.affine[d, 2] * ii[2]
             + tpl.affine[d, 3] - centre[d] for d in range(3)]
    rho = np.full(shape, np.inf)
    r_scale = 0.0
    for lb in lobes:
        rot = rotation_matrix(lb["angles_deg"])
        radii = np.asarray(lb["radii_mm"], dtype=float)
        rel = [world[d] - lb["offset_mm"][d] for d in range(3)]
        # coordinates in the lobe's frame: R^T (x - c)
        q = [(rot[0, a] * rel[0] + rot[1, a] * rel[1] + rot[2, a] * rel[2]) / radii[a]
             for a in range(3)]
        rho = np.minimum(rho, np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2))
        r_scale = max(r_scale, float(np.prod(radii)) ** (1 / 3))
    rng = np.random.default_rng(int(lesion["seed"]))
    cell = max(2.0, r_scale / 2.0 / float(np.mean(tpl.spacing)))
    rough = _smooth_noise(rng, shape, cell)
    texture = _smooth_noise(rng, shape, 2.0)
    # signed distance to the boundary, roughly in mm (positive inside), with a rough boundary;
    # nothing beyond 1.5 radii, so the roughness makes no far-away specks
    inside_mm = (1.0 - rho + float(lesion["roughness"]) * np.clip(rough, -2.5, 2.5)) * r_scale
    inside_mm = np.minimum(inside_mm, (1.5 - rho) * r_scale)
    alpha = 1.0 / (1.0 + np.exp(-np.clip(inside_mm / edge, -40, 40)))
    alpha *= tpl.brain[box]
    # keep the main body: drop pieces under a tenth of the largest (with their soft edge)
    pieces, n = ndimage.label(alpha > 0.5)
    if n > 1:
        sizes = np.bincount(pieces.ravel())[1:]
        small = np.isin(pieces, 1 + np.flatnonzero(sizes < 0.1 * sizes.max()))
        if small.any():
            alpha[ndimage.binary_dilation(small, iterations=2)] = 0.0
    return box, alpha, texture


def paint_lesion(t1: np.ndarray, labels: np.ndarray, value: int, lesion: dict[str, Any],
                  tpl: Template, wm_value: float) -> None:
    """Blend one lesion into ``t1`` (template space, in place) and mark its core in ``labels``."""
    box, alpha, texture = lesion_alpha(lesion, tpl)
    if texture is None:
        return
    target = wm_value * (1.0 + float(lesion["intensity"])) * (
        1.0 + float(lesion["texture_sd"]) * np.clip(texture, -2.5, 2.5))
    sub = t1[box]
    sub[...] = (sub * (1.0 - alpha) + target * alpha).astype(np.float32)
    core = (alpha > 0.5) & (labels[box] == 0)
    labels[box][core] = value

