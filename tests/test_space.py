"""``preprocess.space: template`` (issue 27): a case's first sequence registered by an affine
transform to the shipped 2 mm MNI template, the model seeing it there, and maps brought back
once onto the scan's own grid; ``native`` (the default) leaves everything as it was."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from conftest import shared
from scipy.spatial.transform import Rotation

import medae
from medae.errors import MedaeError
from medae.io.scan import Grid, Scan
from medae.preprocess import PreprocessConfig, prepare_source, preprocess, to_scan_space
from medae.register import register_template, resample, template_grid

#: a scan's world -> the template's: rotation about x, y, z, anisotropic scale, shift
_ANGLES, _SCALE, _SHIFT = (6.0, -4.0, 8.0), (1.08, 0.95, 1.04), (5.0, -8.0, 6.0)
#: the source grid: 1.5 x 1.5 x 1.8 mm, its own origin
_GRID = np.array([[1.5, 0, 0, -95], [0, 1.5, 0, -130], [0, 0, 1.8, -90], [0, 0, 0, 1.0]])
_SHAPE = (128, 150, 105)
_LESION = (60, 80, 55)  # a source voxel inside the brain (the template's left white matter)


def _source(lesion: bool = False):
    """The template moved by a known affine onto a grid of its own: (image, brain mask, the
    scan's world -> template's world map)."""
    t1, brain, affine = template_grid()
    world = np.eye(4)
    world[:3, :3] = Rotation.from_euler("xyz", _ANGLES, degrees=True).as_matrix() @ np.diag(
        _SCALE)
    world[:3, 3] = _SHIFT
    image = resample(t1, affine, _GRID, _SHAPE, world, order=1)
    mask = resample(brain.astype(np.float32), affine, _GRID, _SHAPE, world, order=0) > 0.5
    if lesion:
        grid = np.indices(_SHAPE, dtype=np.float32)
        r2 = sum(((grid[a] - _LESION[a]) * _GRID[a, a]) ** 2 for a in range(3))
        image[r2 <= 6.0 ** 2] = 400.0  # a 6 mm sphere, brighter than anything in the template
    return image, mask, world


def _scan(image):
    return Scan.from_grid(image, Grid(image.shape, _GRID), source="moved.nii.gz", kind="nifti")


def test_the_template_registered_to_a_known_affine_copy_of_itself_recovers_it():
    image, mask, world = _source()
    fit = register_template(image, mask, _GRID)
    expected = np.linalg.inv(world)  # the template's world -> the scan's
    _, brain, affine = template_grid()
    where = np.argwhere(brain)
    lo, hi = where.min(0), where.max(0)
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])]) @ affine.T
    moved = np.linalg.norm((corners @ fit.matrix.T - corners @ expected.T)[:, :3], axis=1)
    assert moved.max() < 2.0, moved  # measured: 0.34 mm
    assert fit.scale == pytest.approx(float(np.prod(_SCALE)) ** (-1 / 3), abs=0.01)
    assert fit.dice > 0.98 and fit.metric > 1.0
    record = fit.record()
    assert record["template"] == "mni_icbm152_2009a_sym_2mm" and record["seconds"] > 0
    assert np.allclose(record["matrix"], fit.matrix, atol=1e-6)


def test_a_map_made_in_template_space_lands_on_the_source_voxels():
    image, mask, _ = _source(lesion=True)
    scan = _scan(image)
    cfg = PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(96, 112, 80), space="template")
    prep = preprocess(scan, cfg, mask=mask)
    assert prep.template is not None and prep.resampled_shape == (80, 96, 80)
    assert prep.image.shape == (1, 96, 112, 80) and prep.seconds["template registration"] > 0
    assert np.array_equal(prep.native_mask, mask)  # the brain mask stays on the scan's grid
    # the bright lesion, found in model space, brought back: the same source voxels
    found = prep.image[0] > (1.0 + prep.image[0].max()) / 2  # halfway from white matter
    back = to_scan_space(found.astype(np.float32), prep)
    assert back.shape == scan.shape
    truth = image == 400.0
    hit = back > 0.5
    centre = np.argwhere(hit).mean(0)
    assert np.abs(centre - np.argwhere(truth).mean(0)).max() < 1.0, centre
    dice = 2 * (hit & truth).sum() / (hit.sum() + truth.sum())
    assert dice > 0.8, dice
    # the scorer: the intensity model's map and candidates on the source grid
    from medae.models.registry import create_model
    from medae.scoring.heatmap import MapConfig
    from medae.scoring.scorer import AnomalyModel

    model = AnomalyModel(create_model("intensity", spatial_dims=2), cfg,
                         MapConfig.from_dict({"residual": "positive"}, cfg.spacing))
    result = model.score(scan, mask=mask, threshold=0.9)
    assert result.heatmap.shape == result.labels.shape == scan.shape
    # the model's view covers the brain as in native space, and the intensity model's map
    # (its reconstruction is zero, wherever it is made) is the same voxel for voxel
    native = AnomalyModel(create_model("intensity", spatial_dims=2),
                          PreprocessConfig(spacing=(2.0, 2.0, 2.0), size=(96, 112, 80)),
                          model.map_config).score(scan, mask=mask, threshold=0.9)
    assert np.array_equal(result.analysed, native.analysed)
    assert np.array_equal(result.heatmap, native.heatmap)
    first = np.argwhere(result.labels == 1).mean(0)
    assert np.abs(first - np.argwhere(truth).mean(0)).max() < 1.0, first
    assert not (result.labels[~mask] > 0).any()


def test_a_failing_case_is_refused_in_one_line():
    image, mask, _ = _source()
    half = mask.copy()
    half[:64] = False  # a mask of half the brain
    box = np.zeros(_SHAPE, bool)
    box[24:104, 30:120, 20:85] = True
    noise = np.where(box, np.random.default_rng(0).uniform(1, 100, _SHAPE), 0).astype(np.float32)
    cfg = PreprocessConfig(spacing=(2.0, 2.0, 2.0), space="template")
    for img, region, why in [(image, half, "the brain mask overlaps the template's brain by a "
                                           "Dice of 0.58 (at least 0.85)"),
                             (noise, box, "the images share no structure, under 0.05 nats")]:
        with pytest.raises(MedaeError) as err:
            preprocess(_scan(img), cfg, mask=region)
        text = str(err.value)
        assert text.startswith(f"moved.nii.gz: registration to the MNI template failed: {why}")
        assert "\n" not in text
    with pytest.raises(MedaeError, match=r"preprocess\.space: unknown value 'mni'"):
        PreprocessConfig(space="mni")
    with pytest.raises(MedaeError, match=r"preprocess\.space template: .* set preprocess\.spac"):
        PreprocessConfig(space="template", spacing=(1.0, 1.0, 1.0))


#: BraTS pat0001's FLAIR as the intensity recipe's model input before preprocess.space existed
#: (main at e3d2999): its SHA-256
_BRATS_INPUT = "42f1d34a3f3982ab28f4580a4a61c50c6d2aeadf9aba3b58b22bf8053f933754"


def test_the_train_flags_set_the_space_and_the_bias_correction():
    from medae.cli import BIAS_CHOICES, SPACE_CHOICES, build_parser, train_overrides
    from medae.preprocess import BIAS_CORRECTIONS, SPACES

    assert SPACE_CHOICES == SPACES and BIAS_CHOICES == BIAS_CORRECTIONS  # the CLI's, torch-free
    args = build_parser().parse_args(["train", "--config", "c.yaml", "--data", "d", "--output",
                                      "o", "--set", "preprocess.space=native", "--space",
                                      "template", "--bias-correction", "n4"])
    assert train_overrides(args) == ["preprocess.space=native", "preprocess.space=template",
                                     "preprocess.bias_correction=n4"]  # the flag wins
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--config", "c.yaml", "--data", "d", "--output",
                                   "o", "--space", "mni"])


def test_native_is_the_default_and_leaves_brats_byte_identical(tmp_path):
    assert PreprocessConfig().space == "native" and "space" not in PreprocessConfig().to_dict()
    assert PreprocessConfig(space="template", spacing=(2.0, 2.0, 2.0)).to_dict()["space"] == \
        "template"
    source = medae.discover(shared("brain", "brats2013", "pat0001",
                                   "Flair_subtrMeanDivStd.nii.gz"))[0]
    base = dict(spacing=(2.0, 2.0, 2.0), size=(96, 112, 80))
    _, default = prepare_source(source, PreprocessConfig(**base))
    _, native = prepare_source(source, PreprocessConfig(**base, space="native"))
    assert default.template is None and "template registration" not in default.seconds
    assert np.array_equal(default.image, native.image)
    digest = hashlib.sha256(np.ascontiguousarray(default.image).tobytes()
                            + np.packbits(default.mask).tobytes()).hexdigest()
    assert digest == _BRATS_INPUT


@pytest.mark.slow
def test_training_and_scoring_in_template_space_record_each_fit(tmp_path):
    """medae train / score with preprocess.space template: the bundle holds each training
    scan's fit, result.json the scored scan's, and the maps are on the scan's own grid."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    ixi = shared("brain", "healthy", "ixi002")
    brats = shared("brain", "brats2013", "pat0001", "Flair_subtrMeanDivStd.nii.gz")
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    for name in ("hd_bet_IXI002-Guys-0828-T2.nii.gz", "hd_bet_dilated_IXI002-Guys-0828-T2.nii.gz"):
        (healthy / name).symlink_to(ixi / name)

    def cli(*args):
        res = subprocess.run([sys.executable, "-m", "medae", *args], capture_output=True,
                             text=True, timeout=900, cwd=ROOT)
        assert res.returncode == 0, res.stderr[-2000:]

    run = tmp_path / "run"
    cli("train", "--config", str(ROOT / "configs" / "intensity.yaml"), "--data", str(healthy),
        "--output", str(run), "--brain", "auto", "-q", "--space", "template")
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocess"]["space"] == "template"
    fits = [entry["template"] for entry in meta["intensity"]]
    assert len(fits) == 1 and fits[0]["dice"] > 0.9 and 0.85 < fits[0]["scale"] < 1.0  # one trains
    out = tmp_path / "out"
    cli("score", "--model", str(run), "--input", str(brats), "--output", str(out), "-q",
        "--no-overlays")
    case = next(out.glob("*/result.json")).parent
    record = json.loads((case / "result.json").read_text())
    assert record["space"] == "template"
    fit = record["template"]
    assert fit["template"] == "mni_icbm152_2009a_sym_2mm" and fit["dice"] > 0.9
    assert 0 < record["stages"]["template registration"] < record["stages"]["load"]
    heat = medae.load_scan(case / "anomaly_map.nii.gz")
    source = medae.load_scan(brats)
    assert heat.shape == source.shape and np.allclose(heat.affine, source.affine, atol=1e-4)


def test_one_subject_slab_crossfit_is_refused_in_template_space():
    from medae.samples import Fold

    image, mask, _ = _source()
    prep = preprocess(_scan(image), PreprocessConfig(spacing=(2.0, 2.0, 2.0), space="template"),
                      mask=mask)
    with pytest.raises(MedaeError, match=r"^data\.calibration crossfit with one subject holds"):
        Fold(frozenset({"a"}), (0, 2)).model_slices(prep)
