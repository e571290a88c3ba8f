"""Datasets as researchers keep them: BIDS, BraTS, the Medical Segmentation Decathlon and
nnU-Net v2 raw datasets, recognised from their own files, without a manifest.

Each layout names its sequences its own way; here they all become the names recipes use
(:data:`SEQUENCE_ORDER`: ``flair``, ``t1``, ``t1c``, ``t2``, ``pd``, ...), in that order (the
first fixes the case's grid).  A file whose name or channel is not one of them is skipped with a
note, never guessed.  The segmentation a layout carries is the case's label, never a scan.

- **BIDS** (``dataset_description.json``): a case is a subject, or a subject's session
  (``sub-01_ses-02``); the scans are ``sub-*/[ses-*/]anat/*.nii[.gz]`` by suffix (``FLAIR``,
  ``T1w``, ``T1w`` with a ``ce-`` entity, ``T2w``, ``PDw``, ``T2starw``).  ``derivatives/``,
  ``sourcedata/``, ``code/`` and every other folder are not scanned.  Entity filters
  (:func:`parse_bids_filters`) pick among a sequence's scans; two scans left for one sequence of
  a case (two runs) fail that case in one line naming them, never a guess.  Labels
  (``desc-lesion`` ``_mask`` or ``_dseg``) and brain masks (``desc-brain_mask``) come from a
  derivatives dataset the user names.
- **BraTS** (every edition): case folders holding ``<folder>_flair/_t1/_t1ce/_t2/_seg`` files
  (2018-2021) or ``<folder>-t2f/-t1n/-t1c/-t2w/-seg`` (2023 on).
- **Decathlon** (``dataset.json`` with ``modality``) and **nnU-Net v2** (``dataset.json`` with
  ``channel_names`` and ``file_ending``): ``imagesTr/``, ``imagesTs/`` and ``labelsTr/``; a
  Decathlon image holds its channels as the volumes of one 4D file, each read on its own.

This module only looks at names and headers and returns :class:`Layout` values; ``discover``
turns them into scan sources.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medae.errors import MedaeError
from medae.io.files import open_regular, read_regular, walk_files
from medae.io.nifti import is_nifti_path, read_nifti_header

#: the sequence names recipes use, in the order a case lists them
SEQUENCE_ORDER = ("flair", "t1", "t1c", "t2", "pd", "t2star", "ct", "adc")
#: Decathlon ``modality`` and nnU-Net ``channel_names`` values, compared without letter case
CHANNEL_NAMES = {
    "flair": "flair", "t2flair": "flair", "t2-flair": "flair", "t2f": "flair",
    "t1": "t1", "t1w": "t1", "t1n": "t1",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1-gd": "t1c", "t1wce": "t1c",
    "t1post": "t1c",
    "t2": "t2", "t2w": "t2", "pd": "pd", "pdw": "pd", "t2star": "t2star", "t2starw": "t2star",
    "ct": "ct", "adc": "adc"}
#: BraTS file suffixes: 2018-2021 (``_t1ce``) and 2023 on (``-t2f``); ``seg`` is the label
BRATS_NAMES = {"flair": "flair", "t1": "t1", "t1ce": "t1c", "t2": "t2",
               "t2f": "flair", "t1n": "t1", "t1c": "t1c", "t2w": "t2"}
BRATS_LABEL = "seg"
#: BIDS anatomical suffixes (a ``T1w`` with a ``ce-`` entity is ``t1c``)
BIDS_SUFFIXES = {"FLAIR": "flair", "T1w": "t1", "T2w": "t2", "PDw": "pd", "T2starw": "t2star"}
_BIDS_NAME = re.compile(r"^sub-[A-Za-z0-9]+(_[a-z]+-[A-Za-z0-9]+)*_[A-Za-z0-9]+$")
_FILTER_TERM = re.compile(r"^(?P<key>[a-z]+)=(?P<values>[A-Za-z0-9]+(,[A-Za-z0-9]+)*)$")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")
#: the value of a BIDS filter term that keeps the files without that entity
NO_ENTITY = "none"


@dataclass(frozen=True)
class Volume:
    """A scan file, or (``index``) one volume of a 4D NIfTI file."""

    path: Path
    index: int | None = None


@dataclass(frozen=True)
class LayoutCase:
    """One case of a layout: its sequences by name (in :data:`SEQUENCE_ORDER`), mask, label."""

    case_id: str
    sequences: tuple[tuple[str, Volume], ...]
    mask: Path | None = None
    label: Path | None = None
    problem: str | None = None  # the case fails in one line when loaded (the others go on)


@dataclass(frozen=True)
class Layout:
    """A recognised dataset: its name, what gave it away, its cases and the files skipped."""

    name: str
    evidence: str
    cases: tuple[LayoutCase, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        n = len(self.cases)
        return f"layout: {self.name} ({self.evidence}), {n} case{'s' if n != 1 else ''}"


@dataclass(frozen=True)
class LayoutOptions:
    """Choices a user makes for a layout: BIDS entity filters and the derivatives dataset with
    labels and brain masks."""

    bids_filters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    derivatives: str | None = None


def parse_bids_filters(text: str | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``"suffix=FLAIR,T1w acq=mprage,none run=2"`` -> ``(("suffix", ("FLAIR", "T1w")), ...)``.

    Terms are separated by spaces.  ``suffix`` keeps the sequences of those suffixes.  Any
    other term picks, among a case's scans of one sequence, those whose entity has one of its
    values (``none``: those without the entity); where none of them does, those without the
    entity stay (``run=2`` picks the second run where there are runs and keeps a sequence
    scanned once) and a scan whose entity has another value is left out.
    """
    out: dict[str, tuple[str, ...]] = {}
    for term in (text or "").split():
        m = _FILTER_TERM.match(term)
        if not m:
            raise MedaeError(f"--bids {text!r}: {term!r} is not entity=value[,value...] "
                             "(e.g. \"suffix=FLAIR,T1w run=2 acq=mprage,none\")")
        if m["key"] in out:
            raise MedaeError(f"--bids {text!r}: {m['key']} is given twice")
        out[m["key"]] = tuple(m["values"].split(","))
    return tuple(out.items())


