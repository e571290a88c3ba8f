"""A raw head as it comes off the scanner (issue 27): the same head as NIfTI and as a DICOM
series, through ``medae score`` with the model's defaults, to maps of its extracted brain, with
each step's seconds in result.json and no identifier in any output."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, needs_deepbet, shared, write_scan_dicom

import medae


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "medae", *args], capture_output=True, text=True,
                          timeout=1200, cwd=ROOT)


@pytest.fixture(scope="module")
def ixi_intensity_model(tmp_path_factory):
    """The intensity recipe calibrated with ``--brain auto`` on IXI002's skull-stripped T2s."""
    ixi = shared("brain", "healthy", "ixi002")
    root = tmp_path_factory.mktemp("ixi_model")
    healthy = root / "healthy"
    healthy.mkdir()
    for name in ("hd_bet_IXI002-Guys-0828-T2.nii.gz", "hd_bet_dilated_IXI002-Guys-0828-T2.nii.gz"):
        (healthy / name).symlink_to(ixi / name)
    res = _cli("train", "--config", str(ROOT / "configs" / "intensity.yaml"), "--data",
               str(healthy), "--output", str(root / "run"), "--brain", "auto", "-q")
    assert res.returncode == 0, res.stderr[-2000:]
    return root / "run"


@pytest.mark.slow
@needs_deepbet
def test_a_raw_head_as_nifti_and_as_dicom_scores_to_maps_of_its_brain(ixi_intensity_model,
                                                                     tmp_path):
    raw = shared("brain", "raw_heads", "niivue_register", "T2w.nii.gz")
    scan = medae.load_scan(raw)
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "t2w.nii.gz").symlink_to(raw)
    files = write_scan_dicom(scans / "t2w_dicom", scan)
    before = {p: p.read_bytes() for p in files}
    dicom = medae.load_scan(scans / "t2w_dicom")  # the series' geometry is the NIfTI's
    assert dicom.shape == scan.shape == (224, 224, 60)
    assert np.abs(dicom.affine - scan.affine).max() < 1e-4
    assert np.array_equal(dicom.array, scan.array)

    out = tmp_path / "out"
    res = _cli("score", "--model", str(ixi_intensity_model), "--input", str(scans), "--output",
               str(out), "-q")
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p: p.read_bytes() for p in files} == before  # inputs untouched
    cases = sorted(p.name for p in out.iterdir() if (p / "result.json").is_file())
    assert len(cases) == 2, cases
    masks, records = {}, {}
    for case in cases:
        record = json.loads((out / case / "result.json").read_text())
        kind = "dicom" if "dicom" in case else "nifti"
        records[kind] = record
        assert record["brain"] == "auto"
        assert record["mask_rule"].startswith("auto: brain extracted by deepbet 1.0.2 (not "
                                              "skull-stripped: no constant background)")
        stages = record["stages"]
        for stage in ("load", "brain extraction", "reconstruct", "heat map", "candidates",
                      "write NIfTI/CSV", "overlays"):
            assert stages[stage] > 0, (case, stage, stages)
        assert stages["brain extraction"] < stages["load"]  # extraction is part of loading
        assert "bias correction" not in stages and "registration" not in stages  # off by default
        # maps on the scan's own grid, whichever file it came from (read as medae reads a
        # scan: oriented closest to RAS+, as the scan was)
        maps = {name: medae.load_scan(out / case / f"{name}.nii.gz")
                for name in ("brain_mask", "candidates", "anomaly_map")}
        for m in maps.values():
            assert m.shape == scan.shape and np.abs(m.affine - scan.affine).max() < 1e-4
        mask, labels, heat = (maps[n].array for n in ("brain_mask", "candidates", "anomaly_map"))
        mask = mask > 0
        assert labels.max() > 0 and not (labels[~mask] > 0).any()  # no candidate outside
        assert not (heat[~mask] != 0).any()
        masks[kind] = mask
    volumes = {k: records[k]["brain_volume_cm3"] for k in records}
    assert volumes["nifti"] == pytest.approx(1426, abs=3)  # deepbet's mask of this head
    assert abs(volumes["dicom"] - volumes["nifti"]) < 0.1 * volumes["nifti"]
    dice = 2 * (masks["dicom"] & masks["nifti"]).sum() / (masks["dicom"].sum()
                                                          + masks["nifti"].sum())
    assert dice > 0.99, dice
    # the DICOM headers' identifiers reach no output
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".csv", ".html", ".txt"):
            text = path.read_text(errors="replace")
            for ident in ("Doe", "PID-12345", "19700101", "ACC-998877"):
                assert ident not in text, (path, ident)
    for ident in ("Doe", "PID-12345"):
        assert ident not in res.stdout + res.stderr
