"""Series records: :class:`DicomSeries`, splitting frame groups into volumes, labels, keys."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medae.io.dicom.frames import _Frame
from medae.io.dicom.geometry import _geometry
from medae.io.dicom.values import _hash, _label, _sort_value

_FRAME_TYPE_LABELS = {"M": "mag", "MAGNITUDE": "mag", "P": "phase", "PHASE": "phase",
                      "R": "real", "REAL": "real", "I": "imag", "IMAGINARY": "imag",
                      "FIELD_MAP": "fieldmap", "B0_MAP": "fieldmap"}


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


def _volume_labels(strong_keys: list[tuple]) -> list[str]:
    """Readable labels for volumes split by strong keys: frame type, then echo, then b-value,
    each added only while the labels so far do not tell the volumes apart; else ``vol<n>``."""
    dicts = [dict(k) for k in strong_keys]
    types = [str(d.get("type", "")).split("\\") for d in dicts]
    width = max(len(v) for v in types)
    differing = [j for j in range(width) if len({v[j] if j < len(v) else "" for v in types}) > 1]
    echoes = sorted({d.get("echo", "") for d in dicts}, key=_sort_value)
    def word(j: int, value: str) -> str:  # a known frame type, else its rank: never free text
        if value.upper() in _FRAME_TYPE_LABELS:
            return _FRAME_TYPE_LABELS[value.upper()]
        ranks = sorted({v[j] if j < len(v) else "" for v in types})
        return f"type{ranks.index(value) + 1}"

    components = [
        ["_".join(word(j, v[j]) for j in differing if j < len(v)) for v in types],
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
        if affine is not None:   # series are shared through the header cache: never altered
            affine.flags.writeable = False
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