def canonical_order(name: str) -> int:
    return SEQUENCE_ORDER.index(name) if name in SEQUENCE_ORDER else len(SEQUENCE_ORDER)


def find_layout(root: Path, options: LayoutOptions | None = None) -> Layout | None:
    """The BIDS, Decathlon or nnU-Net v2 dataset whose root is ``root``, from its marker file
    (None when there is none); a malformed marker file is one line naming it."""
    options = options or LayoutOptions()
    if not root.is_dir():
        return None
    if (root / "dataset_description.json").exists():
        return _bids(root, options)
    if (root / "dataset.json").exists() and any(
            (root / d).is_dir() for d in ("imagesTr", "imagesTs")):
        return _decathlon_or_nnunet(root)
    return None


def _read_json(path: Path, limit: int = 1 << 26) -> dict:
    try:
        value = json.loads(read_regular(path, limit=limit).decode("utf-8-sig"))
    except MedaeError:
        raise
    except OSError as exc:
        raise MedaeError(path, f"cannot read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise MedaeError(path, "not UTF-8 text") from None
    except ValueError as exc:
        raise MedaeError(path, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise MedaeError(path, "not a JSON object")
    return value


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _case(case_id: str, found: dict[str, list[Volume]], root: Path, *, mask=None, label=None,
          problem: str | None = None, hint: str = "") -> LayoutCase:
    """A case from its sequences' candidates: two candidates for one sequence fail the case."""
    names = sorted(found, key=lambda n: (canonical_order(n), n))
    for name in names:
        if len(found[name]) > 1 and problem is None:
            shown = ", ".join(_rel(v.path, root) for v in found[name])
            problem = f"case {case_id}: several scans for sequence {name} ({shown}){hint}"
    return LayoutCase(case_id=case_id, sequences=tuple((n, found[n][0]) for n in names),
                      mask=mask, label=label, problem=problem)


def _one(case_id: str, what: str, paths: list[Path], root: Path) -> tuple[Path | None, str | None]:
    if len(paths) > 1:
        return paths[0], (f"case {case_id}: several {what} files "
                          f"({', '.join(_rel(p, root) for p in paths)})")
    return (paths[0] if paths else None), None


# --- BIDS ---------------------------------------------------------------------------------

def _bids_entities(name: str) -> tuple[dict[str, str], str] | None:
    """``sub-01_ses-02_ce-gd_T1w`` -> ({"sub": "01", "ses": "02", "ce": "gd"}, "T1w")."""
    if not _BIDS_NAME.match(name):
        return None
    *pairs, suffix = name.split("_")
    entities = {}
    for pair in pairs:
        key, value = pair.split("-", 1)
        if key in entities:
            return None
        entities[key] = value
    return entities, suffix


def _bids_anat(base: Path, notes: list[str] | None) -> list[tuple[Path, dict[str, str], str]]:
    """The NIfTI files of ``base/sub-*/[ses-*/]anat`` with their entities and suffix; a note for
    each other datatype folder, and for a file whose name is not BIDS or does not match its
    folders."""
    out = []
    for sub in sorted(p for p in base.iterdir() if p.name.startswith("sub-") and p.is_dir()):
        files, walk_notes = walk_files(sub)
        if notes is not None:
            notes.extend(walk_notes)
        other_types: set[Path] = set()
        for f in files:
            if not is_nifti_path(f):
                continue
            parts = f.relative_to(sub).parts
            session = parts[0] if len(parts) == 3 and parts[0].startswith("ses-") else None
            if len(parts) not in (2, 3) or (len(parts) == 3 and session is None):
                if notes is not None:
                    notes.append(f"{f}: skipped, not in a BIDS datatype folder")
                continue
            if parts[-2] != "anat":
                other_types.add(f.parent)
                continue
            parsed = _bids_entities(_stem(f))
            if parsed is None or parsed[0].get("sub") != sub.name[4:] or (
                    parsed[0].get("ses") != (session[4:] if session else None)):
                if notes is not None:
                    notes.append(f"{f}: skipped, not a BIDS file name of {sub.name}"
                                 + (f"/{session}" if session else ""))
                continue
            out.append((f, *parsed))
        if notes is not None:
            notes.extend(f"{d}: skipped, BIDS datatype {d.name} (medae reads anat)"
                         for d in sorted(other_types))
    return out


def _bids_case_id(entities: dict[str, str]) -> str:
    return f"sub-{entities['sub']}" + (f"_ses-{entities['ses']}" if "ses" in entities else "")


def _pick(candidates: list[tuple[Volume, dict[str, str]]], filters
          ) -> list[tuple[Volume, dict[str, str]]]:
    """The scans of one sequence of one case that the entity filters keep: for each term, those
    whose entity has one of its values (``none``: those without the entity); when none does,
    those without the entity (a sequence scanned once, with no run, stays)."""
    for key, values in filters:
        if key == "suffix":
            continue
        match = [c for c in candidates if c[1].get(key) in values
                 or (key not in c[1] and NO_ENTITY in values)]
        candidates = match or [c for c in candidates if key not in c[1]]
    return candidates


def _bids(root: Path, options: LayoutOptions) -> Layout:
    _read_json(root / "dataset_description.json", limit=1 << 20)
    notes: list[str] = []
    suffixes = dict(options.bids_filters).get("suffix")
    groups: dict[str, dict[str, list[tuple[Volume, dict[str, str]]]]] = {}
    for f, entities, suffix in _bids_anat(root, notes):
        if suffixes is not None and suffix not in suffixes:
            continue
        name = BIDS_SUFFIXES.get(suffix)
        if name is None:
            notes.append(f"{f}: skipped, BIDS suffix {suffix} is not a sequence medae knows "
                         f"({', '.join(BIDS_SUFFIXES)})")
            continue
        if name == "t1" and "ce" in entities:
            name = "t1c"
        groups.setdefault(_bids_case_id(entities), {}).setdefault(name, []).append(
            (Volume(f), entities))
    found: dict[str, dict[str, list[Volume]]] = {}
    for case, seqs in groups.items():
        for name, candidates in seqs.items():
            kept = _pick(candidates, options.bids_filters)
            if kept:
                found.setdefault(case, {})[name] = [v for v, _ in kept]
    masks: dict[str, list[Path]] = {}
    labels: dict[str, list[Path]] = {}
    if options.derivatives:
        deriv = _derivatives(root, options.derivatives)
        for f, entities, suffix in _bids_anat(deriv, None):
            desc = entities.get("desc", "")
            if suffix == "mask" and desc == "brain":
                masks.setdefault(_bids_case_id(entities), []).append(f)
            elif suffix in ("mask", "dseg") and desc == "lesion":
                labels.setdefault(_bids_case_id(entities), []).append(f)
        for case in sorted(set(masks) | set(labels)):
            if case not in found:
                for f in [*masks.get(case, []), *labels.get(case, [])]:
                    notes.append(f"{f}: skipped, a label or mask without a scan (case {case})")
    cases = []
    for case in sorted(found):
        mask, p1 = _one(case, "brain mask (desc-brain_mask)", masks.get(case, []), root)
        label, p2 = _one(case, "lesion label (desc-lesion)", labels.get(case, []), root)
        runs = sorted({e for seqs in found[case].values() if len(seqs) > 1 for v in seqs
                       for e in _entities_of(v.path) if e.startswith("run-")})
        hint = (f": pick one with --bids, e.g. --bids \"run={runs[-1][4:]}\"" if runs else
                ": pick one with --bids entity filters (acq=..., rec=..., run=...)")
        cases.append(_case(case, found[case], root, mask=mask, label=label, problem=p1 or p2,
                           hint=hint))
    return Layout("BIDS", "dataset_description.json", tuple(cases), tuple(notes))


def _entities_of(path: Path) -> list[str]:
    return _stem(path).split("_")[:-1]


def _derivatives(root: Path, name: str) -> Path:
    """``derivatives/NAME`` of the dataset, ``NAME`` inside it, or the path ``NAME`` itself."""
    for path in (root / "derivatives" / name, root / name, Path(name)):
        if path.is_dir():
            return path
    raise MedaeError(name, f"--derivatives: no folder derivatives/{name} in {root} "
                           "and no such folder")


# --- BraTS --------------------------------------------------------------------------------

def brats_layout(root: Path, files: list[Path]) -> Layout | None:
    """BraTS case folders among ``files`` (the files under ``root``): a folder holding a NIfTI
    file named after it plus a BraTS suffix (``_flair``, ``-t2f``, ``_seg`` ...).  None when no
    folder is one."""
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)
    known = {*BRATS_NAMES, BRATS_LABEL}

    def key_of(folder: Path, f: Path) -> str | None:
        stem = _stem(f)
        n = len(folder.name)
        if (is_nifti_path(f) and stem.startswith(folder.name) and len(stem) > n + 1
                and stem[n] in "_-"):
            return stem[n + 1:]
        return None

    case_folders = [d for d, fs in by_folder.items()
                    if any((key_of(d, f) or "").lower() in known for f in fs)]
    if not case_folders:
        return None
    modern = False
    notes, cases = [], []
    for folder in sorted(case_folders):
        found: dict[str, list[Volume]] = {}
        segs = []
        for f in by_folder[folder]:
            key = key_of(folder, f)
            if key is None:
                notes.append(f"{f}: skipped, not a BraTS file of case folder {folder.name}")
            elif key.lower() == BRATS_LABEL:
                segs.append(f)
            elif key.lower() in BRATS_NAMES:
                modern |= key.lower() in ("t2f", "t1n", "t2w")
                found.setdefault(BRATS_NAMES[key.lower()], []).append(Volume(f))
            else:
                notes.append(f"{f}: skipped, BraTS suffix {key} is not a sequence medae knows "
                             f"({', '.join(sorted(BRATS_NAMES))}; {BRATS_LABEL}: the label)")
        case = folder.name if _SAFE.match(folder.name) else _safe(folder.name)
        if not found:
            notes.extend(f"{f}: skipped, a label without a scan (case {case})" for f in segs)
            continue
        label, problem = _one(case, "segmentation (seg)", sorted(segs), root)
        cases.append(_case(case, found, root, label=label, problem=problem))
    for f in files:
        if f.parent not in case_folders:
            notes.append(f"{f}: skipped, not in a BraTS case folder")
    evidence = ("case folders of <case>-t2f/-t1n/-t1c/-t2w/-seg files" if modern else
                "case folders of <case>_flair/_t1/_t1ce/_t2/_seg files")
    return Layout("BraTS", evidence, tuple(cases), tuple(notes))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:120] or "case"


