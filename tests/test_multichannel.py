"""Multi-sequence models: C input channels for every family, from folders and manifests."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT

from medae import MedaeError, discover
from medae.config import load_config
from medae.io.discover import read_manifest
from medae.preprocess import PreprocessConfig, input_names, prepare_source
from medae.scoring import load_model
from medae.train import train

SHAPE = (14, 16, 12)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
TINY = ["preprocess.spacing=[2, 2, 2]", "preprocess.size=[16, 16, 16]", "train.batch_size=8",
        "train.warmup_steps=1", "train.epochs=1", "train.max_steps_per_epoch=2",
        "data.augment={}", "scoring.median_mm=0", "scoring.erode_mm=0"]
RECIPES = {  # every family, 2D and 3D
    "ae2d": ["model.channels=[8, 16]"],
    "vae2d": ["model.channels=[8, 16]"],
    "sae2d": ["model.channels=[8, 16]"],
    "dae2d": ["model.channels=[8, 16]"],
    # (toy heads of a few cm³: not brains, so without the brain recipe's mask checks)
    "brain_flair": ["model.channels=[8, 16]", "model.num_res_units=0", "train.steps=null",
                    "preprocess.brain=none"],
    "intensity": [],
    "ae3d": ["model.channels=[8, 16]", "data.patch_size=[8, 8, 8]"],
    "vae3d": ["model.channels=[8, 16]", "data.patch_size=[8, 8, 8]"],
    "dae3d": ["model.channels=[8, 16]", "data.patch_size=[8, 8, 8]"],
}


def _phantom(rng, lesion_in: int | None = None):
    """Two co-registered 'sequences' of an ellipsoid head: the second has inverted contrast.
    ``lesion_in``: a bright sphere in that sequence only."""
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    radii = np.array(SHAPE) * rng.uniform(0.36, 0.42, 3)
    r = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    brain = r < 1
    a = np.where(brain, 100 + 40 * (r < 0.5), 0).astype(np.float32)
    b = np.where(brain, 300 - 80 * (r < 0.5), 0).astype(np.float32)
    a += brain * rng.normal(0, 3, SHAPE).astype(np.float32)
    b += brain * rng.normal(0, 5, SHAPE).astype(np.float32)
    les = np.sqrt(((grid - centre[:, None, None, None] - 1) ** 2).sum(0)) < 1.2
    if lesion_in == 0:
        a[les] = 400
    elif lesion_in == 1:
        b[les] = 900
    return a, b, les


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """nnU-Net folder (CASE_0000 = a, CASE_0001 = b) and a manifest naming flair,t2."""
    root = tmp_path_factory.mktemp("mc")
    rng = np.random.default_rng(0)
    nn, lines = root / "nnunet", ["case_id,flair,t2"]
    nn.mkdir()
    for i in range(5):
        a, b, _ = _phantom(rng)
        for k, arr in enumerate((a, b)):
            nib.save(nib.Nifti1Image(arr, AFFINE), nn / f"sub{i:02d}_{k:04d}.nii.gz")
        lines.append(f"sub{i:02d},nnunet/sub{i:02d}_0000.nii.gz,nnunet/sub{i:02d}_0001.nii.gz")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    test = root / "test"
    test.mkdir()
    a, b, les = _phantom(np.random.default_rng(7), lesion_in=1)
    nib.save(nib.Nifti1Image(a, AFFINE), test / "case_0000.nii.gz")
    nib.save(nib.Nifti1Image(b, AFFINE), test / "case_0001.nii.gz")
    np.save(root / "lesion.npy", les)
    return root


def test_inputs_by_name_and_by_position(folders):
    by_name = {s.case_id: s for s in read_manifest(folders / "train.csv")}["sub00"]
    by_index = {s.case_id: s for s in discover(folders / "nnunet")}["sub00"]
    two = PreprocessConfig(inputs=("FLAIR", "t2"))
    assert input_names(by_name, two) == ["flair", "t2"]  # names match without case
    assert input_names(by_index, two) == ["0000", "0001"]  # CASE_000k is the k-th input
    assert input_names(by_name, PreprocessConfig(inputs=("t2",))) == ["t2"]
    assert input_names(by_name, PreprocessConfig()) == ["flair"]  # one channel: the first
    with pytest.raises(MedaeError, match=r"case sub00 has no sequence 't1' \(it has flair, t2\)"):
        input_names(by_name, PreprocessConfig(inputs=("flair", "t1")))
    with pytest.raises(MedaeError, match="distinct"):
        PreprocessConfig.from_dict({"inputs": ["flair", "FLAIR"]})
    # the same case read both ways gives the same model input, channel by channel
    cfg = PreprocessConfig(spacing=(2, 2, 2), size=(16, 16, 16), inputs=("flair", "t2"))
    _, p1 = prepare_source(by_name, cfg)
    _, p2 = prepare_source(by_index, cfg)
    assert p1.image.shape == (2, 16, 16, 16)
    np.testing.assert_array_equal(p1.image, p2.image)
    # each channel is normalised by its own statistics: 0.5/99.5th percentiles -> 0/1
    for c in range(2):
        lo, hi = np.percentile(p1.image[c][p1.mask], [0.5, 99.5])
        assert lo == pytest.approx(0, abs=0.1) and hi == pytest.approx(1, abs=0.1)
    assert p1.stats[0]["high"] < 200 < p1.stats[1]["high"]
    # swapping the inputs swaps the channels
    _, p3 = prepare_source(by_name, PreprocessConfig(spacing=(2, 2, 2), size=(16, 16, 16),
                                                     inputs=("t2", "flair")))
    np.testing.assert_allclose(p3.image[::-1][:, p3.mask], p1.image[:, p1.mask], atol=1e-6)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_two_channel_model_trains_and_scores(recipe, folders, tmp_path):
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml",
                      [*TINY, *RECIPES[recipe], "preprocess.inputs=[flair, t2]"])
    run = train(cfg, read_manifest(folders / "train.csv"), tmp_path / "run", device="cpu",
                progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["model"]["in_channels"] == 2
    assert meta["preprocess"]["inputs"] == ["flair", "t2"]
    assert [e["sequence"] for e in meta["intensity"][0]["inputs"]] == ["flair", "t2"]
    model = load_model(run, device="cpu")
    source = discover(folders / "test")[0]  # nnU-Net names: read by position
    scan, prep = model.load(source)
    result = model.score(scan, prepared=prep, channel_maps=True, threshold=0.5)
    assert result.heatmap.shape == SHAPE and np.isfinite(result.heatmap).all()
    assert set(result.channel_maps) == {"0000", "0001"}
    # no median filter: the map is the voxel-wise maximum of the channels' maps
    np.testing.assert_array_equal(
        result.heatmap, np.maximum(result.channel_maps["0000"], result.channel_maps["0001"]))


def test_lesion_in_one_sequence_only(folders, tmp_path):
    """Intensity baseline on two channels: a lesion bright only in the second sequence shows in
    the combined map and in that sequence's map, not in the first's."""
    out = tmp_path / "scored"
    # the lesion (8 voxels) is ~1% of this tiny brain: scale by the 95th percentile
    cfg_args = [a for s in [*TINY, "preprocess.inputs=[flair, t2]", "scoring.residual=positive",
                            "preprocess.percentiles=[0.5, 95]"] for a in ("--set", s)]
    medae = [sys.executable, "-m", "medae"]
    subprocess.run([*medae, "train", "--config", str(ROOT / "configs" / "intensity.yaml"),
                    "--data", str(folders / "train.csv"), "--output", str(tmp_path / "run"),
                    *cfg_args], check=True, capture_output=True)
    res = subprocess.run([*medae, "score", "--model", str(tmp_path / "run"), "--input",
                          str(folders / "test"), "--output", str(out), "--save-channel-maps",
                          "--no-overlays", "--threshold", "1.5"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    les = np.load(folders / "lesion.npy")
    case = out / "case"
    heat = np.asarray(nib.load(case / "anomaly_map.nii.gz").dataobj)
    first = np.asarray(nib.load(case / "anomaly_map_0000.nii.gz").dataobj)
    second = np.asarray(nib.load(case / "anomaly_map_0001.nii.gz").dataobj)
    assert les.sum() == 8 and second[les].min() > 4.0  # 900 against healthy 220..300
    assert first[les].max() < 0.5 * second[les].min()  # healthy tissue in the first sequence
    np.testing.assert_array_equal(heat, np.maximum(first, second))
    rec = json.loads((case / "result.json").read_text())
    assert rec["inputs"] == ["0000", "0001"] and rec["row"]["n_candidates"] >= 1


def test_missing_sequence_fails_the_case_not_the_job(folders, tmp_path):
    cfg = load_config(ROOT / "configs" / "intensity.yaml", [*TINY, "preprocess.inputs=[flair, t2]"])
    run = train(cfg, read_manifest(folders / "train.csv"), tmp_path / "run", device="cpu",
                progress=False)
    scans = tmp_path / "scans"
    scans.mkdir()
    rows = ["case_id,flair,t1"]
    for i in range(2):
        rows.append(f"c{i},{folders}/nnunet/sub0{i}_0000.nii.gz,{folders}/nnunet/sub0{i}_0001.nii.gz")
    (scans / "m.csv").write_text("\n".join(rows) + "\n")
    res = subprocess.run([sys.executable, "-m", "medae", "score", "--model", str(run), "--input",
                          str(scans / "m.csv"), "--output", str(tmp_path / "out"),
                          "--no-overlays"], capture_output=True, text=True)
    assert res.returncode == 1
    failures = (tmp_path / "out" / "failures.csv").read_text().splitlines()
    assert len(failures) == 3
    assert "case c0 has no sequence 't2' (it has flair, t1)" in failures[1]
    # a one-sequence model on the same manifest reads the first column and scores both
    one = train(load_config(ROOT / "configs" / "intensity.yaml", TINY),
                read_manifest(folders / "train.csv"), tmp_path / "one", device="cpu",
                progress=False)
    res = subprocess.run([sys.executable, "-m", "medae", "score", "--model", str(one), "--input",
                          str(scans / "m.csv"), "--output", str(tmp_path / "out1"),
                          "--no-overlays"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_in_channels_must_match_inputs():
    cfg = load_config(ROOT / "configs" / "ae2d.yaml",
                      ["preprocess.inputs=[flair, t2]", "model.in_channels=1"])
    from medae.bundle import model_kwargs

    with pytest.raises(MedaeError, match=r"model\.in_channels is 1 but preprocess\.inputs lists 2"):
        model_kwargs(cfg)


def test_scoring_channels_pick_the_inputs_that_make_the_map(folders, tmp_path):
    """T1-weighted input as context only: ``scoring.channels`` names the inputs whose residuals
    make the map; every channel still has its own map with --save-channel-maps."""
    cfg = load_config(ROOT / "configs" / "intensity.yaml",
                      [*TINY, "preprocess.inputs=[flair, t2]", "scoring.channels=[T2]"])
    run = train(cfg, read_manifest(folders / "train.csv"), tmp_path / "run", device="cpu",
                progress=False)
    assert json.loads((run / "model.json").read_text())["config"]["scoring"]["channels"] == ["T2"]
    model = load_model(run, device="cpu")
    scan, prep = model.load(discover(folders / "test")[0])
    result = model.score(scan, prepared=prep, channel_maps=True, threshold=0.5)
    np.testing.assert_array_equal(result.heatmap, result.channel_maps["0001"])
    assert not np.array_equal(result.heatmap, result.channel_maps["0000"])
    bad = load_config(ROOT / "configs" / "intensity.yaml",
                      [*TINY, "preprocess.inputs=[flair, t2]", "scoring.channels=[t1]"])
    with pytest.raises(MedaeError, match=r"scoring\.channels: t1 not among the model's inputs"):
        train(bad, read_manifest(folders / "train.csv"), tmp_path / "bad", device="cpu",
              progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
