"""Cross-fitted calibration: every calibration scan is scored by a model that did not see it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, write_phantoms

from medae import MedaeError, discover
from medae.config import load_config
from medae.models import create_model
from medae.preprocess import PreprocessConfig
from medae.samples import SLAB_MM, Fold, crossfit_folds
from medae.scoring.calibration import healthy_map
from medae.scoring.heatmap import MapConfig
from medae.scoring.scorer import AnomalyModel
from medae.scoring.threshold import HealthyMap
from medae.train import train

TINY = ["model.channels=[8, 16]", "preprocess.spacing=[2, 2, 2]", "preprocess.size=[16, 16, 16]",
        "train.batch_size=8", "train.warmup_steps=1", "train.epochs=1",
        "train.max_steps_per_epoch=2", "data.augment={}", "data.calibration=crossfit"]


def test_folds_over_subjects_and_slabs():
    folds = crossfit_folds([f"s{i}" for i in range(7)], 2, seed=0, max_folds=3)
    held = [f.held_cases for f in folds]
    assert len(folds) == 3 and all(f.slab is None for f in folds)
    assert sorted(c for h in held for c in h) == [f"s{i}" for i in range(7)]  # a partition
    assert sorted(len(h) for h in held) == [2, 2, 3]
    assert crossfit_folds(["a", "b"], 3, 0)[0].held_cases in ({"a"}, {"b"})
    one = crossfit_folds(["a"], 2, 0)
    assert [f.slab for f in one] == [(0, 2), (1, 2)]
    assert crossfit_folds(["a"], 3, 0) is None  # a 3D patch spans slabs: no slab folds
    # the two slab folds split a scan's slices: 20 mm slabs, alternating
    z = one[0].scan_slices((4, 4, 100), (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(z, (np.arange(100) // 20) % 2 == 0)
    np.testing.assert_array_equal(one[1].scan_slices((4, 4, 100), (1, 1, 1)), ~z)


def test_model_and_scan_slabs_agree_in_mm():
    """A model at 1.875 mm (cropped, offset 3) and the 1 mm scan hold out the same places."""
    fold = Fold(frozenset({"a"}), (1, 2))

    class Prep:  # what model_slices reads
        image = np.zeros((1, 4, 4, 40))
        offset = (0, 0, 3)
        spacing = (1.875, 1.875, 1.875)

    held_model = fold.model_slices(Prep())
    held_scan = fold.scan_slices((4, 4, 80), (1.0, 1.0, 1.0))
    centres = (np.arange(40) + 3 + 0.5) * 1.875
    for zm in range(40):
        zs = int(centres[zm])  # the scan slice holding that model slice's centre
        if zs < 80 and abs(centres[zm] % SLAB_MM) > 1 and abs(centres[zm] % SLAB_MM) < 19:
            assert held_model[zm] == held_scan[zs], zm
    assert 0 < held_model.sum() < 40 and not (fold.model_slices(Prep(), held=False)
                                              & held_model).any()


def test_healthy_map_takes_each_slab_from_the_model_that_did_not_see_it(tmp_path):
    write_phantoms(tmp_path, 1, shape=(14, 16, 30))
    source = discover(tmp_path)[0]
    pre = PreprocessConfig(spacing=(2, 2, 2), size=(16, 16, None))
    net = create_model("intensity", spatial_dims=2)
    absolute = AnomalyModel(net, pre, MapConfig(residual="abs", erode_mm=0, median_mm=0))
    squared = AnomalyModel(net, pre, MapConfig(residual="squared", erode_mm=0, median_mm=0))
    f0, f1 = crossfit_folds(["x"], 2, 0)
    hm, _, _ = healthy_map(absolute, source, [(absolute, f0), (squared, f1)])
    scan, prep = absolute.load(source)
    by_abs, by_sq = absolute.scan_map(scan, prep), squared.scan_map(scan, prep)
    z0 = f0.scan_slices(scan.shape, scan.spacing)
    assert 0 < z0.sum() < scan.shape[2]  # 60 mm: slabs 0-20 and 40-60 mm are fold 0's
    expected = np.where(z0[None, None, :], by_abs.heatmap, by_sq.heatmap)
    want = HealthyMap.crop(expected, by_abs.analysed, 8.0)
    np.testing.assert_array_equal(hm.heat, want.heat)
    np.testing.assert_array_equal(hm.healthy, want.healthy)
    assert not np.array_equal(by_abs.heatmap, by_sq.heatmap)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("healthy")
    write_phantoms(folder, 4, shape=(14, 16, 12))
    return folder


def test_train_crossfit_over_subjects(healthy, tmp_path):
    cfg = load_config(ROOT / "configs" / "ae2d.yaml", [*TINY, "data.crossfit_folds=2"])
    run = train(cfg, discover(healthy), tmp_path / "run", device="cpu", progress=False)
    meta = json.loads((run / "model.json").read_text())
    cal = meta["calibration"]
    assert cal["source"] == "cross-fitted (2 folds over subjects)"
    assert cal["n_scans"] == 4  # every subject, each scored by the fold model without it
    assert meta["training"]["train_subjects"] == 4 and meta["training"]["val_subjects"] == 0
    assert json.loads((run / "crossfit.json").read_text()) == cal
    # the same seed gives the same cross-fitted thresholds
    again = train(cfg, discover(healthy), tmp_path / "again", device="cpu", progress=False)
    assert json.loads((again / "model.json").read_text())["calibration"] == cal


def test_train_crossfit_one_subject_uses_slabs(tmp_path):
    write_phantoms(tmp_path / "one", 1, shape=(14, 16, 40))  # 80 mm: four 20 mm slabs
    one = discover(tmp_path / "one")
    cfg = load_config(ROOT / "configs" / "ae2d.yaml", [*TINY, "preprocess.size=[16, 16, null]"])
    meta = json.loads((train(cfg, one, tmp_path / "run", device="cpu", progress=False)
                       / "model.json").read_text())
    assert "2 folds over interleaved 20 mm axial slabs of one subject" in \
        meta["calibration"]["source"]
    assert meta["calibration"]["n_scans"] == 1


def test_crossfit_config_is_validated():
    with pytest.raises(MedaeError, match=r"data\.calibration is 'crossfitt'"):
        load_config(ROOT / "configs" / "ae2d.yaml", ["data.calibration=crossfitt"])
    with pytest.raises(MedaeError, match=r"data\.crossfit_folds is 1"):
        load_config(ROOT / "configs" / "ae2d.yaml", ["data.crossfit_folds=1"])
