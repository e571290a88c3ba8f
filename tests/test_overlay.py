"""Overlay pictures: written atomically, the lesion in heat colours where it is, no crashes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import shared
from matplotlib.image import imread

from medae.overlay import MOSAIC_NAME, ORTHO_NAME, default_focus, ortho_panels, write_overlays

SHAPE = (60, 72, 50)
SPACING = (1.0, 1.0, 2.0)
LESION = (40, 45, 25)      # voxel; radius 6 mm (3 slices in z)


def _phantom():
    """Ellipsoid 'brain' with a bright sphere, heat map peaking in the sphere, its label."""
    grid = np.indices(SHAPE).astype(np.float32)
    mm = grid * np.array(SPACING, np.float32)[:, None, None, None]
    centre = (np.array(SHAPE) - 1) / 2 * np.array(SPACING)
    radii = np.array([26.0, 32.0, 44.0])
    r = np.sqrt((((mm - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    brain = r < 1
    rng = np.random.default_rng(0)
    image = np.where(brain, 100 + 20 * (r < 0.6), 0).astype(np.float32)
    image += brain * rng.normal(0, 3, SHAPE).astype(np.float32)
    lesion_mm = np.array(LESION) * np.array(SPACING)
    d = np.sqrt(((mm - lesion_mm[:, None, None, None]) ** 2).sum(0))
    lesion = d <= 6.0
    image[lesion] = 180
    heat = np.where(brain, 0.05 + 3.0 * np.clip(1 - d / 8.0, 0, None), 0).astype(np.float32)
    return image, heat, lesion.astype(np.int32), brain


def _pixel(box, frac_h, frac_v, size):
    """Pixel (row, col) of a point at fractions (across, up) inside a panel box."""
    height, width = size
    left, bottom, w, h = box
    return round((1 - (bottom + frac_v * h)) * height), round((left + frac_h * w) * width)


def _grey(rgb):
    return (np.abs(rgb[..., 0] - rgb[..., 1]) < 0.02) & (np.abs(rgb[..., 1] - rgb[..., 2]) < 0.02)


def test_writes_both_pictures_with_lesion_in_heat_colours(tmp_path):
    image, heat, label, _brain = _phantom()
    full = np.ones(SHAPE, bool)    # mask = whole volume: the ortho views show the whole volume
    paths = write_overlays(image, heat, SPACING, tmp_path / "out", candidates=label,
                           threshold=1.0, mask=full, title="phantom")
    assert [p.name for p in paths] == [ORTHO_NAME, MOSAIC_NAME]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([ORTHO_NAME,
                                                                           MOSAIC_NAME])
    ortho = imread(paths[0])[..., :3]
    mosaic = imread(paths[1])[..., :3]
    assert 500 <= ortho.shape[0] <= 600 and 1400 <= ortho.shape[1] <= 1600
    assert 1300 <= mosaic.shape[0] <= 1500 and 1300 <= mosaic.shape[1] <= 1500

    # axial panel through the lesion centre: warm colours there, grey brain far away
    box = ortho_panels(SHAPE, SPACING)["axial"]
    x, y, _ = LESION
    row, col = _pixel(box, (x + 0.5) / SHAPE[0], (y + 0.5) / SHAPE[1], ortho.shape[:2])
    patch = ortho[row - 3:row + 4, col - 3:col + 4]
    assert (patch[..., 0] - patch[..., 2]).mean() > 0.15          # red well above blue
    assert not _grey(patch).any()
    row, col = _pixel(box, 15.5 / SHAPE[0], 22.5 / SHAPE[1], ortho.shape[:2])
    far = ortho[row - 3:row + 4, col - 3:col + 4]
    assert _grey(far).all() and far.mean() > 0.2                   # brain, grey, not black

    # candidate outline (cyan) in the axial panel, warm pixels a small part of both pictures
    left, bottom, w, h = box
    r0, r1 = int((1 - bottom - h) * ortho.shape[0]), int((1 - bottom) * ortho.shape[0])
    c0, c1 = int(left * ortho.shape[1]), int((left + w) * ortho.shape[1])
    panel = ortho[r0:r1, c0:c1]
    cyan = (panel[..., 0] < 0.3) & (panel[..., 1] > 0.6) & (panel[..., 2] > 0.7)
    assert cyan.sum() > 50
    for picture in (ortho, mosaic):
        warm = (picture[..., 0] > picture[..., 1] + 50 / 255).mean()
        assert 0.0005 < warm < 0.1


def test_default_focus():
    _image, heat, label, _brain = _phantom()
    assert default_focus(heat, label) == LESION
    two = label.copy()
    two[5:8, 5:8, 5:8] = 2
    assert default_focus(heat, two) == LESION                      # label 1 is the strongest
    assert default_focus(heat, None) == LESION                     # heat maximum
    assert default_focus(np.zeros(SHAPE, np.float32), None) == (30, 36, 25)
    ring = np.zeros((21, 21, 5), np.int32)
    yy, xx = np.mgrid[:21, :21]
    ring[..., 2][(np.hypot(yy - 10, xx - 10) > 6) & (np.hypot(yy - 10, xx - 10) < 9)] = 1
    focus = default_focus(np.zeros(ring.shape), ring)
    assert ring[focus] == 1                                        # snapped onto the candidate


def test_default_focus_snaps_like_the_whole_volume_search():
    """The slice-by-slice snap onto a candidate gives the voxel (ties included) that argmin over
    the whole candidate's voxel list gives."""
    rng = np.random.default_rng(3)
    for trial in range(30):
        cand = np.zeros((40, 30, 20), np.uint16)
        yy, xx, zz = np.mgrid[:40, :30, :20]
        c = rng.integers(8, 22, 3)
        r = np.sqrt((yy - c[0]) ** 2 + (xx - c[1]) ** 2 + (zz - c[2]) ** 2)
        lo = rng.integers(2, 6)
        cand[(r >= lo) & (r < lo + rng.integers(1, 3))] = 1   # shells: the centre lies outside
        cand[rng.random(cand.shape) < 0.002] = 2
        label = 1 if (cand == 1).any() else 2
        voxels = np.argwhere(cand == label)
        centre = np.rint(voxels.mean(axis=0)).astype(int)
        want = (tuple(int(v) for v in centre) if cand[tuple(centre)] == label else
                tuple(int(v) for v in voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]))
        assert default_focus(np.zeros(cand.shape, np.float32), cand) == want, trial


