"""DICOM loading: classic single-frame series, enhanced multi-frame files and Siemens mosaics.

Two passes.  :func:`find_dicom_series` reads headers only (pixel data is deferred, never read),
turns every frame of every file into one frame record (position, orientation, spacing, rescale,
grouping keys), groups records into series and splits multi-volume series into volumes.  Geometry
(slice order along the normal, gaps, spacing, tilt) is checked there too, so a listing already says
which series are unusable.  :func:`read_dicom_series` then decodes each file's pixels once
(uncompressed little/big endian data straight from the file, everything else through pydicom and
its pylibjpeg plugins) and builds a :class:`~medae.io.scan.Scan` on the DICOM grid.

Nothing that identifies a patient leaves this module: series keys are hashes, labels and
descriptions are built from sanitized coded values and numbers only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from medae.errors import ScanReadError, SeriesSelectionError
from medae.io.scan import Grid, Scan

#: suffixes that are never DICOM (no preamble-less parse is attempted for them)
_NOT_DICOM_SUFFIXES = (
    ".nii", ".nii.gz", ".gz", ".json", ".txt", ".md", ".csv", ".tsv", ".yaml", ".yml", ".png",
    ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".mha", ".mhd", ".nrrd", ".npy", ".npz",
    ".h5", ".hdf5", ".py", ".bval", ".bvec", ".pdf", ".xml", ".html", ".zip", ".tar", ".log",
    ".sh", ".safetensors", ".pt", ".pth",
)
_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
        b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
        b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV"}

_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
#: SOP class UID prefixes of objects that carry no scan (reports, states, plans, waveforms...)
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",   # structured reports
    "1.2.840.10008.5.1.4.1.1.11.",   # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",    # waveforms
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects (plan, structure set, dose grid, ...)
    "1.2.840.10008.5.1.4.1.1.66",    # raw data, registration, segmentation-free objects
    "1.2.840.10008.5.1.4.1.1.4.2",   # MR spectroscopy
    "1.2.840.10008.5.1.4.1.1.78.",   # ophthalmic measurements
)
_FRAME_TYPE_LABELS = {"M": "mag", "MAGNITUDE": "mag", "P": "phase", "PHASE": "phase",
                      "R": "real", "REAL": "real", "I": "imag", "IMAGINARY": "imag",
                      "FIELD_MAP": "fieldmap", "B0_MAP": "fieldmap"}

# geometry tolerances
_ORIENT_TOL = 1e-3        # direction cosines
_SPACING_REL_TOL = 0.01   # uneven slice spacing, relative ...
_SPACING_ABS_TOL = 0.01   # ... or absolute (mm), whichever is larger
_DRIFT_TOL = 0.05         # in-plane drift of slice positions, mm per slice
_MIN_SLICES = 3


# ------------------------------------------------------------------------------------------------
# records

@dataclass(frozen=True)
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
    pixels: tuple[int, int, str] | None   # (offset, nbytes, dtype) for raw uncompressed data


@dataclass(frozen=True)
class DicomSeries:
    """One loadable volume: a series, or one volume of a multi-volume series."""

    key: str
    folder: Path
    files: tuple[Path, ...]
    series_number: int | None
    modality: str
    n_slices: int
    volume: str | None
    rows: int = 0
    cols: int = 0
    _frames: tuple[_Frame, ...] = field(default=(), repr=False, compare=False)
    _affine: np.ndarray | None = field(default=None, repr=False, compare=False)
    _problem: str | None = field(default=None, repr=False, compare=False)
    _mosaic: bool = field(default=False, repr=False, compare=False)
    _meta: tuple[tuple[str, Any], ...] = field(default=(), repr=False, compare=False)

    def describe(self) -> str:
        number = "?" if self.series_number is None else str(self.series_number)
        text = f"{self.modality} series {number}"
        if self.volume:
            text += f" {self.volume}"
        text += f", {self.n_slices} slices of {self.cols}x{self.rows}"
        if self._mosaic:
            text += " (mosaic)"
        if self._problem:
            text += f", unusable: {self._problem}"
        return text

    @property
    def where(self) -> Path:
        """The path named in messages: the single file, or the folder of several."""
        return self.files[0] if len(self.files) == 1 else self.folder

    @property
    def source(self) -> str:
        base = str(self.where)
        return f"{base}#{self.volume}" if self.volume else base


# ------------------------------------------------------------------------------------------------
# small helpers

def _clean(text: Any, limit: int = 32) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", str(text or ""))[:limit]


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "", text.lower())[:32]


def _num(value: Any) -> float | None:
    try:
        if value is None or value == "":
            return None
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0]
        out = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return out if np.isfinite(out) else None


def _int(value: Any) -> int | None:
    out = _num(value)
    return None if out is None else round(out)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hash(*parts: Any) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode("utf-8", "replace")).hexdigest()[:10]


def _sort_value(text: str) -> tuple:
    num = _num(text)
    return (0, num, "") if num is not None else (1, 0.0, text)


def _get(ds: Any, name: str, default: Any = None) -> Any:
    try:
        return ds.get(name, default)
    except Exception:  # a malformed element must not sink the whole header
        return default


def _item(seq_owner: Any, name: str) -> Any:
    seq = _get(seq_owner, name)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


# ------------------------------------------------------------------------------------------------
# file detection

def is_dicom_file(path: str | os.PathLike) -> bool:
    """Cheap check: ``DICM`` at offset 128, or (for names that are not known image formats) a
    preamble-less stream that starts like a DICOM data set (group 0002/0008 element)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if path.name.lower().endswith(_NOT_DICOM_SUFFIXES) or len(head) < 8:
        return False
    for order in "<>":
        group, elem = struct.unpack(order + "HH", head[:4])
        if group not in (0x0002, 0x0008) or elem > 0x0100:
            continue
        if head[4:6] in _VRS:
            return True
        if struct.unpack(order + "I", head[4:8])[0] < 0x1000:
            return True
    return False


