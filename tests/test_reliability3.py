"""Issue 29 (Reliability III): shards sharing one output folder, the viewer's last ways out,
bundles and checkpoints as hostile input, and one-line errors where tracebacks were."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import PHANTOM_SHAPE, ROOT, TINY_2D, lesion_phantom, write_phantoms
from test_hostile import intensity_model  # noqa: F401  (a fixture)
from test_reliability import ENV, _medae, _rows
from test_report import _get, fake_scored_folder

import medae
import medae.bundle as bundle_mod
import medae.cli as cli
import medae.io.atomic as atomic
import medae.io.nifti as nifti_mod
from medae.batch import score_sources
from medae.bundle import load_bundle
from medae.cli import main
from medae.errors import MedaeError
from medae.evaluation.evaluate import evaluate
from medae.io import locks
from medae.io.discover import discover_with_notes, read_manifest
from medae.preprocess import PreprocessConfig, prepare_source
from medae.report import write_index
from medae.report.server import TIMEOUT_S, Handler, make_server, url_of

N_CASES = 6
CASE_FILES = {"anomaly_map.nii.gz", "candidates.nii.gz", "brain_mask.nii.gz", "candidates.csv",
              "result.json", "image.nii.gz"}


@pytest.fixture(scope="module")
def lesion_cases(tmp_path_factory):
    """Six small phantoms with lesions (``in/``) and their labels named by case id
    (``labels/``)."""
    root = tmp_path_factory.mktemp("shards")
    write_phantoms(root / "in", N_CASES, shape=PHANTOM_SHAPE, seed=29, lesion=True)
    (root / "labels").mkdir()
    for label in sorted((root / "in").glob("*_label.nii.gz")):
        shutil.move(label, root / "labels" / label.name.replace("_label", ""))
    return root / "in", root / "labels"


# ------------------------------------------------------------------------------------------------
# 1. shards sharing one output folder

def test_concurrent_shards_on_one_output_folder(intensity_model, lesion_cases,  # noqa: F811
                                                tmp_path):
    """Two to four shards started at random offsets on one OUT, 20 times: every case folder
    whole, scores.csv complete, no failure, nothing left behind, evaluate reads it."""
    inp, labels = lesion_cases
    model = medae.load_model(intensity_model, device="cpu")
    sources = medae.discover(inp)
    assert len(sources) == N_CASES
    rng = random.Random(29)
    expected = sorted(s.case_id for s in sources)
    for trial in range(20):
        out = tmp_path / f"out{trial}"
        count = 2 + trial % 3
        results, errors = {}, []

        def shard(i, delay, out=out, count=count, results=results, errors=errors):
            threading.Event().wait(delay)
            try:
                results[i] = score_sources(model, sources, out, shard=(i, count),
                                           progress=False, overlays=False, workers=1)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=shard, args=(i, rng.uniform(0, 0.15)))
                   for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (trial, errors)
        assert sum(r.scored for r in results.values()) == N_CASES, (trial, results)
        assert sum(r.failed for r in results.values()) == 0, (trial, results)
        rows = _rows(out / "scores.csv")
        assert [r["case_id"] for r in rows] == expected, trial
        assert {r["status"] for r in rows} == {"ok"}, (trial, rows)
        for case in expected:
            names = {p.name for p in (out / case).iterdir()}
            assert names >= CASE_FILES, (trial, case, names)
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".failed"]
        assert not list((out / ".failed").iterdir())
    metrics = evaluate(out, labels)
    assert metrics["n_scans"] == N_CASES


def test_a_shard_that_writes_run_json_during_the_check_is_not_mistaken_for_a_stranger(
        tmp_path, monkeypatch):
    """The check reads run.json, then looks for medae's tables: another shard of the job may
    write its run.json (then scores.csv) in between. The check reads run.json again before
    refusing (the race CI once hit: 'run.json: exists and was not written by medae')."""
    from medae import batch

    out = tmp_path / "out"
    out.mkdir()
    real, calls = batch._is_output_folder, []

    def first_read_before_the_other_shard_wrote(folder):
        calls.append(folder)
        if len(calls) == 1:  # the other shard writes run.json and scores.csv now
            (out / "run.json").write_text(json.dumps({"medae_version": "x", "shard": "2/2"}))
            (out / "scores.csv").write_text("case_id\n")
            return False
        return real(folder)

    monkeypatch.setattr(batch, "_is_output_folder", first_read_before_the_other_shard_wrote)
    assert batch.check_output(out) is True and len(calls) == 2
    (out / "run.json").write_text("{}")  # a stranger's run.json is still refused
    with pytest.raises(MedaeError, match=r"scores\.csv: exists and was not written by medae"):
        batch.check_output(out)


# ------------------------------------------------------------------------------------------------
# 2. the viewer serves nothing outside OUT; 9. Host check on loopback, timeout, CSP

@pytest.fixture()
def view_folder(tmp_path):
    out = tmp_path / "out"
    fake_scored_folder(out, 2)
    write_index(out)
    (tmp_path / "secret.txt").write_text("outside")
    return out


def _serve(out, **kw):
    srv = make_server(out, "127.0.0.1", 0, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_viewer_never_serves_a_file_outside_out_through_a_linked_index(view_folder, tmp_path):
    out = view_folder
    (out / "sub").mkdir()
    os.symlink(tmp_path / "secret.txt", out / "sub" / "index.html")
    (out / "sub2").mkdir()
    os.symlink(tmp_path, out / "sub2" / "up")
    os.mkfifo(out / "pipe.html")
    srv = _serve(out)
    try:
        url = url_of(srv)
        for bad in ("sub/", "sub", "sub/index.html", "sub2/up/secret.txt", "sub2/up/",
                    "pipe.html"):
            status, _, body = _get(url + bad)
            assert status == 404 and b"outside" not in body, bad
        assert _get(url)[0] == 200
        (out / "index.html").rename(out / "real_index.html")
        os.symlink(tmp_path / "secret.txt", out / "index.html")  # the top page, linked out
        status, _, body = _get(url)
        assert status == 404 and b"outside" not in body
    finally:
        srv.shutdown()
        srv.server_close()


def test_viewer_csp_host_check_on_loopback_and_timeout(view_folder, monkeypatch):
    out = view_folder
    assert Handler.timeout == TIMEOUT_S
    monkeypatch.setattr(Handler, "timeout", 1)
    (out / "evil.html").write_text("<script>alert(1)</script>")
    (out / "evil.js").write_text("alert(1)")
    srv = _serve(out, allow_remote=True)  # on a loopback address: the Host check stays
    try:
        url = url_of(srv)
        assert _get(url, {"Host": "evil.example:80"})[0] == 403
        status, headers, _ = _get(url)
        page = headers["Content-Security-Policy"]
        assert status == 200 and "'unsafe-inline'" not in page.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in page and "'sha256-" in page
        status, headers, _ = _get(url + "evil.html")
        assert status == 200 and headers["Content-Security-Policy"].startswith("sandbox;")
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        status, headers, _ = _get(url + "evil.js")
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["X-Content-Type-Options"] == "nosniff"
        status, headers, _ = _get(url + "_medae/viewer.js")
        assert status == 200 and headers["Content-Type"] == "text/javascript"
        # a half-sent request is dropped after the timeout, not held for ever
        with socket.create_connection(srv.server_address[:2]) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sock.settimeout(20)
            t0 = time.monotonic()
            assert sock.recv(100) == b""
            assert time.monotonic() - t0 < 10
    finally:
        srv.shutdown()
        srv.server_close()


def test_view_bad_port_is_one_line(view_folder):
    res = _medae("view", view_folder, "--no-browser", "--port", "70000")
    assert res.returncode == 1 and res.stderr == (
        "medae: error: --port 70000: expected a port number from 0 to 65535 (0: any free one)\n")


# ------------------------------------------------------------------------------------------------
# 6. bundle and checkpoint files read with the input rules; 7. sizes checked before building

def _replace_weights(run: Path, kind: str) -> None:
    weights = run / "model.safetensors"
    weights.unlink()
    if kind == "fifo":
        os.mkfifo(weights)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", weights)
    else:
        weights.mkdir()


@pytest.mark.parametrize("kind, reason", [
    ("fifo", "not a regular file"), ("dev-zero", "not a regular file"),
    ("folder", "is a folder, not a file")])
def test_weights_that_are_no_regular_file_are_one_line(bundle_copy, kind, reason):
    _replace_weights(bundle_copy, kind)
    with pytest.raises(MedaeError) as err:
        load_bundle(bundle_copy)
    message = str(err.value)
    assert message.startswith(f"{bundle_copy / 'model.safetensors'}: unreadable model weights (")
    assert reason in message and "\n" not in message


def test_weights_larger_than_the_limit_are_refused(bundle_copy, monkeypatch):
    monkeypatch.setattr(bundle_mod, "MAX_WEIGHTS_BYTES", 1000)
    with pytest.raises(MedaeError, match=r"unreadable model weights \(larger than 1000 bytes"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("channels", [[1024, 2048, 4096, 8192], [10**6, 10**7, 10**8, 10**9]])
def test_edited_network_sizes_refused_before_anything_is_built(bundle_copy, monkeypatch,
                                                               channels):
    meta = json.loads((bundle_copy / "model.json").read_text())
    meta["model"]["channels"] = channels
    (bundle_copy / "model.json").write_text(json.dumps(meta))
    devices = []
    real = bundle_mod.create_model

    def spy(**kw):
        devices.append(str(torch.get_default_device()))
        return real(**kw)

    monkeypatch.setattr(bundle_mod, "create_model", spy)
    with pytest.raises(MedaeError) as err:
        load_bundle(bundle_copy)
    assert devices == ["meta"]  # only the memory-free skeleton was built
    message = str(err.value)
    assert message.startswith(f"{bundle_copy / 'model.safetensors'}: weights do not fit the "
                              "architecture in model.json (")
    assert "\n" not in message


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A finished tiny training run's folder made resumable (no model.json) and its data."""
    from medae.config import load_config
    from medae.train import train

    root = tmp_path_factory.mktemp("resume")
    write_phantoms(root / "healthy", 3, shape=PHANTOM_SHAPE, seed=9)
    cfg = load_config(ROOT / "configs" / "ae2d.yaml",
                      [*(s for s in TINY_2D if not s.startswith("train.epochs")),
                       "train.epochs=1"])
    run = train(cfg, medae.discover(root / "healthy"), root / "run", device="cpu",
                progress=False)
    return run, root / "healthy"


