"""Heat maps at the scan's own resolution: the intensity baseline through ``medae score`` is the
plain NumPy computation of its rule, and post-processing sizes are millimetres."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, shared, write_phantoms
from scipy import ndimage

from medae.io.scan import Grid, Scan
from medae.models import create_model
from medae.preprocess import PreprocessConfig
from medae.scoring import AnomalyModel, MapConfig


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medae", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_intensity_baseline_through_medae_score_is_plain_numpy(tmp_path):
    """BraTS pat0004 FLAIR with its brain mask, scored by the intensity recipe at a 1.875 mm
    model grid: the written map equals (FLAIR - p0.5) / (p99.5 - p0.5), positive part, inside
    the mask minus its outer 4 mm (the mask has a hole: it must not grow), 3x3 in-plane median,
    computed here with NumPy/SciPy."""
    folder = shared("brain", "brats2013", "pat0004")
    flair, brain = folder / "Flair_subtrMeanDivStd.nii.gz", folder / "brainmask.nii.gz"
    write_phantoms(tmp_path / "healthy", 3)
    sets = ["preprocess.spacing=[1.875, 1.875, 1.875]", "preprocess.size=[96, 112, 96]",
            "scoring.erode_mm=4", "scoring.median_mm=[3, 3, 0]", "scoring.residual=positive",
            "data.min_foreground=0"]
    args = [a for s in sets for a in ("--set", s)]
    res = _cli("train", "--config", str(ROOT / "configs" / "intensity.yaml"), "--data",
               str(tmp_path / "healthy"), "--output", str(tmp_path / "run"), "-q", *args)
    assert res.returncode == 0, res.stderr
    manifest = tmp_path / "test.csv"
    manifest.write_text(f"case_id,image,mask\npat0004,{flair},{brain}\n")
    res = _cli("score", "--model", str(tmp_path / "run"), "--input", str(manifest),
               "--output", str(tmp_path / "out"), "--threshold", "0.5", "--no-overlays", "-q")
    assert res.returncode == 0, res.stderr
    written = nib.load(tmp_path / "out" / "pat0004" / "anomaly_map.nii.gz")
    heat = np.asarray(written.dataobj, np.float64)

    img = nib.load(flair)
    a = np.asarray(img.dataobj, np.float64)
    mask = np.asarray(nib.load(brain).dataobj) > 0
    lo, hi = np.percentile(a[mask], [0.5, 99.5])
    zooms = img.header.get_zooms()[:3]
    outline = np.pad(ndimage.binary_fill_holes(mask), 1)  # erosion from the outer surface only
    depth = ndimage.distance_transform_edt(outline, sampling=zooms)[1:-1, 1:-1, 1:-1]
    inside = mask & (depth > 4.0)
    expected = np.where(inside, np.maximum((a - lo) / (hi - lo), 0), 0)
    expected = ndimage.median_filter(expected, size=(3, 3, 1))
    expected[~inside] = 0
    assert written.shape == img.shape
    np.testing.assert_allclose(written.affine, img.affine, atol=1e-5)
    assert np.abs(heat - expected).max() < 1e-6
    assert heat.max() > 1.0  # the tumour is bright: a real map, not zeros
    rec = json.loads((tmp_path / "out" / "pat0004" / "result.json").read_text())
    assert rec["mask_rule"].startswith("given")


def _lesion_scan(radius_mm: float):
    """A 1 mm 'brain' (value 100 with mild texture) with one small bright lesion."""
    shape = (64, 64, 40)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt(((grid - centre[:, None, None, None]) ** 2 /
                 (np.array([26, 26, 17]) ** 2)[:, None, None, None]).sum(0))
    img = np.where(r < 1, 100.0, 0.0)
    img += (r < 1) * np.random.default_rng(0).normal(0, 2, shape)
    c = np.round(centre) + np.array([5.0, -4.0, 2.0])  # on a voxel centre
    lesion = np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(0)) <= radius_mm
    img[lesion] = 180.0
    scan = Scan.from_grid(img.astype(np.float32), Grid(shape, np.eye(4)), source="lesion.nii",
                          kind="nifti")
    return scan, lesion


@pytest.mark.parametrize("median_mm", [(3.0, 3.0, 0.0), 3.0])
def test_small_lesion_survives_the_median_filter(median_mm):
    """A 3 mm lesion on a 1 mm scan, model at 2 mm: the map keeps it at full strength and at
    its place, because the 3 mm median runs on the scan's grid (a 5-voxel median of the
    2 mm model grid, 10 mm, would erase it)."""
    scan, lesion = _lesion_scan(radius_mm=1.5)
    pre = PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(40, 40, 24))
    net = create_model("intensity", spatial_dims=2)
    model = AnomalyModel(net, pre, MapConfig(residual="positive", erode_mm=2,
                                             median_mm=median_mm, min_volume_mm3=5))
    result = model.score(scan, threshold=3.0)  # normal tissue: about 0.5 +- 0.25
    prep = model.prepare(scan)
    st = prep.stats[0]
    lesion_value = (180.0 - st["low"]) / (st["high"] - st["low"])
    assert result.heatmap[lesion].max() == pytest.approx(lesion_value, rel=1e-5)
    assert len(result.candidates) == 1
    cand = result.candidates[0]
    assert 5 <= cand.voxels <= lesion.sum()  # a median trims a lesion of its own width
    np.testing.assert_allclose(cand.centroid_mm, np.argwhere(lesion).mean(0), atol=0.6)
    wide = AnomalyModel(net, pre, MapConfig.from_dict(
        {"residual": "positive", "erode_mm": 2, "median": 5, "min_volume_mm3": 5},
        pre.spacing))  # a legacy bundle's 5-voxel median at 2 mm: 10 mm
    assert wide.score(scan, threshold=3.0).candidates == []
