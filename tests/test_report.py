"""The batch report (OUT/index.html), image.nii.gz, and the `medae view` server (no browser)."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest
from conftest import PHANTOM_SHAPE, lesion_phantom

from medae.batch import CANDIDATE_COLUMNS, SCORE_COLUMNS
from medae.errors import MedaeError
from medae.report import write_index
from medae.report.server import check_host, make_server, url_of

HOSTILE = ["<img src=x onerror=alert(1)>", "{{rows}}", "a&b \"quoted\" 'single'", "ü ?#%"]


def _write_csv(path, columns, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def fake_scored_folder(out, n: int, *, failures: int = 0, seed: int = 0):
    """A folder laid out like `medae score` output (no volumes): n cases, some flagged."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    rows = []
    for i in range(n):
        case = HOSTILE[i] if i < len(HOSTILE) else f"case{i:04d}"
        score = float(f"{rng.uniform(0, 10):.6g}")
        n_cand = int(rng.integers(0, 4))
        (out / case).mkdir()
        rows.append({"case_id": case, "source": f"/scans/{case}.nii.gz", "score": score,
                     "flagged": int(score > 8), "n_candidates": n_cand, "status": "ok",
                     "seconds": 1.0})
        cands = [{"id": k + 1, "voxels": 10, "volume_mm3": 100.0 * (k + 1), "centroid_x_mm": 1,
                  "centroid_y_mm": 2, "centroid_z_mm": 3, "bbox": "0 0 0 1 1 1",
                  "max_score": 5, "mean_score": 4} for k in range(n_cand)]
        _write_csv(out / case / "candidates.csv", CANDIDATE_COLUMNS, cands)
        (out / case / "result.json").write_text(json.dumps(
            {"row": rows[-1], "threshold": 0.25, "threshold_rule": "fpr 0.01 on 5 healthy"}))
        (out / case / "overlay_ortho.png").write_bytes(b"\x89PNG")
    fails = [{"case_id": f"bad{i}", "source": f"/scans/bad{i}.nii", "reason":
              f"/scans/bad{i}.nii: empty file <0 bytes>"} for i in range(failures)]
    for f in fails:
        rows.append({"case_id": f["case_id"], "source": f["source"], "score": "", "flagged": "",
                     "n_candidates": "", "status": "failed", "seconds": ""})
    rows.sort(key=lambda r: r["case_id"])
    _write_csv(out / "scores.csv", SCORE_COLUMNS, rows)
    _write_csv(out / "failures.csv", ["case_id", "source", "reason"], fails)
    (out / "run.json").write_text(json.dumps({"model": "/runs/dae", "model_name": "dae_unet",
                                              "medae_version": "0.1.0",
                                              "arguments": {"fpr": 0.01}}))
    return rows


def _body_rows(page: str) -> list[str]:
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr[ >].*?</tr>", body)


def test_report_of_1000_cases_escaped_sorted_lazy(tmp_path):
    out = tmp_path / "out"
    rows = fake_scored_folder(out, 1000, failures=2)
    t0 = time.perf_counter()
    write_index(out)
    seconds = time.perf_counter() - t0
    page = (out / "index.html").read_text()
    assert seconds < 5, seconds
    body = _body_rows(page)
    assert len(body) == 1002
    assert page.count('loading="lazy"') == 1000  # every thumbnail lazy, failures have none
    # ordered by score, highest first, failures last
    scores = [float(re.search(r'<td data-v="([^"]*)"', r.split("</td>", 1)[1]).group(1) or "nan")
              for r in body]
    ok_scores = scores[:1000]
    assert ok_scores == sorted(ok_scores, reverse=True)
    assert max(float(r["score"]) for r in rows if r["score"] != "") == ok_scores[0]
    assert all(s != s for s in scores[1000:])  # failed: no score (sorted last)
    # hostile case ids: never markup, never a template field; links percent-encoded
    assert "<img src=x" not in page and html.escape(HOSTILE[0]) in page
    assert "{{" not in page.replace(html.escape("{{rows}}"), "")
    assert 'href="view.html?case=%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in page
    assert 'src="%C3%BC%20%3F%23%25/overlay_ortho.png"' in page
    # settings and failures
    assert "dae_unet (/runs/dae)" in page and "0.25 (fpr 0.01 on 5 healthy)" in page
    assert "Failures (2)" in page and "empty file &lt;0 bytes&gt;" in page
    assert (out / "view.html").is_file()


