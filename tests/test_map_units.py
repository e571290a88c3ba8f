"""Heat maps in interquartile ranges of each scan's own brain (``scoring.map_units: iqr``): one
threshold means the same on every scan, whatever a large lesion does to the scan's high
percentiles (issue 26)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_phantoms

from medae import load_scan
from medae.cli import main
from medae.config import MapConfig
from medae.errors import MedaeError
from medae.io.scan import Grid, Scan
from medae.models import create_model
from medae.preprocess import (
    PreprocessConfig,
    apply_normalisation,
    intensity_stats,
    normalised_iqr,
)
from medae.scoring.scorer import AnomalyModel


def _brain(big_lesion: bool) -> tuple[Scan, np.ndarray]:
    """A 1 mm 'brain' (100 with texture) with one small lesion (150) at a fixed place and,
    with ``big_lesion``, a large very bright one (400, 2% of the brain) elsewhere, which moves
    the brain's 99.5th percentile but hardly its quartiles."""
    shape = (64, 64, 40)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt(((grid - centre[:, None, None, None]) ** 2 /
                 (np.array([26, 26, 17]) ** 2)[:, None, None, None]).sum(0))
    img = np.where(r < 1, 100.0, 0.0)
    img += (r < 1) * np.random.default_rng(0).normal(0, 8, shape)

    def ball(offset, radius):
        c = centre + np.asarray(offset, float)
        return np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(0)) <= radius

    small = ball([8, -6, 2], 2.5)
    img[small] = 150.0
    if big_lesion:
        img[ball([-10, 8, 0], 6)] = 400.0
    scan = Scan.from_grid(img.astype(np.float32), Grid(shape, np.eye(4)), source="b.nii",
                          kind="nifti")
    return scan, small


@pytest.mark.parametrize("normalise", ["percentile", "robust", "zscore", "none"])
def test_every_normalisation_records_the_brains_interquartile_range(normalise):
    scan, _ = _brain(big_lesion=True)
    mask = scan.array > 50
    cfg = PreprocessConfig(normalise=normalise)
    stats = intensity_stats(scan.array, mask, cfg)
    q1, q3 = np.percentile(scan.array[mask], (25, 75))
    assert stats["iqr"] == pytest.approx(q3 - q1, rel=1e-6)
    # in the normalised image's units: the normalised brain's own interquartile range
    n1, n3 = np.percentile(apply_normalisation(scan.array, stats)[mask], (25, 75))
    assert normalised_iqr(stats) == pytest.approx(n3 - n1, rel=1e-4)
    if normalise == "percentile":  # the same percentiles as before the IQR was recorded
        lo, hi = np.percentile(scan.array[mask], (0.5, 99.5))
        assert (stats["low"], stats["high"]) == (float(lo), float(hi))


def test_one_threshold_means_the_same_with_and_without_a_large_lesion():
    """The same small lesion in the same brain: measured in normalised units its map value
    falls by a third once a large bright lesion moves the 99.5th percentile; in IQR units it
    stays (the quartiles hardly move)."""
    net = create_model("intensity", spatial_dims=2)
    pre = PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(40, 40, 24))
    values = {}
    for units in ("normalised", "iqr"):
        model = AnomalyModel(net, pre, MapConfig(residual="positive", erode_mm=2,
                                                 median_mm=0, map_units=units))
        for big in (False, True):
            scan, small = _brain(big)
            prep = model.prepare(scan)
            heat = model.scan_map(scan, prep).heatmap
            values[units, big] = float(np.median(heat[small]))
            if units == "iqr":  # exactly the normalised map over the normalised IQR
                plain = AnomalyModel(net, pre, MapConfig(residual="positive", erode_mm=2,
                                                         median_mm=0))
                again = plain.scan_map(scan, plain.prepare(scan)).heatmap
                np.testing.assert_allclose(heat, again / normalised_iqr(prep.stats[0]),
                                           rtol=1e-5, atol=1e-6)
    assert values["normalised", True] < 0.7 * values["normalised", False]
    assert values["iqr", True] == pytest.approx(values["iqr", False], rel=0.05)


