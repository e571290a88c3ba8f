"""Small helpers for header values: parsing numbers, sanitizing text, hashing, safe access."""

from __future__ import annotations

import functools
import hashlib
import re
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement


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
    """What went wrong, without the exception's message: pydicom's messages quote element
    values (free text a file may fill with identifiers).  System errors keep their reason."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:limit]
    return type(exc).__name__[:limit]


#: DICOM modality codes (PS3.3 C.7.3.1.1.1); anything else is shown as OT
_MODALITIES = frozenset((
    "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CR", "CT", "CTPROTOCOL", "DG", "DOC", "DX",
    "ECG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL", "IVOCT", "IVUS", "KER", "KO",
    "LEN", "LS", "MG", "MR", "M3D", "NM", "OAM", "OCT", "OP", "OPM", "OPT", "OPTBSV", "OPTENF",
    "OPV", "OSS", "OT", "PLAN", "PR", "PT", "PX", "REG", "RESP", "RF", "RG", "RTDOSE",
    "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD", "RTRECORD", "RTSEGANN", "RTSTRUCT", "RWV", "SEG",
    "SM", "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA", "XA", "XC",
))


def _modality(ds: Any) -> str:
    """The Modality code when it is a standard one, else ``OT``: never free text."""
    value = str(_get(ds, "Modality") or "").strip().upper()
    return value if value in _MODALITIES else "OT"


def _uid_name(uid: Any, default: str) -> str:
    """The registered name of a UID (transfer syntax, SOP class), else ``default``: an unknown
    UID is never echoed."""
    try:
        uid = pydicom.uid.UID(str(uid))
        if uid in pydicom.uid.UID_dictionary:
            return _clean(uid.name, 80) or default
    except Exception:
        pass
    return default


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
        item = seq[0] if seq else None
    except (TypeError, IndexError):
        return None
    return HeaderView(item) if isinstance(item, pydicom.Dataset) else item


# ------------------------------------------------------------------------------------------------
# fast values

_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_TEXT = {"UI", "CS", "IS", "DS"}   # ASCII-only repertoires: no character set involved
_DS = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *\Z")
_IS = re.compile(r" *[+-]?[0-9]+ *\Z")
_MISS = object()
_ABSENT = object()


@functools.lru_cache(maxsize=512)
def _fast_tag(name: str) -> tuple[int, str] | None:
    """Tag and VR of a keyword whose values :func:`_fast_value` converts, else None."""
    tag = tag_for_keyword(name)
    if tag is None:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return (tag, vr) if vr in _BINARY or vr in _TEXT else None


def _fast_value(raw: RawDataElement, vr: str) -> Any:
    """The value pydicom would give for a well-formed single-VR element, or _MISS (anything
    unusual is left to pydicom).  Multiple values come back as a tuple."""
    data = raw.value
    if not data:
        return _MISS
    if vr in _BINARY:
        fmt = ("<" if raw.is_little_endian else ">") + _BINARY[vr]
        return struct.unpack(fmt, data)[0] if len(data) == struct.calcsize(fmt) else _MISS
    try:
        text = data.decode("ascii").rstrip(" \x00")
    except UnicodeDecodeError:
        return _MISS
    items = text.split("\\")
    if not text or "" in items:
        return _MISS
    if vr == "UI":
        return items[0] if len(items) == 1 else _MISS
    if vr == "DS":
        if not all(_DS.match(v) for v in items):
            return _MISS
        values: tuple = tuple(float(v) for v in items)
    elif vr == "IS":
        if not all(_IS.match(v) for v in items):
            return _MISS
        values = tuple(int(v) for v in items)
    else:
        values = tuple(items)
    return values[0] if len(values) == 1 else values


class HeaderView:
    """A pydicom data set as the header pass reads it: ``get(keyword)`` converts well-formed
    numbers, codes and UIDs straight from the raw bytes (several times faster than pydicom's
    element conversion) and leaves everything else to pydicom; values are converted once."""

    __slots__ = ("_ds", "_raw", "_values")

    def __init__(self, ds: Any):
        self._ds = ds.ds if isinstance(ds, HeaderView) else ds
        self._raw: dict[int, Any] | None = None
        self._values: dict[str, Any] = {}

    def get(self, name: Any, default: Any = None) -> Any:
        fast = _fast_tag(name) if isinstance(name, str) else None
        if fast is None:
            return self._ds.get(name, default)
        value = self._values.get(name, _MISS)
        if value is _MISS:
            value = self._values[name] = self._lookup(name, *fast)
        return default if value is _ABSENT else value

    def _lookup(self, name: str, tag: int, vr: str) -> Any:
        if self._raw is None:   # elements as read, unconverted, by plain integer tag
            self._raw = {int(t): e for t, e in self._ds.items()}
        elem = self._raw.get(tag)
        if elem is None:
            return _ABSENT
        if isinstance(elem, RawDataElement) and elem.VR in (None, vr):
            value = _fast_value(elem, vr)
            if value is not _MISS:
                return value
        return self._ds.get(name)

    @property
    def ds(self) -> Any:
        return self._ds

    def __contains__(self, key: Any) -> bool:
        return key in self._ds

    def __iter__(self) -> Iterator[Any]:
        return iter(self._ds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)
