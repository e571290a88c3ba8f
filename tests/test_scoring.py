"""Scoring: candidates, thresholds, heat maps, and whole scans scored on their own grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import lesion_phantom, shared

import medae
from medae import MedaeError
from medae.masks import outer_erosion
from medae.scoring import MapConfig, anomaly_map, calibrate, find_candidates, pick_threshold
from medae.scoring.threshold import HealthyMap, LabelledMap, candidate_threshold


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


def _healthy(values, shape=(50, 50, 20)):
    heat = np.asarray(values, np.float32).reshape(shape)
    return HealthyMap.crop(heat, np.ones(shape, bool), 1.0)


def test_calibration_quantiles_and_threshold_choice():
    rng = np.random.default_rng(0)
    maps = [_healthy(rng.random(50_000)), _healthy(rng.random(50_000))]
    cal = calibrate(maps, [0.1, 0.2, 0.3, 0.4], "validation")
    assert cal["voxel_thresholds"]["0.01"] == pytest.approx(0.99, abs=0.003)
    assert cal["voxel_thresholds"]["0.1"] == pytest.approx(0.90, abs=0.005)
    assert cal["scan_threshold"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 95))
    assert "100000 healthy brain voxels" in cal["voxel_rule"]
    thr, rule = pick_threshold(cal, fpr=0.05)
    assert thr == cal["voxel_thresholds"]["0.05"] and "0.05" in rule
    thr, _ = pick_threshold(cal, fpr=0.02)  # interpolated on the stored curve
    assert thr == pytest.approx(0.98, abs=0.005)
    assert pick_threshold(cal, threshold=0.5) == (0.5, "set by hand (--threshold)")
    # two healthy scans are too few for the candidate rule: the 1% voxel rule, with a warning
    assert cal["default"] == "fpr" and len(cal["warnings"]) == 1
    assert "only 2 healthy validation scan(s)" in cal["warnings"][0]
    thr, rule = pick_threshold(cal)
    assert thr == cal["voxel_thresholds"]["0.01"] and "1% of the healthy brain voxels" in rule
    older = {k: v for k, v in cal.items() if not k.startswith("default")}
    thr, rule = pick_threshold(older)  # bundles from before the operating-point rules
    assert thr == cal["candidate_threshold"] and "candidate" in rule
    legacy = {k: v for k, v in older.items() if not k.startswith("candidate")}
    assert pick_threshold(legacy)[0] == cal["voxel_thresholds"]["0.01"]  # older still
    with pytest.raises(MedaeError, match="outside the calibrated range"):
        pick_threshold(cal, fpr=0.9)
    with pytest.raises(MedaeError, match="no calibrated threshold"):
        pick_threshold(None)
    with pytest.raises(MedaeError, match="finite"):
        pick_threshold(cal, threshold=float("nan"))
    with pytest.raises(MedaeError, match="no healthy voxels"):
        calibrate([], [], "validation")
    flat = calibrate([_healthy(np.zeros(100), (10, 10, 1))], [0.0], "training")
    assert flat["voxel_thresholds"]["0.01"] == 0.0


def test_candidate_rule_allows_one_false_candidate_per_healthy_scan():
    """Healthy maps with blobs of known strength: the candidate threshold is the lowest one
    leaving at most one blob of >= min volume per scan on average."""
    rng = np.random.default_rng(1)
    maps = []
    for k in range(4):
        heat = rng.random((40, 40, 20)).astype(np.float32) * 0.5  # noise: single voxels
        for j, strength in enumerate((3.0, 2.0, 1.5)):  # 3 blobs of 27 voxels per scan
            x = 5 + 12 * j
            heat[x:x + 3, 10 + k:13 + k, 5:8] = strength + 0.1 * k
        maps.append(HealthyMap.crop(heat, np.ones(heat.shape, bool), 1.0))
    thr, fp = candidate_threshold(maps, np.linspace(0, 3.5, 200), min_volume_mm3=10)
    assert fp <= 1.0
    assert 2.3 < thr < 3.0  # above every 2.0-2.3 blob, below the 3.0 ones
    assert np.mean([m.count_candidates(thr - 0.05, 10) for m in maps]) > 1.0
    cal = calibrate(maps, [0.0] * 4, "validation", min_volume_mm3=10)
    assert cal["candidate_fp_per_scan"] <= 1.0 and "4 healthy validation" in \
        cal["candidate_rule"]
    assert cal["candidate_threshold"] < 3.0  # the strongest blobs still count as one each
    # four truly healthy scans (no labels): the candidate rule is the default, no warning
    assert cal["default"] == "candidates" and cal["warnings"] == []
    assert pick_threshold(cal)[0] == cal["candidate_threshold"]
    assert cal["operating_point"]["fp_per_scan"] <= 1.0


def _patients(n: int = 2, seed: int = 3) -> tuple[list, list]:
    """Calibration patients whose Dice-optimal threshold is known: on noise in [0, 0.5), each
    has a lesion (a 6x6x6 cube) scoring 1.0 in its core and 0.7 in its outer shell, and a
    healthy hot spot of 0.9 (27 voxels) that is not a lesion (candidates are voxels above the
    threshold).  A threshold in [0.5, 0.7) finds the whole lesion plus the spot: Dice
    2*216/(216+27+216) = 0.94; in [0.7, 0.9) the core and the spot, 0.44; in [0.9, 1.0) the
    core alone, 0.46; below 0.5 the noise.  The best is in [0.5, 0.7)."""
    rng = np.random.default_rng(seed)
    healthy, labelled = [], []
    for k in range(n):
        heat = (rng.random((40, 40, 30)) * 0.5).astype(np.float32)
        lesion = np.zeros(heat.shape, bool)
        lesion[10 + k:16 + k, 10:16, 10:16] = True
        heat[lesion] = 0.7
        heat[11 + k:15 + k, 11:15, 11:15] = 1.0
        heat[30:33, 30:33, 20:23] = 0.9
        brain = np.ones(heat.shape, bool)
        healthy.append(HealthyMap.crop(heat, ~lesion, 1.0))
        labelled.append(LabelledMap.crop(heat, brain, brain, lesion, 1.0))
    return healthy, labelled


def test_labelled_calibration_picks_the_dice_optimal_threshold():
    healthy, labelled = _patients()
    cal = calibrate(healthy, [0.0, 0.0], "validation", min_volume_mm3=5, labelled=labelled)
    assert cal["default"] == "dice" and cal["warnings"] == []
    thr, rule = pick_threshold(cal)
    assert 0.5 <= thr < 0.7
    point = cal["operating_point"]
    assert point["dice"] == pytest.approx(2 * 432 / (2 * 216 + 2 * 27 + 2 * 216), abs=1e-6)
    assert point["sensitivity"] == 1.0 and point["lesion_recall"] == 1.0
    assert point["fp_per_scan"] == 1.0  # the hot spot on each scan
    assert point["labelled_scans"] == 2 and point["lesion_voxels"] == 432
    assert "highest Dice with the lesion labels of 2 labelled validation scan(s)" in rule
    assert "(Dice 0.941, share of lesion voxels caught 1.000, share of lesions touched 1.000, " \
        "1.00 false candidates/scan)" in rule
    # what evaluation would compute on the candidates at that threshold
    m = labelled[0]
    called = (m.heat > thr)
    assert 2 * (called & m.lesion).sum() / (called.sum() + m.lesion.sum()) == \
        pytest.approx(point["dice"], abs=1e-6)


def test_froc_rule_and_degenerate_calibration_reported():
    healthy, labelled = _patients()
    # no false candidate allowed: the hot spot (0.9) must stay below; the cores are found
    cal = calibrate(healthy, [0.0, 0.0], "validation", min_volume_mm3=5, labelled=labelled,
                    operating_point="froc", froc_fp=0.0)
    point = cal["operating_point"]
    assert cal["default"] == "froc" and 0.9 <= point["threshold"] < 1.0
    assert point["lesion_recall"] == 1.0 and point["fp_per_scan"] == 0.0
    assert point["sensitivity"] == pytest.approx(64 / 216)
    # under half of the lesion voxels caught: said, in the bundle's warnings
    assert len(cal["warnings"]) == 1 and "degenerate calibration" in cal["warnings"][0]
    assert "catches 30% of the 432 labelled lesion voxels" in cal["warnings"][0]
    # the healthy candidate rule on patients puts the threshold above the lesions: reported
    cal = calibrate(healthy, [0.0, 0.0], "validation", min_volume_mm3=5, labelled=labelled,
                    operating_point="candidates")
    assert any("candidate rule on only 2" in w for w in cal["warnings"])
    # one labelled calibration scan: said, with the way to pool more
    cal = calibrate(healthy[:1], [0.0], "validation", min_volume_mm3=5, labelled=labelled[:1])
    assert cal["warnings"] == ["one labelled validation scan decides the dice threshold: its "
                               "maps alone set it (data.calibration=crossfit calibrates on "
                               "every training scan, pooled)"]
    # dice asked for without labels: the voxel rule, with a warning
    cal = calibrate(healthy, [0.0, 0.0], "validation", operating_point="dice")
    assert cal["default"] == "fpr" and "needs calibration scans with lesion labels" in \
        cal["warnings"][0]


def test_degenerate_labelled_point_gives_way_to_the_voxel_rule():
    """auto: a Dice point that catches under half of the calibration patients' lesion voxels
    (the model barely sees them) is not the default: the 1% healthy-voxel rule is, with a
    warning, and the rejected point is kept; asked for by name, dice stays (with its warning)."""
    healthy, labelled = _patients()
    # only the 64-voxel cores stand out; the shells sink into the noise
    for m, h in zip(labelled, healthy, strict=True):
        shell = m.lesion & (m.heat < 1.0)
        m.heat[shell] = h.heat[shell] = 0.3
    cal = calibrate(healthy, [0.0, 0.0], "validation", min_volume_mm3=5, labelled=labelled)
    assert cal["default"] == "fpr"
    assert cal["default_threshold"] == cal["voxel_thresholds"]["0.01"]
    assert pick_threshold(cal)[0] == cal["voxel_thresholds"]["0.01"]
    point = cal["operating_point"]
    assert point["rule"] == "fpr" and point["requested"] == "auto"
    assert point["rejected"]["rule"] == "dice"
    assert point["rejected"]["sensitivity"] == pytest.approx(128 / 432)
    assert any(w.startswith("degenerate calibration: the dice operating point") and
               w.endswith(": the default is the 1% healthy-voxel rule instead")
               for w in cal["warnings"])
    # the voxel rule's own figures on the patients: its threshold sits in the top 1% of the
    # noise (which reaches 0.5, above the shells), so it too catches the cores alone: said again
    assert 0.45 < point["threshold"] < 0.5
    assert point["sensitivity"] == pytest.approx(128 / 432)
    assert sum(w.startswith("degenerate calibration") for w in cal["warnings"]) == 2
    named = calibrate(healthy, [0.0, 0.0], "validation", min_volume_mm3=5, labelled=labelled,
                      operating_point="dice")
    assert named["default"] == "dice" and "rejected" not in named["operating_point"]
    assert any("catches 30% of the 432" in w for w in named["warnings"])


def test_degenerate_when_nothing_is_flagged_on_the_patients():
    healthy, labelled = _patients()
    for m in labelled:  # the lesions score below the healthy noise's top: nothing to find
        m.heat[m.lesion] = 0.2
    cal = calibrate(healthy, [0.0, 0.0], "validation", min_volume_mm3=5, labelled=labelled,
                    operating_point="candidates")
    assert any("no candidate touches the 2 labelled" in w or "catches" in w
               for w in cal["warnings"])
    with pytest.raises(MedaeError, match="operating_point"):
        calibrate(healthy, [0.0, 0.0], "validation", operating_point="best")


def test_anomaly_map_residuals_erosion_and_median():
    image = np.zeros((12, 12, 12), np.float32)
    recon = np.zeros_like(image)
    image[6, 6, 6] = 1.0  # a single hot voxel: removed by the median filter
    image[3:8, 3:8, 3:8] += 0.5  # a block: kept
    recon[9, 9, 9] = 0.25  # darker than expected
    mask = np.zeros(image.shape, bool)
    mask[1:11, 1:11, 1:11] = True
    heat, inside = anomaly_map(image, recon, mask, MapConfig(erode_mm=1, median_mm=3))
    assert inside.sum() == 8**3 and not heat[~inside].any()
    assert heat[6, 6, 6] == pytest.approx(0.5) and heat[5, 5, 5] == pytest.approx(0.5)
    raw, _ = anomaly_map(image, recon, mask, MapConfig(erode_mm=0, median_mm=0,
                                                       residual="squared"))
    assert raw[6, 6, 6] == pytest.approx(2.25) and raw[9, 9, 9] == pytest.approx(0.0625)
    pos, _ = anomaly_map(image, recon, mask, MapConfig(erode_mm=0, median_mm=0,
                                                       residual="positive"))
    assert pos[9, 9, 9] == 0
    slab, _ = anomaly_map(image, recon, mask, MapConfig.from_dict({"erode_mm": 0,
                                                                  "median_mm": [3, 3, 0]}))
    assert slab[6, 6, 6] == pytest.approx(0.5)  # in-plane median only
    # millimetres, not voxels: the widest odd window within 3 mm
    assert MapConfig(median_mm=3).median_size((0.5, 1.0, 3.0)) == (5, 3, 1)
    assert MapConfig(median_mm=9.375).median_size((1.875, 0.9375, 1.0)) == (5, 9, 9)
    # legacy bundles: sizes in model voxels, converted with the model's spacing
    old = MapConfig.from_dict({"erode": 3, "median": [5, 5, 1]}, (1.875, 1.875, 1.875))
    assert old.erode_mm == pytest.approx(5.625) and old.median_mm == (9.375, 9.375, 0.0)
    with pytest.raises(MedaeError, match="unknown key"):
        MapConfig.from_dict({"medain": 3})
    with pytest.raises(MedaeError, match="median_mm"):
        MapConfig.from_dict({"median_mm": [3, 3]})
    with pytest.raises(MedaeError, match="erode_mm"):
        MapConfig.from_dict({"erode_mm": -1})


def test_erosion_only_from_the_outer_surface():
    """A ventricle-like hole inside the brain does not grow: only the outer rim is left out."""
    grid = np.indices((40, 40, 30)).astype(float)
    r = np.sqrt(((grid - np.array([19.5, 19.5, 14.5])[:, None, None, None]) ** 2).sum(0))
    brain = r < 14
    hole = r < 3
    mask = brain & ~hole
    out = outer_erosion(mask, 2.0, (1.0, 1.0, 1.0))
    assert not (out & hole).any()
    ring = (r >= 3) & (r < 4.5)  # right around the hole: kept
    assert out[ring].all()
    assert not out[(r > 12.6) & brain].any() and out[(r < 11.5) & ~hole].all()
    # anisotropic voxels: 2 mm deep is one 2 mm voxel along z, two 1 mm voxels in-plane
    box = np.zeros((20, 20, 10), bool)
    box[2:18, 2:18, 2:8] = True
    out = outer_erosion(box, 2.0, (1.0, 1.0, 2.0))
    assert out[:, :, 3].any() and not out[:, :, 2].any()  # z: one 2 mm voxel removed
    assert not out[3, :, 4].any() and out[4, 4:16, 4].all()  # x: two 1 mm voxels removed


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
    assert result.heatmap[lesion].mean() > 3 * result.heatmap[result.analysed & ~lesion].mean()
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
    assert result.heatmap[result.analysed].max() > 0
    assert result.latent.shape == (32,)  # mean bottleneck code over the windows
