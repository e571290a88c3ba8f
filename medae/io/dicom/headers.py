"""Header pass: DICOM file detection, header reading, pixel-data location, skip reasons."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path
from typing import Any

import pydicom

from medae.errors import MedaeError
from medae.io.dicom.values import _get, _int, _uid_name
from medae.io.files import open_regular

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


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Cheap check: ``DICM`` at offset 128, or (for names that are not known image formats) a
    preamble-less stream that starts like a DICOM data set (group 0002/0008 element)."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            head = f.read(132)
    except (OSError, MedaeError):
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
    with open_regular(path) as fp:
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
    with warnings.catch_warnings(), open_regular(path) as fp:
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(fp, defer_size=2048, force=not has_preamble)
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
        return f"not an image ({_uid_name(sop, 'non-image object')})"
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
