"""Scoring in slabs of axial slices: the same maps, labels and pictures as whole-volume passes."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medae.io.scan import Grid, Scan
from medae.masks import label, label_above, lookup, outer_erosion
from medae.models import create_model
from medae.preprocess import Prepared, PreprocessConfig, preprocess, to_scan_space
from medae.scoring import MapConfig, find_candidates
from medae.scoring import heatmap as heatmap_module
from medae.scoring.heatmap import anomaly_map, anomaly_map_slabs
from medae.scoring.scorer import AnomalyModel

GEOMETRIES = [  # model shape, resampled shape, scan shape, offset of the model crop
    ((40, 36, 30), (44, 40, 33), (60, 57, 47), (2, -1, 1)),
    ((32, 32, 32), (32, 32, 32), (32, 32, 45), (0, 0, 0)),
    ((50, 50, 40), (50, 50, 40), (70, 70, 30), (0, 0, 0)),
    ((30, 30, 20), (30, 30, 24), (24, 26, 31), (-3, 0, 2)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("nearest", [False, True])
def test_to_scan_space_in_slabs_equals_the_whole_volume(geometry, nearest):
    model_shape, resampled, scan_shape, offset = geometry
    array = np.random.default_rng(0).random(model_shape, dtype=np.float32) * 3 - 1
    prep = Prepared(image=np.zeros((1, *model_shape), np.float32), mask=None,
                    scan_shape=scan_shape, resampled_shape=resampled, offset=offset)
    whole = to_scan_space(array, prep, nearest=nearest)
    assert whole.shape == scan_shape and whole.dtype == np.float32
    cuts = [0, 1, 7, 8, 19, scan_shape[2]]
    slabs = [to_scan_space(array, prep, nearest=nearest, z=slice(a, b))
             for a, b in pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate(slabs, axis=2), whole)  # bit for bit
    # and PyTorch's single 3D resize of the uncropped volume, to float32 rounding
    back = np.zeros(resampled, np.float32)
    src = tuple(slice(max(0, o), min(r, o + m)) for o, m, r in
                zip(offset, model_shape, resampled, strict=True))
    dst = tuple(slice(s.start - o, s.stop - o) for s, o in zip(src, offset, strict=True))
    back[src] = array[dst]
    mode = dict(mode="nearest-exact") if nearest else dict(mode="trilinear",
                                                           align_corners=False)
    ref = F.interpolate(torch.from_numpy(back)[None, None], size=scan_shape, **mode)[0, 0]
    np.testing.assert_allclose(whole, ref.numpy(), rtol=0, atol=1e-5)


def _volume(shape=(40, 36, 50), channels=2, seed=1):
    rng = np.random.default_rng(seed)
    images = [rng.random(shape, dtype=np.float32) for _ in range(channels)]
    recons = [rng.random(shape, dtype=np.float32) for _ in range(channels)]
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1) / 2
    radii = np.array(shape) * 0.5
    r = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    return images, recons, r < 1


@pytest.mark.parametrize("median_mm", [(3.0, 3.0, 0.0), 3.0, (2.0, 3.0, 5.0)])
def test_anomaly_map_in_slabs_equals_one_slab(median_mm):
    images, recons, mask = _volume()
    cfg = MapConfig(residual="positive", erode_mm=2.0, median_mm=median_mm)
    spacing = (1.0, 1.0, 0.9)
    assert max(cfg.median_size(spacing)) > 1

    def channels(z):
        return [(im[:, :, z], rc[:, :, z]) for im, rc in zip(images, recons, strict=True)]

    whole, inside = anomaly_map_slabs(channels, mask, cfg, spacing, slab=10_000)
    for slab in (1, 3, 7):  # several slabs, each cut inside the brain
        heat, analysed = anomaly_map_slabs(channels, mask, cfg, spacing, slab=slab)
        np.testing.assert_array_equal(heat, whole)
        np.testing.assert_array_equal(analysed, inside)
    eroded, _ = anomaly_map_slabs(channels, inside, cfg, spacing, slab=4, eroded=True)
    np.testing.assert_array_equal(eroded, whole)
    # the plain whole-array computation, written out (the box around the brain reaches the
    # volume's faces here, so reflection at the edges is the same)
    res = np.maximum(*(np.maximum(im - rc, 0) for im, rc in zip(images, recons, strict=True)))
    res[~inside] = 0
    ref = ndimage.median_filter(res, size=cfg.median_size(spacing))
    ref[~inside] = 0
    np.testing.assert_array_equal(anomaly_map(images, recons, mask, cfg, spacing)[0], ref)


def test_scan_map_in_slabs_equals_one_slab(monkeypatch):
    images, _, mask = _volume(shape=(36, 32, 40), channels=1)
    affine = np.diag([1.2, 1.2, 0.9, 1.0])
    array = (images[0] * 100 + mask * 50).astype(np.float32)
    scan = Scan.from_grid(array, Grid(array.shape, affine), source="slabs", kind="nifti")
    pre = PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(16, 16, None))
    net = create_model("ae", spatial_dims=2, channels=(4, 8), in_shape=(16, 16))
    torch.manual_seed(0)
    model = AnomalyModel(net, pre, MapConfig(erode_mm=2.0, median_mm=3.0))
    maps = []
    for slab in (10_000, 4):
        monkeypatch.setattr(heatmap_module, "SLAB", slab)
        maps.append(model.scan_map(scan, preprocess(scan, pre, mask=mask)))
    np.testing.assert_array_equal(maps[0].heatmap, maps[1].heatmap)
    assert maps[0].heatmap.max() > 0 and maps[0].score == maps[1].score


def test_labels_small_dtype_and_chunked_lookup():
    grid = np.zeros((100, 100, 60), bool)
    grid[::2, ::2, ::2] = True  # 75,000 isolated voxels: more than uint16 holds
    labels, n = label(grid)
    assert n == 75_000 and labels.dtype == np.int32
    few, m = label(grid[:20, :20, :20])
    assert m == 1000 and few.dtype == np.uint16
    table = (np.arange(m + 1) % 3 == 0)
    np.testing.assert_array_equal(lookup(table, few), table[few])


@pytest.mark.parametrize("chunk", [1, 1000, 1 << 22])
def test_label_above_in_place_equals_labelling_the_boolean_image(monkeypatch, chunk):
    """Thresholded slab by slab into uint16 and labelled in place: the labels scipy gives the
    boolean image; too many components for uint16: int32, labelled from the values again."""
    from scipy import ndimage

    import medae.masks as masks_module
    monkeypatch.setattr(masks_module, "CHUNK", chunk)
    rng = np.random.default_rng(5)
    s26 = np.ones((3, 3, 3), bool)
    for sigma, q in ((0.8, 0.6), (1.5, 0.9), (1.0, 0.99)):
        heat = ndimage.gaussian_filter(rng.random((37, 41, 23)), sigma).astype(np.float32)
        thr = float(np.quantile(heat, q))
        labels, n = label_above(heat, thr, s26)
        want, m = ndimage.label(heat > thr, s26)
        assert labels.dtype == np.uint16 and n == m > 1
        np.testing.assert_array_equal(labels, want)
    heat = np.zeros((100, 100, 60), np.float32)
    heat[::2, ::2, ::2] = 1.0  # 75,000 isolated voxels: more than uint16 holds
    labels, n = label_above(heat, 0.5)
    want, m = ndimage.label(heat > 0.5)
    assert labels.dtype == np.int32 and n == m == 75_000
    np.testing.assert_array_equal(labels, want)


def test_candidates_centroid_mean_and_relabel_match_numpy():
    rng = np.random.default_rng(3)
    heat = rng.random((30, 28, 26), dtype=np.float32)
    affine = np.diag([0.7, 0.8, 1.5, 1.0])
    affine[:3, 3] = [4, -2, 7]
    labels, cands = find_candidates(heat, affine, threshold=0.9, min_volume_mm3=2.0)
    assert labels.dtype == np.uint16 and len(cands) > 3
    for c in cands:
        voxels = np.argwhere(labels == c.id)
        assert len(voxels) == c.voxels
        world = affine @ np.r_[voxels.mean(axis=0), 1.0]
        np.testing.assert_allclose(c.centroid_mm, world[:3], rtol=0, atol=1e-9)
        assert c.max_score == heat[labels == c.id].max()
        assert c.mean_score == pytest.approx(float(heat[labels == c.id].mean(dtype=np.float64)),
                                             rel=1e-12)
    assert outer_erosion(labels > 0, 0, (1, 1, 1)).sum() == sum(c.voxels for c in cands)