# ------------------------------------------------------------------------------------------------
# header pass

#: the only elements the header pass parses (everything else is skipped unread)
_HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "Manufacturer",
    "SeriesNumber", "AcquisitionNumber", "InstanceNumber", "ImageType", "Rows", "Columns",
    "NumberOfFrames", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "RescaleSlope", "RescaleIntercept", "EchoNumbers", "EchoTime", "RepetitionTime",
    "InversionTime", "FlipAngle", "SliceThickness", "KVP", "MagneticFieldStrength",
    "DiffusionBValue", "TemporalPositionIdentifier", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "SamplesPerPixel", "DirectoryRecordSequence",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    (0x0019, 0x0010), (0x0019, 0x100A), (0x0029, 0x0010), (0x0029, 0x1010),
]
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}

#: pixel data element as found in the file: (tag, value offset, value length; 0xFFFFFFFF when
#: encapsulated) or None when the file has none
_PixelInfo = tuple[int, int, int] | None


def _read_header(path: Path) -> tuple[Any, _PixelInfo]:
    """Header elements the loader uses (stopping before the pixel data), and where the pixel
    data element lies, peeked from the bytes pydicom stopped at."""
    with open(path, "rb") as fp:
        has_preamble = fp.read(132)[128:132] == b"DICM"
        fp.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_preamble,
                                 specific_tags=_HEADER_TAGS)
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if tsyntax is not None and tsyntax.is_deflated:
            return _read_header_deferred(path, has_preamble)
        little, implicit = True, False
        if tsyntax is not None and tsyntax.is_transfer_syntax:
            little, implicit = tsyntax.is_little_endian, tsyntax.is_implicit_VR
        elif ds.original_encoding[0] is not None:
            implicit, little = ds.original_encoding
        tell = fp.tell()
        head = fp.read(12)
    if len(head) < 8:
        return ds, None
    order = "<" if little else ">"
    group, elem = struct.unpack(order + "HH", head[:4])
    if (group, elem) not in _PIXEL_TAGS:
        return ds, None
    tag = (group << 16) | elem
    if implicit:
        return ds, (tag, tell + 8, struct.unpack(order + "I", head[4:8])[0])
    if head[4:6] in _LONG_VRS and len(head) == 12:
        return ds, (tag, tell + 12, struct.unpack(order + "I", head[8:12])[0])
    return ds, (tag, tell + 8, struct.unpack(order + "H", head[6:8])[0])


