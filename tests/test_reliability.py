"""Issue 7: bad input, disk full, safe model files, patient identifiers, determinism.

The SIGKILL-while-scoring and resume-after-interruption tests live in test_batch.py and
test_train.py.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from badinputs import is_note, make_corpus, n_scored
from conftest import (
    PHANTOM_SHAPE,
    ROOT,
    TINY_2D,
    lesion_phantom,
    write_dicom_volume,
    write_phantoms,
)

import medae
import medae.io.atomic as atomic
from medae.batch import score_sources
from medae.bundle import load_bundle
from medae.cli import main
from medae.errors import MedaeError

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
TRAIN_FAST = [*(s for s in TINY_2D if not s.startswith("train.epochs")), "train.epochs=2"]


def _medae(*args):
    return subprocess.run([sys.executable, "-m", "medae", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _inventory(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` with its kind, mode and content hash (links: target)."""
    inv = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        st = p.lstat()
        if p.is_symlink():
            inv[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            inv[rel] = ("dir", st.st_mode)
        else:
            inv[rel] = ("file", st.st_mode, st.st_mtime_ns,
                        hashlib.sha256(p.read_bytes()).hexdigest())
    return inv


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Bad inputs mixed with three good NIfTI phantoms (``good/``)."""
    root = tmp_path_factory.mktemp("corpus")
    expected = make_corpus(root)
    good = write_phantoms(root / "good", 3, shape=PHANTOM_SHAPE, seed=41)
    return root, expected, good


# ------------------------------------------------------------------------------------------------
# bad input

def test_score_over_bad_inputs(tiny_model, corpus, tmp_path):
    root, expected, good = corpus
    before = _inventory(root)
    out = tmp_path / "out"
    res = _medae("score", "--model", tiny_model, "--input", root, "--output", out,
                 "--device", "cpu", "--no-overlays")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert _inventory(root) == before  # inputs never modified, moved or added to

    rows = _rows(out / "scores.csv")
    failures = _rows(out / "failures.csv")
    for r in failures:
        assert r["reason"] and "\n" not in r["reason"] and "Traceback" not in r["reason"]
    ok = [r for r in rows if r["status"] == "ok"]
    for path in good:  # every good scan is scored
        assert [r for r in ok if r["source"] == str(path)], path
    for name, want in expected.items():
        entry = str(root / name)
        if is_note(want):
            text = want.removeprefix("note: ")
            notes = [ln for ln in res.stderr.splitlines()
                     if ln.startswith(f"note: skipped {entry}/") and text in ln]
            assert len(notes) == 1, (name, res.stderr)
            assert not [r for r in rows if r["source"].startswith(entry)], name
        elif n_scored(want) is not None:
            mine = [r for r in ok if r["source"].startswith(entry)]
            assert len(mine) == n_scored(want), (name, rows)
        else:
            mine = [r for r in failures if r["source"] == entry]
            assert len(mine) == 1, (name, failures)
            assert want in mine[0]["reason"], (name, mine[0]["reason"])
            assert mine[0]["reason"].startswith(entry), mine[0]["reason"]
    n_fail = sum(1 for w in expected.values() if not is_note(w) and n_scored(w) is None)
    assert len(failures) == n_fail
    n_ok = len(good) + sum(n_scored(w) or 0 for w in expected.values())
    assert len(ok) == n_ok
    # outputs stay inside OUT under safe names, whatever the DICOM tags held
    for p in out.rglob("*"):
        assert p.resolve().is_relative_to(out.resolve())
        assert all(c.isalnum() or c in "._-" for c in p.name), p
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".failed"]


def test_train_over_bad_inputs(corpus, tmp_path):
    root, expected, good = corpus
    before = _inventory(root)
    run = tmp_path / "run"
    args = [a for s in TRAIN_FAST for a in ("--set", s)]
    res = _medae("train", "--config", ROOT / "configs" / "ae2d.yaml", "--data", root,
                 "--output", run, "--device", "cpu", "-q", *args)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert _inventory(root) == before
    skipped = _rows(run / "skipped.csv")
    failing = {n: w for n, w in expected.items() if not is_note(w) and n_scored(w) is None}
    assert len(skipped) == len(failing)
    for name, want in failing.items():
        entry = str(root / name)
        mine = [r for r in skipped if r["error"].startswith(entry + ":")]
        assert len(mine) == 1 and want in mine[0]["error"], (name, skipped)
    meta = json.loads((run / "model.json").read_text())
    t = meta["training"]
    n_good = len(good) + sum(n_scored(w) or 0 for w in expected.values())
    assert t["skipped_scans"] == len(failing)
    assert t["train_subjects"] + t["val_subjects"] == n_good


# ------------------------------------------------------------------------------------------------
# disk full

def _fail_writes(monkeypatch, when=lambda target: True):
    """Make atomic writes whose temporary file matches ``when`` run out of space midway."""
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(memoryview(data)[: max(1, len(data) // 2)]))
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fdopen(fd, *args, **kw):
        f = real(fd, *args, **kw)
        return Full(f) if when(os.readlink(f"/proc/self/fd/{fd}")) else f

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)


def test_atomic_write_disk_full(monkeypatch, tmp_path):
    target = tmp_path / "table.csv"
    target.write_bytes(b"old contents\n")
    _fail_writes(monkeypatch)
    with pytest.raises(MedaeError) as err:
        atomic.atomic_write_bytes(target, b"x" * 100_000)
    message = str(err.value)
    assert message == f"{target}: no space left on device; nothing was written"
    assert target.read_bytes() == b"old contents\n"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]  # no temporary left
    with pytest.raises(MedaeError, match="no space left"):
        atomic.atomic_write_bytes(tmp_path / "new.bin", b"y" * 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_atomic_csv_quotes_values_and_replaces_whole(monkeypatch, tmp_path):
    """The one CSV writer: commas, quotes and line breaks in values survive a round trip;
    mapping rows drop unknown keys and leave missing ones empty; a failed write leaves the old
    table as it was."""
    target = tmp_path / "t.csv"
    rows = [{"case_id": "a,b", "path": 'say "x"', "extra": 1}, {"case_id": "c\nd"}, ["e", None]]
    atomic.atomic_write_csv(target, ["case_id", "path"], rows)
    with open(target, newline="") as f:
        back = list(csv.reader(f))
    assert back == [["case_id", "path"], ["a,b", 'say "x"'], ["c\nd", ""], ["e", ""]]
    assert target.read_bytes().startswith(b"case_id,path\n")
    before = target.read_bytes()
    _fail_writes(monkeypatch)
    with pytest.raises(MedaeError, match="no space left"):
        atomic.atomic_write_csv(target, ["case_id"], [["z"]])
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_batch_disk_full_records_the_case_and_continue_redoes_it(tiny_model, monkeypatch,
                                                                 tmp_path):
    inp = tmp_path / "in"
    write_phantoms(inp, 2, shape=PHANTOM_SHAPE, seed=51)
    out = tmp_path / "out"
    model = medae.load_model(tiny_model, device="cpu")
    sources = medae.discover(inp)
    _fail_writes(monkeypatch, lambda target: "/out/.sub00." in target)  # its case folder
    summary = score_sources(model, sources, out, progress=False, overlays=False)
    assert (summary.scored, summary.failed) == (1, 1)
    (fail,) = _rows(out / "failures.csv")
    assert fail["case_id"] == "sub00" and fail["reason"].endswith(
        "anomaly_map.nii.gz: no space left on device; nothing was written")
    assert not (out / "sub00").exists() and (out / "sub01" / "result.json").is_file()
    assert not [p for p in out.rglob(".*") if p.name != ".failed"]  # no partial output
    monkeypatch.undo()  # space freed: --continue redoes the failed case only
    summary = score_sources(model, sources, out, progress=False, overlays=False, resume=True)
    assert (summary.scored, summary.skipped, summary.failed) == (1, 1, 0)
    assert not _rows(out / "failures.csv")


def test_disk_full_everywhere_stops_with_one_line(tiny_model, monkeypatch, tmp_path, capsys):
    inp = tmp_path / "in"
    write_phantoms(inp, 1, shape=PHANTOM_SHAPE, seed=52)
    out = tmp_path / "out"
    _fail_writes(monkeypatch, lambda target: target.startswith(str(out)))
    rc = main(["score", "--model", str(tiny_model), "--input", str(inp), "--output", str(out),
               "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("medae: error: ") and "no space left on device" in err
    assert len(err.strip().splitlines()) == 1
    assert not [p for p in out.rglob("*") if p.is_file()]  # nothing partial, nothing at all


# ------------------------------------------------------------------------------------------------
# safe model files

def _edit_meta(run: Path, edit) -> None:
    meta = json.loads((run / "model.json").read_text())
    edit(meta)
    (run / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, reason", [
    (lambda m: m.update(format_version="1"), "format_version missing or not an integer"),
    (lambda m: m.update(format_version=99), "newer than this medae"),
    (lambda m: m["model"].update(name="resnet_from_the_internet"), "unknown architecture"),
    (lambda m: m["model"].update(name=7), "missing architecture name"),
    (lambda m: m.pop("weights"), "weights: missing or invalid"),
    (lambda m: m["weights"].update(file="../../elsewhere.safetensors"),
     "weights: missing or invalid"),
    (lambda m: m["weights"].update(sha256=0), "weights: missing or invalid"),
    (lambda m: m.update(preprocess="fast"), "preprocess: missing"),
    (lambda m: m["preprocess"].update(spacing=[0, 1, 1]), "preprocess"),
    (lambda m: m["model"].update(channels=[4, 4, 4]), "weights do not fit the architecture"),
    (lambda m: m.update(format="pickle"), "not a medae model bundle"),
])
def test_invalid_model_json_is_refused(bundle_copy, edit, reason):
    _edit_meta(bundle_copy, edit)
    with pytest.raises(MedaeError) as err:
        load_bundle(bundle_copy)
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(str(bundle_copy))


def test_tampered_or_missing_parts_are_refused(bundle_copy):
    weights = bundle_copy / "model.safetensors"
    payload = bytearray(weights.read_bytes())
    payload[-3] ^= 0xFF
    weights.write_bytes(bytes(payload))
    with pytest.raises(MedaeError, match=r"do not match the checksum in model\.json") as err:
        load_bundle(bundle_copy)
    assert str(err.value).startswith(str(weights))
    weights.unlink()
    with pytest.raises(MedaeError) as err:
        load_bundle(bundle_copy)
    assert str(err.value) == f"{weights}: missing model weights"
    (bundle_copy / "model.json").write_text("{not json")
    with pytest.raises(MedaeError, match="unreadable model metadata"):
        load_bundle(bundle_copy)
    (bundle_copy / "model.json").unlink()
    with pytest.raises(MedaeError, match="not a medae model folder"):
        load_bundle(bundle_copy)


class _Boom:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).touch, ())


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".pkl", ".bin"])
def test_pickle_checkpoints_are_refused_unopened(tmp_path, suffix):
    canary = tmp_path / "code_ran"
    ckpt = tmp_path / f"weights{suffix}"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Boom(canary)}, ckpt)
    for target in (ckpt, tmp_path):  # the file, or a folder holding it and no model.json
        with pytest.raises(MedaeError) as err:
            medae.load_model(target, device="cpu")
        message = str(err.value)
        assert message.startswith(f"{ckpt}: is a pickle-based checkpoint: loading it can run "
                                  "arbitrary code; medae loads safetensors bundles.")
        assert "medae convert-checkpoint --trust-pickle-code-execution" in message
    assert not canary.exists()


def test_convert_checkpoint(tiny_model, tmp_path, capsys):
    ckpt = tmp_path / "foreign.pt"
    state = load_bundle(tiny_model).model.state_dict()
    torch.save({"state_dict": state, "epoch": 3}, ckpt)
    recipe = tiny_model / "config.yaml"
    out = tmp_path / "converted"
    base = ["convert-checkpoint", "--checkpoint", str(ckpt), "--config", str(recipe),
            "--output", str(out)]
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "--trust-pickle-code-execution" in err and "arbitrary code" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()

    assert main([*base, "--trust-pickle-code-execution"]) == 0
    capsys.readouterr()
    bundle = load_bundle(out)
    meta = bundle.meta
    assert meta["calibration"] is None and "converted" in meta["training"]["note"]
    for k, v in state.items():
        assert torch.equal(bundle.model.state_dict()[k], v)
    assert main([*base, "--trust-pickle-code-execution"]) == 1  # never overwrites a bundle
    assert "already holds a model bundle" in capsys.readouterr().err

    inp = tmp_path / "in"
    write_phantoms(inp, 1, shape=PHANTOM_SHAPE, seed=61)
    score = ["score", "--model", str(out), "--input", str(inp), "--device", "cpu", "-q",
             "--no-overlays"]
    assert main([*score, "--output", str(tmp_path / "s0")]) == 1  # no calibration: checked once
    err = capsys.readouterr().err
    assert err.strip() == "medae: error: this model has no calibrated threshold: pass --threshold"
    assert not (tmp_path / "s0").exists()  # refused before any work
    assert main([*score, "--output", str(tmp_path / "s1"), "--threshold", "0.2"]) == 0
    (row,) = _rows(tmp_path / "s1" / "scores.csv")
    assert row["status"] == "ok"

    wrong = tmp_path / "wrong.pt"
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, wrong)
    assert main(["convert-checkpoint", "--checkpoint", str(wrong), "--config", str(recipe),
                 "--output", str(tmp_path / "w"), "--trust-pickle-code-execution"]) == 1
    assert "weights do not fit the recipe's architecture" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# patient identifiers

SECRETS = [b"Zzyzx", b"Quux", b"998877", b"19700101"]


def _texts(path: Path) -> list[bytes]:
    """The bytes of a file as stored, plus every decompressed layer a reader could see."""
    raw = path.read_bytes()
    blobs = [raw]
    if raw[:2] == b"\x1f\x8b":
        blobs.append(gzip.decompress(raw))
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        pos = 8
        while pos + 8 <= len(raw):
            length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
            data = raw[pos + 8:pos + 8 + length]
            if kind == b"tEXt":
                blobs.append(data)
            elif kind == b"zTXt":
                key, _, rest = data.partition(b"\0")
                blobs += [key, zlib.decompress(rest[1:])]
            elif kind == b"iTXt":
                key, _, rest = data.partition(b"\0")
                compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
                blobs += [key, zlib.decompress(text) if compressed else text]
            pos += 12 + length
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            blobs += [z.read(n) for n in z.namelist()] + [n.encode() for n in z.namelist()]
    return blobs


def _assert_no_identifiers(where: str, blobs: list[bytes]) -> None:
    for blob in blobs:
        low = blob.lower()
        for secret in SECRETS:
            assert secret.lower() not in low, f"{secret!r} found in {where}"


def test_no_patient_identifiers_in_any_output(tiny_model, tmp_path):
    data = tmp_path / "scans"
    for i in range(3):
        img, _, _ = lesion_phantom(seed=70 + i, radius=2.5 if i == 0 else 0)
        write_dicom_volume(data / f"case{i}", np.clip(img, 0, None).astype(np.int16),
                           series_number=5 + i, patient_name="Zzyzx^Quux",
                           patient_id="PID-998877", series_description="Zzyzx FLAIR 998877")
    for secret in SECRETS:
        assert secret.decode() not in str(data)
    inputs = _inventory(data)
    score_out, run = tmp_path / "scored", tmp_path / "run"
    results = [
        _medae("-v", "info", data),
        _medae("-v", "score", "--model", tiny_model, "--input", data, "--output", score_out,
               "--device", "cpu", "--save-reconstruction", "--save-latent"),
        _medae("-v", "train", "--config", ROOT / "configs" / "ae2d.yaml", "--data", data,
               "--output", run, "--device", "cpu", *[a for s in TRAIN_FAST
                                                     for a in ("--set", s)]),
    ]
    for res in results:
        assert res.returncode == 0, res.stderr
        _assert_no_identifiers(f"output of {res.args[3:5]}", [res.stdout.encode(),
                                                              res.stderr.encode()])
    assert _inventory(data) == inputs
    written = [p for folder in (score_out, run) for p in folder.rglob("*")]
    assert any(p.name == "overlay_ortho.png" for p in written)
    assert any(p.name == "anomaly_map.nii.gz" for p in written)
    for p in written:
        _assert_no_identifiers(f"the name {p}", [str(p.relative_to(tmp_path)).encode()])
        if p.is_file():
            _assert_no_identifiers(str(p), _texts(p))


# ------------------------------------------------------------------------------------------------
# determinism

@pytest.mark.slow  # trains twice: ~15-25 s on 2 shared cores
def test_same_seed_same_bundle_and_maps_on_cpu(tiny_model, tmp_path):
    from medae.config import load_config
    from medae.train import train

    data = tmp_path / "healthy"
    write_phantoms(data, 4, shape=PHANTOM_SHAPE, seed=81)
    cfg = load_config(ROOT / "configs" / "ae2d.yaml", [*TRAIN_FAST, "train.seed=5"])
    runs = [train(cfg, medae.discover(data), tmp_path / f"run{i}", device="cpu",
                  progress=False) for i in range(2)]
    w0, w1 = (r / "model.safetensors" for r in runs)
    assert w0.read_bytes() == w1.read_bytes()
    assert (runs[0] / "model.json").read_bytes() == (runs[1] / "model.json").read_bytes()
    assert (runs[0] / "config.yaml").read_bytes() == (runs[1] / "config.yaml").read_bytes()

    img, _, aff = lesion_phantom(seed=82)
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(nib.Nifti1Image(img, aff), inp / "patient.nii.gz")
    outs = []
    for i, run in enumerate(runs):
        out = tmp_path / f"out{i}"
        score_sources(medae.load_model(run, device="cpu"), medae.discover(inp), out,
                      progress=False, overlays=False, workers=1)
        outs.append(out)
    for name in ("anomaly_map.nii.gz", "candidates.nii.gz", "brain_mask.nii.gz",
                 "candidates.csv"):
        a, b = (o / "patient" / name for o in outs)
        assert a.read_bytes() == b.read_bytes(), name