def test_empty_heat_map_and_no_candidates(tmp_path):
    image, _heat, _label, _brain = _phantom()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_overlays(image, np.zeros(SHAPE, np.float32), SPACING, tmp_path)
    assert all(p.is_file() and p.stat().st_size > 10_000 for p in paths)
    picture = imread(paths[0])[..., :3]
    assert not np.isnan(picture).any()
    bar_left = ortho_panels(SHAPE, SPACING)["colorbar"][0] * picture.shape[1]
    views = picture[:, :int(bar_left) - 40]                        # all but the colour bar
    assert not (views[..., 0] > views[..., 1] + 50 / 255).any()   # nothing in heat colours


def test_degenerate_inputs_do_not_crash(tmp_path):
    image = np.zeros((8, 9, 3), np.float32)                        # blank scan, NaN heat
    heat = np.full(image.shape, np.nan, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_overlays(image, heat, (1, 1, 1), tmp_path, threshold=0.5)
    assert all(p.is_file() for p in paths)


def test_shape_and_argument_errors(tmp_path):
    image, heat, label, brain = _phantom()
    with pytest.raises(ValueError, match="heatmap"):
        write_overlays(image, heat[:-1], SPACING, tmp_path)
    with pytest.raises(ValueError, match="candidates"):
        write_overlays(image, heat, SPACING, tmp_path, candidates=label[:, :, :-1])
    with pytest.raises(ValueError, match="mask"):
        write_overlays(image, heat, SPACING, tmp_path, mask=brain[1:])
    with pytest.raises(ValueError, match="3-D"):
        write_overlays(image[..., 0], heat[..., 0], SPACING, tmp_path)
    with pytest.raises(ValueError, match="spacing"):
        write_overlays(image, heat, (1.0, 0.0, 2.0), tmp_path)
    with pytest.raises(ValueError, match="focus"):
        write_overlays(image, heat, SPACING, tmp_path, focus=(0, 0, 50))
    assert not any(tmp_path.iterdir())                             # nothing written


def test_atomic_overwrite_leaves_no_temporary_files(tmp_path):
    image, heat, label, _brain = _phantom()
    for _ in range(2):
        write_overlays(image, heat, SPACING, tmp_path, candidates=label, threshold=1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ORTHO_NAME, MOSAIC_NAME])


def test_real_brats_case(tmp_path):
    from skimage.measure import label

    import medae

    folder = shared("brain", "brats2013", "pat0001")
    scan = medae.load_scan(folder / "Flair_subtrMeanDivStd.nii.gz")
    truth = medae.load_scan(folder / "OTMultiClass.nii.gz").array > 0
    image = scan.array
    mask_path = folder / "brainmask.nii.gz"
    brain = (medae.load_scan(mask_path).array > 0 if mask_path.exists()
             else image > image.min())
    heat = np.where(brain, np.maximum(image - 2, 0), 0).astype(np.float32)
    candidates = label(truth)
    paths = write_overlays(image, heat, scan.spacing, tmp_path, candidates=candidates,
                           threshold=1.0, mask=brain, units="FLAIR z-score above 2",
                           title="BraTS 2013 pat0001 (FLAIR, tumour outlined)")
    assert [p.name for p in paths] == [ORTHO_NAME, MOSAIC_NAME]
    ortho = imread(paths[0])[..., :3]
    assert (ortho[..., 0] > ortho[..., 1] + 50 / 255).mean() > 0.005   # tumour in heat colours
