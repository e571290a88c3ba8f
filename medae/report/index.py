"""``OUT/index.html``: every case of a scored folder in one sortable table.

Plain HTML with its style and a little JavaScript inline: it opens from the file system, makes
no request outside the folder, and stays quick with thousands of cases (thumbnails are loaded
lazily).  Everything taken from file names or records is escaped.  ``OUT/view.html`` (the case
page) is written beside it; it needs ``medae view OUT`` because browsers do not let a page read
volumes from the file system.
"""

from __future__ import annotations

import csv
import html
import json
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from medae.io.atomic import atomic_write_bytes

STATIC = "static"


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _num(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN -> None


def static_text(name: str) -> str:
    return resources.files("medae.report").joinpath(STATIC, name).read_text(encoding="utf-8")


def case_rows(out: Path, rows: Sequence[dict]) -> list[dict]:
    """Score rows completed with what the report shows: threshold, candidate volume, picture."""
    cases = []
    for row in rows:
        case = str(row.get("case_id", ""))
        ok = row.get("status") == "ok"
        rec = _read_json(out / case / "result.json") if ok else {}
        cands = _read_csv(out / case / "candidates.csv") if ok else []
        vols = [v for v in (_num(c.get("volume_mm3")) for c in cands) if v is not None]
        flagged = str(row.get("flagged", ""))
        cases.append({
            "case_id": case, "source": str(row.get("source", "")),
            "status": str(row.get("status", "")), "score": _num(row.get("score")),
            "flagged": None if flagged == "" else flagged in ("1", "True", "true"),
            "n_candidates": _num(row.get("n_candidates")),
            "volume_mm3": sum(vols) if ok else None,
            "threshold": _num(rec.get("threshold")), "rule": str(rec.get("threshold_rule", "")),
            "units": str(rec.get("map_units", "normalised")),
            "ortho": ok and (out / case / "overlay_ortho.png").is_file(),
        })
    return cases


#: how a threshold's units read after its value (scoring.map_units)
UNITS = {"iqr": " IQR of each scan's brain"}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _sort_value(value) -> str:
    """``data-v`` of a cell: numbers for numeric columns, empty (sorted last) when unknown."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, (int, float)) else str(value)


def _row_html(c: dict, prefix: str) -> str:
    e = html.escape
    link = e(f"{prefix}view.html?case={quote(c['case_id'], safe='')}")
    folder = e(prefix + quote(c["case_id"], safe="") + "/")
    thumb = (f'<a href="{folder}overlay_ortho.png"><img loading="lazy" decoding="async" '
             f'src="{folder}overlay_ortho.png" alt="" width="300" height="110"></a>'
             if c["ortho"] else "")
    flagged = {None: "–", True: "yes", False: "no"}[c["flagged"]]
    cells = [
        (c["case_id"], f'<a href="{link}">{e(c["case_id"])}</a>'),
        (c["score"], _fmt(c["score"])),
        (c["flagged"], flagged),
        (c["n_candidates"], _fmt(c["n_candidates"], 6)),
        (c["volume_mm3"], _fmt(c["volume_mm3"], 6)),
        (c["status"], e(c["status"])),
    ]
    tds = "".join(f'<td data-v="{e(_sort_value(v))}">{text}</td>' for v, text in cells)
    cls = ' class="flagged"' if c["flagged"] else ""
    return f'<tr{cls} title="{e(c["source"])}">{tds}<td>{thumb}</td></tr>'


def _settings_html(out: Path, cases: Sequence[dict]) -> str:
    e = html.escape
    run = _read_json(out / "run.json")
    args = run.get("arguments") if isinstance(run.get("arguments"), dict) else {}
    rules = sorted({(c["threshold"], c["rule"], c.get("units", "normalised")) for c in cases
                    if c["threshold"] is not None}, key=lambda r: (r[0], r[1], r[2]))
    items = [("model", f'{run.get("model_name", "?")} ({run.get("model", "?")})')]
    items += [("voxel threshold", f"{_fmt(t, 6)}{UNITS.get(units, '')} ({rule})")
              for t, rule, units in rules] or [("voxel threshold", "–")]
    point = run.get("operating_point")
    if isinstance(point, dict):
        figures = [f"{name} {_fmt(_num(point.get(key)), 3)}" for key, name in
                   (("dice", "Dice"), ("sensitivity", "lesion voxels caught"),
                    ("lesion_recall", "lesions touched"),
                    ("fp_per_scan", "false candidates per scan"))
                   if _num(point.get(key)) is not None]
        scans = _num(point.get("scans"))
        items.append(("operating point", f'{point.get("rule", "?")}, on its '
                      f'{_fmt(scans, 6)} calibration scan(s): ' + (", ".join(figures) or "–")))
    warnings = run.get("calibration_warnings")
    for warning in warnings if isinstance(warnings, list) else []:
        items.append(("calibration warning", str(warning)))
    for key in ("fpr", "threshold", "shard"):
        if args.get(key) is not None:
            items.append((f"--{key}", str(args[key])))
    items.append(("medae", str(run.get("medae_version", "?"))))
    return "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items)


def build_index(out: Path, rows: Sequence[dict], failures: Sequence[dict], *, prefix: str = "",
                title: str = "medae results", intro_html: str = "") -> str:
    """The report page as text (``prefix`` is the scored folder seen from the page)."""
    e = html.escape
    cases = case_rows(out, rows)
    cases.sort(key=lambda c: (c["status"] != "ok", -(c["score"] or 0.0), c["case_id"]))
    ok = [c for c in cases if c["status"] == "ok"]
    n_flagged = sum(bool(c["flagged"]) for c in ok)
    fails = "".join(
        f'<tr><td>{e(str(f.get("case_id", "")))}</td><td>{e(str(f.get("reason", "")))}</td></tr>'
        for f in failures)
    failed_html = (f'<h2 id="failures">Failures ({len(failures)})</h2><table class="fail">'
                   f"<tr><th>case</th><th>reason</th></tr>{fails}</table>" if failures else "")
    counts = (f"{len(ok)} scored, {n_flagged} flagged, {len(failures)} failed"
              + (' (<a href="#failures">reasons</a>)' if failures else ""))
    values = {"title": e(title), "intro": intro_html, "counts": counts,
              "settings": _settings_html(out, cases), "prefix": e(prefix),
              "rows": "\n".join(_row_html(c, prefix) for c in cases), "failures": failed_html}
    # one pass over the template: text inserted (e.g. a case named "{{rows}}") is never re-read
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], static_text("index.html"))


def write_index(out: str | os.PathLike, rows: Sequence[dict] | None = None,
                failures: Sequence[dict] | None = None, *, dest: str | os.PathLike | None = None,
                title: str = "medae results", intro_html: str = "") -> Path:
    """Write the report of scored folder ``out`` (default ``out/index.html``) and ``view.html``.

    ``rows``/``failures`` are the scores.csv / failures.csv rows (read from ``out`` when not
    given).  ``dest`` elsewhere (e.g. the demo's top folder) links into ``out`` relatively.
    """
    out = Path(out)
    rows = _read_csv(out / "scores.csv") if rows is None else rows
    failures = _read_csv(out / "failures.csv") if failures is None else failures
    dest = out / "index.html" if dest is None else Path(dest)
    prefix = os.path.relpath(out, dest.parent).replace(os.sep, "/") + "/"
    prefix = "" if prefix == "./" else prefix
    page = build_index(out, rows, failures, prefix=prefix, title=title, intro_html=intro_html)
    atomic_write_bytes(out / "view.html", static_text("view.html").encode())
    return atomic_write_bytes(dest, page.encode())
