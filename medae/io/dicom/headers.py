"""Header pass: DICOM file detection, header reading, pixel-data location, skip reasons."""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from medae.errors import MedaeError
from medae.io.dicom.prune import LONG_VRS, meta_group, pruned_header
from medae.io.dicom.values import HeaderView, _get, _int, _uid_name
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
    return _looks_like_dicom(path.name, head)


def _looks_like_dicom(name: str, head: bytes) -> bool:
    """:func:`is_dicom_file` on the first 132 bytes of a file named ``name``."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if name.lower().endswith(_NOT_DICOM_SUFFIXES) or len(head) < 8:
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
_HEADER_TAG_INTS = [int(Tag(t)) for t in _HEADER_TAGS]
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_PIXEL_TAG_INTS = frozenset((g << 16) | e for g, e in _PIXEL_TAGS)
_FRAMES_OR_PIXEL_TAG_INTS = _PIXEL_TAG_INTS | {0x52009230}   # PerFrameFunctionalGroupsSequence
_KEEP_TAGS = frozenset([*_HEADER_TAG_INTS, 0x00080005])   # and the character set
_PER_FRAME_BYTES = (b"\x00\x52\x30\x92", b"\x52\x00\x92\x30")   # (5200,9230) LE, BE
_PIXEL_TAG_BYTES = frozenset(struct.pack(o + "HH", g, e) for g, e in _PIXEL_TAGS for o in "<>")
#: bytes read at once for the header pass (classic headers are 1-100 kB; a longer one, such as
#: an enhanced multi-frame file's, is parsed again from up to _WHOLE_LIMIT bytes, else from
#: the file)
_HEAD_CHUNK = 1 << 17
_WHOLE_LIMIT = 1 << 26
#: an enhanced multi-frame file up to this size is read whole at once when its header is longer
#: than the first chunk (reading 16 MB costs less than walking a 128 kB header that ends short)
_EAGER_WHOLE = 1 << 24

#: pixel data element as found in the file: (tag, value offset, value length; 0xFFFFFFFF when
#: encapsulated) or None when the file has none
_PixelInfo = tuple[int, int, int] | None


def _stop_at_pixels(tag: int, vr: Any, length: int) -> bool:
    return tag in _PIXEL_TAG_INTS


def _stop_at_frames(tag: int, vr: Any, length: int) -> bool:
    return tag in _FRAMES_OR_PIXEL_TAG_INTS   # a set: no Tag.__eq__ per element


def _parse(stream: Any, has_preamble: bool, stop: Any = _stop_at_pixels) -> Any:
    """dcmread(stop_before_pixels=True, specific_tags=...) without its per-element Tag
    comparisons: integer tags make the filter a plain set lookup."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_partial(stream, stop, force=not has_preamble,
                            specific_tags=_HEADER_TAG_INTS)


def _parse_data(data: bytes, has_preamble: bool, stop: Any = _stop_at_pixels) -> tuple[Any, int]:
    """:func:`_parse` on bytes, and the offset where parsing stopped.  A file with a preamble
    and a plain little-endian transfer syntax has its file meta group read here (pydicom's
    file meta pass, which converts and checks each element, took 40% of a classic header's
    parse) and only the data set by pydicom; anything else goes to pydicom whole."""
    if has_preamble:
        found = _file_meta(data)
        if found is not None:
            meta, start, implicit = found
            stream = io.BytesIO(data)
            stream.seek(start)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = read_dataset(stream, implicit, True, stop_when=stop,
                                  specific_tags=_HEADER_TAG_INTS)
            ds.file_meta = meta
            return ds, stream.tell()
    stream = io.BytesIO(data)
    ds = _parse(stream, has_preamble, stop)
    return ds, stream.tell()


def _file_meta(data: bytes) -> tuple[FileMetaDataset, int, bool] | None:
    """The file meta group of ``data`` (:func:`medae.io.dicom.prune.meta_group`) as pydicom
    raw elements, the offset of the data set after it and whether that is implicit VR; None
    unless the group is well formed and the transfer syntax a standard little-endian,
    non-deflated one (pydicom then reads the file as it is)."""
    found = meta_group(data)
    if found is None:
        return None
    elements, pos = found
    if pos + 8 > len(data) or struct.unpack_from("<H", data, pos)[0] == 0x0000:  # command set
        return None
    raw = {}
    for tag, (vr, at, length) in elements.items():
        tag = BaseTag(tag)
        raw[tag] = RawDataElement(tag, vr, length, data[at:at + length], at, False, True)
    try:
        meta = FileMetaDataset(raw)
        syntax = UID(str(meta.TransferSyntaxUID))
    except Exception:
        return None
    if not syntax.is_transfer_syntax or syntax.is_deflated or not syntax.is_little_endian:
        return None
    return meta, pos, syntax.is_implicit_VR


_Parsed = tuple[Any, int, bytes]   # data set, offset where parsing stopped, 12 bytes from there


