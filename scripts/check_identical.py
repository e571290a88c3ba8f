#!/usr/bin/env python
"""Same outputs before and after a refactor: SHA-256 of every file the pipeline writes.

    python scripts/check_identical.py --json before.json            # on the old tree
    python scripts/check_identical.py --json after.json --compare before.json

Runs, on a fixed seed and 2 torch threads (about 2-3 minutes on 2 CPU cores):

1. ``medae demo`` at a small size (6 healthy subjects, 2 patients, one of them a DICOM series,
   120 training steps): synthetic data, training, calibration, scoring, evaluation, report;
2. ``medae train`` of the intensity recipe on the demo's healthy subjects and ``medae score`` of
   one real scan, the BraTS 2013 pat0001 FLAIR with its brain mask (``MEDAE_DATA``, default
   ``../shared/data``).

Every file under the output folder is hashed, by its path relative to that folder, except the
files that hold wall-clock times, durations or absolute paths (listed in ``VOLATILE``); those
are hashed after their volatile parts are taken out (``_normalised``) where that is possible,
so their other content is still compared; a ``.gz`` file is also hashed inflated, so that a
change of compressor is told from a change of content.  With ``--compare`` the exit status is 1
when any hash differs, a file is missing or a file is new.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")).resolve()
SCAN = DATA / "brain" / "brats2013" / "pat0001"

DEMO = """
import torch
torch.set_num_threads(2)
from medae.demo import DemoSize, run_demo
run_demo({out!r}, size=DemoSize(n_healthy=6, n_patients=2, steps=120), seed=0, device="cpu",
         progress=False)
"""

#: keys (at any depth of a JSON file) whose values are times, durations, versions of the
#: machine or absolute paths; dropped before hashing
VOLATILE_KEYS = {"seconds", "started", "finished", "time", "elapsed_s", "duration_s",
                 "created", "host", "hostname", "python", "torch", "platform", "wall_s",
                 "seconds_per_scan", "timestamp", "date", "samples_per_s",
                 "stages"}  # result.json: seconds per scoring stage


def _run(cmd: list[str], env: dict) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def _normalised(path: Path, out: Path) -> bytes:
    """The file's bytes with the output folder's absolute path replaced by ``<OUT>`` and, in
    JSON, the volatile keys dropped; in CSV, the volatile columns dropped."""
    raw = path.read_bytes()
    for prefix in (str(out.resolve()), str(out)):
        raw = raw.replace(prefix.encode(), b"<OUT>")
    if path.suffix == ".json":
        def drop(v):
            if isinstance(v, dict):
                return {k: drop(x) for k, x in v.items() if k not in VOLATILE_KEYS}
            if isinstance(v, list):
                return [drop(x) for x in v]
            return v
        return json.dumps(drop(json.loads(raw)), sort_keys=True).encode()
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(raw.decode())))
        if rows:
            keep = [i for i, name in enumerate(rows[0]) if name not in VOLATILE_KEYS]
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows([[r[i] for i in keep if i < len(r)]
                                                           for r in rows])
            raw = buf.getvalue().encode()
    if path.suffix in (".html", ".md"):  # the demo's summary prints its run time
        raw = re.sub(rb"\d+(\.\d+)? s\b", b"<T> s", raw)
        raw = re.sub(rb"in \d+ s", b"in <T> s", raw)
    return raw


#: files (relative names, or their last part) with times, durations or absolute paths in them;
#: they are compared after ``_normalised``
VOLATILE = {
    "summary.json": "the demo's run time (seconds)",
    "run.json": "start/finish times, durations and the arguments' absolute paths",
    "result.json": "per-scan durations and the scan's absolute path",
    "model.json": "training durations and the data's absolute paths",
    "log.csv": "per-epoch wall-clock seconds and samples per second",
    "dataset.json": "the generator's run time and the CSVs' absolute paths",
    "scores.csv": "the scans' absolute paths",
    "failures.csv": "the scans' absolute paths",
    "index.html": "the demo's run time and links",
    "view.html": "the case list with absolute paths",
    "report.md": "the results and manifest paths",
    "metrics.json": "the results and manifest paths",
    "config.yaml": "none expected; normalised for paths",
    "test.csv": "absolute paths of the test scans",
    "healthy.csv": "none expected",
    "patients.csv": "none expected",
    "manifest.csv": "absolute paths of the real scan",
}

#: suffix of the entry that hashes a .gz file's inflated bytes
INFLATED = "#inflated"

#: never compared: tensorboard event files carry the host name and the time in their names
SKIP = re.compile(r"(^|/)(events\.out\.tfevents\.|checkpoint\.pt$)")


def hashes(out: Path) -> dict[str, str]:
    result = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if SKIP.search(rel):
            continue
        data = _normalised(path, out) if path.name in VOLATILE else path.read_bytes()
        tag = "normalised:" if path.name in VOLATILE else ""
        result[rel] = tag + hashlib.sha256(data).hexdigest()
        if path.name.endswith(".gz"):  # tells a change of compressor from a change of content
            result[rel + INFLATED] = hashlib.sha256(gzip.decompress(data)).hexdigest()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="where to write the hashes")
    parser.add_argument("--compare", help="hashes written by an earlier run to compare with")
    parser.add_argument("--keep", help="run in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    if not (SCAN / "Flair_subtrMeanDivStd.nii.gz").is_file():
        sys.exit(f"{SCAN}: not found (set MEDAE_DATA to the shared data folder)")
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory(prefix="medae-ident-") as tmp:
        out = Path(args.keep or tmp).resolve()
        out.mkdir(parents=True, exist_ok=True)
        demo = out / "demo"
        _run([sys.executable, "-c", DEMO.format(out=str(demo))], env)
        manifest = out / "manifest.csv"
        manifest.write_text("case_id,image,mask\npat0001,"
                            f"{SCAN / 'Flair_subtrMeanDivStd.nii.gz'},"
                            f"{SCAN / 'brainmask.nii.gz'}\n")
        cli = [sys.executable, "-m", "medae"]
        _run([*cli, "train", "--config", str(ROOT / "configs" / "intensity.yaml"), "--data",
              str(demo / "data" / "healthy.csv"), "--output", str(out / "intensity"),
              "--device", "cpu", "--seed", "0", "-q"], env)
        _run([*cli, "score", "--model", str(out / "intensity"), "--input", str(manifest),
              "--output", str(out / "real"), "--device", "cpu", "-q"], env)
        found = hashes(out)
    Path(args.json).write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    n_files = sum(not k.endswith(INFLATED) for k in found)
    print(f"{n_files} files hashed "
          f"({sum(v.startswith('normalised:') for v in found.values())} normalised) -> "
          f"{args.json}")
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    bad = stream_only = 0
    names = sorted(k for k in set(before) | set(found) if not k.endswith(INFLATED))
    for rel in names:
        if rel not in found:
            print(f"missing now: {rel}")
        elif rel not in before:
            print(f"new now: {rel}")
        elif before[rel] != found[rel]:
            inflated = rel + INFLATED
            if inflated in before and before.get(inflated) == found.get(inflated):
                print(f"differs in the gzip stream only (same inflated bytes): {rel}")
                stream_only += 1
            else:
                print(f"differs: {rel}")
        else:
            continue
        bad += 1
    print("identical" if not bad else
          f"{bad} of {len(names)} files differ ({stream_only} in the gzip stream only)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
