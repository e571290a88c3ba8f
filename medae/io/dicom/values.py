"""Small helpers for header values: parsing numbers, sanitizing text, hashing, safe access."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import pydicom


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
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None
