"""Slice geometry: sorting along the normal, orientation/spacing/gap/tilt checks, affine."""

from __future__ import annotations

import numpy as np

from medae.io.dicom.frames import _Frame
from medae.io.scan import MAX_POSITION_MM, MAX_VOXEL_MM, MIN_VOXEL_MM

# geometry tolerances
_ORIENT_TOL = 1e-3        # direction cosines
_SPACING_REL_TOL = 0.01   # uneven slice spacing, relative ...
_SPACING_ABS_TOL = 0.01   # ... or absolute (mm), whichever is larger
_DRIFT_TOL = 0.05         # in-plane drift of slice positions, mm per slice
_MIN_SLICES = 3


def _geometry(frames: list[_Frame]) -> tuple[list[_Frame], np.ndarray | None, str | None]:
    """Sort frames along the slice normal and build the LPS→RAS affine, or say what is wrong."""
    # content order first, so nothing below depends on file names or listing order
    frames = sorted(frames, key=lambda f: (f.position or (), f.orientation or (),
                                           f.instance or 0, str(f.file), f.index))
    n = len(frames)
    for name, attr in (("ImagePositionPatient", "position"),
                       ("ImageOrientationPatient", "orientation"), ("PixelSpacing", "spacing")):
        if any(getattr(f, attr) is None for f in frames):
            multi = attr == "position" and frames[0].n_file_frames > 1
            return frames, None, f"missing {name}" + (" per frame" if multi else "")
    orients = np.array([f.orientation for f in frames])
    norms = np.linalg.norm(orients.reshape(-1, 2, 3), axis=2)
    if not (np.abs(norms - 1) < 0.1).all():
        return frames, None, "ImageOrientationPatient is not two unit vectors"
    if np.abs(orients - orients[0]).max() > _ORIENT_TOL:
        return frames, None, "mixed orientations in one series"
    spacings = np.array([f.spacing for f in frames])
    if np.abs(spacings - spacings[0]).max() > 1e-3:
        return frames, None, "inconsistent PixelSpacing"
    if not ((spacings >= MIN_VOXEL_MM) & (spacings <= MAX_VOXEL_MM)).all():
        return frames, None, (f"PixelSpacing {spacings[0][0]:.3g}x{spacings[0][1]:.3g} mm is "
                              f"outside {MIN_VOXEL_MM:g} to {MAX_VOXEL_MM:g} mm")
    if np.abs(np.array([f.position for f in frames])).max() > MAX_POSITION_MM:
        return frames, None, (f"ImagePositionPatient more than {MAX_POSITION_MM:g} mm from the "
                              "scanner's centre")
    if len({(f.rows, f.cols) for f in frames}) > 1:
        return frames, None, "inconsistent rows/cols"
    if n < _MIN_SLICES:
        return frames, None, f"only {n} slice{'s' if n != 1 else ''} (need at least {_MIN_SLICES})"
    row, col = np.array(frames[0].orientation[:3]), np.array(frames[0].orientation[3:])
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-2:
        return frames, None, "ImageOrientationPatient axes are not orthogonal"
    normal = np.cross(row, col)
    positions = np.array([f.position for f in frames])
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    frames = [frames[i] for i in order]
    positions, proj = positions[order], proj[order]
    gaps = np.diff(proj)
    step = float(np.median(gaps))
    if step <= 1e-4 or gaps.min() <= 1e-4:
        return frames, None, "duplicate slice positions that cannot be split into volumes"
    if step > MAX_VOXEL_MM:
        return frames, None, f"slices {step:.3g} mm apart (more than {MAX_VOXEL_MM:g} mm)"
    ratio = gaps / step
    tol = max(_SPACING_REL_TOL * step, _SPACING_ABS_TOL)
    bad = np.abs(gaps - step) > tol
    if bad.any():
        whole = np.round(ratio)
        missing = bad & (whole >= 2) & (np.abs(gaps - whole * step) <= max(tol, 0.1 * step))
        if missing.any() and not (bad & ~missing).any():
            count = int((whole[missing] - 1).sum())
            return frames, None, (f"{count} missing slice{'s' if count != 1 else ''} "
                                  f"(gap of {gaps.max():.3g} mm, spacing {step:.3g} mm)")
        return frames, None, (f"uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm)")
    rel = positions - positions[0]
    inplane = rel - np.outer(rel @ normal, normal)
    k = np.arange(n, dtype=float)
    drift = np.linalg.lstsq(k[:, None], inplane, rcond=None)[0][0]
    drift_mm = float(np.linalg.norm(drift))
    residual = float(np.abs(inplane - np.outer(k, drift)).max())
    if drift_mm > _DRIFT_TOL or residual > max(0.5, 0.25 * float(spacings[0].min())):
        return frames, None, (f"gantry tilt or sheared stack (slice positions drift "
                              f"{drift_mm:.3g} mm per slice off the slice normal)")
    row, col = np.array(frames[0].orientation[:3]), np.array(frames[0].orientation[3:])
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    dr, dc = frames[0].spacing   # PixelSpacing = (row spacing, column spacing)
    affine = np.eye(4)
    affine[:3, 0] = row * dc
    affine[:3, 1] = col * dr
    affine[:3, 2] = (positions[-1] - positions[0]) / (n - 1)
    affine[:3, 3] = positions[0]
    affine[:2] *= -1   # LPS -> RAS
    return frames, affine, None
