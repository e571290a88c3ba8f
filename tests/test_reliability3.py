"""Issue 29 (Reliability III): shards sharing one output folder, the viewer's last ways out,
bundles and checkpoints as hostile input, and one-line errors where tracebacks were."""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time

import pytest
from conftest import PHANTOM_SHAPE, write_phantoms
from test_hostile import intensity_model  # noqa: F401  (a fixture)
from test_reliability import _medae, _rows
from test_report import _get, fake_scored_folder

import medae
from medae.batch import score_sources
from medae.evaluation.evaluate import evaluate
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
