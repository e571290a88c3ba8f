"""Preprocessing: resampling, masks, normalisation, crop/pad, and the way back to the scan."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared

from medae import MedaeError, load_scan
from medae.io.scan import Grid, Scan
from medae.preprocess import PreprocessConfig, compute_mask, preprocess, to_scan_space


def _scan(array, zooms=(1.0, 1.0, 1.0)) -> Scan:
    aff = np.diag([*zooms, 1.0])
    return Scan.from_grid(array.astype(np.float32), Grid(array.shape, aff), source="synthetic",
                          kind="nifti")


def _ball(shape, radius, centre=None, value=100.0, background=0.0):
    grid = np.indices(shape).astype(float)
    centre = np.array(centre if centre is not None else [(n - 1) / 2 for n in shape])
    r = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
    return np.where(r <= radius, value, background).astype(np.float32), r <= radius


def test_resample_normalise_and_back():
    img, ball = _ball((40, 40, 20), 8.0)
    rng = np.random.default_rng(0)
    img[ball] += rng.normal(0, 5, ball.sum()).astype(np.float32)
    scan = _scan(img, zooms=(1.0, 1.0, 2.0))
    cfg = PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(24, 24, 24))
    prep = preprocess(scan, cfg)
    assert prep.resampled_shape == (20, 20, 20)
    assert prep.image.shape == prep.mask.shape == (24, 24, 24)
    inside = prep.image[prep.mask]
    np.testing.assert_allclose(np.percentile(inside, [0.5, 99.5]), [0.0, 1.0], atol=1e-5)
    assert (prep.image[~prep.mask] == 0).all()
    # padding is centred on the mask
    idx = np.argwhere(prep.mask)
    np.testing.assert_allclose((idx.min(0) + idx.max(0)) / 2, [11.5, 11.5, 11.5], atol=1.0)
    back = to_scan_space(prep.mask.astype(np.float32), prep, nearest=True) > 0.5
    assert back.shape == scan.shape
    dice = 2 * (back & ball).sum() / (back.sum() + ball.sum())
    assert dice > 0.9


def test_crop_smaller_than_volume_and_given_mask():
    img, ball = _ball((30, 30, 30), 6.0, centre=(20, 12, 15))
    img += np.random.default_rng(2).normal(10.0, 1.0, img.shape).astype(np.float32)
    scan = _scan(img)  # no constant background: the given mask is used
    cfg = PreprocessConfig(spacing=None, size=(16, 16, None), normalise="zscore")
    prep = preprocess(scan, cfg, mask=ball)
    assert prep.image.shape == (16, 16, 30)
    assert prep.offset[:2] == (12, 4) and prep.offset[2] == 0
    assert prep.mask.sum() == ball.sum()  # the whole ball fits in the crop
    back = to_scan_space(prep.image, prep)
    np.testing.assert_allclose(back[ball], prep.image[prep.mask], atol=1e-6)
    assert prep.stats["mean"] == pytest.approx(110.0, abs=0.2)
    assert prep.stats["sd"] == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(prep.image[prep.mask].mean(), 0.0, atol=1e-4)


def test_computed_mask_otsu_on_noisy_background():
    img, ball = _ball((32, 32, 32), 10.0, value=200.0, background=20.0)
    img += np.random.default_rng(1).normal(0, 10, img.shape).astype(np.float32)
    mask = compute_mask(img)
    dice = 2 * (mask & ball).sum() / (mask.sum() + ball.sum())
    assert dice > 0.95


def test_errors():
    with pytest.raises(MedaeError, match="unknown key"):
        PreprocessConfig.from_dict({"spacing": [1, 1, 1], "spacinng": 2})
    with pytest.raises(MedaeError, match="normalise"):
        PreprocessConfig(normalise="minmax")
    flat = _scan(np.full((10, 10, 10), 5.0))
    with pytest.raises(MedaeError, match=r"synthetic: .*constant intensity"):
        preprocess(flat, PreprocessConfig(mask="none"))
    with pytest.raises(MedaeError, match="label shape"):
        preprocess(flat, PreprocessConfig(), label=np.zeros((3, 3, 3)))


def test_real_brats_with_brain_mask():
    folder = shared("brain", "brats2013", "pat0001")
    scan = load_scan(folder / "Flair_subtrMeanDivStd.nii.gz")
    brain = load_scan(folder / "brainmask.nii.gz").array > 0
    label = load_scan(folder / "OTMultiClass.nii.gz").array > 0
    cfg = PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(96, 112, 80))
    prep = preprocess(scan, cfg, mask=brain, label=label)
    assert prep.image.shape == (96, 112, 80)
    assert prep.label is not None and prep.label.sum() > 0
    assert (prep.label & ~prep.mask).sum() < 50  # lesion labels lie inside the brain mask
    back = to_scan_space(prep.mask.astype(np.float32), prep, nearest=True) > 0.5
    dice = 2 * (back & brain).sum() / (back.sum() + brain.sum())
    assert dice > 0.97
    auto = preprocess(scan, cfg, label=label)  # constant background found without the mask
    assert (auto.mask == prep.mask).mean() > 0.99