# --- Decathlon and nnU-Net v2 -------------------------------------------------------------

def _channels(path: Path, spec: object, key: str, notes: list[str]) -> dict[int, str]:
    """``{"0": "FLAIR", ...}`` -> {0: "flair", ...}; unknown names are noted and left out."""
    if not isinstance(spec, dict) or not spec:
        raise MedaeError(path, f"{key} must be an object such as {{\"0\": \"FLAIR\"}}")
    out: dict[int, str] = {}
    for index, value in spec.items():
        if not (isinstance(index, str) and index.isdigit() and isinstance(value, str)):
            raise MedaeError(path, f"{key}: {index!r}: {value!r} is not \"<index>\": \"<name>\"")
        name = CHANNEL_NAMES.get(value.strip().lower())
        if name is None:
            notes.append(f"{path}: channel {index} ({value!r}) skipped, not a sequence medae "
                         f"knows ({', '.join(SEQUENCE_ORDER)})")
            continue
        if name in out.values():
            raise MedaeError(path, f"{key}: two channels are {name}")
        out[int(index)] = name
    return out


def _decathlon_or_nnunet(root: Path) -> Layout:
    spec_path = root / "dataset.json"
    spec = _read_json(spec_path)
    notes: list[str] = []
    if "channel_names" in spec:
        name, evidence = "nnU-Net v2", "dataset.json with channel_names"
        channels = _channels(spec_path, spec["channel_names"], "channel_names", notes)
        ending = spec.get("file_ending")
        if not isinstance(ending, str) or not is_nifti_path(f"x{ending}"):
            raise MedaeError(spec_path, f"file_ending {ending!r}: medae reads NIfTI "
                                        "(.nii.gz, .nii)")
    elif "modality" in spec:
        name, evidence = "Decathlon", "dataset.json with modality"
        channels = _channels(spec_path, spec["modality"], "modality", notes)
        ending = ".nii.gz"
    else:
        raise MedaeError(spec_path, "neither channel_names (nnU-Net v2) nor modality (the "
                                    "Decathlon): not a dataset.json medae knows")
    n_channels = len(spec["channel_names" if name == "nnU-Net v2" else "modality"])
    cases: list[LayoutCase] = []
    labels = {}
    for folder in ("labelsTr", "labelsTs"):
        for f in _nifti_files(root / folder, ending, notes):
            labels[_stem(f)] = f
    used: set[str] = set()
    for folder in ("imagesTr", "imagesTs"):
        files = _nifti_files(root / folder, ending, notes)
        groups: dict[str, dict[int, Path]] = {}
        stems = {_stem(f) for f in files}
        for f in files:
            m = _NNUNET.match(_stem(f))
            # nnU-Net names every channel CASE_000k; a Decathlon image is CASE (nnU-Net v1
            # datasets keep the Decathlon's dataset.json with CASE_000k files)
            if m and (name == "nnU-Net v2" or f"{m['case']}_0000" in stems):
                groups.setdefault(m["case"], {})[int(m["index"])] = f
            elif name == "nnU-Net v2":
                notes.append(f"{f}: skipped, not named CASE_XXXX{ending} (nnU-Net v2)")
            else:
                groups.setdefault(_stem(f), {})[-1] = f
        for case, members in sorted(groups.items()):
            found: dict[str, list[Volume]] = {}
            problem = None
            if -1 in members:  # one file: the channels are its volumes
                count, why = _volumes(members[-1])
                if why:
                    problem = why
                elif count != n_channels:
                    problem = (f"{_rel(members[-1], root)} holds {count} volume(s), "
                               f"dataset.json names {n_channels} channel(s)")
                for index, seq in channels.items():
                    found[seq] = [Volume(members[-1], index if count > 1 else None)]
            else:
                for index, f in sorted(members.items()):
                    if index in channels:
                        found[channels[index]] = [Volume(f)]
                    elif index >= n_channels:
                        notes.append(f"{f}: skipped, dataset.json names no channel {index}")
            case_id = case if _SAFE.match(case) else _safe(case)
            if not found:
                continue
            used.add(case)
            cases.append(_case(case_id, found, root, label=labels.get(case), problem=problem))
    for stem, f in sorted(labels.items()):
        if stem not in used:
            notes.append(f"{f}: skipped, a label without a scan")
    return Layout(name, evidence, tuple(cases), tuple(notes))


