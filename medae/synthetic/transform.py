"""The spatial transform of a subject: a small global affine and a smooth displacement field.

For every voxel of the subject, where to sample the template (linear interpolation of the
image, nearest neighbour of the lesion labels; see :mod:`medae.synthetic.render`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from medae.synthetic.template import Template


def rotation_matrix(angles_deg) -> np.ndarray:
    """3x3 rotation: about x, then y, then z, by the angles in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _spline_matrix(n: int, c: int) -> np.ndarray:
    """(n, c) matrix: cubic-spline interpolation of ``c`` control values spanning ``n`` samples."""
    pos = np.linspace(0.0, c - 1.0, n)
    eye = np.eye(c)
    return np.stack([ndimage.map_coordinates(eye[:, a], pos[None], order=3, mode="nearest")
                     for a in range(c)], axis=1)


def sampling_coords(params: dict[str, Any], tpl: Template) -> np.ndarray:
    """Template voxel coordinates (3, X, Y, Z) sampled by each subject voxel."""
    shape = tpl.shape
    aff = params["transform"]
    centre = np.asarray(aff["centre_mm"], dtype=float)
    # subject world → template world: inverse of (scale, rotate about the centre, translate)
    fwd = rotation_matrix(aff["rotation_deg"]) @ np.diag(aff["scale"])
    inv = np.linalg.inv(fwd)
    vox2world = tpl.affine
    world2vox = np.linalg.inv(tpl.affine)
    # combined linear map subject voxel → template voxel (before the displacement)
    lin = np.eye(4)
    lin[:3, :3] = inv
    lin[:3, 3] = centre - inv @ (centre + np.asarray(aff["translation_mm"], dtype=float))
    m = world2vox @ lin @ vox2world
    disp = params["displacement"]
    ctrl = np.asarray(disp["control_points_mm"], dtype=np.float64)
    mats = [_spline_matrix(n, c) for n, c in zip(shape, ctrl.shape[:3], strict=True)]
    # smooth displacement (X, Y, Z, 3) in world mm, then into template voxel units
    field_mm = np.einsum("ia,abcd->ibcd", mats[0], ctrl)
    field_mm = np.einsum("jb,ibcd->ijcd", mats[1], field_mm)
    field_mm = np.einsum("kc,ijcd->ijkd", mats[2], field_mm)
    field_vox = field_mm @ world2vox[:3, :3].T
    coords = np.empty((3, *shape), dtype=np.float32)
    idx = [np.arange(n, dtype=np.float64) for n in shape]
    for d in range(3):
        c = (m[d, 0] * idx[0][:, None, None] + m[d, 1] * idx[1][None, :, None]
             + m[d, 2] * idx[2][None, None, :] + m[d, 3])
        coords[d] = c + field_vox[..., d]
    return coords