def _read_header_deferred(path: Path, has_preamble: bool) -> tuple[Any, _PixelInfo]:
    """Deflated files: parse everything, large values deferred (pixel data never read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=2048, force=not has_preamble)
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        if tag in ds:
            return ds, (tag, -1, -1)   # offsets inside a deflated stream are of no use
    return ds, None


def _skip_reason(path: Path, ds: Any, pixel: _PixelInfo) -> str | None:
    sop = str(_get(ds, "SOPClassUID", "") or "")
    if not sop:
        meta = getattr(ds, "file_meta", None)
        sop = str(_get(meta, "MediaStorageSOPClassUID", "") or "") if meta is not None else ""
    if sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds or path.name.upper() == "DICOMDIR":
        return "DICOMDIR (directory index), not an image"
    if sop.startswith(_NON_IMAGE_SOP_PREFIXES):
        try:
            name = _clean(pydicom.uid.UID(sop).name, 64) or "non-image object"
        except Exception:
            name = "non-image object"
        return f"not an image ({name})"
    if pixel is None:
        return "no pixel data"
    if _int(_get(ds, "Rows")) is None or _int(_get(ds, "Columns")) is None:
        return "no Rows/Columns"
    return None


def _raw_pixels(ds: Any, pixel: _PixelInfo, n_frames: int, rows: int,
                cols: int) -> tuple[int, int, str] | None:
    """File offset, size and dtype of uncompressed, directly readable pixel data (else None)."""
    try:
        tsyntax = ds.file_meta.TransferSyntaxUID
        if pixel is None or pixel[0] != 0x7FE00010 or pixel[1] < 0:
            return None
        if not tsyntax.is_transfer_syntax or tsyntax.is_compressed or tsyntax.is_deflated:
            return None
        bits, stored = _int(_get(ds, "BitsAllocated")), _int(_get(ds, "BitsStored"))
        signed = _int(_get(ds, "PixelRepresentation")) == 1
        if _int(_get(ds, "SamplesPerPixel", 1)) != 1 or bits not in (8, 16, 32):
            return None
        if stored != bits:
            return None  # masking / sign extension of packed values: let pydicom do it
        nbytes = n_frames * rows * cols * bits // 8
        if pixel[2] != nbytes:
            return None
        order = "<" if tsyntax.is_little_endian else ">"
        return pixel[1], nbytes, f"{order}{'i' if signed else 'u'}{bits // 8}"
    except Exception:
        return None


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


def _frames_of(path: Path, ds: Any, pixel: _PixelInfo) -> list[_Frame]:
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    n_frames = max(1, _int(_get(ds, "NumberOfFrames")) or 1)
    pixels = _raw_pixels(ds, pixel, n_frames, rows, cols)
    acquisition = str(_int(_get(ds, "AcquisitionNumber")))
    instance = _int(_get(ds, "InstanceNumber"))
    slope = _num(_get(ds, "RescaleSlope"))
    intercept = _num(_get(ds, "RescaleIntercept"))
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    if not per_frame:
        position = _floats(_get(ds, "ImagePositionPatient"), 3)
        frame = _Frame(
            file=path, index=0, n_file_frames=n_frames, position=position,
            orientation=_floats(_get(ds, "ImageOrientationPatient"), 6),
            spacing=_floats(_get(ds, "PixelSpacing"), 2), rows=rows, cols=cols,
            slope=1.0 if slope is None else slope,
            intercept=0.0 if intercept is None else intercept,
            strong=_strong_classic(ds), acquisition=acquisition, instance=instance,
            pixels=pixels)
        if n_frames == 1:
            return [frame]
        # multi-frame without per-frame geometry: frames have no known positions
        return [_Frame(**{**frame.__dict__, "index": i, "position": None})
                for i in range(n_frames)]
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
            rows=rows, cols=cols, slope=1.0 if f_slope is None else f_slope,
            intercept=0.0 if f_inter is None else f_inter, strong=tuple(strong),
            acquisition=acquisition, instance=instance, pixels=pixels))
    return frames


def _is_mosaic(ds: Any) -> bool:
    image_type = [str(v).upper() for v in (_get(ds, "ImageType") or [])]
    return "MOSAIC" in image_type and (0x0029, 0x1010) in ds


def _safe_meta(ds: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    modality = _clean(_get(ds, "Modality"), 16)
    if modality:
        meta["Modality"] = modality
    manufacturer = re.sub(r"[^A-Za-z0-9 ._-]", "", str(_get(ds, "Manufacturer") or "")).strip()
    if manufacturer:
        meta["Manufacturer"] = manufacturer[:40]
    for name in ("MagneticFieldStrength", "EchoTime", "RepetitionTime", "InversionTime",
                 "FlipAngle", "SliceThickness", "KVP"):
        value = _num(_get(ds, name))
        if value is not None:
            meta[name] = value
    number = _int(_get(ds, "SeriesNumber"))
    if number is not None:
        meta["SeriesNumber"] = number
    with contextlib.suppress(Exception):
        meta["TransferSyntax"] = _clean(ds.file_meta.TransferSyntaxUID.name, 80) or "unknown"
    return meta


# ------------------------------------------------------------------------------------------------
# grouping and geometry

def _split_duplicates(frames: list[_Frame]) -> list[list[_Frame]] | None:
    """Split frames whose positions repeat into volumes (None: cannot be resolved)."""
    def pos_key(f: _Frame) -> tuple:
        return tuple(np.round(np.asarray(f.position), 2)) if f.position else ("none",)

    if any(f.position is None for f in frames):
        return [frames]   # geometry refuses it ("missing ImagePositionPatient")
    counts = Counter(pos_key(f) for f in frames)
    if max(counts.values()) == 1:
        return [frames]
    for attr in ("acquisition", "file"):
        parts: dict[Any, list[_Frame]] = defaultdict(list)
        for f in frames:
            parts[getattr(f, attr)].append(f)
        if len(parts) > 1 and all(
                len(p) > 1 and max(Counter(pos_key(f) for f in p).values()) == 1
                for p in parts.values()):
            order = sorted(parts, key=lambda k: (_sort_value(str(k)), str(k)))
            return [parts[k] for k in order]
    if len(set(counts.values())) == 1:   # every position holds the same number of frames
        by_pos: dict[tuple, list[_Frame]] = defaultdict(list)
        for f in frames:
            by_pos[pos_key(f)].append(f)
        n = next(iter(counts.values()))
        vols: list[list[_Frame]] = [[] for _ in range(n)]
        for group in by_pos.values():
            group.sort(key=lambda f: (f.instance if f.instance is not None else 0,
                                      str(f.file), f.index))
            for r, f in enumerate(group):
                vols[r].append(f)
        return vols
    return None


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
    if np.abs(orients - orients[0]).max() > _ORIENT_TOL:
        return frames, None, "mixed orientations in one series"
    spacings = np.array([f.spacing for f in frames])
    if np.abs(spacings - spacings[0]).max() > 1e-3:
        return frames, None, "inconsistent PixelSpacing"
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


def _volume_labels(strong_keys: list[tuple]) -> list[str]:
    """Readable labels for volumes split by strong keys: frame type, then echo, then b-value,
    each added only while the labels so far do not tell the volumes apart; else ``vol<n>``."""
    dicts = [dict(k) for k in strong_keys]
    types = [str(d.get("type", "")).split("\\") for d in dicts]
    width = max(len(v) for v in types)
    differing = [j for j in range(width) if len({v[j] if j < len(v) else "" for v in types}) > 1]
    echoes = sorted({d.get("echo", "") for d in dicts}, key=_sort_value)
    components = [
        ["_".join(_FRAME_TYPE_LABELS.get(v[j].upper(), _label(v[j]))
                  for j in differing if j < len(v)) for v in types],
        [f"echo{echoes.index(d.get('echo', '')) + 1}" for d in dicts],
        [f"b{_label(d.get('bval', 'none'))}" for d in dicts],
    ]
    labels = [""] * len(dicts)
    for values in components:
        if len(set(values)) == 1:
            continue
        labels = [_label(f"{a}_{b}".strip("_")) for a, b in zip(labels, values, strict=True)]
        if len(set(labels)) == len(labels):
            return labels
    return [_label(f"{a}_vol{i + 1}".strip("_")) for i, a in enumerate(labels)]


def _common_folder(files: list[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(f.parent) for f in files]))
    except ValueError:
        return files[0].parent


def _series_facts(ds: Any) -> tuple[dict[str, Any], int | None, str]:
    return (_safe_meta(ds), _int(_get(ds, "SeriesNumber")),
            _clean(_get(ds, "Modality"), 16) or "OT")


def find_dicom_series(files) -> tuple[list[DicomSeries], list[str]]:
    """Read headers of ``files`` and group their frames into loadable volumes.

    Returns the series (one per volume) and one note per skipped file.
    """
    notes: list[str] = []
    frames_by_group: dict[tuple, list[_Frame]] = defaultdict(list)
    info: dict[tuple, tuple[dict[str, Any], int | None, str]] = {}
    mosaics: list[DicomSeries] = []
    seen_instances: dict[tuple[str, int], Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # pydicom warns about every odd value it meets
        for path in sorted(Path(p) for p in files):
            if path.name.upper() == "DICOMDIR":
                notes.append(f"{path}: skipped, DICOMDIR (directory index), not an image")
                continue
            if not is_dicom_file(path):
                notes.append(f"{path}: skipped, not a DICOM file")
                continue
            try:
                ds, pixel = _read_header(path)
            except Exception as exc:  # pydicom raises many types for broken headers
                notes.append(f"{path}: skipped, unreadable DICOM header ({_short(exc, 80)})")
                continue
            reason = _skip_reason(path, ds, pixel)
            if reason:
                notes.append(f"{path}: skipped, {reason}")
                continue
            try:
                uid = str(_get(ds, "SeriesInstanceUID") or f"nouid:{path}")
                if _is_mosaic(ds):
                    mosaics.append(_mosaic_series(path, ds, uid, *_series_facts(ds)))
                    continue
                frames = _frames_of(path, ds, pixel)
                sop = str(_get(ds, "SOPInstanceUID") or "")
                f0 = frames[0]
                spacing = tuple(np.round(f0.spacing, 3)) if f0.spacing else None
                gkey = (uid, f0.rows, f0.cols, spacing)
                if gkey not in info:   # facts read once per group, not once per file
                    info[gkey] = _series_facts(ds)
            except Exception as exc:
                notes.append(f"{path}: skipped, unusable DICOM header ({_short(exc, 80)})")
                continue
            if sop:
                first = seen_instances.setdefault((sop, len(frames)), path)
                if first != path:
                    notes.append(f"{path}: skipped, duplicate of {first} (same SOP instance)")
                    continue
            frames_by_group[gkey].extend(frames)

    series: list[DicomSeries] = []
    for gkey, frames in frames_by_group.items():
        meta, number, modality = info[gkey]
        series.extend(_volumes(gkey, frames, meta, number, modality))
    series.extend(_label_mosaics(mosaics))
    series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30,
                               str(s.folder), s.volume or "", s.key))
    return series, notes


def _volumes(gkey: tuple, frames: list[_Frame], meta: dict[str, Any], number: int | None,
             modality: str) -> list[DicomSeries]:
    uid, rows, cols, spacing = gkey
    by_strong: dict[tuple, list[_Frame]] = defaultdict(list)
    for f in frames:
        by_strong[f.strong].append(f)
    strong_keys = sorted(by_strong, key=lambda k: [(n, _sort_value(v)) for n, v in k])
    strong_labels = _volume_labels(strong_keys) if len(strong_keys) > 1 else [""]
    volumes: list[tuple[str, str, list[_Frame], str | None]] = []
    for skey, slabel in zip(strong_keys, strong_labels, strict=True):
        group = by_strong[skey]
        parts = _split_duplicates(group)
        if parts is None:
            volumes.append((repr(skey), slabel, group,
                            "duplicate slice positions that cannot be split into volumes"))
            continue
        for r, part in enumerate(parts):
            label = slabel if len(parts) == 1 else _label(f"{slabel}_vol{r + 1}".lstrip("_"))
            volumes.append((f"{skey!r}#{r}", label, part, None))
    out = []
    for vkey, label, part, problem in volumes:
        ordered, affine, geo_problem = _geometry(part)
        problem = problem or geo_problem
        orient = (tuple(np.round(ordered[0].orientation, 3))
                  if ordered[0].orientation else None)
        files = tuple(sorted({f.file for f in ordered}))
        slopes = {(f.slope, f.intercept) for f in ordered}
        vmeta = dict(meta)
        vmeta["NumberOfSlices"] = len(ordered)
        if len(slopes) == 1:
            vmeta["RescaleSlope"], vmeta["RescaleIntercept"] = next(iter(slopes))
        else:
            vmeta["Rescale"] = "per-frame"
        if label:
            vmeta["Volume"] = label
        out.append(DicomSeries(
            key=_hash(uid, rows, cols, spacing, orient, vkey), folder=_common_folder(list(files)),
            files=files, series_number=number, modality=modality, n_slices=len(ordered),
            volume=label or None, rows=rows, cols=cols, _frames=tuple(ordered), _affine=affine,
            _problem=problem, _meta=tuple(vmeta.items())))
    return out


# ------------------------------------------------------------------------------------------------
# Siemens mosaic

def _mosaic_series(path: Path, ds: Any, uid: str, meta: dict[str, Any], number: int | None,
                   modality: str) -> DicomSeries:
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    n_images = _int(_get(ds, (0x0019, 0x100A)).value if (0x0019, 0x100A) in ds else None) or 0
    tile = int(np.ceil(np.sqrt(n_images))) if n_images else 0
    sub_rows, sub_cols = (rows // tile, cols // tile) if tile else (rows, cols)
    meta = {**meta, "NumberOfSlices": n_images, "Mosaic": True}
    order = (_int(_get(ds, "AcquisitionNumber")), _int(_get(ds, "InstanceNumber")))
    return DicomSeries(
        key=_hash(uid, rows, cols, "mosaic", order, path.name), folder=path.parent,
        files=(path,), series_number=number, modality=modality, n_slices=n_images,
        volume=None, rows=sub_rows, cols=sub_cols, _mosaic=True,
        _meta=(*meta.items(), ("_order", order)))


def _label_mosaics(mosaics: list[DicomSeries]) -> list[DicomSeries]:
    """Several mosaics of one series (an fMRI run) are volumes vol1..volN in acquisition order."""
    by_folder: dict[tuple, list[DicomSeries]] = defaultdict(list)
    for s in mosaics:
        by_folder[(s.folder, s.series_number)].append(s)
    out = []
    for group in by_folder.values():
        if len(group) == 1:
            out.extend(group)
            continue
        group.sort(key=lambda s: (tuple(-1 if v is None else v for v in dict(s._meta)["_order"]),
                                  str(s.files[0])))
        for i, s in enumerate(group):
            out.append(DicomSeries(**{**s.__dict__, "volume": f"vol{i + 1}",
                                      "_meta": (*s._meta, ("Volume", f"vol{i + 1}"))}))
    return out


def _unmosaic(pixels: np.ndarray, n_images: int) -> np.ndarray:
    """Mosaic slab (rows, cols) → (sub_rows, sub_cols, n) exactly as nibabel's MosaicWrapper."""
    tile = int(np.ceil(np.sqrt(n_images)))
    rows, cols = pixels.shape
    v4 = pixels.reshape(tile, rows // tile, tile, cols // tile).transpose(1, 3, 0, 2)
    return v4.reshape(rows // tile, cols // tile, tile * tile)[..., :n_images]


def _read_mosaic(series: DicomSeries) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    path = series.files[0]
    ds = _read_full(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nibabel.nicom.dicomwrappers import wrapper_from_data

            wrapper = wrapper_from_data(ds)
        n_images = int(wrapper.n_mosaic)
        lps = np.asarray(wrapper.affine, dtype=float)
    except Exception as exc:
        raise ScanReadError(path, f"cannot read Siemens mosaic geometry ({_short(exc)})") from exc
    pixels = _decode(path, ds)
    if pixels.ndim != 2 or pixels.shape[0] % int(np.ceil(np.sqrt(n_images))) \
            or pixels.shape[1] % int(np.ceil(np.sqrt(n_images))):
        raise ScanReadError(path, "inconsistent rows/cols for a mosaic")
    if n_images < _MIN_SLICES:
        raise ScanReadError(path, f"only {n_images} slices (need at least {_MIN_SLICES})")
    slope = _num(_get(ds, "RescaleSlope"))
    intercept = _num(_get(ds, "RescaleIntercept"))
    series_meta = dict(series._meta)
    series_meta["RescaleSlope"] = 1.0 if slope is None else slope
    series_meta["RescaleIntercept"] = 0.0 if intercept is None else intercept
    data = _unmosaic(pixels, n_images).astype(np.float32)   # (row, col, slice)
    if slope not in (None, 1.0) or intercept not in (None, 0.0):
        data = data * np.float32(1.0 if slope is None else slope) + np.float32(intercept or 0.0)
    data = data.transpose(1, 0, 2)                          # (col, row, slice)
    affine = lps[:, [1, 0, 2, 3]]
    affine[:2] *= -1
    return np.ascontiguousarray(data), affine, series_meta


# ------------------------------------------------------------------------------------------------
# pixel pass

def _read_full(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            has_preamble = f.read(132)[128:132] == b"DICM"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, force=not has_preamble)
    except Exception as exc:
        raise ScanReadError(path, f"cannot read DICOM file ({_short(exc)})") from exc


def _decode(path: Path, ds: Any) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except Exception as exc:
        try:
            syntax = _clean(ds.file_meta.TransferSyntaxUID.name, 60)
        except Exception:
            syntax = "unknown transfer syntax"
        raise ScanReadError(path, f"cannot decode pixel data, {syntax} ({_short(exc)})") from exc


def _file_pixels(path: Path, first: _Frame) -> np.ndarray:
    """All frames of one file as (frames, rows, cols)."""
    if first.pixels is not None:
        offset, nbytes, dtype = first.pixels
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                raw = f.read(nbytes)
        except OSError as exc:
            raise ScanReadError(path, f"cannot read: {exc.strerror or exc}") from exc
        if len(raw) != nbytes:
            raise ScanReadError(path, f"truncated pixel data ({len(raw)} of {nbytes} bytes)")
        return np.frombuffer(raw, dtype=dtype).reshape(first.n_file_frames, first.rows,
                                                       first.cols)
    ds = _read_full(path)
    pixels = _decode(path, ds)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise ScanReadError(path, "colour or multi-sample images are not supported")
    if pixels.shape != (first.n_file_frames, first.rows, first.cols):
        raise ScanReadError(path, f"inconsistent rows/cols: pixel data is {pixels.shape}, "
                                  f"header says {first.n_file_frames}x{first.rows}x{first.cols}")
    return pixels


def read_dicom_series(series: DicomSeries) -> Scan:
    """Decode the pixels of ``series`` (each file once) and build the scan."""
    meta = {k: v for k, v in series._meta if not k.startswith("_")}
    if series._mosaic:
        data, affine, mosaic_meta = _read_mosaic(series)
        meta = {k: v for k, v in mosaic_meta.items() if not k.startswith("_")}
        meta["NumberOfSlices"] = data.shape[2]
    else:
        if series._problem or series._affine is None:
            raise ScanReadError(series.where, series._problem or "unusable geometry")
        frames = series._frames
        stack = np.empty((len(frames), series.rows, series.cols), dtype=np.float32)
        by_file: dict[Path, list[tuple[int, _Frame]]] = defaultdict(list)
        for k, f in enumerate(frames):
            by_file[f.file].append((k, f))
        for path, items in by_file.items():
            pixels = _file_pixels(path, items[0][1])
            for k, f in items:
                plane = stack[k]
                plane[...] = pixels[f.index]
                if f.slope != 1.0 or f.intercept != 0.0:
                    plane *= np.float32(f.slope)
                    plane += np.float32(f.intercept)
        data = stack.transpose(2, 1, 0)   # (frame, row, col) -> (col, row, frame)
        affine = series._affine
    grid = Grid(shape=tuple(int(s) for s in data.shape), affine=affine.copy())
    return Scan.from_grid(data, grid, source=series.source, kind="dicom", meta=meta)


# ------------------------------------------------------------------------------------------------
# folders

def _list_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def load_dicom_folder(folder: str | os.PathLike, series: str | None = None) -> Scan:
    """Load the one DICOM image series under ``folder`` (or the one picked by key)."""
    folder = Path(folder)
    if not folder.exists():
        raise ScanReadError(folder, "no such file or folder")
    files = _list_files(folder)
    found, notes = find_dicom_series(files)
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
                    f"pick one with series=<key> (CLI: --series <key>)")
    return read_dicom_series(found[0])