def _nifti_files(folder: Path, ending: str, notes: list[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    files, walk_notes = walk_files(folder)
    notes.extend(walk_notes)
    out = []
    for f in files:
        if f.parent != folder:
            notes.append(f"{f}: skipped, in a sub-folder of {folder.name}")
        elif f.name.endswith(ending) and is_nifti_path(f):
            out.append(f)
        else:
            notes.append(f"{f}: skipped, not a {ending} file")
    return out


def _volumes(path: Path) -> tuple[int, str | None]:
    """How many volumes the NIfTI file holds (its 4th dimension), from its header; or why it
    cannot be told."""
    try:
        with open_regular(path) as f:
            head = f.read(1 << 16)
        shape = read_nifti_header(path, head).get_data_shape()
    except MedaeError as exc:
        return 0, str(exc)
    except OSError as exc:
        return 0, f"{path}: cannot read ({exc.strerror or type(exc).__name__})"
    dims = list(shape)
    while len(dims) > 4 and dims[-1] == 1:
        dims.pop()
    return (dims[3] if len(dims) == 4 else 1), None


__all__ = ["BIDS_SUFFIXES", "BRATS_NAMES", "CHANNEL_NAMES", "SEQUENCE_ORDER", "Layout",
           "LayoutCase", "LayoutOptions", "Volume", "brats_layout", "find_layout",
           "parse_bids_filters"]
