"""The Medical Segmentation Decathlon (``dataset.json`` with ``modality``; 4D images whose
volumes are the channels) and nnU-Net v2 raw datasets (``dataset.json`` with ``channel_names``;
``CASE_000k`` files), with ``imagesTr/``, ``imagesTs/`` and ``labelsTr/``."""

from __future__ import annotations

import re
from pathlib import Path

from medae.errors import MedaeError
from medae.io.files import open_regular, walk_files
from medae.io.layouts.common import (
    SAFE_CASE,
    SEQUENCE_ORDER,
    Layout,
    LayoutCase,
    Volume,
    make_case,
    read_json,
    rel,
    safe_case,
    stem,
)
from medae.io.nifti import is_nifti_path, read_nifti_header

#: Decathlon ``modality`` and nnU-Net ``channel_names`` values, compared without letter case
CHANNEL_NAMES = {
    "flair": "flair", "t2flair": "flair", "t2-flair": "flair", "t2f": "flair",
    "t1": "t1", "t1w": "t1", "t1n": "t1",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1-gd": "t1c", "t1wce": "t1c",
    "t1post": "t1c",
    "t2": "t2", "t2w": "t2", "pd": "pd", "pdw": "pd", "t2star": "t2star", "t2starw": "t2star",
    "ct": "ct", "adc": "adc"}
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


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


def decathlon_layout(root: Path) -> Layout:
    """The Decathlon or nnU-Net v2 dataset at ``root`` (its ``dataset.json`` says which)."""
    spec_path = root / "dataset.json"
    spec = read_json(spec_path)
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
            labels[stem(f)] = f
    used: set[str] = set()
    for folder in ("imagesTr", "imagesTs"):
        files = _nifti_files(root / folder, ending, notes)
        groups: dict[str, dict[int, Path]] = {}
        stems = {stem(f) for f in files}
        for f in files:
            m = _NNUNET.match(stem(f))
            # nnU-Net names every channel CASE_000k; a Decathlon image is CASE (nnU-Net v1
            # datasets keep the Decathlon's dataset.json with CASE_000k files)
            if m and (name == "nnU-Net v2" or f"{m['case']}_0000" in stems):
                groups.setdefault(m["case"], {})[int(m["index"])] = f
            elif name == "nnU-Net v2":
                notes.append(f"{f}: skipped, not named CASE_XXXX{ending} (nnU-Net v2)")
            else:
                groups.setdefault(stem(f), {})[-1] = f
        for case, members in sorted(groups.items()):
            found, problem = _sequences(members, channels, n_channels, root, notes)
            if found:
                used.add(case)
                case_id = case if SAFE_CASE.match(case) else safe_case(case)
                cases.append(make_case(case_id, found, root, label=labels.get(case),
                                       problem=problem))
    for case, f in sorted(labels.items()):
        if case not in used:
            notes.append(f"{f}: skipped, a label without a scan")
    return Layout(name, evidence, tuple(cases), tuple(notes))


def _sequences(members: dict[int, Path], channels: dict[int, str], n_channels: int, root: Path,
               notes: list[str]) -> tuple[dict[str, list[Volume]], str | None]:
    """A case's sequences from its files (``members``: channel index -> file; -1: one file
    whose volumes are the channels), and the case's problem if any."""
    found: dict[str, list[Volume]] = {}
    problem = None
    if -1 in members:
        count, why = _volumes(members[-1])
        if why:
            problem = why
        elif count != n_channels:
            problem = (f"{rel(members[-1], root)} holds {count} volume(s), dataset.json names "
                       f"{n_channels} channel(s)")
        for index, seq in channels.items():
            found[seq] = [Volume(members[-1], index if count > 1 else None)]
        return found, problem
    for index, f in sorted(members.items()):
        if index in channels:
            found[channels[index]] = [Volume(f)]
        elif index >= n_channels:
            notes.append(f"{f}: skipped, dataset.json names no channel {index}")
    return found, problem


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
        return 0, exc.reason or str(exc)
    except OSError as exc:
        return 0, f"cannot read ({exc.strerror or type(exc).__name__})"
    dims = list(shape)
    while len(dims) > 4 and dims[-1] == 1:
        dims.pop()
    return (dims[3] if len(dims) == 4 else 1), None

