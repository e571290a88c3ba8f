"""`medae score` on folders: mixed inputs, failures recorded, crash safety, shards, layout."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from conftest import PHANTOM_SHAPE, lesion_phantom, write_dicom_volume, write_phantoms

import medae

CASE_FILES = {"anomaly_map.nii.gz", "candidates.nii.gz", "candidates.csv", "result.json",
              "brain_mask.nii.gz",
              "overlay_ortho.png", "overlay_mosaic.png"}


def _medae(*args, **kw):
    return subprocess.run([sys.executable, "-m", "medae", *map(str, args)], capture_output=True,
                          text=True, **kw)


def _checksums(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    write_phantoms(root / "nifti", 2, shape=PHANTOM_SHAPE, seed=3)
    img, _, aff = lesion_phantom()
    nib.save(nib.Nifti1Image(img, aff), root / "nifti" / "lesion.nii.gz")
    write_dicom_volume(root / "dicom" / "series", np.round(img).astype(np.int16))
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00garbage")
    (root / "empty.nii").write_bytes(b"")
    return root


def test_mixed_folder_scores_good_scans_and_records_failures(tiny_model, mixed_input,
                                                             tmp_path):
    before = _checksums(mixed_input)
    out = tmp_path / "out"
    res = _medae("score", "--model", tiny_model, "--input", mixed_input, "--output", out,
                 "--device", "cpu")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    rows = {r["case_id"]: r for r in _rows(out / "scores.csv")}
    ok = sorted(c for c, r in rows.items() if r["status"] == "ok")
    assert len(ok) == 4 and sum(c.startswith("dicom_series_s3_") for c in ok) == 1
    failures = {r["case_id"]: r["reason"] for r in _rows(out / "failures.csv")}
    assert set(failures) == {"broken", "empty"}
    assert failures["empty"].endswith("empty.nii: empty file (0 bytes)")
    assert "broken.nii.gz" in failures["broken"] and "\n" not in failures["broken"]
    for case in ok:
        assert {p.name for p in (out / case).iterdir()} >= CASE_FILES, case
    # the DICOM case's maps lie on the series' own grid
    dicom_case = next(c for c in ok if c.startswith("dicom"))
    scan = medae.load_scan(mixed_input / "dicom" / "series")
    heat = nib.load(out / dicom_case / "anomaly_map.nii.gz")
    assert heat.shape == scan.grid.shape and heat.get_data_dtype() == np.float32
    np.testing.assert_allclose(heat.affine, scan.grid.affine, atol=1e-4)
    # NIfTI cases: exactly the input's shape and affine; the lesion is the top candidate
    src = nib.load(mixed_input / "nifti" / "lesion.nii.gz")
    lab = nib.load(out / "nifti_lesion" / "candidates.nii.gz")
    assert lab.shape == src.shape
    np.testing.assert_array_equal(lab.affine, src.affine)
    cands = _rows(out / "nifti_lesion" / "candidates.csv")
    assert cands and cands[0]["id"] == "1" and int(rows["nifti_lesion"]["n_candidates"]) >= 1
    assert _checksums(mixed_input) == before  # inputs never modified
    assert not list(out.glob(".*.tmp"))


def _snapshot(out):
    """Everything a finished run leaves, minus timings."""
    snap = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name in ("run.json",):
            continue
        rel = str(p.relative_to(out))
        if p.name.endswith(".nii.gz"):
            snap[rel] = np.asanyarray(nib.load(p).dataobj).tobytes()
        elif p.name == "scores.csv":
            snap[rel] = [{k: v for k, v in r.items() if k != "seconds"} for r in _rows(p)]
        elif p.name in ("result.json",) or p.suffix == ".png":
            snap[rel] = "present"
        else:
            snap[rel] = p.read_bytes()
    return snap


@pytest.mark.slow
def test_sigkill_then_continue_equals_clean_run(tiny_model, tmp_path):
    inp = tmp_path / "in"
    write_phantoms(inp, 8, shape=PHANTOM_SHAPE, seed=21)
    clean = tmp_path / "clean"
    assert _medae("score", "--model", tiny_model, "--input", inp, "--output", clean,
                  "--device", "cpu", "-q").returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "medae", "score", "--model", tiny_model,
                             "--input", inp, "--output", out, "--device", "cpu", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/result.json"))) < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert 3 <= len(done) < 8, "the job was not killed in the middle"
    for case in done:  # every visible case folder is complete
        assert {p.name for p in case.iterdir()} >= CASE_FILES
    res = _medae("score", "--model", tiny_model, "--input", inp, "--output", out,
                 "--device", "cpu", "--continue")
    assert res.returncode == 0, res.stderr
    assert "skipped" in res.stdout and "skipped 0" not in res.stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".failed"]
    assert _snapshot(out) == _snapshot(clean)


def test_shards_share_one_output_folder(tiny_model, tmp_path):
    inp = tmp_path / "in"
    write_phantoms(inp, 5, shape=PHANTOM_SHAPE, seed=31)
    out = tmp_path / "out"
    for shard in ("1/2", "2/2"):
        res = _medae("score", "--model", tiny_model, "--input", inp, "--output", out,
                     "--device", "cpu", "--shard", shard, "--no-overlays", "--save-latent", "-q")
        assert res.returncode == 0, res.stderr
    rows = _rows(out / "scores.csv")
    assert sorted(r["case_id"] for r in rows) == [f"sub{i:02d}" for i in range(5)]
    latents = np.load(out / "latents.npz")
    assert list(latents["case_id"]) == [f"sub{i:02d}" for i in range(5)]
    assert latents["latent"].shape == (5, 32) and np.isfinite(latents["latent"]).all()
    bad = _medae("score", "--model", tiny_model, "--input", inp, "--output", out,
                 "--shard", "3/2")
    assert bad.returncode == 1 and bad.stderr.strip() == \
        "medae: error: --shard '3/2': need 1 <= i <= n"


def test_reconstruction_and_api(tiny_model, tmp_path):
    img, lesion, aff = lesion_phantom()
    path = tmp_path / "p.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), path)
    out = tmp_path / "out"
    res = _medae("score", "--model", tiny_model, "--input", path, "--output", out,
                 "--device", "cpu", "--save-reconstruction", "--no-overlays", "--fpr", "0.05")
    assert res.returncode == 0, res.stderr
    recon = nib.load(out / "p" / "reconstruction.nii.gz").get_fdata()
    brain = img > 0
    # the reconstruction is in the scan's units, close to the healthy tissue, not the lesion
    assert abs(np.median(recon[brain & ~lesion]) - np.median(img[brain & ~lesion])) < 15
    assert recon[lesion].mean() < img[lesion].mean() - 20


def test_ct_size_cases_are_loaded_alone(monkeypatch):
    """Look-ahead loading never holds a CT-size case beside another one: a big case is read only
    once the cases before it are done, and nothing is read ahead while it is scored."""
    import medae.batch as batch_module

    submitted = []

    class Now:  # an executor that runs each load as it is submitted, in order
        def __init__(self, max_workers):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            submitted.append(args[1].case_id)
            from concurrent.futures import Future
            f = Future()
            f.set_result(None)
            return f

    class Src:
        def __init__(self, case_id, voxels):
            self.case_id, self._voxels = case_id, voxels

        def voxels(self):
            return self._voxels

    monkeypatch.setattr(batch_module, "ThreadPoolExecutor", Now)
    big = batch_module.OVERLAP_VOXELS + 1
    sources = [Src("a", 10), Src("b", 10), Src("C", big), Src("d", 10), Src("e", 10),
               Src("F", big), Src("G", big)]
    seen = {}
    for src, _future in batch_module._prefetch(None, sources, workers=2):
        seen[src.case_id] = list(submitted)
    assert seen == {"a": ["a", "b"], "b": ["a", "b"], "C": ["a", "b", "C"],
                    "d": ["a", "b", "C", "d", "e"], "e": ["a", "b", "C", "d", "e"],
                    "F": ["a", "b", "C", "d", "e", "F"], "G": ["a", "b", "C", "d", "e", "F", "G"]}


def test_source_voxels_from_headers(tmp_path):
    from medae.io.discover import discover
    nib.save(nib.Nifti1Image(np.zeros((7, 8, 9), np.int16), np.eye(4)), tmp_path / "s.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a scan")
    write_dicom_volume(tmp_path / "dcm", np.zeros((6, 5, 4), np.int16))
    found = sorted(s.voxels() for s in discover(tmp_path))
    assert found == [0, 6 * 5 * 4, 7 * 8 * 9]
