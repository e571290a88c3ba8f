"""Preprocessing: resampling, masks, normalisation, crop/pad, and the way back to the scan."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared

from medae import MedaeError, load_scan
from medae.io.scan import Grid, Scan
from medae.masks import compute_mask, fill_holes
from medae.preprocess import PreprocessConfig, preprocess, to_scan_space


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
    assert prep.image.shape == (1, 24, 24, 24) and prep.mask.shape == (24, 24, 24)
    # intensity statistics from the scan's own voxels inside its own-grid mask
    np.testing.assert_array_equal(prep.native_mask, ball)
    lo, hi = np.percentile(img[ball], [0.5, 99.5])
    assert (prep.stats[0]["low"], prep.stats[0]["high"]) == pytest.approx((lo, hi))
    from scipy import ndimage

    core = ndimage.binary_erosion(prep.mask)  # inside the ball: 100 -> (100 - lo) / (hi - lo)
    assert core.sum() > 50
    assert np.median(prep.image[0][core]) == pytest.approx((100 - lo) / (hi - lo), abs=0.03)
    assert (prep.image[0][~prep.mask] == 0).all()
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
    assert prep.image.shape == (1, 16, 16, 30)
    assert prep.offset[:2] == (12, 4) and prep.offset[2] == 0
    assert prep.mask.sum() == ball.sum()  # the whole ball fits in the crop
    back = to_scan_space(prep.image[0], prep)
    np.testing.assert_allclose(back[ball], prep.image[0][prep.mask], atol=1e-6)
    assert prep.stats[0]["mean"] == pytest.approx(110.0, abs=0.2)
    assert prep.stats[0]["sd"] == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(prep.image[0][prep.mask].mean(), 0.0, atol=1e-4)


def test_computed_mask_otsu_on_noisy_background():
    img, ball = _ball((32, 32, 32), 10.0, value=200.0, background=20.0)
    img += np.random.default_rng(1).normal(0, 10, img.shape).astype(np.float32)
    mask, rule = compute_mask(img)
    assert rule.startswith("Otsu")
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
    assert prep.image.shape == (1, 96, 112, 80)
    assert prep.label is not None and prep.label.sum() > 0
    assert (prep.label & ~prep.mask).sum() < 50  # lesion labels lie inside the brain mask
    back = to_scan_space(prep.mask.astype(np.float32), prep, nearest=True) > 0.5
    dice = 2 * (back & brain).sum() / (back.sum() + brain.sum())
    assert dice > 0.97
    auto = preprocess(scan, cfg, label=label)  # constant background found without the mask
    assert (auto.mask == prep.mask).mean() > 0.99


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_near_constant_background_and_slice_holes():
    """Skull-stripped and then resampled: the background rings slightly below zero and dark
    fluid inside the brain must stay in the mask (Otsu would drop it)."""
    img, ball = _ball((40, 40, 30), 14.0, value=100.0)
    grid = np.indices(img.shape).astype(float)
    r = np.sqrt(((grid - np.array([19.5, 19.5, 14.5])[:, None, None, None]) ** 2).sum(0))
    img[r < 5] = 8.0  # dark 'ventricle' inside the brain
    rim = ball & (r > 13)
    img[rim] = 30.0
    outside_rim = ~ball & (r < 15)
    img[outside_rim] = np.random.default_rng(0).uniform(-12, 0, outside_rim.sum())
    # a 'sulcus': a background channel from the surface into the brain, open in 3D
    img[18:22, 18:22, 20:30] = 0.0
    mask, rule = compute_mask(img)
    assert rule.startswith("skull-stripped background")
    assert mask[r < 5].all()  # dark fluid kept
    assert not mask[outside_rim].any()  # ringing below the background is background
    # the channel is closed in each axial slice it crosses, so it is filled there
    assert mask[19, 19, 20:27].all()
    filled = fill_holes(np.pad(np.ones((5, 5, 3), bool), 1) & ~np.pad(
        np.pad(np.ones((1, 1, 5), bool), ((2, 2), (2, 2), (0, 0))), ((1, 1), (1, 1), (0, 0))))
    assert filled[3, 3, 2]  # a tube open at both ends in 3D is a hole in each slice


def test_fill_holes_equals_scipy_per_slice():
    """fill_holes = scipy's 3D binary_fill_holes, then its 2D fill in every axial slice (medae
    fills slice by slice with one labelling each, to keep the label images small)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for trial in range(4):
        mask = ndimage.binary_opening(rng.random((30, 26, 12)) > 0.45 - 0.05 * trial)
        given = mask.copy()
        ref = ndimage.binary_fill_holes(mask)
        for z in range(ref.shape[2]):
            ref[:, :, z] = ndimage.binary_fill_holes(ref[:, :, z])
        out = fill_holes(mask)
        assert (out == ref).all() and out.sum() > mask.sum()
        assert (mask == given).all()  # the input is left as it was
    full = np.ones((4, 4, 3), bool)
    assert fill_holes(full) is not full and fill_holes(full).all()


