"""First pass over files: read headers, group frames into series and volumes."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medae.errors import MedaeError
from medae.io.dicom.frames import _Frame, _frames_of, _safe_meta
from medae.io.dicom.headers import _read_header, _skip_reason, is_dicom_file
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


def find_dicom_series(files) -> tuple[list[DicomSeries], list[str]]:
    """Read headers of ``files`` and group their frames into loadable volumes.

    Returns the series (one per volume) and one note per skipped file.
    """
    notes: list[str] = []
    frames_by_group: dict[tuple, list[_Frame]] = defaultdict(list)
    info: dict[tuple, tuple[dict[str, Any], int | None, str]] = {}
    mosaics: list[DicomSeries] = []
    broken: dict[tuple[Path, str], list[Path]] = defaultdict(list)
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
                reason = f"unreadable DICOM header ({_short(exc, 80)})"
                if _has_preamble(path):  # a DICOM file for sure: a broken scan, not a note
                    broken[(path.parent, reason)].append(path)
                else:
                    notes.append(f"{path}: skipped, {reason}")
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
                reason = exc.reason if isinstance(exc, MedaeError) and exc.reason else \
                    f"unusable DICOM header ({_short(exc, 80)})"
                broken[(path.parent, reason)].append(path)
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
    series.extend(_broken(broken))
    series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30,
                               str(s.folder), s.volume or "", s.key))
    return series, notes
