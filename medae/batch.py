"""The folder job: score many scans, resumable, one failure never stops the rest.

Layout of ``OUT`` (scripts rely on it)::

    OUT/<case_id>/anomaly_map.nii.gz   float32 heat map on the source's grid and affine
    OUT/<case_id>/candidates.nii.gz    candidate labels (1 = strongest), same grid
    OUT/<case_id>/candidates.csv       one row per candidate
    OUT/<case_id>/brain_mask.nii.gz    the brain mask scoring used, same grid
    OUT/<case_id>/image.nii.gz         the scan itself, same grid (the viewer's background;
                                       not with --no-image)
    OUT/<case_id>/overlay_*.png        pictures
    OUT/<case_id>/reconstruction.nii.gz  (--save-reconstruction)
    OUT/<case_id>/anomaly_map_<sequence>.nii.gz  per input sequence (multi-sequence models,
                                       --save-channel-maps)
    OUT/<case_id>/result.json          the case's score row (marks the case as finished) and
                                       the SHA-256 of the model that scored it
    OUT/scores.csv   OUT/failures.csv   OUT/run.json   OUT/latents.npz (--save-latent)
    OUT/index.html   OUT/view.html      the report and the case page (``medae view OUT``)

Loading runs ahead in prefetch threads, and a case's outputs are written in a writer thread
while the next case is scored (a CT-size volume is loaded, scored and written alone, see
``OVERLAP_VOXELS``); ``result.json``
records the seconds each stage took (``stages``: load, reconstruct, heat map, candidates, write
NIfTI/CSV, overlays; and brain extraction, bias correction and registration, within load, when
they ran) and, for a brain recipe (``preprocess.brain``), the mode and the brain mask's volume
(``brain``, ``brain_volume_cm3``) beside ``mask_rule``; with ``preprocess.registration``, the
mode (``registration``) and, per further sequence registered to the first, the transform found
(``registered``: rotation, shift, matrix, mutual information, overlap, seconds); with
``preprocess.space: template``, ``space`` and the affine fit to the template (``template``:
matrix, scale, mutual information, Dice, seconds; ``stages``: template registration).  A case is
written into a hidden temporary folder and renamed into place when complete, so a killed job
never leaves a partial case; ``--continue`` skips finished cases.  Tables are rebuilt from the
per-case records (every 30 s and at the end), so shards of one job can share ``OUT``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medae.device import LARGE_VOXELS, trim_heap
from medae.errors import MedaeError, failure_reason
from medae.io import locks
from medae.io.atomic import DIR_MODE, atomic_write_bytes, atomic_write_csv
from medae.io.discover import ScanSource, is_case_folder, safe_id
from medae.io.files import read_regular
from medae.io.nifti import write_on_grid
from medae.scoring.scorer import AnomalyModel, ScoreResult
from medae.version import __version__

SCORE_COLUMNS = ["case_id", "source", "score", "flagged", "n_candidates", "status", "seconds"]
CANDIDATE_COLUMNS = ["id", "voxels", "volume_mm3", "centroid_x_mm", "centroid_y_mm",
                     "centroid_z_mm", "bbox", "max_score", "mean_score"]
FAILED_DIR = ".failed"
#: what every case folder holds (with image.nii.gz unless --no-image, pictures unless
#: --no-overlays)
CASE_FILES = ("anomaly_map.nii.gz", "candidates.nii.gz", "brain_mask.nii.gz", "candidates.csv",
              "result.json")
TABLE_REFRESH_S = 30.0
#: a case's outputs are written while the next case is scored, except for volumes of more
#: voxels than this (CT-size: the memory of one case at a time comes first)
OVERLAP_VOXELS = LARGE_VOXELS
#: names medae writes at the top of OUT (a case id never takes one of them, see discover)
TOP_LEVEL = ("scores.csv", "failures.csv", "run.json", "latents.npz", "index.html", "view.html")
#: temporary names medae leaves when killed: ``.<name>.<8 random characters>.tmp|.old``
_LEFTOVER = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")
#: locks held by the jobs writing into OUT (removed by the last one, see ``_OutputLock``)
LOCK_FILE = ".medae.lock"
TABLES_LOCK_FILE = ".medae.tables.lock"


@dataclass
class BatchSummary:
    scored: int = 0
    skipped: int = 0
    failed: int = 0


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` (1-based, as SLURM arrays count: 1/4 … 4/4) → (index, count)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise MedaeError(f"--shard {text!r}: expected i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise MedaeError(f"--shard {text!r}: need 1 <= i <= n")
    return i - 1, n


#: the overlays' colour-bar label per scoring.map_units
MAP_UNITS_LABEL = {"normalised": "anomaly score",
                   "iqr": "anomaly score (IQRs of this brain)"}


def _source_text(src: ScanSource) -> str:
    return str(src.path) + (f" [{src.series.volume}]" if src.series and src.series.volume else "")


def _write_case(out: Path, src: ScanSource, scan, result: ScoreResult, row: dict, *,
                save_reconstruction: bool, overlays: bool, t0: float,
                save_image: bool = True, inputs: tuple[str, ...] = (),
                stages: dict[str, float] | None = None, model_sha: str | None = None,
                brain: dict | None = None) -> None:
    """Write every output of a case into a temporary folder, then rename it into place
    (``stages``: seconds per stage so far, recorded with the ones spent here; ``brain``: a
    brain recipe's mask mode and volume, recorded in result.json)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{src.case_id}.", suffix=".tmp", dir=out))
    made = os.stat(tmp).st_ino
    stages = dict(stages or {})
    t_write = time.perf_counter()
    try:
        tmp.chmod(DIR_MODE)
        write_on_grid(result.heatmap, scan, tmp / "anomaly_map.nii.gz")
        n = len(result.candidates)
        label_dtype = np.uint8 if n < 256 else np.uint16 if n < 65536 else np.int32
        write_on_grid(result.labels, scan, tmp / "candidates.nii.gz", dtype=label_dtype)
        write_on_grid(result.brain_mask, scan, tmp / "brain_mask.nii.gz", dtype=np.uint8)
        result.brain_mask = None  # written, and nothing below needs it (150 MiB on a CT)
        atomic_write_csv(tmp / "candidates.csv", CANDIDATE_COLUMNS,
                   [c.row() for c in result.candidates])
        if save_image:  # the viewer's background: written by medae, so no source header text
            write_on_grid(scan.array, scan, tmp / "image.nii.gz", dtype=_image_dtype(scan.array))
        if save_reconstruction and result.reconstruction is not None:
            write_on_grid(result.reconstruction, scan, tmp / "reconstruction.nii.gz")
        for name, channel_map in (result.channel_maps or {}).items():
            write_on_grid(channel_map, scan, tmp / f"anomaly_map_{safe_id(name)}.nii.gz")
        stages["write NIfTI/CSV"] = time.perf_counter() - t_write
        if overlays:
            from medae.overlay import write_overlays

            t_overlays = time.perf_counter()
            write_overlays(scan.array, result.heatmap, scan.spacing, tmp,
                           candidates=result.labels, threshold=result.threshold,
                           mask=result.analysed, units=MAP_UNITS_LABEL[result.map_units],
                           title=src.case_id)
            stages["overlays"] = time.perf_counter() - t_overlays
        row["seconds"] = round(time.perf_counter() - t0, 3)  # loading to outputs written
        record = {"row": row, "threshold": result.threshold,
                  "threshold_rule": result.threshold_rule, "mask_rule": result.mask_rule,
                  **(brain or {}),
                  "min_volume_mm3": result.min_volume_mm3, "inputs": list(inputs),
                  "map_units": result.map_units,
                  "normalisation": result.normalisation,
                  "operating_point": result.operating_point,
                  "model_sha256": model_sha,
                  "stages": {k: round(v, 4) for k, v in stages.items()},
                  "latent": [float(v) for v in np.ravel(result.latent)]}
        atomic_write_bytes(tmp / "result.json", json.dumps(record, allow_nan=False).encode())
        _check_whole(tmp, made, save_image)
        final = out / src.case_id
        if os.path.lexists(final):  # a previous run's output (not --continue): replace it whole
            if not is_case_folder(final):
                raise MedaeError(final, "exists and was not written by medae: left untouched "
                                        "(move it, or choose another --output)")
            old = Path(tempfile.mkdtemp(prefix=f".{src.case_id}.", suffix=".old", dir=out))
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_whole(tmp: Path, made: int, save_image: bool) -> None:
    """A case folder is published only when whole: still the folder made for it (not one a
    write re-created after something removed it), holding every output."""
    try:
        same = os.stat(tmp).st_ino == made
        names = set(os.listdir(tmp))
    except OSError:
        same, names = False, set()
    missing = sorted((set(CASE_FILES) | ({"image.nii.gz"} if save_image else set())) - names)
    if not same or missing:
        raise MedaeError(tmp, "the temporary case folder was removed or emptied while being "
                              "written (another job in this output folder?); nothing published")


def model_identity(model: AnomalyModel) -> str:
    """SHA-256 of the bundle's whole ``model.json`` (which holds its weights' SHA-256, its
    settings and its calibrated thresholds): two bundles that could score differently differ."""
    text = json.dumps(model.bundle.meta, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_same_model(out: Path, model: AnomalyModel, model_sha: str, settings: dict) -> None:
    """``--continue`` goes on only with the model and threshold settings that scored the cases
    already in ``out`` (as its run.json records them): refused in one line otherwise."""
    try:
        run = json.loads(read_regular(out / "run.json", limit=1 << 24))
    except FileNotFoundError:
        return
    except (OSError, ValueError, RecursionError, MedaeError):
        run = None
    if not isinstance(run, dict):
        raise MedaeError(out / "run.json", "unreadable: --continue cannot tell which model "
                                           "scored the cases there; score without --continue")
    fix = "score into a new --output, or without --continue to score every case again"
    before = run.get("model_sha256")
    if before is None:  # written before medae recorded the hash: the path and name tell
        same = (run.get("model") == str(model.bundle.path)
                and run.get("model_name") == model.name)
    else:
        same = before == model_sha
    if not same:
        raise MedaeError(out, f"--continue: the cases there were scored with another model "
                              f"({run.get('model')!s}, sha256 {str(before)[:12]}; now "
                              f"{model.bundle.path}, sha256 {model_sha[:12]}): {fix}")
    old = run.get("threshold_settings")
    if old is None:
        args = run.get("arguments") if isinstance(run.get("arguments"), dict) else {}
        old = {"fpr": args.get("fpr"), "threshold": args.get("threshold")}
    if old != settings:
        def text(s):
            return ", ".join(f"--{k} {v}" for k, v in sorted(s.items()) if v is not None) or (
                "the calibrated default")
        raise MedaeError(out, f"--continue: the cases there were scored with other threshold "
                              f"settings ({text(old)}; now {text(settings)}): {fix}")


def check_output(out: Path) -> bool:
    """Refuse an ``out`` that is not a folder, or that holds a file named like medae's tables
    that medae did not write (it would be overwritten).  True when ``out`` is medae's output."""
    if os.path.lexists(out) and not out.is_dir():
        raise MedaeError(out, "--output exists and is not a folder")
    ours = _is_output_folder(out)
    if not ours:
        for name in TOP_LEVEL:
            if os.path.lexists(out / name):
                # a shard of this job may have written run.json (always its first file, never
                # removed) since it was read above: read it again before refusing
                if _is_output_folder(out):
                    return True
                raise MedaeError(out / name, "exists and was not written by medae; it would be "
                                             "overwritten: choose another --output")
    return ours


def prepare_output(out: Path) -> None:
    """Check ``out`` (see :func:`check_output`) and create it."""
    check_output(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / FAILED_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise MedaeError(out, f"cannot create the output folder: {exc.strerror or exc}") from None


def _remove_leftovers(out: Path) -> None:
    """Remove medae's temporary names left in ``out`` by killed jobs (only while no other job
    writes into ``out``: see :class:`_OutputLock`)."""
    for folder in (out, out / FAILED_DIR):
        for leftover in folder.iterdir():
            if not _LEFTOVER.match(leftover.name) or leftover.is_symlink():
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


class _OutputLock:
    """The jobs writing into one ``OUT`` (shards): each holds a shared lock on ``OUT/.medae.lock``
    while it runs.  Temporary names are removed only by a job that finds no other holder (so
    never while their owner lives: a killed job's lock ends with it), and the tables are rebuilt
    by one job at a time.  The last job out removes the lock files.  On a file system that does
    not lock, leftovers stay (hidden names, harmless) and tables are rebuilt unlocked."""

    def __init__(self, out: Path):
        self.out = out
        self.fd: int | None = None
        self.works = True

    def __enter__(self) -> _OutputLock:
        path = self.out / LOCK_FILE
        try:
            self.fd = locks.lock(path, exclusive=True, wait=False)
            if self.fd is not None:  # alone: what is left was left by killed jobs
                _remove_leftovers(self.out)
                locks.share(self.fd)
            else:
                self.fd = locks.lock(path, exclusive=False, wait=True)
        except locks.LockUnsupported:
            self.works = False
        return self

    @contextlib.contextmanager
    def tables(self) -> Iterator[None]:
        fd = None
        if self.works:
            with contextlib.suppress(locks.LockUnsupported):
                fd = locks.lock(self.out / TABLES_LOCK_FILE, exclusive=True, wait=True)
        try:
            yield
        finally:
            locks.release(fd)

    def __exit__(self, *exc) -> None:
        locks.release(self.fd)
        self.fd = None
        if not self.works:
            return
        try:
            fd = locks.lock(self.out / LOCK_FILE, exclusive=True, wait=False)
        except (locks.LockUnsupported, MedaeError):
            return
        if fd is not None:  # the last one out
            for name in (TABLES_LOCK_FILE, LOCK_FILE):
                with contextlib.suppress(OSError):
                    (self.out / name).unlink()
            locks.release(fd)


def _is_output_folder(out: Path) -> bool:
    """``out`` holds a ``run.json`` written by medae score."""
    try:
        run = json.loads((out / "run.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(run, dict) and "medae_version" in run and "shard" in run


def _image_dtype(array: np.ndarray) -> type:
    """int16 for whole numbers that fit (most CT and MR scans: half the size), else float32
    (a scan held in 16 bits, ``Scan.compact``, in its own type)."""
    if array.dtype in (np.int16, np.uint16):
        return array.dtype.type
    step = max(1, (1 << 20) // max(1, array[0].size))  # slabs of ~1 M voxels: no full-size
    for i in range(0, len(array), step):                # temporary (nor copy of a strided view)
        part = array[i:i + step]
        if part.min() < -32768 or part.max() > 32767 or not np.array_equal(part, np.round(part)):
            return np.float32
    return np.int16


def _brain_record(model: AnomalyModel, prep) -> dict:
    """What result.json says of a brain recipe's mask (``preprocess.brain``), of N4 and of the
    further sequences' registration (``preprocess.registration``: the transform found for each
    sequence registered to the first)."""
    out = {}
    if model.preprocess_config.registration != "none":
        out.update(registration=model.preprocess_config.registration,
                   registered=prep.registration)
    if prep.brain != "none":
        out.update(brain=prep.brain, brain_volume_cm3=prep.brain_volume_cm3)
    if prep.template is not None:  # preprocess.space template: the affine fit to the template
        out.update(space="template", template=prep.template.record())
    if model.preprocess_config.bias_correction != "none":
        out.update(bias_correction=model.preprocess_config.bias_correction,
                   n4_shrink=model.preprocess_config.n4_shrink)
    return out


def _load_timed(model: AnomalyModel, src: ScanSource) -> tuple:
    t0 = time.perf_counter()
    scan, prep = model.load(src)
    return scan, prep, time.perf_counter() - t0


def _prefetch(model: AnomalyModel, sources: Sequence[ScanSource], workers: int
              ) -> Iterator[tuple[ScanSource, Future]]:
    """Load and preprocess ahead of the model in worker threads (bounded look-ahead).  A case
    of more than ``OVERLAP_VOXELS`` (its headers say, before any pixel is read) is loaded alone:
    only once the cases before it are done, and nothing is read ahead while it is scored, so a
    folder of CT volumes needs the memory of one."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: list[tuple[ScanSource, Future]] = []
        it = iter(sources)
        nxt = next(it, None)
        while pending or nxt is not None:
            while nxt is not None and len(pending) <= workers:
                big = nxt.voxels() > OVERLAP_VOXELS
                if big and pending:
                    break
                pending.append((nxt, pool.submit(_load_timed, model, nxt)))
                nxt = next(it, None)
                if big:
                    break
            # nothing kept here: the caller holds the loaded case for as long as it needs it
            yield pending.pop(0)


def rebuild_tables(out: Path, save_latent: bool = False) -> tuple[list[dict], list[dict]]:
    """Rewrite scores.csv / failures.csv (and latents.npz) from the per-case records."""
    rows, failures, latents = [], [], []
    for rec_path in sorted(out.glob("*/result.json")):
        if rec_path.parent.name.startswith(".") or not is_case_folder(rec_path.parent):
            continue
        rec = json.loads(rec_path.read_text())
        rows.append(rec["row"])
        latents.append((rec["row"]["case_id"], rec.get("latent") or []))
    for fail_path in sorted((out / FAILED_DIR).glob("*.json")):
        rec = json.loads(fail_path.read_text())
        failures.append(rec)
        rows.append({"case_id": rec["case_id"], "source": rec["source"], "score": "",
                     "flagged": "", "n_candidates": "", "status": "failed",
                     "seconds": rec.get("seconds", "")})
    rows.sort(key=lambda r: r["case_id"])
    atomic_write_csv(out / "scores.csv", SCORE_COLUMNS, rows)
    atomic_write_csv(out / "failures.csv", ["case_id", "source", "reason"], failures)
    if save_latent and latents:
        width = max(len(v) for _, v in latents)
        matrix = np.array([v if len(v) == width else [np.nan] * width for _, v in latents],
                          dtype=np.float32)
        buf = io.BytesIO()
        np.savez(buf, case_id=np.array([c for c, _ in latents]), latent=matrix)
        atomic_write_bytes(out / "latents.npz", buf.getvalue())
    _write_report(out, rows, failures)
    return rows, failures


def _write_report(out: Path, rows: list[dict], failures: list[dict]) -> None:
    """OUT/index.html and OUT/view.html; a report that cannot be written never stops a batch."""
    from medae.report import write_index

    try:
        write_index(out, rows, failures)
    except Exception as exc:  # the tables are written; the report is a convenience
        print(f"warning: {out / 'index.html'} not written: {exc}", file=sys.stderr)


@dataclass
class _Writing:
    """A scored case whose outputs are being written (in the writer thread)."""

    k: int
    src: ScanSource
    fail_path: Path
    t0: float
    result: ScoreResult | None
    row: dict
    future: Future


def _record_failure(src: ScanSource, fail_path: Path, exc: BaseException, t0: float,
                    summary: BatchSummary) -> str:
    summary.failed += 1
    reason = failure_reason(src.path, exc)
    atomic_write_bytes(fail_path, json.dumps({
        "case_id": src.case_id, "source": _source_text(src), "reason": reason,
        "seconds": round(time.perf_counter() - t0, 3)}).encode())
    return f"FAILED: {reason}"


def _report(k: int, n: int, src: ScanSource, msg: str, progress: bool, out: Path,
            save_latent: bool, last: list[float], guard: _OutputLock) -> None:
    if progress:
        print(f"[{k}/{n}] {src.case_id}: {msg}", file=sys.stderr, flush=True)
    # the tables re-read every case record: refresh them at most every 30 s (cost grows
    # with the folder); the per-case records are what --continue relies on
    if time.monotonic() - last[0] > TABLE_REFRESH_S:
        with guard.tables():
            rebuild_tables(out, save_latent)
        last[0] = time.monotonic()


def score_sources(model: AnomalyModel, sources: Sequence[ScanSource], out: str | os.PathLike,
                  *, fpr: float | None = None, threshold: float | None = None,
                  shard: tuple[int, int] = (0, 1), resume: bool = False,
                  save_reconstruction: bool = False, save_latent: bool = False,
                  overlays: bool = True, workers: int = 2, progress: bool = True,
                  arguments: dict | None = None, save_image: bool = True,
                  save_channel_maps: bool = False) -> BatchSummary:
    """Score ``sources`` into ``out`` (see the module docstring for the layout)."""
    out = Path(out)
    prepare_output(out)
    with _OutputLock(out) as guard:
        return _score_locked(model, sources, out, guard, fpr=fpr, threshold=threshold,
                             shard=shard, resume=resume, save_reconstruction=save_reconstruction,
                             save_latent=save_latent, overlays=overlays, workers=workers,
                             progress=progress, arguments=arguments, save_image=save_image,
                             save_channel_maps=save_channel_maps)


def _score_locked(model: AnomalyModel, sources: Sequence[ScanSource], out: Path,
                  guard: _OutputLock, *, fpr, threshold, shard, resume, save_reconstruction,
                  save_latent, overlays, workers, progress, arguments, save_image,
                  save_channel_maps) -> BatchSummary:
    index, count = shard
    mine = sorted(sources, key=lambda s: s.case_id)[index::count]
    model_sha = model_identity(model)
    settings = {"fpr": fpr, "threshold": threshold}
    if resume:
        _check_same_model(out, model, model_sha, settings)
    atomic_write_bytes(out / "run.json", json.dumps({
        "medae_version": __version__, "python": platform.python_version(),
        "model": str(model.bundle.path), "model_name": model.name, "model_sha256": model_sha,
        "threshold_settings": settings,
        "arguments": arguments or {}, "shard": f"{index + 1}/{count}", "n_scans": len(mine),
        "operating_point": model.operating_point(fpr, threshold),
        "calibration_warnings": list((model.calibration or {}).get("warnings", [])),
    }, indent=2, allow_nan=False).encode())
    summary = BatchSummary()
    todo = []
    for src in mine:
        if resume and is_case_folder(out / src.case_id, source=_source_text(src)):
            summary.skipped += 1
        else:
            todo.append(src)
    writer = ThreadPoolExecutor(max_workers=1)  # one case written while the next is scored
    writing: _Writing | None = None
    last = [time.monotonic()]

    def finish(job: _Writing) -> None:
        """Wait for a case's outputs, then count it and report it."""
        try:
            job.future.result()
            with contextlib.suppress(FileNotFoundError):
                job.fail_path.unlink()
            summary.scored += 1
            msg = (f"score {job.result.score:.4g}, {len(job.result.candidates)} "
                   f"candidate(s), {job.row['seconds']:.1f} s")
            job.result = None  # its arrays are written: not held while the tables are rebuilt
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            msg = _record_failure(job.src, job.fail_path, exc, job.t0, summary)
        _report(job.k, len(todo), job.src, msg, progress, out, save_latent, last, guard)

    try:
        for k, (src, future) in enumerate(_prefetch(model, todo, workers), start=1):
            t0 = time.perf_counter()
            fail_path = out / FAILED_DIR / f"{src.case_id}.json"
            try:
                scan, prep, load_s = future.result()
                future = None  # (it holds the prepared scan, whose model-space part goes below)
                result = model.score(scan, prepared=prep, fpr=fpr, threshold=threshold,
                                     with_reconstruction=save_reconstruction,
                                     channel_maps=save_channel_maps, release_input=True)
                if scan.array.size > OVERLAP_VOXELS:
                    trim_heap()  # what labelling freed, before the writing (-15 to -25 MiB)
                row = {"case_id": src.case_id, "source": _source_text(src),
                       "score": float(f"{result.score:.6g}"),
                       "flagged": "" if result.flagged is None else int(result.flagged),
                       "n_candidates": len(result.candidates), "status": "ok"}
                job = _Writing(k, src, fail_path, t0, result, row, writer.submit(
                    _write_case, out, src, scan, result, row,
                    save_reconstruction=save_reconstruction, overlays=overlays, t0=t0,
                    save_image=save_image, inputs=prep.inputs, model_sha=model_sha,
                    stages={"load": load_s, **prep.seconds, **result.timings},
                    brain=_brain_record(model, prep)))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                if writing is not None:  # reports stay in order
                    finish(writing)
                    writing = None
                msg = _record_failure(src, fail_path, exc, t0, summary)
                _report(k, len(todo), src, msg, progress, out, save_latent, last, guard)
                continue
            big = scan.array.size > OVERLAP_VOXELS
            del scan, prep, result  # the writer and ``job`` hold what is still needed
            if writing is not None:
                finish(writing)
            writing = job
            del job
            if big:  # CT-size: one case in memory at a time
                finish(writing)
                writing = None
                trim_heap()
        if writing is not None:
            finish(writing)
    finally:
        writer.shutdown(wait=True)
    with guard.tables():
        rebuild_tables(out, save_latent)
    return summary
