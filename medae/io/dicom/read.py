"""Second pass: decode a series into a scan; loading the one series under a folder."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from medae.errors import ScanReadError, SeriesSelectionError
from medae.io.dicom.find import find_dicom_series
from medae.io.dicom.frames import _Frame
from medae.io.dicom.mosaic import _read_mosaic
from medae.io.dicom.pixels import _file_pixels
from medae.io.dicom.series import DicomSeries
from medae.io.dicom.values import _clean
from medae.io.files import walk_files
from medae.io.nifti import MAX_VOXELS
from medae.io.scan import Grid, Scan, count_nonfinite


def read_dicom_series(series: DicomSeries) -> Scan:
    """Decode the pixels of ``series`` (each file once) and build the scan."""
    if series._mosaic:
        data, affine, mosaic_meta = _read_mosaic(series)
        _check_finite(series.where, data)
        meta = {k: v for k, v in mosaic_meta.items() if not k.startswith("_")}
        meta["NumberOfSlices"] = data.shape[2]
        grid = Grid(shape=tuple(int(s) for s in data.shape), affine=affine.copy())
        return Scan.from_grid(data, grid, source=series.source, kind="dicom", meta=meta)
    if series._problem or series._affine is None:
        raise ScanReadError(series.where, series._problem or "unusable geometry")
    frames = series._frames
    n_vox = len(frames) * series.rows * series.cols
    if n_vox > MAX_VOXELS:  # checked before allocating
        raise ScanReadError(series.where, f"{len(frames)} frames of {series.rows}x"
                                          f"{series.cols} ({n_vox:.3g} voxels), more than "
                                          f"the limit of {MAX_VOXELS:.3g}")
    grid = Grid(shape=(series.cols, series.rows, len(frames)), affine=series._affine.copy())
    data = grid.buffer()  # (col, row, frame), the flips to canonical already in its strides
    stack = data.transpose(2, 1, 0)  # the same memory seen as (frame, row, col)
    by_file: dict[Path, list[tuple[int, _Frame]]] = defaultdict(list)
    for k, f in enumerate(frames):
        by_file[f.file].append((k, f))
    _read_planes(by_file, stack)
    _rescale(frames, stack)
    _check_finite(series.where, stack)
    meta = {k: v for k, v in series._meta if not k.startswith("_")}
    return Scan.from_grid(data, grid, source=series.source, kind="dicom", meta=meta)


def _read_planes(by_file: dict[Path, list[tuple[int, _Frame]]], stack: np.ndarray) -> None:
    """Each file's pixels (read once) into its planes of ``stack`` (frame, row, col)."""
    for path, items in by_file.items():
        pixels = _file_pixels(path, items[0][1])
        for k, f in items:
            stack[k] = pixels[f.index]


def _rescale(frames: tuple[_Frame, ...], stack: np.ndarray) -> None:
    """RescaleSlope/RescaleIntercept of each frame, in float32 (as x * slope + intercept)."""
    pairs = {(f.slope, f.intercept) for f in frames}
    if pairs == {(1.0, 0.0)}:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        if len(pairs) == 1:
            slope, intercept = next(iter(pairs))
            stack *= np.float32(slope)
            stack += np.float32(intercept)
        else:
            stack *= np.array([f.slope for f in frames], dtype=np.float32)[:, None, None]
            stack += np.array([f.intercept for f in frames], dtype=np.float32)[:, None, None]


def _check_finite(where: Path, data: np.ndarray) -> None:
    """Infinite voxels (a rescale overflowing 32-bit floats) are refused, as for NIfTI."""
    n_bad = count_nonfinite(data)
    if n_bad:
        raise ScanReadError(where, f"{n_bad} voxels are NaN or infinite after RescaleSlope/"
                                   "RescaleIntercept")


# ------------------------------------------------------------------------------------------------
# folders

def load_dicom_folder(folder: str | os.PathLike, series: str | None = None) -> Scan:
    """Load the one DICOM image series under ``folder`` (or the one picked by key)."""
    folder = Path(folder)
    if not folder.exists():
        raise ScanReadError(folder, "no such file or folder")
    files, notes = ([folder], []) if folder.is_file() else walk_files(folder)
    found, dicom_notes = find_dicom_series(files)
    notes += dicom_notes
    if not found:
        if folder.is_file() and notes:
            reason = notes[0].split(": skipped, ", 1)[-1]
            raise ScanReadError(folder, reason)
        extra = f" ({len(notes)} file{'s' if len(notes) != 1 else ''} skipped)" if notes else ""
        raise ScanReadError(folder, f"no DICOM image series found{extra}")
    listing = "; ".join(f"{s.key} ({s.describe()})" for s in found)
    if series is not None:
        picked = [s for s in found if s.key == series]
        if not picked:
            raise SeriesSelectionError(folder, f"no series with key {_clean(series, 40)!r}; "
                                               f"found: {listing}")
        return read_dicom_series(picked[0])
    if len(found) > 1:
        raise SeriesSelectionError(
            folder, f"{len(found)} DICOM series found: {listing}; "
                    "pick one with medae.load_scan(path, series=<key>); "
                    "`medae info` lists them all")
    return read_dicom_series(found[0])