@pytest.mark.parametrize("damage, reason", [
    ("fifo", "unreadable checkpoint (not a regular file"),
    ("dev-zero", "unreadable checkpoint (not a regular file"),
    ("folder", "unreadable checkpoint (is a folder, not a file"),
    ("truncated", "unreadable checkpoint ("),
    ("not-a-dict", "not a medae checkpoint"),
    ("missing-keys", "checkpoint does not fit this run ("),
])
def test_bad_checkpoints_are_one_line_on_resume(resumable, tmp_path, capsys, damage, reason):
    run0, data = resumable
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run0 / "config.yaml", run / "config.yaml")
    ckpt = run / "checkpoint.pt"
    if damage == "fifo":
        os.mkfifo(ckpt)
    elif damage == "dev-zero":
        os.symlink("/dev/zero", ckpt)
    elif damage == "folder":
        ckpt.mkdir()
    elif damage == "truncated":
        ckpt.write_bytes((run0 / "checkpoint.pt").read_bytes()[:5000])
    elif damage == "not-a-dict":
        torch.save([1, 2, 3], ckpt)
    else:
        torch.save({"model": {}}, ckpt)
    rc = main(["train", "--config", str(run / "config.yaml"), "--data", str(data), "--output",
               str(run), "--resume", "--device", "cpu", "-q"])
    err = capsys.readouterr().err
    assert rc == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"medae: error: {ckpt}: {reason}"), err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# 8. one line, never a traceback; 5. linked folders of an input tree are named

