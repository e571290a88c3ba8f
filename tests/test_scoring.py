"""Scoring: candidates, thresholds, heat maps, and whole scans scored on their own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import lesion_phantom, shared

import medae
from medae import MedaeError
from medae.scoring import MapConfig, anomaly_map, calibrate, find_candidates, pick_threshold


def test_candidates_components_sizes_and_world_centroids():
    heat = np.zeros((20, 20, 10), np.float32)
    heat[2:4, 2:4, 2:4] = 5.0  # 8 voxels, max 5
    heat[10:13, 10:13, 5:7] = 2.0  # 18 voxels, max 9 at one voxel
    heat[11, 11, 6] = 9.0
    heat[15, 15, 1] = 3.0  # single voxel, diagonal neighbour below: 26-connected
    heat[16, 16, 2] = 3.0
    heat[0, 19, 9] = 4.0  # isolated voxel: dropped by the size filter
    affine = np.array([[0.5, 0, 0, -10], [0, 1.0, 0, 20], [0, 0, 2.0, 5], [0, 0, 0, 1]])
    labels, cands = find_candidates(heat, affine, threshold=1.0, min_volume_mm3=1.5)
    assert [c.voxels for c in cands] == [18, 8, 2]  # strongest (max score) first
    assert [c.max_score for c in cands] == [9.0, 5.0, 3.0]
    big = cands[0]
    assert big.id == 1 and big.volume_mm3 == pytest.approx(18 * 1.0)
    np.testing.assert_allclose(big.centroid_mm, [-10 + 0.5 * 11, 20 + 11, 5 + 2 * 5.5])
    assert big.bbox == (10, 10, 5, 13, 13, 7)
    assert big.mean_score == pytest.approx((17 * 2 + 9) / 18)
    assert labels[11, 11, 6] == 1 and labels[3, 3, 3] == 2 and labels[16, 16, 2] == 3
    assert labels[0, 19, 9] == 0 and labels.max() == 3
    labels, cands = find_candidates(heat, affine, threshold=100.0)
    assert cands == [] and not labels.any()


def test_calibration_quantiles_and_threshold_choice():
    rng = np.random.default_rng(0)
    values = [rng.random(50_000), rng.random(50_000)]
    cal = calibrate(values, [0.1, 0.2, 0.3, 0.4], "validation")
    assert cal["voxel_thresholds"]["0.01"] == pytest.approx(0.99, abs=0.003)
    assert cal["voxel_thresholds"]["0.1"] == pytest.approx(0.90, abs=0.005)
    assert cal["scan_threshold"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 95))
    assert "100000 healthy brain voxels" in cal["voxel_rule"]
    thr, rule = pick_threshold(cal, fpr=0.05)
    assert thr == cal["voxel_thresholds"]["0.05"] and "0.05" in rule
    thr, _ = pick_threshold(cal, fpr=0.02)  # interpolated on the stored curve
    assert thr == pytest.approx(0.98, abs=0.005)
    assert pick_threshold(cal, threshold=0.5) == (0.5, "set by hand (--threshold)")
    with pytest.raises(MedaeError, match="outside the calibrated range"):
        pick_threshold(cal, fpr=0.9)
    with pytest.raises(MedaeError, match="no calibrated threshold"):
        pick_threshold(None)
    with pytest.raises(MedaeError, match="no healthy voxels"):
        calibrate([], [], "validation")
    flat = calibrate([np.zeros(100)], [0.0], "training")  # all-normal, constant scores
    assert flat["voxel_thresholds"]["0.01"] == 0.0


def test_anomaly_map_residuals_erosion_and_median():
    image = np.zeros((12, 12, 12), np.float32)
    recon = np.zeros_like(image)
    image[6, 6, 6] = 1.0  # a single hot voxel: removed by the median filter
    image[3:8, 3:8, 3:8] += 0.5  # a block: kept
    recon[9, 9, 9] = 0.25  # darker than expected
    mask = np.zeros(image.shape, bool)
    mask[1:11, 1:11, 1:11] = True
    heat, inside = anomaly_map(image, recon, mask, MapConfig(erode=1, median=3))
    assert inside.sum() == 8**3 and not heat[~inside].any()
    assert heat[6, 6, 6] == pytest.approx(0.5) and heat[5, 5, 5] == pytest.approx(0.5)
    raw, _ = anomaly_map(image, recon, mask, MapConfig(erode=0, median=0, residual="squared"))
    assert raw[6, 6, 6] == pytest.approx(2.25) and raw[9, 9, 9] == pytest.approx(0.0625)
    pos, _ = anomaly_map(image, recon, mask, MapConfig(erode=0, median=0, residual="positive"))
    assert pos[9, 9, 9] == 0
    slab, _ = anomaly_map(image, recon, mask, MapConfig.from_dict({"erode": 0,
                                                                  "median": [3, 3, 1]}))
    assert slab[6, 6, 6] == pytest.approx(0.5)  # in-plane median only
    with pytest.raises(MedaeError, match="unknown key"):
        MapConfig.from_dict({"medain": 3})
    with pytest.raises(MedaeError, match="median"):
        MapConfig.from_dict({"median": [3, 3]})


def test_lesion_found_and_outputs_on_the_source_grid(tiny_model, tmp_path):
    img, lesion, aff = lesion_phantom()
    # an awkward grid: flipped first axis and an oblique rotation
    rot = np.eye(4)
    a = np.deg2rad(10)
    rot[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    flip = np.diag([-1.0, 1, 1, 1])
    flip[0, 3] = 2.0 * (img.shape[0] - 1)
    affine = rot @ aff @ flip
    src = tmp_path / "patient.nii.gz"
    nib.save(nib.Nifti1Image(img[::-1].copy(), affine), src)
    model = medae.load_model(tiny_model, device="cpu")
    scan = medae.load_scan(src)
    result = model.score(scan, fpr=0.01)
    assert result.heatmap.shape == scan.shape and result.labels.shape == scan.shape
    assert result.candidates, "the lesion was not found"
    top = result.candidates[0]
    ijk = np.linalg.solve(scan.affine, np.r_[top.centroid_mm, 1.0])[:3]
    stored = nib.load(src)
    # the canonical array of the scan is the phantom itself (the flip undone)
    assert lesion[tuple(np.round(ijk).astype(int))], (top, ijk)
    assert result.heatmap[lesion].mean() > 3 * result.heatmap[result.brain & ~lesion].mean()
    out = medae.write_on_grid(result.heatmap, scan, tmp_path / "map.nii.gz")
    written = nib.load(out)
    assert written.shape == stored.shape
    np.testing.assert_array_equal(written.affine, stored.affine)


def test_dicom_series_scored_on_its_own_grid(tiny_model, tmp_path):
    folder = shared("dicom", "ge_mprage_t1", "In", "05_3D_Ax_T1_MP_RAGE_R22")
    scan = medae.load_scan(folder)
    model = medae.load_model(tiny_model, device="cpu")
    result = model.score(scan, threshold=1e9)
    out = medae.write_on_grid(result.heatmap, scan, tmp_path / "map.nii.gz")
    img = nib.load(out)
    assert img.shape == scan.grid.shape
    np.testing.assert_allclose(img.affine, scan.grid.affine, atol=1e-4)
    assert int(img.header["sform_code"]) == 1
    assert result.candidates == []


def test_3d_model_sliding_window_scoring(tmp_path):
    """A 3D model scores a volume larger than its patches (MONAI sliding window, Gaussian)."""
    from conftest import ROOT, TINY_2D, write_phantoms

    from medae import discover
    from medae.config import load_config
    from medae.train import train

    write_phantoms(tmp_path / "h", 3, shape=(24, 28, 20))
    sets = [s for s in TINY_2D if not s.startswith("train.epochs")]
    cfg = load_config(ROOT / "configs" / "ae3d.yaml",
                      [*sets, "train.epochs=2", "data.patch_size=[16, 16, 16]",
                       "data.min_foreground=0.0"])
    run = train(cfg, discover(tmp_path / "h"), tmp_path / "run", device="cpu", progress=False)
    img, _, aff = lesion_phantom()
    src = tmp_path / "p.nii.gz"
    nib.save(nib.Nifti1Image(img, aff), src)
    scan = medae.load_scan(src)
    result = medae.load_model(run, device="cpu").score(scan, fpr=0.05)
    assert result.heatmap.shape == scan.shape and np.isfinite(result.heatmap).all()
    assert result.heatmap[result.brain].max() > 0
    assert result.latent.shape == (32,)  # mean bottleneck code over the windows
