"""CT-size memory: a compacted (int16) scan and the slab-wise Otsu mask give the same results as
the float32 scan and the whole-volume passes."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from conftest import lesion_phantom
from scipy import ndimage

import medae.masks as masks_module
import medae.preprocess as preprocess_module
from medae.io.scan import Grid, Scan
from medae.masks import _otsu_foreground, compute_mask
from medae.preprocess import _resize, resize_mask


def _scan(array, affine=None):
    affine = np.diag([-1.0, 1.0, 1.2, 1.0]) if affine is None else affine  # LAS: a flipped axis
    return Scan.from_grid(array, Grid(array.shape, affine), source="t", kind="nifti")


def test_compact_keeps_the_values_and_the_layout():
    rng = np.random.default_rng(0)
    values = rng.integers(-32768, 32768, (20, 17, 13)).astype(np.float32)
    values[0, 0, 0], values[1, 0, 0] = -32768, 32767
    scan = _scan(values)
    before = scan.array.copy()
    order = np.argsort(scan.array.strides)
    assert scan.compact(slab_voxels=100)  # many slabs
    assert scan.array.dtype == np.int16
    np.testing.assert_array_equal(scan.array, before)
    np.testing.assert_array_equal(np.argsort(scan.array.strides), order)
    assert scan.compact()  # already int16


def test_compact_to_uint16_when_values_pass_int16():
    values = np.random.default_rng(2).integers(0, 65536, (12, 11, 9)).astype(np.float32)
    values[0, 0, 0] = 65535
    scan = _scan(values)
    before = scan.array.copy()
    assert scan.compact(slab_voxels=50) and scan.array.dtype == np.uint16
    np.testing.assert_array_equal(scan.array, before)


@pytest.mark.parametrize("bad", [0.5, 65536.0, -32769.0, np.nan, np.inf, -np.inf])
def test_compact_refuses_what_16_bits_cannot_hold(bad):
    values = np.zeros((10, 9, 8), np.float32)
    values[3, 4, 7] = bad  # in the last slab: the first ones were already converted
    if bad == -32769.0:
        values[0, 0, 0] = 40000  # neither int16's range nor uint16's
    scan = _scan(values)
    held = scan.array
    assert not scan.compact(slab_voxels=90)
    assert scan.array is held and scan.array.dtype == np.float32


def _head(shape=(37, 41, 70), seed=3, noisy_background=True):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt((((grid - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None]
                                                          * 0.4)) ** 2).sum(0))
    img = np.where(r < 1, 300 + 200 * (r < 0.5), 0) + rng.normal(0, 20, shape) * (r < 1)
    if noisy_background:
        img += rng.integers(0, 6, shape)
    return np.round(img).astype(np.float32)


def test_otsu_in_slabs_equals_the_whole_volume():
    image = _head()
    whole, level = _otsu_foreground(image)
    slabs, slab_level = _otsu_foreground(image, slab_above=0)  # nz = 70: three slabs of 32
    assert slab_level == level and 0 < whole.mean() < 1
    np.testing.assert_array_equal(slabs, whole)
    # an int16 scan gives the float32 scan's mask, whole or in slabs
    for above in (None, 0):
        fg, lev = _otsu_foreground(image.astype(np.int16), slab_above=above)
        assert lev == level
        np.testing.assert_array_equal(fg, whole)
    # and skimage's own threshold of scipy's own smoothing
    from skimage.filters import threshold_otsu
    smooth = ndimage.gaussian_filter(image, 1.0)
    assert level == float(threshold_otsu(smooth))


@pytest.mark.parametrize("noisy", [True, False])  # Otsu rule / skull-stripped background
def test_compute_mask_of_an_int16_scan_equals_the_float32_one(noisy):
    image = _head(noisy_background=noisy)
    mask, rule = compute_mask(image)
    assert ("Otsu" in rule) == noisy
    mask16, rule16 = compute_mask(image.astype(np.int16))
    assert rule16 == rule
    np.testing.assert_array_equal(mask16, mask)


@pytest.mark.parametrize("shapes", [((60, 57, 47), (30, 29, 24)), ((10, 12, 9), (23, 25, 17)),
                                    ((31, 8, 5), (31, 19, 2))])
def test_resize_mask_is_torch_nearest_exact(shapes):
    src, dst = shapes
    mask = np.random.default_rng(1).random(src) > 0.6
    want = _resize(mask.astype(np.float32), dst, nearest=True) > 0.5
    np.testing.assert_array_equal(resize_mask(mask, dst), want)


def _write_case(folder, noisy, wide):
    img, _, affine = lesion_phantom()
    rng = np.random.default_rng(7)
    if noisy:  # a background that is not constant: the Otsu rule
        img = img + rng.integers(0, 4, img.shape)
    dtype = np.int16
    if wide:  # values past int16's range: held as uint16
        img, dtype = img * 200, np.uint16
        assert img.max() > 32767
    nib.save(nib.Nifti1Image(np.round(img).astype(dtype), affine), folder / "case.nii.gz")


@pytest.mark.parametrize(("noisy", "wide"), [(True, False), (False, False), (True, True)])
def test_a_compacted_scan_scores_as_the_float32_scan(tmp_path, tiny_model, monkeypatch, noisy,
                                                     wide):
    """The batch job on a scan held in 16 bits (compaction and the slab-wise Otsu rule forced
    on a small scan) writes the same maps, candidates, masks, image and pictures."""
    import matplotlib.image as mpimg

    from medae.batch import score_sources
    from medae.io.discover import discover
    from medae.scoring import load_model

    (tmp_path / "in").mkdir()
    _write_case(tmp_path / "in", noisy, wide)
    model = load_model(tiny_model, device="cpu")
    compacted = []
    original = Scan.compact

    def spy(self, *a, **k):
        compacted.append(original(self, *a, **k))
        return compacted[-1]

    monkeypatch.setattr(Scan, "compact", spy)
    score_sources(model, discover(tmp_path / "in"), tmp_path / "float", progress=False)
    assert compacted == []  # a small scan stays float32
    monkeypatch.setattr(preprocess_module, "COMPACT_ABOVE", 0)
    monkeypatch.setattr(masks_module, "SLAB_ABOVE", 0)
    score_sources(model, discover(tmp_path / "in"), tmp_path / "int16", progress=False)
    assert compacted == [True]
    a, b = tmp_path / "float" / "case", tmp_path / "int16" / "case"
    for name in ("anomaly_map", "candidates", "brain_mask", "image"):
        x, y = nib.load(a / f"{name}.nii.gz"), nib.load(b / f"{name}.nii.gz")
        assert name == "image" or x.get_data_dtype() == y.get_data_dtype()
        np.testing.assert_array_equal(np.asanyarray(x.dataobj), np.asanyarray(y.dataobj))
    # the image in 16 bits either way (float32 beyond int16 unless it was held as uint16)
    held = np.uint16 if wide else np.int16
    assert nib.load(b / "image.nii.gz").get_data_dtype() == held
    heat = np.asanyarray(nib.load(b / "anomaly_map.nii.gz").dataobj)
    assert heat.max() > 0
    with open(a / "candidates.csv") as f, open(b / "candidates.csv") as g:
        assert list(csv.reader(f)) == list(csv.reader(g))
    pngs = sorted(p.name for p in a.glob("*.png"))
    assert pngs and pngs == sorted(p.name for p in b.glob("*.png"))
    for name in pngs:
        np.testing.assert_array_equal(mpimg.imread(a / name), mpimg.imread(b / name))
