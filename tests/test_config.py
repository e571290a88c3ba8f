"""Recipes: every section typed and validated when the recipe is loaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medae import MedaeError
from medae.config import DEFAULTS, DataConfig, LossConfig, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, message", [
    ("train.schedule=cosin", r"train\.schedule is 'cosin'; expected cosine or constant"),
    ("train.epoch=3", r"unknown key train\.epoch \(known: "),
    ("data.val_fractoin=0.1", r"unknown key data\.val_fractoin \("),
    ("data.lesion_samples=masks", r"data\.lesion_samples is 'masks'; expected drop or mask"),
    ("loss.knd=l1", r"unknown key loss\.knd \("),
    ("loss.kind=l2", r"loss\.kind is 'l2'; expected mse, l1 or bce"),
    ("preprocess.spacng=[1,1,1]", r"spacng"),
    ("scoring.median=3", r"scoring.*median"),
    ("model.nme=ae", r"nme"),
    ("train.lr=-1", r"train\.lr is -1; expected a finite number > 0"),
    ("train.batch_size=2.5", r"train\.batch_size is 2\.5; expected an integer"),
    ("trian.lr=1", r"unknown section 'trian'"),
])
def test_a_typo_in_any_section_is_refused_at_load(override, message):
    with pytest.raises(MedaeError, match=message):
        cfg = load_config(ROOT / "configs" / "brain_flair.yaml", [override])
        # sections validated by their own classes (model, preprocess, scoring) refuse a typo
        # when they are built, which training does before reading any scan
        from medae.bundle import model_kwargs
        from medae.preprocess import PreprocessConfig
        from medae.scoring.heatmap import MapConfig

        PreprocessConfig.from_dict(cfg["preprocess"])
        MapConfig.from_dict(cfg["scoring"])
        from medae.models import create_model
        create_model(**model_kwargs(cfg))


def test_sections_are_typed_views_of_the_recipe():
    cfg = load_config(ROOT / "configs" / "brain_flair.yaml",
                      ["train.lr=1", "train.grad_clip=2", "data.val_fraction=0"])
    tc = TrainConfig.from_dict(cfg["train"])
    assert tc.lr == 1.0 and isinstance(tc.lr, float)
    assert tc.grad_clip == 2.0 and isinstance(tc.grad_clip, float)
    assert tc.steps == 400 and tc.patience == 1000 and tc.precision == "auto"
    dc = DataConfig.from_dict(cfg["data"])
    assert dc.val_fraction == 0.0 and dc.lesion_samples == "mask" and dc.augment == {
        "flip_lr": True}
    assert LossConfig.from_dict(cfg["loss"]).masked is True
    with pytest.raises(AttributeError):
        tc.lr = 2.0  # read-only
    # the defaults are the dataclasses' (one place), in their order
    assert list(DEFAULTS["train"]) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert DEFAULTS["loss"] == {"kind": "mse", "beta": 1.0, "sparsity": 1e-3, "masked": False}
    with pytest.raises(MedaeError, match=r"unknown key loss\.gamma"):
        LossConfig.from_dict({"gamma": 1})
