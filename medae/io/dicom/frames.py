"""Unified frame records from classic and enhanced multi-frame files, and safe metadata."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medae.errors import ScanReadError
from medae.io.dicom.headers import _PixelInfo, _raw_pixels
from medae.io.dicom.values import (
    _clean,
    _floats,
    _get,
    _int,
    _item,
    _modality,
    _num,
    _uid_name,
)
from medae.io.nifti import MAX_VOXELS


@dataclass(frozen=True, slots=True)
class _Frame:
    """One 2D frame: where it lies and how to scale it, plus what groups it."""

    file: Path
    index: int                      # frame index within its file (0 for single-frame files)
    n_file_frames: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    spacing: tuple[float, float] | None
    rows: int
    cols: int
    slope: float
    intercept: float
    strong: tuple[tuple[str, str], ...]   # (name, value) grouping keys that split volumes
    acquisition: str
    instance: int | None
    pixels: tuple[int, int, str, int] | None   # raw uncompressed data: (offset, nbytes, dtype,
                                               # unused high bits)


def _strong_classic(ds: Any) -> tuple[tuple[str, str], ...]:
    keys = []
    image_type = _get(ds, "ImageType")
    if image_type:
        keys.append(("type", "\\".join(str(v) for v in image_type)))
    echo = _get(ds, "EchoNumbers")
    if echo not in (None, ""):
        keys.append(("echo", str(_int(echo))))
    elif _num(_get(ds, "EchoTime")) is not None:
        keys.append(("echo", f"{_num(_get(ds, 'EchoTime')):g}"))
    bval = _num(_get(ds, "DiffusionBValue"))
    if bval is not None:
        keys.append(("bval", f"{bval:g}"))
    temporal = _int(_get(ds, "TemporalPositionIdentifier"))
    if temporal is not None:
        keys.append(("time", str(temporal)))
    return tuple(keys)


def _frame_type(group: Any) -> Any:
    if group is None:
        return None
    for elem in group:
        if elem.keyword.endswith("FrameTypeSequence") and elem.VR == "SQ" and elem.value:
            return _get(elem.value[0], "FrameType")
    return None


def _fg(per: Any, shared: Any, seq: str) -> Any:
    item = _item(per, seq) if per is not None else None
    return item if item is not None else (_item(shared, seq) if shared is not None else None)


def _check_size(path: Path, ds: Any, pixel: _PixelInfo, n_frames: int, rows: int,
                cols: int) -> None:
    """Refuse, before anything is allocated, frame counts and sizes that the file cannot hold:
    uncompressed pixel data must hold every declared frame; an encapsulated frame takes at
    least one 8-byte item, so a file holds at most size/8 of them."""
    if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
        raise ScanReadError(path, f"Rows/Columns {rows}x{cols} outside 1..65535")
    n_vox = n_frames * rows * cols
    if n_vox > MAX_VOXELS:
        raise ScanReadError(path, f"header declares {n_frames} frames of {rows}x{cols} "
                                  f"({n_vox:.3g} voxels), more than the limit of {MAX_VOXELS:.3g}")
    if pixel is None or pixel[1] < 0:
        return
    bits = _int(_get(ds, "BitsAllocated")) or 8
    samples = _int(_get(ds, "SamplesPerPixel")) or 1
    if pixel[2] != 0xFFFFFFFF:
        needed = -(-n_vox * samples * bits // 8)
        if pixel[2] < needed:
            raise ScanReadError(path, f"pixel data holds {pixel[2]} bytes; {n_frames} frame(s) "
                                      f"of {rows}x{cols} at {bits} bits need {needed}")
    elif n_frames * 8 > max(path.stat().st_size - pixel[1], 0):
        raise ScanReadError(path, f"header declares {n_frames} compressed frames; the file is "
                                  f"too small to hold them")


def _frames_of(path: Path, ds: Any, pixel: _PixelInfo) -> list[_Frame]:
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    n_frames = max(1, _int(_get(ds, "NumberOfFrames")) or 1)
    _check_size(path, ds, pixel, n_frames, rows, cols)
    pixels = _raw_pixels(ds, pixel, n_frames, rows, cols)
    acquisition = str(_int(_get(ds, "AcquisitionNumber")))
    instance = _int(_get(ds, "InstanceNumber"))
    slope = _num(_get(ds, "RescaleSlope"))
    slope = 1.0 if slope is None else slope
    intercept = _num(_get(ds, "RescaleIntercept"))
    intercept = 0.0 if intercept is None else intercept
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    if not per_frame:
        position = _floats(_get(ds, "ImagePositionPatient"), 3)
        frame = _Frame(
            file=path, index=0, n_file_frames=n_frames, position=position,
            orientation=_floats(_get(ds, "ImageOrientationPatient"), 6),
            spacing=_floats(_get(ds, "PixelSpacing"), 2), rows=rows, cols=cols,
            slope=slope, intercept=intercept,
            strong=_strong_classic(ds), acquisition=acquisition, instance=instance,
            pixels=pixels)
        if n_frames == 1:
            return [frame]
        # multi-frame without per-frame geometry: frames have no known positions
        return [dataclasses.replace(frame, index=i, position=None) for i in range(n_frames)]
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames = []
    for i in range(n_frames):
        per = per_frame[i] if i < len(per_frame) else None
        pos = _fg(per, shared, "PlanePositionSequence")
        ori = _fg(per, shared, "PlaneOrientationSequence")
        mea = _fg(per, shared, "PixelMeasuresSequence")
        pvt = _fg(per, shared, "PixelValueTransformationSequence")
        content = _item(per, "FrameContentSequence") if per is not None else None
        echo = _fg(per, shared, "MREchoSequence")
        diffusion = _fg(per, shared, "MRDiffusionSequence")
        ftype = _frame_type(per) or _frame_type(shared) or _get(ds, "ImageType")
        strong = []
        if ftype:
            strong.append(("type", "\\".join(str(v) for v in ftype)))
        te = _num(_get(echo, "EffectiveEchoTime")) if echo is not None else None
        if te is not None:
            strong.append(("echo", f"{te:g}"))
        b = _num(_get(diffusion, "DiffusionBValue")) if diffusion is not None else None
        if b is not None:
            strong.append(("bval", f"{b:g}"))
        if content is not None:
            t = _int(_get(content, "TemporalPositionIndex"))
            if t is not None:
                strong.append(("time", str(t)))
            stack = _get(content, "StackID")
            if stack not in (None, ""):
                strong.append(("stack", _clean(stack, 16)))
        f_slope = _num(_get(pvt, "RescaleSlope")) if pvt is not None else None
        f_inter = _num(_get(pvt, "RescaleIntercept")) if pvt is not None else None
        f_slope = slope if f_slope is None else f_slope
        f_inter = intercept if f_inter is None else f_inter
        frames.append(_Frame(
            file=path, index=i, n_file_frames=n_frames,
            position=_floats(_get(pos, "ImagePositionPatient"), 3) if pos is not None else None,
            orientation=(_floats(_get(ori, "ImageOrientationPatient"), 6)
                         if ori is not None else None),
            spacing=_floats(_get(mea, "PixelSpacing"), 2) if mea is not None else None,
            rows=rows, cols=cols, slope=f_slope, intercept=f_inter, strong=tuple(strong),
            acquisition=acquisition, instance=instance, pixels=pixels))
    return frames


def _safe_meta(ds: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"Modality": _modality(ds)}
    for name in ("MagneticFieldStrength", "EchoTime", "RepetitionTime", "InversionTime",
                 "FlipAngle", "SliceThickness", "KVP"):
        value = _num(_get(ds, name))
        if value is not None:
            meta[name] = value
    number = _int(_get(ds, "SeriesNumber"))
    if number is not None:
        meta["SeriesNumber"] = number
    with contextlib.suppress(Exception):
        meta["TransferSyntax"] = _uid_name(ds.file_meta.TransferSyntaxUID, "unknown")
    return meta
