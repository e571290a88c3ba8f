"""First pass over files: read headers (once per process), group frames into volumes."""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medae.errors import MedaeError
from medae.io.dicom.cache import HEADERS, signature
from medae.io.dicom.frames import _Frame, _frames_of, _safe_meta
from medae.io.dicom.headers import _read_header, _skip_reason
from medae.io.dicom.mosaic import _is_mosaic, _label_mosaics, _mosaic_series
from medae.io.dicom.series import DicomSeries, _volumes
from medae.io.dicom.values import _get, _hash, _int, _modality, _short
from medae.io.files import open_regular


def _series_facts(ds: Any) -> tuple[dict[str, Any], int | None, str]:
    return _safe_meta(ds), _int(_get(ds, "SeriesNumber")), _modality(ds)


def _has_preamble(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            return f.read(132)[128:132] == b"DICM"
    except (OSError, MedaeError):
        return False


def _broken(broken: dict[tuple[Path, str], list[Path]]) -> list[DicomSeries]:
    """Files that are DICOM but cannot be used, one series per folder and reason, that fails
    with that reason (so that they land in failures.csv / skipped.csv rather than vanish)."""
    out = []
    for (folder, reason), paths in sorted(broken.items()):
        paths = sorted(paths)
        text = reason if len(paths) == 1 else f"{len(paths)} files: {reason}"
        out.append(DicomSeries(key=_hash("unusable", folder.name, reason), folder=folder,
                               files=tuple(paths), series_number=None, modality="OT",
                               n_slices=0, volume=None, _problem=text))
    return out


@dataclass(frozen=True, slots=True)
class _FileRecord:
    """What the header pass makes of one file, on its own (the process-wide cache keeps it)."""

    note: str | None = None          # skipped, with this note
    broken: str | None = None        # DICOM for sure, unusable for this reason
    mosaic: DicomSeries | None = None
    gkey: tuple | None = None        # (series UID, rows, cols, spacing): frames group by it
    facts: tuple[dict[str, Any], int | None, str] | None = None
    sop: str = ""
    frames: tuple[_Frame, ...] = ()


def _examine(path: Path) -> _FileRecord:
    """Read one file's header (never its pixel data) and turn it into a record."""
    if path.name.upper() == "DICOMDIR":
        return _FileRecord(note=f"{path}: skipped, DICOMDIR (directory index), not an image")
    try:
        header = _read_header(path)
    except Exception as exc:  # pydicom raises many types for broken headers
        reason = f"unreadable DICOM header ({_short(exc, 80)})"
        if _has_preamble(path):  # a DICOM file for sure: a broken scan, not a note
            return _FileRecord(broken=reason)
        return _FileRecord(note=f"{path}: skipped, {reason}")
    if header is None:
        return _FileRecord(note=f"{path}: skipped, not a DICOM file")
    ds, pixel = header
    reason = _skip_reason(path, ds, pixel)
    if reason:
        return _FileRecord(note=f"{path}: skipped, {reason}")
    try:
        uid = str(_get(ds, "SeriesInstanceUID") or f"nouid:{path}")
        if _is_mosaic(ds):
            return _FileRecord(mosaic=_mosaic_series(path, ds, uid, *_series_facts(ds)))
        frames = _frames_of(path, ds, pixel)
        sop = str(_get(ds, "SOPInstanceUID") or "")
        f0 = frames[0]
        spacing = tuple(np.round(f0.spacing, 3)) if f0.spacing else None
        return _FileRecord(gkey=(uid, f0.rows, f0.cols, spacing), facts=_series_facts(ds),
                           sop=sop, frames=tuple(frames))
    except Exception as exc:
        reason = exc.reason if isinstance(exc, MedaeError) and exc.reason else \
            f"unusable DICOM header ({_short(exc, 80)})"
        return _FileRecord(broken=reason)


def _records(paths: list[Path], sigs: list) -> list[_FileRecord]:
    """One record per path: from the cache when the file is unchanged, else read."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # pydicom warns about every odd value it meets
        for path, sig in zip(paths, sigs, strict=True):
            record = HEADERS.record(path, sig)
            if record is None:
                record = _examine(path)
                HEADERS.store(path, sig, record, max(len(record.frames), 1))
            out.append(record)
    return out


def find_dicom_series(files) -> tuple[list[DicomSeries], list[str]]:
    """Read headers of ``files`` and group their frames into loadable volumes.

    Returns the series (one per volume) and one note per skipped file.  Headers are parsed
    once per process: unchanged files (and an unchanged list of files) come from the cache.
    """
    paths = sorted(Path(p) for p in files)
    now = time.time()
    sigs = [signature(p, now) for p in paths]
    key = (None if any(s is None for s in sigs)
           else tuple(zip(map(str, paths), sigs, strict=True)))
    hit = HEADERS.listing(key)
    if hit is not None:
        return list(hit[0]), list(hit[1])
    series, notes = _group(paths, _records(paths, sigs))
    HEADERS.store_listing(key, (tuple(series), tuple(notes)),
                          sum(max(len(s._frames), 1) for s in series))
    return series, notes


def _group(paths: list[Path], records: list[_FileRecord]) -> tuple[list[DicomSeries], list[str]]:
    notes: list[str] = []
    frames_by_group: dict[tuple, list[_Frame]] = defaultdict(list)
    info: dict[tuple, tuple[dict[str, Any], int | None, str]] = {}
    mosaics: list[DicomSeries] = []
    broken: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    seen_instances: dict[tuple[str, int], Path] = {}
    for path, record in zip(paths, records, strict=True):
        if record.note is not None:
            notes.append(record.note)
            continue
        if record.broken is not None:
            broken[(path.parent, record.broken)].append(path)
            continue
        if record.mosaic is not None:
            mosaics.append(record.mosaic)
            continue
        gkey = record.gkey
        info.setdefault(gkey, record.facts)   # the first file's facts speak for the group
        if record.sop:
            first = seen_instances.setdefault((record.sop, len(record.frames)), path)
            if first != path:
                notes.append(f"{path}: skipped, duplicate of {first} (same SOP instance)")
                continue
        frames_by_group[gkey].extend(record.frames)

    series: list[DicomSeries] = []
    for gkey, frames in frames_by_group.items():
        meta, number, modality = info[gkey]
        series.extend(_volumes(gkey, frames, meta, number, modality))
    series.extend(_label_mosaics(mosaics))
    series.extend(_broken(broken))
    series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30,
                               str(s.folder), s.volume or "", s.key))
    return series, notes