def _read_header(path: Path) -> tuple[Any, _PixelInfo] | None:
    """Header elements the loader uses (stopping before the pixel data), and where the pixel
    data element lies, peeked from the bytes pydicom stopped at; None when the file is not
    DICOM (:func:`is_dicom_file`).

    One open.  The first :data:`_HEAD_CHUNK` bytes are read at once and parsed in memory; a
    longer header is parsed again from the whole file read at once (up to
    :data:`_WHOLE_LIMIT` bytes; beyond that from the file).  An enhanced multi-frame header
    is pruned to what the loader reads before pydicom parses it (:mod:`medae.io.dicom.prune`).
    """
    try:
        fp = open_regular(path)
    except (OSError, MedaeError):
        return None
    with fp:
        try:
            chunk = fp.read(_HEAD_CHUNK)
        except OSError:
            return None
        if not _looks_like_dicom(path.name, chunk[:132]):
            return None
        has_preamble = chunk[128:132] == b"DICM"
        size = os.fstat(fp.fileno()).st_size
        # an enhanced header that goes on past the chunk is pruned from the whole file at once
        # when reading it costs less than pruning the chunk in vain (up to _EAGER_WHOLE bytes)
        parsed = _parse_bytes(chunk, has_preamble, complete=len(chunk) >= size,
                              prune_partial=size > _EAGER_WHOLE)
        if parsed is None:
            fp.seek(0)
            data = fp.read(min(size, _WHOLE_LIMIT))
            parsed = _parse_bytes(data, has_preamble, complete=len(data) >= size)
        if parsed is None:   # a header of more than _WHOLE_LIMIT bytes
            fp.seek(0)
            ds = _parse(fp, has_preamble)
            parsed = ds, fp.tell(), fp.read(12)
    ds, tell, peek = parsed
    if _is_deflated(ds):
        return _read_header_deferred(path, has_preamble)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    little, implicit = True, False
    if tsyntax is not None and tsyntax.is_transfer_syntax:
        little, implicit = tsyntax.is_little_endian, tsyntax.is_implicit_VR
    elif ds.original_encoding[0] is not None:
        implicit, little = ds.original_encoding
    ds = HeaderView(ds)
    if len(peek) < 8:
        return ds, None
    order = "<" if little else ">"
    group, elem = struct.unpack(order + "HH", peek[:4])
    if (group, elem) not in _PIXEL_TAGS:
        return ds, None
    tag = (group << 16) | elem
    if implicit:
        return ds, (tag, tell + 8, struct.unpack(order + "I", peek[4:8])[0])
    if peek[4:6] in LONG_VRS and len(peek) == 12:
        return ds, (tag, tell + 12, struct.unpack(order + "I", peek[8:12])[0])
    return ds, (tag, tell + 8, struct.unpack(order + "H", peek[6:8])[0])


def _parse_bytes(data: bytes, has_preamble: bool, complete: bool,
                 prune_partial: bool = True) -> _Parsed | None:
    """The header parsed from ``data``, the file (``complete``) or its start; None when
    ``data`` is only the start and the header goes on past it, or (``prune_partial`` False)
    when it is only the start of an enhanced multi-frame header."""
    try:
        ds, tell = _parse_data(data, has_preamble, _stop_at_frames)
    except Exception:
        if complete:
            raise
        return None
    peek = data[tell:tell + 12]
    if peek[:4] in _PER_FRAME_BYTES and not _is_deflated(ds):   # enhanced multi-frame
        if not complete and not prune_partial:
            return None
        pruned = _parse_pruned(data, has_preamble)
        if pruned is not None:
            return pruned
        if not complete:
            return None
        ds, tell = _parse_data(data, has_preamble)
        peek = data[tell:tell + 12]
    if complete or (len(peek) == 12 and peek[:4] in _PIXEL_TAG_BYTES):
        return ds, tell, peek
    return None


def _parse_pruned(data: bytes, has_preamble: bool) -> _Parsed | None:
    """The header parsed from its pruned copy (:mod:`medae.io.dicom.prune`); None when pruning
    does not apply or ``data`` ends before the pixel data."""
    pruned = pruned_header(data, _KEEP_TAGS)
    if pruned is None or pruned[1] is None or pruned[1] + 12 > len(data):
        return None
    try:
        ds = _parse_data(pruned[0], has_preamble)[0]
    except Exception:
        return None
    return ds, pruned[1], data[pruned[1]:pruned[1] + 12]


def _is_deflated(ds: Any) -> bool:
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return tsyntax is not None and tsyntax.is_deflated


def _read_header_deferred(path: Path, has_preamble: bool) -> tuple[Any, _PixelInfo]:
    """Deflated files: parse everything, large values deferred (pixel data never read)."""
    with warnings.catch_warnings(), open_regular(path) as fp:
        warnings.simplefilter("ignore")
        ds = HeaderView(pydicom.dcmread(fp, defer_size=2048, force=not has_preamble))
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
                cols: int) -> tuple[int, int, str, int] | None:
    """File offset, size, dtype and unused high bits of uncompressed pixel data that can be
    read straight from the file (else None: pydicom decodes it).

    Native little-endian data of 8, 16 or 32 bits allocated, signed or unsigned, with any
    number of bits stored (12-bit values in 16-bit words are masked, or sign-extended, exactly
    as pydicom does); big-endian data only at 16 bits (8-bit OW data is byte-swapped in pairs).
    """
    try:
        tsyntax = ds.file_meta.TransferSyntaxUID
        if pixel is None or pixel[0] != 0x7FE00010 or pixel[1] < 0:
            return None
        if not tsyntax.is_transfer_syntax or tsyntax.is_compressed or tsyntax.is_deflated:
            return None
        bits, stored = _int(_get(ds, "BitsAllocated")), _int(_get(ds, "BitsStored"))
        representation = _int(_get(ds, "PixelRepresentation"))
        if _int(_get(ds, "SamplesPerPixel", 1)) != 1 or bits not in (8, 16, 32):
            return None
        if stored is None or not 1 <= stored <= bits or representation not in (0, 1):
            return None
        if not tsyntax.is_little_endian and bits != 16:
            return None
        nbytes = n_frames * rows * cols * bits // 8
        if pixel[2] not in (nbytes, nbytes + (nbytes & 1)):   # an odd length is padded
            return None
        order = "<" if tsyntax.is_little_endian else ">"
        kind = "i" if representation == 1 else "u"
        return pixel[1], nbytes, f"{order}{kind}{bits // 8}", bits - stored
    except Exception:
        return None