def test_map_units_are_checked_and_kept_out_of_old_bundles():
    with pytest.raises(MedaeError, match=r"scoring\.map_units: expected one of"):
        MapConfig(map_units="percent")
    with pytest.raises(MedaeError, match=r"scoring\.map_units"):
        MapConfig.from_dict({"map_units": "IQR"})
    assert "map_units" not in MapConfig().to_dict()  # bundles as they were written before
    assert MapConfig.from_dict({"map_units": "iqr"}).to_dict()["map_units"] == "iqr"
    with pytest.raises(MedaeError, match="no spread"):
        normalised_iqr({"low": 0.0, "high": 1.0, "iqr": 0.0})


def _manifest(path: Path, images: list[Path]) -> Path:
    rows = ["case_id,image,label"] + [
        f"p{i},{p},{p.with_name(p.name.replace('.nii.gz', '_label.nii.gz'))}"
        for i, p in enumerate(images)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_calibrating_a_model_in_iqr_units_equals_training_in_them(tmp_path, capsys):
    """`medae calibrate --map-units iqr` on the patients a model calibrated on gives the bundle
    that training with scoring.map_units=iqr gives (its thresholds in IQR units), and scoring
    with it uses them."""
    images = write_phantoms(tmp_path / "pat", 5, lesion=True, seed=4)
    man = _manifest(tmp_path / "train.csv", images[:4])
    common = ["--config", str(ROOT / "configs" / "intensity.yaml"), "--data", str(man),
              "--device", "cpu", "-q", "--set", "data.val_fraction=0.5",
              "--set", "preprocess.size=[24, 28, 20]"]
    assert main(["train", *common, "--output", str(tmp_path / "plain"),
                 "--set", "scoring.map_units=normalised"]) == 0
    assert main(["train", *common, "--output", str(tmp_path / "iqr"),
                 "--set", "scoring.map_units=iqr"]) == 0
    plain = json.loads((tmp_path / "plain" / "model.json").read_text())
    trained = json.loads((tmp_path / "iqr" / "model.json").read_text())
    held = plain["validation_cases"]
    assert held == trained["validation_cases"] and len(held) == 2
    cal_csv = _manifest(tmp_path / "cal.csv", images[:4])
    lines = cal_csv.read_text().splitlines()
    cal_csv.write_text("\n".join([lines[0], *(ln for ln in lines[1:]
                                              if ln.split(",")[0] in held)]) + "\n")
    assert main(["calibrate", "--model", str(tmp_path / "plain"), "--data", str(cal_csv),
                 "--output", str(tmp_path / "again"), "--device", "cpu",
                 "--map-units", "iqr"]) == 0
    again = json.loads((tmp_path / "again" / "model.json").read_text())
    assert again["config"]["scoring"]["map_units"] == "iqr"
    assert plain["config"]["scoring"]["map_units"] == "normalised"
    a, t, p = again["calibration"], trained["calibration"], plain["calibration"]
    assert a["default"] == t["default"] == "dice"
    assert a["default_threshold"] == pytest.approx(t["default_threshold"], rel=1e-6)
    for key, value in t["voxel_thresholds"].items():
        assert a["voxel_thresholds"][key] == pytest.approx(value, rel=1e-6)
    # IQR units are other numbers than the normalised image's
    assert abs(a["default_threshold"] - p["default_threshold"]) > 0.5
    out = tmp_path / "out"
    test_csv = _manifest(tmp_path / "test.csv", images[4:])
    assert main(["score", "--model", str(tmp_path / "again"), "--input", str(test_csv),
                 "--output", str(out), "--device", "cpu", "--no-overlays", "-q"]) == 0
    rec = json.loads((out / "p0" / "result.json").read_text())
    assert rec["threshold"] == a["default_threshold"] and rec["map_units"] == "iqr"
    assert "IQR of each scan&#x27;s brain (calibrated" in (out / "index.html").read_text()
    cands = load_scan(out / "p0" / "candidates.nii.gz").array > 0
    lesion = load_scan(images[4].with_name("sub04_label.nii.gz")).array > 0
    assert 2 * (cands & lesion).sum() / (cands.sum() + lesion.sum()) > 0.5
