"""The default operating point follows the calibration data, end to end: a model calibrated on
labelled patients flags their lesions (Dice-optimal threshold), says so in model.json,
result.json, run.json and the report; too few healthy scans fall back to the voxel rule with a
warning (issue 26)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from conftest import write_manifest as _manifest
from conftest import write_phantoms

import medae
from medae.cli import main
from medae.config import load_config
from medae.io.discover import discover
from medae.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_labelled_calibration_flags_the_lesions_end_to_end(tmp_path, capsys):
    images = write_phantoms(tmp_path / "pat", 5, lesion=True, seed=4)
    man = _manifest(tmp_path / "train.csv", images[:4])
    cfg = load_config(ROOT / "configs" / "intensity.yaml",
                      ["data.val_fraction=0.5", "preprocess.size=[24, 28, 20]"])
    run = train(cfg, discover(man), tmp_path / "run", device="cpu", progress=False)
    cal = json.loads((run / "model.json").read_text())["calibration"]
    point = cal["operating_point"]
    assert cal["default"] == "dice" and cal["warnings"] == []
    assert point["labelled_scans"] == 2 and point["scans"] == 2
    # the lesions (220) are far above the brain (100-140): the pooled Dice-optimal point
    # catches nearly all of their analysed voxels and nothing else
    assert point["sensitivity"] > 0.8 and point["dice"] > 0.8 and point["fp_per_scan"] == 0
    assert "highest Dice with the lesion labels of 2 labelled validation scan(s)" in \
        cal["default_rule"]
    # an unseen patient: the default flags its lesion
    test_csv = _manifest(tmp_path / "test.csv", images[4:])
    out = tmp_path / "out"
    assert main(["score", "--model", str(run), "--input", str(test_csv), "--output", str(out),
                 "--device", "cpu", "--no-overlays", "-q"]) == 0
    rec = json.loads((out / "p0" / "result.json").read_text())
    assert rec["threshold"] == cal["default_threshold"]
    assert rec["operating_point"]["rule"] == "dice"
    assert rec["operating_point"]["dice"] == point["dice"]
    cands = medae.load_scan(out / "p0" / "candidates.nii.gz").array > 0
    lesion = medae.load_scan(images[4].with_name("sub04_label.nii.gz")).array > 0
    assert 2 * (cands & lesion).sum() / (cands.sum() + lesion.sum()) > 0.5
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["operating_point"]["rule"] == "dice"
    page = (out / "index.html").read_text()
    assert "operating point" in page and "dice, on its 2 calibration scan(s)" in page
    # --fpr and --threshold still override it; result.json then has no operating point
    out2 = tmp_path / "out2"
    assert main(["score", "--model", str(run), "--input", str(test_csv), "--output", str(out2),
                 "--device", "cpu", "--no-overlays", "-q", "--fpr", "0.01"]) == 0
    rec = json.loads((out2 / "p0" / "result.json").read_text())
    assert rec["operating_point"] is None and rec["threshold"] == cal["voxel_thresholds"]["0.01"]


def test_one_healthy_calibration_scan_falls_back_with_a_warning(tmp_path, caplog, capsys):
    images = write_phantoms(tmp_path / "healthy", 3, seed=5)
    man = _manifest(tmp_path / "train.csv", images, labels=False)
    with caplog.at_level(logging.WARNING, logger="medae"):
        assert main(["train", "--config", str(ROOT / "configs" / "intensity.yaml"),
                     "--data", str(man), "--output", str(tmp_path / "run"), "--device", "cpu",
                     "-q", "--set", "data.val_fraction=0.34",
                     "--set", "preprocess.size=[24, 28, 20]"]) == 0
    cal = json.loads((tmp_path / "run" / "model.json").read_text())["calibration"]
    assert cal["default"] == "fpr" and cal["default_threshold"] == cal["voxel_thresholds"]["0.01"]
    assert len(cal["warnings"]) == 1 and "only 1 healthy validation scan(s)" in cal["warnings"][0]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("only 1 healthy validation scan(s)" in w for w in warned)
    assert "operating point (fpr)" in capsys.readouterr().out
    assert np.isfinite(cal["default_threshold"])


def test_medae_calibrate_gives_an_old_model_the_labelled_rule(tmp_path, capsys):
    """A model calibrated on one healthy scan (voxel rule) is calibrated again on labelled
    patients with `medae calibrate`: a new bundle with the Dice rule; the old one untouched."""
    healthy = write_phantoms(tmp_path / "healthy", 3, seed=5)
    assert main(["train", "--config", str(ROOT / "configs" / "intensity.yaml"),
                 "--data", str(_manifest(tmp_path / "h.csv", healthy, labels=False)),
                 "--output", str(tmp_path / "run"), "--device", "cpu", "-q",
                 "--set", "data.val_fraction=0.34", "--set", "preprocess.size=[24, 28, 20]"]) == 0
    before = (tmp_path / "run" / "model.json").read_bytes()
    patients = write_phantoms(tmp_path / "pat", 2, lesion=True, seed=4)
    labelled = _manifest(tmp_path / "p.csv", patients)
    capsys.readouterr()
    assert main(["calibrate", "--model", str(tmp_path / "run"), "--data", str(labelled),
                 "--output", str(tmp_path / "site"), "--device", "cpu"]) == 0
    assert "operating point (dice)" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.json").read_bytes() == before
    meta = json.loads((tmp_path / "site" / "model.json").read_text())
    cal = meta["calibration"]
    assert cal["default"] == "dice" and cal["operating_point"]["labelled_scans"] == 2
    assert cal["operating_point"]["sensitivity"] > 0.8
    assert meta["training"]["recalibrated_from"]["cases"] == ["p0", "p1"]
    model = medae.load_model(tmp_path / "site", device="cpu")
    assert model.resolve_threshold()[0] == cal["default_threshold"]
    # the FROC rule asked for by flag; the recipe in the new bundle says so
    assert main(["calibrate", "--model", str(tmp_path / "run"), "--data", str(labelled),
                 "--output", str(tmp_path / "froc"), "--device", "cpu",
                 "--operating-point", "froc", "--froc-fp", "0"]) == 0
    meta = json.loads((tmp_path / "froc" / "model.json").read_text())
    assert meta["calibration"]["default"] == "froc"
    assert meta["config"]["scoring"]["operating_point"] == "froc"
    assert meta["calibration"]["operating_point"]["fp_per_scan"] == 0
    # never over a model, the calibrated one included
    for out in ("run", "site"):
        assert main(["calibrate", "--model", str(tmp_path / "run"), "--data", str(labelled),
                     "--output", str(tmp_path / out), "--device", "cpu"]) != 0
    err = capsys.readouterr().err
    assert "is the model being calibrated" in err and "already holds a model" in err
    assert (tmp_path / "run" / "model.json").read_bytes() == before
