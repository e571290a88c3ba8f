"""From folders, files and manifests to :class:`ScanSource` values, and from a source to a Scan."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medae.errors import MedaeError, ScanReadError
from medae.io import dicom
from medae.io.files import NOT_REGULAR, is_regular, open_regular, read_regular, walk_files
from medae.io.layouts import Layout, LayoutOptions, brats_layout, find_layout
from medae.io.nifti import is_nifti_path, read_nifti, read_nifti_header
from medae.io.scan import Scan
from medae.io.sequences import SequenceRef, nnunet_parts, on_grid

log = logging.getLogger("medae")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
#: manifest columns that are not sequences; every other column names a sequence (``image``,
#: ``flair``, ``t2`` ...), the first of them fixing the case's grid
RESERVED_COLUMNS = ("case_id", "mask", "label")
_SEQUENCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
#: names medae's commands write beside case folders: no case id may take one (any letter case)
RESERVED_IDS = frozenset(n.casefold() for n in (
    "scores.csv", "failures.csv", "run.json", "latents.npz", "index.html", "report.md",
    "metrics.json", "skipped.csv", "model.json", "config.yaml", "log.csv", "summary.json",
    "view.html"))


@dataclass(frozen=True)
class ScanSource:
    """One scan to process: a NIfTI file or one DICOM series (volume), plus optional masks."""

    case_id: str
    kind: str  # "nifti" | "dicom"
    path: Path  # the NIfTI file, or the folder holding the DICOM series
    series: dicom.DicomSeries | None = None
    mask: Path | None = None
    label: Path | None = None
    name: str = "image"  # the first sequence's name
    sequences: tuple[SequenceRef, ...] = ()  # further co-registered sequences, in order
    problem: str | None = None  # found while grouping (a missing sequence): load() refuses
    volume: int | None = None  # the first sequence is this volume of a 4D NIfTI file
    layout: str | None = None  # the dataset layout it was found in (BIDS, BraTS, ...)

    @property
    def sequence_names(self) -> tuple[str, ...]:
        return (self.name, *(s.name for s in self.sequences))

    def voxels(self) -> int:
        """Voxels of the case's grid times its sequences, from the headers alone (no pixel data
        is read; 0 when a header cannot tell: loading will say why)."""
        try:
            if self.series is not None:
                n = self.series.rows * self.series.cols * self.series.n_slices
            elif self.kind != "nifti":
                return 0
            else:
                with open_regular(self.path) as f:
                    head = f.read(1 << 16)
                n = int(np.prod(read_nifti_header(self.path, head).get_data_shape()[:3]))
        except (MedaeError, OSError, ValueError):
            return 0
        return n * (1 + len(self.sequences))

    def load(self) -> Scan:
        """The first sequence (the case's grid)."""
        if self.problem:
            raise ScanReadError(self.path, self.problem)
        if self.series is not None:
            return dicom.read_dicom_series(self.series)
        return _read(self.path, self.volume)

    def load_sequences(self, scan: Scan, names=None) -> dict[str, np.ndarray]:
        """The sequences ``names`` (default: every one) on ``scan``'s (the first sequence's)
        array grid, by name; only those are read."""
        out = {self.name: scan.array}
        for seq in self.sequences:
            if names is not None and seq.name not in names:
                continue
            out[seq.name] = on_grid(scan, self.load_sequence(seq), self.what(seq))
        return out

    def load_sequence(self, seq: SequenceRef) -> Scan:
        """A further sequence of this case as it is stored, on its own grid."""
        return (dicom.read_dicom_series(seq.series) if seq.series is not None
                else _read(seq.path, seq.volume))

    def what(self, seq: SequenceRef) -> str:
        """How messages name a further sequence: ``sequence t1 of case CASE``."""
        return f"sequence {seq.name} of case {self.case_id}"

    def load_companion(self, which: str, scan: Scan) -> np.ndarray | None:
        """The ``mask`` or ``label`` file as a boolean array on ``scan``'s array grid."""
        path = getattr(self, which)
        if path is None:
            return None
        other = load_scan(path)
        if other.shape != scan.shape or not np.allclose(other.affine, scan.affine, atol=1e-3):
            raise ScanReadError(path, f"{which} is not on the image's grid ({other.describe()} "
                                      f"vs {scan.describe()})")
        return other.array > 0

    def describe(self) -> str:
        text = self.series.describe() if self.series is not None else "NIfTI file"
        if self.volume is not None:
            text += f" (volume {self.volume})"
        if self.sequences:
            text += f"; sequences {', '.join(self.sequence_names)}"
        return text


def _read(path: Path, volume: int | None) -> Scan:
    """A scan file, or one volume of a 4D NIfTI file."""
    if volume is None:
        return load_scan(path)
    if not is_regular(path):
        raise ScanReadError(path, "no such file" if not path.exists() else NOT_REGULAR)
    return read_nifti(path, volume=volume)


def safe_id(text: str) -> str:
    """A filesystem-safe identifier from free text (path components): ``[A-Za-z0-9._-]`` only."""
    out = _UNSAFE.sub("_", text).strip("._-")
    return out[:120] or "scan"


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_scan(path: str | os.PathLike, series: str | None = None) -> Scan:
    """Load a NIfTI file, a DICOM file, or a folder holding one DICOM series.

    ``series`` picks one series (by the key that :func:`discover` and error messages show) when
    a folder holds several.
    """
    path = Path(path)
    if path.is_dir():
        return dicom.load_dicom_folder(path, series=series)
    if not path.exists():
        raise ScanReadError(path, "no such file or folder")
    if not is_regular(path):
        raise ScanReadError(path, NOT_REGULAR)
    if is_nifti_path(path):
        return read_nifti(path)
    if dicom.is_dicom_file(path):
        return dicom.load_dicom_folder(path, series=series)
    raise ScanReadError(path, "not a NIfTI (.nii, .nii.gz) or DICOM file")


def discover(path: str | os.PathLike) -> list[ScanSource]:
    """Every scan under ``path``: NIfTI files and DICOM series (one source per volume).

    ``path`` may be a folder (walked recursively, hidden entries skipped), a dataset in a layout
    medae recognises (BIDS, BraTS, the Decathlon, nnU-Net v2: one source per case, see
    :func:`discover_dataset`), a single scan file, or a CSV manifest (see
    :func:`read_manifest`).  Skipped files (non-image DICOM objects, DICOMDIR, unreadable files,
    files a layout cannot name) are logged as notes; :func:`discover_with_notes` returns them.
    """
    sources, notes = discover_with_notes(path)
    for note in notes:
        log.info("skipped %s", note)
    return sources


def discover_with_notes(path: str | os.PathLike, options: LayoutOptions | None = None
                        ) -> tuple[list[ScanSource], list[str]]:
    found = discover_dataset(path, options)
    return found.sources, found.notes


@dataclass(frozen=True)
class Discovered:
    """What :func:`discover_dataset` found: the sources, the notes on skipped files, and the
    dataset layout recognised (None for a plain folder, a file or a manifest)."""

    sources: list[ScanSource]
    notes: list[str]
    layout: Layout | None = None


def discover_dataset(path: str | os.PathLike, options: LayoutOptions | None = None
                     ) -> Discovered:
    """:func:`discover`, and the layout it recognised: a BIDS, Decathlon or nnU-Net v2 dataset
    (by its ``dataset_description.json`` or ``dataset.json``) or BraTS case folders become one
    source per case, their sequences named as recipes name them (``medae.io.layouts``);
    ``options`` holds BIDS entity filters and the derivatives dataset with labels and masks."""
    root = Path(path)
    if not root.exists():
        raise MedaeError(root, "no such file or folder")
    found = _discover_dataset(root, options)
    if options is not None and (options.bids_filters or options.derivatives) and (
            found.layout is None or found.layout.name != "BIDS"):
        raise MedaeError(root, "--bids and --derivatives apply to a BIDS dataset (a folder "
                               "with dataset_description.json)")
    return found


def _discover_dataset(root: Path, options: LayoutOptions | None) -> Discovered:
    if root.is_file() and root.suffix.lower() == ".csv":
        return Discovered(read_manifest(root), [])
    layout = find_layout(root, options)
    if layout is not None:
        return Discovered(_layout_sources(layout, root), list(layout.notes), layout)
    if not root.is_dir():
        if not is_regular(root):
            raise MedaeError(root, NOT_REGULAR)
        files, base, notes = [root], root.parent, []
    else:
        (files, notes), base = walk_files(root, skip_dir=is_case_folder), root
        layout, files = brats_layout(root, files)  # BraTS case folders; the rest as before
        if layout is not None:
            notes += layout.notes
    sources: list[ScanSource] = [] if layout is None else _layout_cases(layout)
    cleaned: set[Path] = set()  # names changed by cleaning give way to names kept as they are
    other: list[Path] = []
    groups: dict[tuple[Path, str], list[tuple[int, ScanSource]]] = {}
    for f in files:
        if is_nifti_path(f):
            rel = f.relative_to(base)
            stem = _nifti_stem(f)
            raw = "_".join([*rel.parts[:-1], stem])
            src = ScanSource(case_id=safe_id(raw), kind="nifti", path=f)
            if raw != src.case_id:
                cleaned.add(f)
            parts = nnunet_parts(stem)
            if parts:
                groups.setdefault((f.parent, parts[0]), []).append((parts[1], src))
            else:
                sources.append(src)
        else:
            other.append(f)
    series, dicom_notes = dicom.find_dicom_series(other)
    notes += dicom_notes
    per_folder: dict[Path, int] = {}
    for s in series:
        per_folder[s.folder] = per_folder.get(s.folder, 0) + 1
    for s in series:
        try:
            rel = s.folder.relative_to(base)
        except ValueError:
            rel = Path(s.folder.name)
        parts = [p for p in rel.parts if p not in ("", ".")]
        number = f"s{s.series_number}" if s.series_number is not None else "s"
        bits = [*parts, number, s.key[:8]]
        if s.volume:
            bits.append(s.volume)
        src = ScanSource(case_id=safe_id("_".join(bits)), kind="dicom", path=s.folder, series=s)
        seq = nnunet_parts(s.folder.name) if per_folder[s.folder] == 1 else None
        if seq:
            groups.setdefault((s.folder.parent, seq[0]), []).append((seq[1], src))
        else:
            sources.append(src)
    sources += _sequence_cases(groups, base)
    return Discovered(_dedupe(sources, base, cleaned), notes, layout)


def _layout_sources(layout: Layout, root: Path) -> list[ScanSource]:
    """A layout's cases as scan sources with unique case ids."""
    return _dedupe(_layout_cases(layout), root)


def _layout_cases(layout: Layout) -> list[ScanSource]:
    """A layout's cases as scan sources (their first sequence fixes the grid)."""
    out = []
    for case in layout.cases:
        (name, first), *rest = case.sequences
        extra = tuple(SequenceRef(name=n, kind="nifti", path=v.path, volume=v.index)
                      for n, v in rest)
        out.append(ScanSource(case_id=case.case_id, kind="nifti", path=first.path,
                              volume=first.index, mask=case.mask, label=case.label, name=name,
                              sequences=extra, problem=case.problem, layout=layout.name))
    return out


def _sequence_cases(groups: dict[tuple[Path, str], list[tuple[int, ScanSource]]],
                    base: Path) -> list[ScanSource]:
    """nnU-Net-named files and folders (``CASE_0000`` ...) grouped into multi-sequence cases.

    A group without a ``_0000`` member is no case: its members stay ordinary scans.  A gap in the
    suffixes or two volumes for one suffix is recorded as the case's problem (its load fails
    with that reason; the other cases go on).
    """
    out = []
    for (folder, name), members in sorted(groups.items(), key=lambda g: (str(g[0][0]), g[0][1])):
        indexes = sorted(i for i, _ in members)
        if 0 not in indexes:
            out.extend(src for _, src in members)
            continue
        members = sorted(members, key=lambda m: (m[0], str(m[1].path)))
        try:
            rel = [p for p in folder.relative_to(base).parts if p not in ("", ".")]
        except ValueError:
            rel = []
        case = safe_id("_".join([*rel, name]))
        problem = None
        missing = sorted(set(range(indexes[-1] + 1)) - set(indexes))
        doubled = sorted({i for i in indexes if indexes.count(i) > 1})
        if missing:
            problem = (f"case {case}: missing sequence(s) "
                       f"{', '.join(f'{i:04d}' for i in missing)}")
        elif doubled:
            problem = (f"case {case}: several volumes for sequence(s) "
                       f"{', '.join(f'{i:04d}' for i in doubled)}")
        first = members[0][1]
        extra = tuple(SequenceRef(name=f"{i:04d}", kind=src.kind, path=src.path,
                                  series=src.series) for i, src in members[1:])
        out.append(dataclasses.replace(first, case_id=case, name="0000", sequences=extra,
                                       problem=problem))
    return out


def is_case_folder(folder: str | os.PathLike, source: str | None = None) -> bool:
    """``folder`` is a case folder written by ``medae score``: a real folder whose
    ``result.json`` is medae's record for a case of that name (and, if given, that source)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        record = json.loads(read_regular(folder / "result.json", limit=1 << 24))
    except (OSError, ValueError, RecursionError, MedaeError):
        return False
    row = record.get("row") if isinstance(record, dict) else None
    if not isinstance(row, dict) or row.get("case_id") != folder.name:
        return False
    return source is None or row.get("source") == source


def _suffix(source: ScanSource, base: Path) -> str:
    try:
        rel = source.path.relative_to(base)
    except ValueError:
        rel = source.path
    text = f"{rel}#{source.series.key if source.series else ''}"
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:6]


def _dedupe(sources: list[ScanSource], base: Path, cleaned: set[Path] = frozenset()
            ) -> list[ScanSource]:
    """Unique case ids (ignoring letter case): a name taken twice, or one of medae's own output
    names, gets a suffix hashed from the source's relative path (stable when files are added)."""
    taken = set(RESERVED_IDS)
    out = []
    for s in sorted(sources, key=lambda s: (s.case_id, s.path in cleaned, str(s.path))):
        case = s.case_id
        if case.casefold() in taken:
            case = f"{s.case_id}_{_suffix(s, base)}"
            k = 2
            while case.casefold() in taken:
                case = f"{s.case_id}_{_suffix(s, base)}_{k}"
                k += 1
            s = dataclasses.replace(s, case_id=case)
        taken.add(case.casefold())
        out.append(s)
    return sorted(out, key=lambda s: (s.case_id, str(s.path)))


def read_manifest(path: str | os.PathLike) -> list[ScanSource]:
    """Read a CSV manifest: ``case_id``, one or more sequence columns, optional ``mask``/``label``.

    ``case_id,image[,mask][,label]`` lists single-sequence scans; ``case_id,flair,t1,t2,mask,label``
    lists multi-sequence cases (every column but case_id, mask and label names a sequence; the
    first fixes the case's grid, the others are resampled onto it).  Paths are relative to the
    manifest's folder (absolute paths are kept).  A sequence is a NIfTI file, a DICOM file or a
    folder with one DICOM series; ``mask`` (brain/foreground) and ``label`` (ground-truth lesions)
    are NIfTI files on the first sequence's grid.  An empty cell in a later sequence column is
    that case's problem (it fails when loaded; the other cases go on).
    """
    path = Path(path)
    try:
        text = read_regular(path, limit=1 << 28).decode("utf-8-sig")
    except OSError as exc:
        raise MedaeError(path, f"cannot read manifest ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise MedaeError(path, "cannot read manifest (not UTF-8 text)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise MedaeError(path, f"cannot read manifest ({exc})") from None
    # case_id, mask and label in any letter case (Mask, LABEL); sequences keep their names
    fields = [f.strip().lower() if f.strip().lower() in RESERVED_COLUMNS else f.strip()
              for f in header]
    seq_cols = [f for f in fields if f not in RESERVED_COLUMNS]
    if "case_id" not in fields or not seq_cols:
        raise MedaeError(path, "manifest needs a header row with at least case_id,image (or "
                               "case_id and sequence columns such as flair,t2)")
    bad = [f for f in seq_cols if not _SEQUENCE_NAME.match(f)]
    folded = [f.casefold() for f in fields]
    twice = sorted({f for f in fields if folded.count(f.casefold()) > 1})
    if bad or twice:
        raise MedaeError(path, f"manifest column names must be unique words (letters, "
                               f"digits, _ or -; unique without regard to letter case), got "
                               f"{', '.join(repr(f) for f in bad or twice)}")
    sources, seen = [], set()
    for row_cells in _rows_of(reader, path):
        lineno = reader.line_num
        row = {f: c.strip() for f, c in zip(fields, row_cells, strict=False)}
        for col, value in row.items():
            if "\n" in value or "\r" in value:
                raise MedaeError(path, f"line {lineno}: {col} holds a line break (a quoted "
                                       "cell): refused")
        case = row.get("case_id", "")
        if not case and not any(row.get(c) for c in seq_cols):
            continue  # blank line
        if not _CASE_ID.match(case):
            raise MedaeError(path, f"line {lineno}: case_id {case!r} must be letters, digits, "
                                   "'.', '_' or '-' (not starting with a dot)")
        if case.casefold() in seen:
            raise MedaeError(path, f"line {lineno}: duplicate case_id {case!r}")
        if case.casefold() in RESERVED_IDS:
            raise MedaeError(path, f"line {lineno}: case_id {case!r} is the name of one of "
                                   "medae's own output files; choose another")
        seen.add(case.casefold())
        paths: dict[str, Path | None] = {}
        for col in [*seq_cols, "mask", "label"]:
            value = row.get(col, "")
            if not value:
                if col == seq_cols[0]:
                    raise MedaeError(path, f"line {lineno}: empty {col} path")
                paths[col] = None
                continue
            p = Path(value)
            p = p if p.is_absolute() else path.parent / p
            if not p.exists():
                raise MedaeError(path, f"line {lineno}: {col} {value} does not exist")
            paths[col] = p
        missing = [c for c in seq_cols[1:] if paths[c] is None]
        extra = tuple(SequenceRef(name=c, kind=_kind(paths[c]), path=paths[c])
                      for c in seq_cols[1:] if paths[c] is not None)
        first = paths[seq_cols[0]]
        sources.append(ScanSource(
            case_id=case, kind=_kind(first), path=first, mask=paths["mask"],
            label=paths["label"], name=seq_cols[0], sequences=extra,
            problem=f"case {case}: missing sequence(s) {', '.join(missing)}" if missing
            else None))
    if not sources:
        raise MedaeError(path, "manifest lists no scans")
    return sources


def _rows_of(reader, path: Path):
    """The rows of a manifest's ``csv.reader``, a malformed one as one line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MedaeError(path, f"line {reader.line_num}: cannot read manifest ({exc})"
                             ) from None
        yield row


def _kind(path: Path) -> str:
    return "nifti" if is_nifti_path(path) and path.is_file() else "dicom"