def _deep_tree(root: Path, depth: int) -> Path:
    """``root/a/a/.../a`` ``depth`` folders deep (made relative to each folder: no path is
    over PATH_MAX while making it); returns the deepest folder's path."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("a", dir_fd=fd)
        nfd = os.open("a", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    return root.joinpath(*["a"] * depth)


def test_input_tree_1100_deep_is_walked(tmp_path):
    try:
        deepest = _deep_tree(tmp_path / "deep", 1100)
        write_phantoms(deepest, 1, shape=PHANTOM_SHAPE, seed=3)
        sources, notes = discover_with_notes(tmp_path / "deep")
        assert [s.path for s in sources] == [deepest / "sub00.nii.gz"] and not notes
    finally:  # (pytest's own clean-up of old temporary folders recurses: it would fail)
        subprocess.run(["rm", "-rf", str(tmp_path / "deep")], check=True)


def test_symlinked_folders_are_named_not_followed(tmp_path):
    inp = tmp_path / "in"
    write_phantoms(inp / "a", 1, shape=PHANTOM_SHAPE, seed=4)
    write_phantoms(tmp_path / "elsewhere", 1, shape=PHANTOM_SHAPE, seed=5)
    os.symlink(tmp_path / "elsewhere", inp / "b")
    os.symlink(inp, inp / "a" / "loop")
    sources, notes = discover_with_notes(inp)
    assert [s.path for s in sources] == [inp / "a" / "sub00.nii.gz"]
    assert notes == [f"{inp / 'b'}: skipped, a link to a folder (not followed; give the folder "
                     "itself)",
                     f"{inp / 'a' / 'loop'}: skipped, a link to a folder (not followed; give "
                     "the folder itself)"]


def test_paths_over_the_limits_are_one_line(tmp_path):
    for path in (tmp_path / ("x" * 300), tmp_path / ("x" * 200) / ("y" * 4100)):
        res = _medae("info", path)
        assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith(f"medae: error: {path}: File name too long"), res.stderr[:400]


def test_info_into_a_closed_pipe_is_silent(lesion_cases):
    inp, _ = lesion_cases
    proc = subprocess.Popen([sys.executable, "-m", "medae", "info", str(inp), str(inp)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
    proc.stdout.close()  # `| head` that has read what it wanted
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert b"Traceback" not in err and b"Exception" not in err and not err.strip(), err


def test_continue_into_a_read_only_output_is_one_line(intensity_model, lesion_cases,  # noqa: F811
                                                      tmp_path, monkeypatch, capsys):
    inp, _ = lesion_cases
    out = tmp_path / "out"
    args = ["score", "--model", str(intensity_model), "--input", str(inp), "--output", str(out),
            "--device", "cpu", "-q", "--no-overlays"]
    assert main(args) == 0
    capsys.readouterr()
    real_open = locks.os.open

    def read_only(path, *a, **kw):  # (root ignores permissions: the refusal is simulated)
        if str(path).startswith(str(out)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(locks.os, "open", read_only)
    assert main([*args, "--continue"]) == 1
    err = capsys.readouterr().err
    assert err == (f"medae: error: {out / '.medae.lock'}: cannot create a lock file: "
                   "Permission denied\n")
    monkeypatch.undo()
    monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(
        PermissionError(errno.EROFS, os.strerror(errno.EROFS))))
    with pytest.raises(MedaeError) as exc:
        atomic.atomic_write_bytes(out / "run.json", b"{}")
    assert str(exc.value) == f"{out / 'run.json'}: cannot write: Read-only file system"


# ------------------------------------------------------------------------------------------------
# 3. --continue with another model or other threshold settings

def test_continue_with_another_model_is_refused(intensity_model, tiny_model,  # noqa: F811
                                                lesion_cases, tmp_path, capsys):
    inp, _ = lesion_cases
    out = tmp_path / "out"
    base = ["score", "--input", str(inp), "--output", str(out), "--device", "cpu", "-q",
            "--no-overlays", "--no-image"]
    assert main([*base, "--model", str(intensity_model), "--shard", "1/2"]) == 0
    capsys.readouterr()
    run = json.loads((out / "run.json").read_text())
    sha = run["model_sha256"]
    assert len(sha) == 64 and run["threshold_settings"] == {"fpr": None, "threshold": None}
    for case in out.glob("sub*/result.json"):
        assert json.loads(case.read_text())["model_sha256"] == sha
    before = {p.name: p.read_bytes() for p in out.glob("sub*/result.json")}

    assert main([*base, "--model", str(tiny_model), "--continue"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"medae: error: {out}: --continue: the cases there were scored with "
                          f"another model ({intensity_model}, sha256 {sha[:12]}; now "
                          f"{tiny_model}, sha256 ") and err.count("\n") == 1, err
    assert main([*base, "--model", str(intensity_model), "--continue", "--fpr", "0.01"]) == 1
    err = capsys.readouterr().err
    assert err == (f"medae: error: {out}: --continue: the cases there were scored with other "
                   "threshold settings (the calibrated default; now --fpr 0.01): score into a "
                   "new --output, or without --continue to score every case again\n")
    assert {p.name: p.read_bytes() for p in out.glob("sub*/result.json")} == before
    assert json.loads((out / "run.json").read_text())["model_sha256"] == sha  # untouched

    assert main([*base, "--model", str(intensity_model), "--continue"]) == 0  # the same: goes on
    assert "skipped 3 (already done)" in capsys.readouterr().out
    rows = _rows(out / "scores.csv")
    assert len(rows) == N_CASES and {r["status"] for r in rows} == {"ok"}


# ------------------------------------------------------------------------------------------------
# 4. manifest columns without regard to letter case; 9. a quoted path holding a line break

def test_manifest_columns_in_any_letter_case(lesion_cases, tmp_path):
    inp, labels = lesion_cases
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"Case_ID,Image,Mask,LABEL\nsub00,{inp / 'sub00.nii.gz'},"
                        f"{labels / 'sub01.nii.gz'},{labels / 'sub00.nii.gz'}\n")
    (src,) = read_manifest(manifest)
    assert (src.case_id, src.name, src.sequences) == ("sub00", "Image", ())
    assert src.mask == labels / "sub01.nii.gz" and src.label == labels / "sub00.nii.gz"
    for header in ("case_id,T1,t1", "case_id,image,mask,Mask", "case_id,CASE_ID,image"):
        manifest.write_text(f"{header}\n")
        with pytest.raises(MedaeError) as err:
            read_manifest(manifest)
        assert "unique without regard to letter case" in str(err.value), header


def test_manifest_path_with_a_line_break_is_refused(lesion_cases, tmp_path):
    inp, _ = lesion_cases
    (tmp_path / "a").mkdir()
    shutil.copy(inp / "sub00.nii.gz", tmp_path / "a" / "sub00.nii.gz")
    shutil.copy(inp / "sub01.nii.gz", tmp_path / "sub01.nii.gz")
    manifest = tmp_path / "m.csv"
    # split on lines, the quoted cell made another row naming sub01.nii.gz
    manifest.write_text('case_id,image\nx,"a/sub00.nii.gz\nsub01.nii.gz"\n')
    with pytest.raises(MedaeError) as err:
        read_manifest(manifest)
    assert str(err.value) == (f"{manifest}: line 3: image holds a line break (a quoted cell): "
                              "refused")


# ------------------------------------------------------------------------------------------------
# 9. smaller: CSV cells, a constant second sequence, medae info from headers

def test_csv_cells_cannot_run_as_formulas_or_reorder_text(tmp_path):
    target = tmp_path / "t.csv"
    atomic.atomic_write_csv(target, ["a", "b"], [
        ["=HYPERLINK(\"http://x\")", "@SUM(A1)"], ["+1+2", "-2+3"], ["-0.5", -0.5],
        ["evil\u202egpj.exe", "plain \u2066x\u2069"], [3, None]])
    with open(target, newline="") as f:
        back = list(csv.reader(f))
    assert back == [["a", "b"], ["'=HYPERLINK(\"http://x\")", "'@SUM(A1)"], ["'+1+2", "'-2+3"],
                    ["-0.5", "-0.5"], ["evil\\u202egpj.exe", "plain \\u2066x\\u2069"],
                    ["3", ""]]


def test_constant_second_sequence_is_named_by_its_own_file(tmp_path):
    img, _, aff = lesion_phantom(seed=12)
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "flair.nii.gz")
    nib.save(nib.Nifti1Image(np.full_like(img, 7.0), aff), tmp_path / "t1.nii.gz")
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,flair,t1\nc1,flair.nii.gz,t1.nii.gz\n")
    (src,) = read_manifest(manifest)
    config = PreprocessConfig.from_dict({"inputs": ["flair", "t1"], "spacing": [2, 2, 2],
                                         "size": list(PHANTOM_SHAPE)})
    with pytest.raises(MedaeError) as err:
        prepare_source(src, config)
    assert str(err.value) == (f"{tmp_path / 't1.nii.gz'}: constant intensity inside the mask: "
                              "cannot normalise (input 2)")


def test_info_describes_a_large_volume_from_its_header(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, (20, 24, 16)).astype(np.float32)
    affine = np.array([[0, 0, -1.5, 30], [-2.0, 0, 0, 20], [0, 2.5, 0, -10], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "oblique.nii.gz")
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 3.0, 1.0])), tmp_path / "plain.nii")
    short = tmp_path / "short.nii"
    short.write_bytes((tmp_path / "plain.nii").read_bytes()[:2000])
    assert main(["info", str(tmp_path)]) == 1
    full = capsys.readouterr().out
    monkeypatch.setattr(cli, "INFO_HEADER_ONLY_VOXELS", 0)

    def no_pixels(*a, **kw):
        raise AssertionError("voxels read")

    monkeypatch.setattr(nifti_mod, "read_nifti", no_pixels)
    monkeypatch.setattr(sys.modules["medae.io.discover"], "read_nifti", no_pixels)
    assert main(["info", str(tmp_path)]) == 1
    header_only = capsys.readouterr().out
    assert header_only == full  # the same lines, the truncated file's FAILED line included
    assert "oblique\tnifti\t16x20x24\t1.5x2x2.5 mm\tPSL" in full  # what loading gives
    assert f"short\tnifti\tFAILED\t{short}: truncated: header needs" in full
