"""The ``Scan`` value: a 3D volume in physical units, in the closest canonical (RAS+) orientation,
that remembers the grid it came from so every output can be written back on that grid."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

from medae.errors import ScanReadError

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
#: voxel sizes and positions outside these bounds (mm) cannot be a scan
MIN_VOXEL_MM, MAX_VOXEL_MM, MAX_POSITION_MM = 1e-3, 1e3, 1e7


def count_nonfinite(array: np.ndarray) -> int:
    """How many voxels are NaN or infinite.  One pass of float32 addition first: a finite sum
    means every term is finite (NaN and infinity propagate through addition, and an overflow to
    infinity only sends the exact count below), so clean volumes skip the boolean image."""
    if array.dtype.kind != "f":
        return 0
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(array, axis=None)):
            return 0
    return int(array.size - np.count_nonzero(np.isfinite(array)))


def check_affine(path: str | os.PathLike, affine: np.ndarray) -> np.ndarray:
    """Refuse an affine that cannot describe a scan: not finite, singular, voxels smaller than
    1 µm or larger than 1 m, or an origin further than 10 km (one line naming ``path``)."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise ScanReadError(path, "the header's affine is not finite")
    with np.errstate(all="ignore"):
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        det = abs(float(np.linalg.det(affine[:3, :3])))
    if not (zooms >= MIN_VOXEL_MM).all() or not (zooms <= MAX_VOXEL_MM).all():
        raise ScanReadError(path, "voxel size " + "x".join(f"{z:.3g}" for z in zooms)
                            + f" mm is outside {MIN_VOXEL_MM:g} to {MAX_VOXEL_MM:g} mm")
    if det < 1e-6 * float(np.prod(zooms)):
        raise ScanReadError(path, "the header's affine is singular (voxel axes are parallel)")
    if np.abs(affine[:3, 3]).max() > MAX_POSITION_MM:
        raise ScanReadError(path, f"the image origin is more than {MAX_POSITION_MM:g} mm from "
                                  "the scanner's centre")
    return affine


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid as the source stores it: shape and voxel-index → RAS+ mm affine.

    ``header`` is the source's NIfTI header when there is one (its sform/qform codes are kept
    when writing on this grid); DICOM grids have none and are written with scanner codes.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    header: nib.Nifti1Header | None = None

    @property
    def ornt(self) -> np.ndarray:
        """nibabel orientation transform from this grid to the closest RAS+ orientation."""
        return io_orientation(self.affine)

    def buffer(self) -> np.ndarray:
        """An uninitialised float32 array shaped and laid out as this grid (axis 0 fastest, as
        NIfTI and DICOM store voxels), whose strides already hold the flips to canonical
        orientation: filling it in the file's order writes the canonical array in memory order,
        and :meth:`Scan.from_grid` takes it as it is (its canonical view has positive strides)."""
        base = np.empty(self.shape, dtype=np.float32, order="F")
        flips = tuple(axis for axis, sign in enumerate(self.ornt[:, 1]) if sign == -1)
        return np.flip(base, flips) if flips else base


@dataclass(eq=False)
class Scan:
    """A 3D scan ready for processing.

    ``array`` is float32 in physical units (rescale applied), oriented closest to RAS+ (int16
    or uint16 with the same values after :meth:`compact`, which scoring does for CT-size volumes);
    ``affine`` maps its voxel indices to world (RAS+) millimetres.  ``grid`` is the source's own
    grid; :meth:`to_grid` and :func:`medae.io.write_on_grid` put arrays back on it.  ``meta``
    holds acquisition facts only (never patient identifiers).
    """

    array: np.ndarray
    affine: np.ndarray
    grid: Grid
    source: str
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_grid(cls, data: np.ndarray, grid: Grid, *, source: str, kind: str,
                  meta: dict[str, Any] | None = None) -> Scan:
        """Build a scan from voxel data laid out on ``grid`` (reoriented here to canonical)."""
        if data.shape != grid.shape:
            raise ValueError(f"data shape {data.shape} does not match grid shape {grid.shape}")
        check_affine(source, grid.affine)
        ornt = grid.ornt
        # flips and transposes are views: at most one sequential copy, in memory order
        array = np.asarray(apply_orientation(data, ornt))
        if (array.dtype != np.float32 or not array.flags.writeable
                or any(st < 0 for st in array.strides)):
            array = np.array(array, dtype=np.float32, order="K")
        affine = grid.affine @ inv_ornt_aff(ornt, grid.shape)
        return cls(array=array, affine=affine, grid=grid, source=source, kind=kind,
                   meta=dict(meta or {}))

    def compact(self, slab_voxels: int = 1 << 22) -> bool:
        """Hold ``array`` as int16 when every voxel is a whole number in int16's range (CT in
        HU, most MR magnitudes), or as uint16 when they are in 0-65535: half the memory,
        exactly the same values.  For volumes of CT size, where the float32 copy is the largest
        array a scoring job holds; every reader of a scan takes these types as it takes float32
        (values are converted slab by slab where float32 arithmetic is needed).  Checked and
        converted slab by slab in memory order (no full-size temporary); the layout is kept.
        True when the array is held in 16 bits."""
        src = self.array
        if src.dtype in (np.int16, np.uint16):
            return True
        if src.dtype.kind != "f" or src.size == 0:
            return False
        lo, hi = src.min(), src.max()  # NaN fails every test below
        if lo >= -32768 and hi <= 32767:
            dtype = np.int16
        elif lo >= 0 and hi <= 65535:
            dtype = np.uint16
        else:
            return False
        out = np.empty_like(src, dtype=dtype)  # same layout (memory order) as src
        # slabs along the axis with the largest stride: each one contiguous in memory
        axis = int(np.argmax(src.strides))
        plane = max(1, src.size // src.shape[axis])
        step = max(1, slab_voxels // plane)
        for a in range(0, src.shape[axis], step):
            part = src[(slice(None),) * axis + (slice(a, a + step),)]
            dst = out[(slice(None),) * axis + (slice(a, a + step),)]
            np.copyto(dst, part, casting="unsafe")  # truncates fractions: checked next
            if not np.array_equal(dst, part):
                return False
        self.array = out
        return True

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array's three axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def orientation(self) -> str:
        """Axis codes of ``array`` (``"RAS"`` unless the grid is strongly oblique)."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def grid_orientation(self) -> str:
        """Axis codes of the source grid, e.g. ``"LAS"`` or ``"LPS"``."""
        return "".join(nib.aff2axcodes(self.grid.affine))

    def to_grid(self, array: np.ndarray) -> np.ndarray:
        """Lay out an array given in this scan's (canonical) orientation on the source grid."""
        array = np.asarray(array)
        if array.shape[:3] != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match scan shape {self.shape}")
        back = ornt_transform(_RAS, self.grid.ornt)
        return apply_orientation(array, back)

    def describe(self) -> str:
        sx, sy, sz = self.spacing
        return (f"{self.kind} {'x'.join(map(str, self.shape))} "
                f"{sx:.3g}x{sy:.3g}x{sz:.3g} mm {self.grid_orientation}->{self.orientation}")