@pytest.mark.parametrize("patient", ["patient07", "patient19"])
def test_masks_on_real_ms_scans(patient):
    """The Lesjak MS scans (skull-stripped, then registered: background near zero, not at it):
    the computed mask is the brain (FLAIR > 0 up to its ringing rim) and covers the lesions."""
    folder = shared("brain", "ms_lesjak", patient)
    flair = load_scan(next(folder.glob("FLAIR*.nii.gz"))).array
    lesion = load_scan(next(folder.glob("GOLD_STANDARD*.nii.gz"))).array > 0
    mask, rule = compute_mask(flair)
    assert rule.startswith("skull-stripped background")
    assert _dice(mask, flair > 0) > 0.99
    missed = lesion & ~mask
    assert missed.sum() <= 5 and (flair[missed] <= 0).all()  # only label voxels off the image
    for seq in ("T1_", "T2_"):
        other, _ = compute_mask(load_scan(next(folder.glob(f"{seq}*.nii.gz"))).array)
        assert _dice(other, mask) > 0.99


@pytest.mark.parametrize("patient", ["pat0001", "pat0003"])
def test_masks_on_real_brats_scans(patient):
    folder = shared("brain", "brats2013", patient)
    flair = load_scan(folder / "Flair_subtrMeanDivStd.nii.gz").array
    given = load_scan(folder / "brainmask.nii.gz").array > 0
    lesion = load_scan(folder / "OTMultiClass.nii.gz").array > 0
    mask, rule = compute_mask(flair)
    assert "background" in rule and _dice(mask, given) > 0.998
    assert not (lesion & given & ~mask).any()  # every labelled voxel inside the brain


def test_masks_on_real_ixi_scans():
    folder = shared("brain", "healthy", "ixi002")
    for seq in ("T1", "T2"):
        img = load_scan(folder / f"hd_bet_IXI002-Guys-0828-{seq}.nii.gz").array
        given = load_scan(folder / f"hd_bet_mask_IXI002-Guys-0828-{seq}.nii.gz").array > 0
        mask, _ = compute_mask(img)
        assert _dice(mask, given) > 0.999


def test_masks_on_demo_patients(tmp_path):
    from medae.synthetic import make_subject

    for seed, lesions in ((3, 2), (4, 0)):
        case = make_subject(seed, lesions=lesions)
        mask, rule = compute_mask(case.image)
        assert rule.startswith("skull-stripped background")
        assert _dice(mask, case.brain) > 0.97 and not (case.lesion & ~mask).any()


def test_mask_rule_recorded(tmp_path):
    img, ball = _ball((30, 30, 30), 9.0)
    img[ball] += np.random.default_rng(0).normal(0, 3, ball.sum()).astype(np.float32)
    scan = _scan(img)
    cfg = PreprocessConfig(spacing=None)
    assert preprocess(scan, cfg).mask_rule.startswith("skull-stripped background")
    assert preprocess(scan, cfg, mask=ball).mask_rule.startswith("given")
    assert preprocess(scan, PreprocessConfig(spacing=None, mask="none")).mask_rule.startswith(
        "none")
    prep = preprocess(scan, cfg, keep_native=False)
    assert prep.native_mask is None and prep.mask_rule


def test_robust_normalisation_ignores_a_large_bright_lesion():
    """normalise: robust maps median - 3.5 IQR and median + 2 IQR to 0 and 1; a bright lesion
    in 15% of the brain barely moves it, while the 99.5th percentile jumps into the lesion."""
    from medae.preprocess import ROBUST_RANGE, apply_normalisation, intensity_stats

    rng = np.random.default_rng(0)
    brain = rng.normal(100.0, 10.0, (40, 40, 20)).astype(np.float32)
    mask = np.ones(brain.shape, bool)
    q1, med, q3 = np.percentile(brain, (25, 50, 75))
    robust = PreprocessConfig(normalise="robust")
    stats = intensity_stats(brain, mask, robust)
    assert stats["low"] == pytest.approx(med - ROBUST_RANGE[0] * (q3 - q1), rel=1e-5)
    assert stats["high"] == pytest.approx(med + ROBUST_RANGE[1] * (q3 - q1), rel=1e-5)
    norm = apply_normalisation(brain, stats)
    assert np.median(norm) == pytest.approx(3.5 / 5.5, abs=1e-3)
    lesioned = brain.copy()
    lesioned[:, :6] = 300.0  # 15% of the brain, far brighter than tissue
    with_lesion = intensity_stats(lesioned, mask, robust)
    healthy = (slice(None), slice(6, None))
    shift = apply_normalisation(lesioned, with_lesion)[healthy] - norm[healthy]
    assert np.median(np.abs(shift)) < 0.06  # healthy tissue nearly keeps its values
    pct = PreprocessConfig(normalise="percentile")
    before = apply_normalisation(brain, intensity_stats(brain, mask, pct))[healthy]
    after = apply_normalisation(lesioned, intensity_stats(lesioned, mask, pct))[healthy]
    assert np.median(np.abs(after - before)) > 0.25  # the percentile rule rescales it all
    with pytest.raises(MedaeError, match="no spread"):
        intensity_stats(np.ones((5, 5, 5), np.float32), np.ones((5, 5, 5), bool), robust)
