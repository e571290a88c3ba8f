"""Ensembles (``train.ensemble: K``): K members from seeds seed..seed+K-1 on the same data, the map
from their mean reconstruction, one bundle that scores like any model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import ROOT, write_phantoms

from medae import MedaeError, discover
from medae.bundle import load_bundle
from medae.config import load_config, validate_config
from medae.models import create_model
from medae.models.ensemble import Ensemble
from medae.scoring.calibration import calibrate_model
from medae.scoring.reconstruct import reconstruct
from medae.scoring.scorer import load_model
from medae.train import train

TINY = ["model.channels=[8, 16]", "preprocess.spacing=[2, 2, 2]", "preprocess.size=[16, 16, 16]",
        "train.batch_size=8", "train.warmup_steps=1", "train.epochs=1",
        "train.max_steps_per_epoch=2", "data.augment={}"]


def _config(recipe: str, *sets: str) -> dict:
    return load_config(ROOT / "configs" / f"{recipe}.yaml", [*TINY, *sets])


@pytest.mark.parametrize("recipe", ["dae2d", "vae3d"])
def test_ensemble_trains_saves_and_reconstructs_the_members_mean(tmp_path, recipe):
    write_phantoms(tmp_path / "data", 3, shape=(14, 16, 30))
    sources = discover(tmp_path / "data")
    extra = ["data.patch_size=[16, 16, 16]"] if recipe.endswith("3d") else []
    config = _config(recipe, "train.ensemble=3", "train.seed=4", *extra)
    run = train(config, sources, tmp_path / "run", progress=False)
    bundle = load_bundle(run)
    meta = json.loads((run / "model.json").read_text())
    assert meta["model"]["name"] == "ensemble" and meta["model"]["size"] == 3
    assert meta["model"]["member"]["name"] == ("dae" if recipe == "dae2d" else "vae")
    ens = meta["training"]["ensemble"]
    assert ens["members"] == 3 and ens["seeds"] == [4, 5, 6] and len(ens["best_val"]) == 3
    assert all(np.isfinite(v) for v in ens["best_val"])
    # each member has its own log (member 0 in the run folder, as a single model)
    assert (run / "log.csv").exists()
    assert all((run / "members" / str(k) / "log.csv").exists() for k in (1, 2))
    net = bundle.model
    assert isinstance(net, Ensemble) and len(net.members) == 3
    w = [next(m.parameters()).detach() for m in net.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])  # different seeds
    model = load_model(run)
    scan, prep = model.load(sources[0])
    recon, _ = reconstruct(net, prep.image, prep.mask)
    each = [reconstruct(m, prep.image, prep.mask)[0] for m in net.members]
    np.testing.assert_allclose(recon, np.mean(each, axis=0), atol=1e-6)
    assert max(float(np.abs(e - recon).max()) for e in each) > 1e-4  # the members differ
    # calibrated on the ensemble's own maps, and it scores like any model
    val = [s for s in sources if s.case_id in meta["validation_cases"]]
    again = calibrate_model(model, val, "validation")
    assert meta["calibration"]["voxel_thresholds"] == again["voxel_thresholds"]
    assert model.name == meta["model"]["member"]["name"] + " x3"
    # a bundle edited to claim another ensemble is refused in one line
    for size, why in ((2, "do not fit the architecture"), (99, "size"), ("x", "size")):
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / "model.safetensors").write_bytes(
            (run / "model.safetensors").read_bytes())
        bad = json.loads(json.dumps(meta))
        bad["model"]["size"] = size
        (tmp_path / "bad" / "model.json").write_text(json.dumps(bad))
        with pytest.raises(MedaeError, match=why):
            load_bundle(tmp_path / "bad")
    result = model.score(scan, prepared=prep)
    assert result.heatmap.shape == scan.shape and np.isfinite(result.heatmap).all()


def test_member_one_of_an_ensemble_is_the_single_model_of_that_seed(tmp_path):
    """Member 1 trains exactly as ``train.ensemble: 1`` would (same seed): adding members does
    not change the first model."""
    write_phantoms(tmp_path / "data", 3, shape=(14, 16, 30))
    sources = discover(tmp_path / "data")
    one = load_bundle(train(_config("ae2d"), sources, tmp_path / "one", progress=False)).model
    two = load_bundle(train(_config("ae2d", "train.ensemble=2"), sources, tmp_path / "two",
                            progress=False)).model
    for (k, a), (_, b) in zip(one.state_dict().items(), two.members[0].state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k


def test_ensemble_settings_are_checked(tmp_path):
    for bad in ("0", "17", "2.5", "true"):
        with pytest.raises(MedaeError, match=r"train\.ensemble"):
            validate_config(_config("ae2d", f"train.ensemble={bad}"))
    with pytest.raises(MedaeError, match=r"model\.name"):  # built by training, never named
        validate_config(_config("ae2d", "model.name=ensemble"))
    write_phantoms(tmp_path / "data", 2, shape=(14, 16, 30))
    sources = discover(tmp_path / "data")
    for sets in (["data.calibration=crossfit"], []):
        recipe = "intensity" if not sets else "ae2d"
        with pytest.raises(MedaeError, match=r"train\.ensemble > 1"):
            train(_config(recipe, "train.ensemble=2", *sets), sources, tmp_path / "x",
                  progress=False)
        assert not (tmp_path / "x").exists()  # refused before anything is written
    with pytest.raises(MedaeError, match="ensemble"):
        create_model("ensemble", member={"name": "ensemble"}, size=2)
    with pytest.raises(MedaeError, match="size"):
        create_model("ensemble", member={"name": "ae", "spatial_dims": 2}, size=0)


def test_an_interrupted_ensemble_resumes_each_member_where_it_stopped(tmp_path):
    write_phantoms(tmp_path / "data", 3, shape=(14, 16, 30))
    sources = discover(tmp_path / "data")
    run = train(_config("ae2d", "train.ensemble=3"), sources, tmp_path / "run", progress=False)
    # member 3 never started: its folder is gone; then resume with a second epoch for everyone
    for f in (run / "members" / "2").iterdir():
        f.unlink()
    run = train(_config("ae2d", "train.ensemble=3", "train.epochs=2"), sources, run,
                resume=True, progress=False)

    def epochs(folder):
        return len((folder / "log.csv").read_text().strip().splitlines()) - 1

    assert epochs(run) == 2 and epochs(run / "members" / "1") == 2  # one more epoch each
    assert epochs(run / "members" / "2") == 2  # trained from the start
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["ensemble"]["members"] == 3
