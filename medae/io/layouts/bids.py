"""BIDS datasets (``dataset_description.json``): a case is a subject or a subject's session."""

from __future__ import annotations

import re
from pathlib import Path

from medae.errors import MedaeError
from medae.io.files import walk_files
from medae.io.layouts.common import (
    Layout,
    LayoutOptions,
    Volume,
    make_case,
    one_file,
    read_json,
    stem,
)
from medae.io.nifti import is_nifti_path

#: BIDS anatomical suffixes (a ``T1w`` with a ``ce-`` entity is ``t1c``)
BIDS_SUFFIXES = {"FLAIR": "flair", "T1w": "t1", "T2w": "t2", "PDw": "pd", "T2starw": "t2star"}
_BIDS_NAME = re.compile(r"^sub-[A-Za-z0-9]+(_[a-z]+-[A-Za-z0-9]+)*_[A-Za-z0-9]+$")
_FILTER_TERM = re.compile(r"^(?P<key>[a-z]+)=(?P<values>[A-Za-z0-9]+(,[A-Za-z0-9]+)*)$")
#: the value of a BIDS filter term that keeps the files without that entity
NO_ENTITY = "none"


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
            parsed = _bids_entities(stem(f))
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


def bids_layout(root: Path, options: LayoutOptions) -> Layout:
    read_json(root / "dataset_description.json", limit=1 << 20)
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
        mask, p1 = one_file(case, "brain mask (desc-brain_mask)", masks.get(case, []), root)
        label, p2 = one_file(case, "lesion label (desc-lesion)", labels.get(case, []), root)
        runs = sorted({e for seqs in found[case].values() if len(seqs) > 1 for v in seqs
                       for e in _entities_of(v.path) if e.startswith("run-")})
        hint = (f": pick one with --bids, e.g. --bids \"run={runs[-1][4:]}\"" if runs else
                ": pick one with --bids entity filters (acq=..., rec=..., run=...)")
        cases.append(make_case(case, found[case], root, mask=mask, label=label, problem=p1 or p2,
                           hint=hint))
    return Layout("BIDS", "dataset_description.json", tuple(cases), tuple(notes))


def _entities_of(path: Path) -> list[str]:
    return stem(path).split("_")[:-1]


def _derivatives(root: Path, name: str) -> Path:
    """``derivatives/NAME`` of the dataset, ``NAME`` inside it, or the path ``NAME`` itself."""
    for path in (root / "derivatives" / name, root / name, Path(name)):
        if path.is_dir():
            return path
    raise MedaeError(name, f"--derivatives: no folder derivatives/{name} in {root} "
                           "and no such folder")

