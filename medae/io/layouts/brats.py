"""BraTS case folders of every edition: ``<folder>_flair/_t1/_t1ce/_t2/_seg`` (2018-2021) and
``<folder>-t2f/-t1n/-t1c/-t2w/-seg`` (2023 on); the segmentation is the label, never a scan."""

from __future__ import annotations

from pathlib import Path

from medae.io.layouts.common import (
    SAFE_CASE,
    Layout,
    Volume,
    make_case,
    one_file,
    safe_case,
    stem,
)
from medae.io.nifti import is_nifti_path

#: BraTS file suffixes: 2018-2021 (``_t1ce``) and 2023 on (``-t2f``); ``seg`` is the label
BRATS_NAMES = {"flair": "flair", "t1": "t1", "t1ce": "t1c", "t2": "t2",
               "t2f": "flair", "t1n": "t1", "t1c": "t1c", "t2w": "t2"}
BRATS_LABEL = "seg"


def brats_layout(root: Path, files: list[Path]) -> tuple[Layout | None, list[Path]]:
    """BraTS case folders among ``files`` (the files under ``root``): a folder holding a NIfTI
    file named after it plus a BraTS suffix (``_flair``, ``-t2f``, ``_seg`` ...).  Returns the
    layout (None when no folder is one) and the files outside those folders, which are
    discovered as in any folder."""
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)
    known = {*BRATS_NAMES, BRATS_LABEL}

    def key_of(folder: Path, f: Path) -> str | None:
        name, n = stem(f), len(folder.name)
        if (is_nifti_path(f) and name.startswith(folder.name) and len(name) > n + 1
                and name[n] in "_-"):
            return name[n + 1:]
        return None

    case_folders = [d for d, fs in by_folder.items()
                    if any((key_of(d, f) or "").lower() in known for f in fs)]
    if not case_folders:
        return None, files
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
        case = folder.name if SAFE_CASE.match(folder.name) else safe_case(folder.name)
        if not found:
            notes.extend(f"{f}: skipped, a label without a scan (case {case})" for f in segs)
            continue
        label, problem = one_file(case, "segmentation (seg)", sorted(segs), root)
        cases.append(make_case(case, found, root, label=label, problem=problem))
    inside = set(case_folders)
    evidence = ("case folders of <case>-t2f/-t1n/-t1c/-t2w/-seg files" if modern else
                "case folders of <case>_flair/_t1/_t1ce/_t2/_seg files")
    return (Layout("BraTS", evidence, tuple(cases), tuple(notes)),
            [f for f in files if f.parent not in inside])


