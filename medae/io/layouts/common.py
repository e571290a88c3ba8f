"""What every dataset layout returns: cases with named sequences, labels and masks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from medae.errors import MedaeError
from medae.io.files import read_regular

#: the sequence names recipes use, in the order a case lists them
SEQUENCE_ORDER = ("flair", "t1", "t1c", "t2", "pd", "t2star", "ct", "adc")
SAFE_CASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")


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


def canonical_order(name: str) -> int:
    return SEQUENCE_ORDER.index(name) if name in SEQUENCE_ORDER else len(SEQUENCE_ORDER)


def read_json(path: Path, limit: int = 1 << 26) -> dict:
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


def rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def make_case(case_id: str, found: dict[str, list[Volume]], root: Path, *, mask=None, label=None,
          problem: str | None = None, hint: str = "") -> LayoutCase:
    """A case from its sequences' candidates: two candidates for one sequence fail the case."""
    names = sorted(found, key=lambda n: (canonical_order(n), n))
    for name in names:
        if len(found[name]) > 1 and problem is None:
            shown = ", ".join(rel(v.path, root) for v in found[name])
            problem = f"case {case_id}: several scans for sequence {name} ({shown}){hint}"
    return LayoutCase(case_id=case_id, sequences=tuple((n, found[n][0]) for n in names),
                      mask=mask, label=label, problem=problem)


def one_file(case_id: str, what: str, paths: list[Path], root: Path
             ) -> tuple[Path | None, str | None]:
    """The one ``what`` file of a case; several are the case's problem."""
    if len(paths) > 1:
        return paths[0], (f"case {case_id}: several {what} files "
                          f"({', '.join(rel(p, root) for p in paths)})")
    return (paths[0] if paths else None), None


def safe_case(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:120] or "case"

