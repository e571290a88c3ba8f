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
