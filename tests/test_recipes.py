"""Every recipe in configs/ trains one (short) epoch on real scans: the healthy IXI subject, and
the lesion-free slices/patches of BraTS FLAIR (labels used only to drop lesion samples)."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, shared

from medae import read_manifest
from medae.config import load_config
from medae.train import train

RECIPES = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
QUICK = ["train.max_steps_per_epoch=2", "train.epochs=1", "train.steps=null",
         "train.batch_size=2"]


def _manifest(tmp_path, name):
    if name == "ixi":
        d = shared("brain", "healthy", "ixi002")
        rows = [f"ixi002,{d / 'hd_bet_IXI002-Guys-0828-T2.nii.gz'},"
                f"{d / 'hd_bet_mask_IXI002-Guys-0828-T2.nii.gz'},"]
    else:
        d = shared("brain", "brats2013")
        rows = [f"{p.name},{p / 'Flair_subtrMeanDivStd.nii.gz'},{p / 'brainmask.nii.gz'},"
                f"{p / 'OTMultiClass.nii.gz'}" for p in sorted(d.glob("pat*"))[:3]]
    man = tmp_path / f"{name}.csv"
    man.write_text("case_id,image,mask,label\n" + "\n".join(rows) + "\n")
    return read_manifest(man)


def test_recipes_exist():
    assert set(RECIPES) >= {"ae2d", "vae2d", "dae2d", "sae2d", "ae3d", "vae3d", "dae3d"}


@pytest.mark.parametrize("dataset", ["ixi", "brats"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_on_real_scans(recipe, dataset, tmp_path):
    sources = _manifest(tmp_path, dataset)
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", QUICK)
    run = train(cfg, sources, tmp_path / "run", device="cpu", progress=False)
    meta = json.loads((run / "model.json").read_text())
    t = meta["training"]
    assert t["epochs_run"] == (0 if recipe == "intensity" else 1) and t["train_samples"] > 0
    assert meta["calibration"]["voxel_thresholds"]["0.01"] > 0
    if dataset == "brats":
        assert t["dropped_lesion_samples"] > 0
        assert t["val_subjects"] == 1
    assert meta["model"]["name"] == cfg["model"]["name"]