def test_report_totals_candidate_volume(tmp_path):
    out = tmp_path / "out"
    fake_scored_folder(out, 8, seed=3)
    write_index(out)
    page = (out / "index.html").read_text()
    for row in _body_rows(page):
        case = html.unescape(re.search(r'title="/scans/(.*?)\.nii\.gz"', row).group(1))
        with open(out / case / "candidates.csv") as f:
            total = sum(float(c["volume_mm3"]) for c in csv.DictReader(f))
        cells = re.findall(r'<td data-v="([^"]*)"', row)
        assert float(cells[4]) == total


def test_score_writes_report_and_image(tiny_model, tmp_path):
    img, _, aff = lesion_phantom()
    nib.save(nib.Nifti1Image(np.round(img).astype(np.int16), aff), tmp_path / "p.nii.gz")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "medae", "score", "--model", str(tiny_model),
                          "--input", str(tmp_path / "p.nii.gz"), "--output", str(out),
                          "--device", "cpu", "--no-overlays", "-q"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    saved = nib.load(out / "p" / "image.nii.gz")
    assert saved.shape == PHANTOM_SHAPE and saved.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), np.round(img))
    np.testing.assert_array_equal(saved.affine, aff)
    page = (out / "index.html").read_text()
    assert 'href="view.html?case=p"' in page and (out / "view.html").is_file()


# ---- the server -------------------------------------------------------------------------------

@pytest.fixture()
def server(tmp_path):
    out = tmp_path / "out"
    fake_scored_folder(out, 6)
    write_index(out)
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", out / "link.txt")
    srv = make_server(out, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, b""


def test_server_serves_the_folder_and_the_viewer_only(server):
    url = url_of(server)
    status, headers, body = _get(url)
    assert status == 200 and b"<table id=\"cases\">" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, headers, body = _get(url + "_medae/niivue/niivue.js")
    assert status == 200 and headers["Content-Type"] == "text/javascript"
    assert b"class Niivue" in body or b"Niivue" in body[:5_000_000]
    assert _get(url + "case0005/candidates.csv")[0] == 200
    assert _get(url + "%C3%BC%20%3F%23%25/result.json")[0] == 200  # ids are percent-encoded
    for bad in ("../secret.txt", "%2e%2e/secret.txt", "case0005/../../secret.txt",
                "link.txt", "_medae/../../report/index.py", "_medae/%2e%2e/server.py",
                "case0005/", "nothing.html", "%ff%fe.txt"):
        status, _, body = _get(url + bad)
        assert status == 404 and b"outside" not in body, bad
    # another site's page naming this port (DNS rebinding) is refused
    assert _get(url, {"Host": "evil.example:80"})[0] == 403


def test_non_loopback_hosts_refused():
    for host in ("127.0.0.1", "localhost", "::1", "127.1.2.3"):
        check_host(host, allow_remote=False)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        with pytest.raises(MedaeError, match=r"not a loopback address.*--allow-remote"):
            check_host(host, allow_remote=False)
        check_host(host, allow_remote=True)


def test_view_command_refuses_remote_and_stops_on_ctrl_c(tmp_path):
    out = tmp_path / "out"
    fake_scored_folder(out, 2)
    write_index(out)
    cmd = [sys.executable, "-m", "medae", "view", str(out), "--no-browser", "--port", "0"]
    res = subprocess.run([*cmd, "--host", "0.0.0.0"], capture_output=True, text=True)
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("medae: error: --host 0.0.0.0: not a loopback address")
    res = subprocess.run([sys.executable, "-m", "medae", "view", str(tmp_path), "--no-browser"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "no index.html here" in res.stderr
    # Ctrl-C as a terminal sends it: a job started in the background of a non-interactive shell
    # inherits SIGINT ignored (POSIX), and Python then never turns it into KeyboardInterrupt
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = proc.stdout.readline()
    url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
    assert _get(url)[0] == 200
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "stopped" in err and "Traceback" not in err
