"""Every recipe in configs/ trains one (short) epoch on real scans: the healthy IXI subject (T2,
and T1 for the multi-sequence recipe), and BraTS FLAIR (and T1c) with the lesion samples dropped
or masked (labels used only for that)."""

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
    if name == "ixi":  # T1 (another grid) is resampled onto T2's through world coordinates
        d = shared("brain", "healthy", "ixi002")
        header = "case_id,t2,t1,mask,label"
        rows = [f"ixi002,{d / 'hd_bet_IXI002-Guys-0828-T2.nii.gz'},"
                f"{d / 'hd_bet_IXI002-Guys-0828-T1.nii.gz'},"
                f"{d / 'hd_bet_mask_IXI002-Guys-0828-T2.nii.gz'},"]
    else:
        d = shared("brain", "brats2013")
        header = "case_id,flair,t1,mask,label"
        rows = [f"{p.name},{p / 'Flair_subtrMeanDivStd.nii.gz'},{p / 'T1c_subtrMeanDivStd.nii.gz'},"
                f"{p / 'brainmask.nii.gz'},{p / 'OTMultiClass.nii.gz'}"
                for p in sorted(d.glob("pat*"))[:3]]
    man = tmp_path / f"{name}.csv"
    man.write_text(header + "\n" + "\n".join(rows) + "\n")
    return read_manifest(man)


def test_recipes_exist():
    assert set(RECIPES) >= {"ae2d", "vae2d", "dae2d", "sae2d", "ae3d", "vae3d", "dae3d"}


@pytest.mark.parametrize("dataset", ["ixi", "brats"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_on_real_scans(recipe, dataset, tmp_path):
    sources = _manifest(tmp_path, dataset)
    # IXI has no FLAIR: the multi-sequence recipe reads T2 + T1 and scores T2 there
    extra = (["preprocess.inputs=[t2, t1]", "scoring.channels=[t2]"]
             if recipe == "brain_multi" and dataset == "ixi" else [])
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", [*QUICK, *extra])
    run = train(cfg, sources, tmp_path / "run", device="cpu", progress=False)
    meta = json.loads((run / "model.json").read_text())
    t = meta["training"]
    assert t["epochs_run"] == (0 if recipe == "intensity" else 1) and t["train_samples"] > 0
    assert meta["calibration"]["voxel_thresholds"]["0.01"] > 0
    if dataset == "brats":
        key = {"mask": "lesion_masked_samples", "drop": "dropped_lesion_samples"}
        assert t[key[cfg["data"]["lesion_samples"]]] > 0
        assert t["val_subjects"] == 1
    assert meta["model"]["name"] == cfg["model"]["name"]
    channels = len(cfg["preprocess"].get("inputs") or [None])
    assert meta["model"]["in_channels"] == channels
    assert len(meta["intensity"][0].get("inputs", [None])) == channels
