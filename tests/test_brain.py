"""Brain masks that cannot be absurd in silence, ``preprocess.brain`` and brain extraction
(issue 27): the checks on synthetic masks, every mode, a missing extra, the grid phantom, the
skull-stripped shared scans unchanged, raw heads extracted, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
from conftest import ROOT, needs_deepbet, shared

import medae
from medae import brain
from medae.errors import MedaeError
from medae.io.scan import Grid, Scan
from medae.masks import compute_mask, implausible_brain, mask_volume_cm3
from medae.preprocess import PreprocessConfig, prepare_source, preprocess

PHANTOM = ("dicom", "ge_mprage_t1", "In", "05_3D_Ax_T1_MP_RAGE_R22")


def _ellipsoid(shape=(150, 180, 130), radii=(62.0, 78.0, 55.0)) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, np.float32) - 1) / 2
    r2 = sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3))
    return r2 < 1


def _scan(array: np.ndarray, name: str = "head.nii.gz") -> Scan:
    return Scan.from_grid(array.astype(np.float32), Grid(array.shape, np.eye(4)), source=name,
                          kind="nifti")


@pytest.fixture(scope="module")
def stripped():
    """A skull-stripped 'brain' at 1 mm: an ellipsoid of 1,114 cm³ on a zero background."""
    inside = _ellipsoid()
    rng = np.random.default_rng(0)
    image = np.where(inside, 100 + rng.normal(0, 5, inside.shape), 0).astype(np.float32)
    return image, inside


@pytest.fixture(scope="module")
def raw_head():
    """The same brain inside a dark skull and a bright scalp, in air of zeros (as many raw
    heads are exported): the background rule finds the whole head, 2,300 cm³."""
    shape = (160, 200, 150)
    rng = np.random.default_rng(1)
    out = np.zeros(shape, np.float32)
    out[_ellipsoid(shape, (76.0, 96.0, 74.0))] = 180  # scalp
    out[_ellipsoid(shape, (72.0, 92.0, 70.0))] = 30  # skull
    inside = _ellipsoid(shape)
    out[inside] = 100 + rng.normal(0, 5, int(inside.sum()))
    return out


# ---- the settings ---------------------------------------------------------------------------

def test_brain_settings_are_checked_and_old_bundles_keep_their_meaning():
    assert PreprocessConfig().brain == "none"  # recipes and bundles without the key
    assert "brain" not in PreprocessConfig().to_dict()  # their model.json stays as it was
    cfg = PreprocessConfig.from_dict({"brain": "auto", "brain_volume_cm3": [300, 700]})
    assert cfg.brain_volume_cm3 == (300, 700)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["brain"] == "auto"
    for bad, words in [({"brain": "skull"}, "preprocess.brain: unknown value 'skull'"),
                       ({"brain": "auto", "mask": "none"}, "not with preprocess.mask none"),
                       ({"brain_volume_cm3": [2000, 800]}, "preprocess.brain_volume_cm3"),
                       ({"brain_volume_cm3": [800]}, "preprocess.brain_volume_cm3")]:
        with pytest.raises(MedaeError, match=words):
            PreprocessConfig.from_dict(bad)
    from medae.config import load_config

    for recipe in ("brain_flair", "brain_multi"):
        pre = load_config(ROOT / "configs" / f"{recipe}.yaml")["preprocess"]
        assert (pre["brain"], pre["brain_volume_cm3"]) == ("auto", [800, 2000])
    for recipe in ("ae2d", "intensity", "dae3d"):  # not brain recipes: X-ray, synthetic paths
        assert "brain" not in load_config(ROOT / "configs" / f"{recipe}.yaml")["preprocess"]


def test_the_extra_is_pinned_alike_in_pyproject_makefile_and_code():
    pin = f"deepbet=={brain.VERSION}"
    assert f'brain = ["{pin}", "SimpleITK>=2.3"]' in (ROOT / "pyproject.toml").read_text()
    make = (ROOT / "Makefile").read_text()
    assert f"DEEPBET_SPEC ?= {pin}" in make and "--no-deps" in make
    assert f"pip install --no-deps {pin}" in brain.INSTALL


def test_train_flag_sets_the_recipe_key():
    from medae.cli import build_parser, train_overrides

    args = build_parser().parse_args(["train", "--config", "c.yaml", "--data", "d", "--output",
                                      "o", "--brain", "extract"])
    assert "preprocess.brain=extract" in train_overrides(args)


# ---- the checks -----------------------------------------------------------------------------

def test_plausible_and_absurd_masks_by_their_values(stripped):
    image, inside = stripped
    assert mask_volume_cm3(inside, (1, 1, 1)) == pytest.approx(1114.4, abs=0.1)
    assert implausible_brain(inside, (1, 1, 1), image=image) is None
    # too small, too large (the same mask at 0.5 mm and 1.5 mm voxels)
    assert implausible_brain(inside, (0.5, 1, 1)) == (
        "brain mask of 557 cm³ is outside the plausible 800-2,000 cm³ "
        "(preprocess.brain_volume_cm3)")
    assert "3,761 cm³ is outside" in implausible_brain(inside, (1.5, 1.5, 1.5))
    assert implausible_brain(inside, (0.5, 1, 1), volume_cm3=(300, 700)) is None  # a child's
    # two large pieces: the brain cut in half along x
    cut = inside.copy()
    cut[70:80] = False
    assert implausible_brain(cut, (1, 1, 1)) == (
        "brain mask is in 2 large pieces (each over 5% of its volume)")
    assert implausible_brain(cut, (1, 1, 1), one_piece=True) is None
    small_piece = inside.copy()  # a speck beside it is not a large piece
    small_piece[2:6, 2:6, 2:6] = True
    assert implausible_brain(small_piece, (1, 1, 1)) is None
    # a mask filling the field of view's edge
    box = np.ones((100, 100, 100), bool)  # 1,000 cm³ filling the field of view
    box[:, :, [0, -1]] = False
    assert implausible_brain(box, (1, 1, 1)) == (
        "brain mask covers 65% of the field of view's edge (at most 50%)")
    # a mask of air
    message = implausible_brain(~inside & _ellipsoid(radii=(74, 89, 64)), (1.2, 1.2, 1.2),
                                image=image)
    assert message.startswith("brain mask is mostly background: its median intensity lies 0%")


# ---- the modes ------------------------------------------------------------------------------

def test_auto_keeps_a_skull_stripped_scans_mask_and_given_needs_one(stripped):
    image, inside = stripped
    scan = _scan(image)
    none = preprocess(scan, PreprocessConfig())
    auto = preprocess(scan, PreprocessConfig(brain="auto"))
    assert np.array_equal(auto.native_mask, none.native_mask)
    assert np.array_equal(auto.image, none.image) and auto.stats == none.stats
    assert auto.mask_rule.startswith("auto, skull-stripped: skull-stripped background")
    assert (auto.brain, auto.brain_volume_cm3, none.brain_volume_cm3) == ("auto", 1114.4, None)
    assert auto.seconds == {}  # nothing extracted
    given = preprocess(scan, PreprocessConfig(brain="given"), mask=inside)
    assert given.mask_rule == "given: the mask supplied with the scan"
    with pytest.raises(MedaeError, match=r"^head.nii.gz: preprocess.brain given: no brain mask"):
        preprocess(scan, PreprocessConfig(brain="given"))
    halves = inside.copy()
    halves[70:80] = False
    with pytest.raises(MedaeError) as err:
        preprocess(scan, PreprocessConfig(brain="given"), mask=halves)
    assert str(err.value) == ("head.nii.gz: brain mask is in 2 large pieces (each over 5% of "
                              "its volume): not a brain, not scored (mask by preprocess.brain "
                              "given: the mask supplied with the scan)")
    # none: today's rule, unchecked (the same halves pass)
    assert preprocess(scan, PreprocessConfig(), mask=halves).mask_rule.startswith("given")


def test_without_the_extra_a_raw_head_is_refused_in_one_line(raw_head, monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(brain.metadata, "distribution", missing)
    monkeypatch.setattr(brain, "_networks", {})
    assert not brain.available()
    scan = _scan(raw_head, "raw_head.nii.gz")
    with pytest.raises(MedaeError) as err:
        preprocess(scan, PreprocessConfig(brain="auto"))
    text = str(err.value)
    assert text.startswith("raw_head.nii.gz: not skull-stripped (skull-stripped background")
    assert "is outside the plausible 800-2,000 cm³" in text  # the background rule's whole head
    assert text.endswith("brain extraction needs deepbet 1.0.2, which is not installed: "
                         "install medae's brain extra: `make install`, or `pip install "
                         "--no-deps deepbet==1.0.2` into medae's environment")
    assert "\n" not in text
    with pytest.raises(MedaeError, match=r"^raw_head.nii.gz: brain extraction needs deepbet"):
        preprocess(scan, PreprocessConfig(brain="extract"))
    # not a brain recipe: scored as before (the whole head), nothing refused
    assert preprocess(scan, PreprocessConfig()).native_mask.sum() > 2.2e6


def test_a_changed_network_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "data" / "models"
    fake.mkdir(parents=True)
    for name in brain.WEIGHTS:
        (fake / name).write_bytes(b"not the network")

    class Dist:
        version = "9.9"

        def locate_file(self, path):
            return tmp_path / path

    monkeypatch.setattr(brain.metadata, "distribution", lambda name: Dist())
    monkeypatch.setattr(brain, "_networks", {})
    with pytest.raises(brain.ExtractorMissing, match=r"not deepbet 1\.0\.2's network"):
        brain.extract_brain(np.zeros((8, 8, 8), np.float32))


# ---- real scans -----------------------------------------------------------------------------

def _ixi_source(tmp_path, with_mask: bool):
    d = shared("brain", "healthy", "ixi002")
    man = tmp_path / "ixi.csv"
    mask = d / "hd_bet_mask_IXI002-Guys-0828-T2.nii.gz" if with_mask else ""
    man.write_text(f"case_id,image,mask\nixi002,{d / 'hd_bet_IXI002-Guys-0828-T2.nii.gz'},"
                   f"{mask}\n")
    return medae.read_manifest(man)[0]


@pytest.mark.parametrize("which", ["brats_given", "brats", "ms", "ixi_given"])
def test_skull_stripped_shared_scans_are_unchanged_by_auto(which, tmp_path):
    if which.startswith("brats"):
        d = shared("brain", "brats2013", "pat0001")
        man = tmp_path / "m.csv"
        mask = d / "brainmask.nii.gz" if which == "brats_given" else ""
        man.write_text(f"case_id,image,mask\npat0001,{d / 'Flair_subtrMeanDivStd.nii.gz'},"
                       f"{mask}\n")
        source = medae.read_manifest(man)[0]
    elif which == "ms":
        d = shared("brain", "ms_lesjak", "patient07")
        source = medae.discover(next(d.glob("FLAIR*.nii.gz")))[0]
    else:
        source = _ixi_source(tmp_path, with_mask=True)
    base = dict(spacing=(1.875, 1.875, 1.0), size=(96, 112, None))
    _, before = prepare_source(source, PreprocessConfig(**base))
    _, after = prepare_source(source, PreprocessConfig(**base, brain="auto"))
    assert np.array_equal(before.native_mask, after.native_mask)
    assert np.array_equal(before.image, after.image) and before.stats == after.stats
    expected = "auto: the mask supplied" if which.endswith("given") else "auto, skull-stripped"
    assert after.mask_rule.startswith(expected)
    assert 1090 < after.brain_volume_cm3 < 1700


def test_the_phantoms_own_mask_is_refused():
    scan = medae.load_scan(shared(*PHANTOM))
    mask, rule = compute_mask(scan.array)
    assert rule.startswith("Otsu threshold")
    assert implausible_brain(mask, scan.spacing) == (
        "brain mask of 11 cm³ is outside the plausible 800-2,000 cm³ "
        "(preprocess.brain_volume_cm3)")


@needs_deepbet
def test_extraction_of_a_raw_head_with_the_neck():
    scan = medae.load_scan(shared("brain", "raw_heads", "niivue_register", "T1_head_ext2.nii.gz"))
    head = compute_mask(scan.array)[0]
    prep = preprocess(scan, PreprocessConfig(brain="auto", spacing=(2.0, 2.0, 2.0)))
    assert prep.mask_rule.startswith("auto: brain extracted by deepbet 1.0.2 (not skull-stripped: "
                                     "skull-stripped background: values <= 0")
    assert "4,259 cm³ is outside the plausible" in prep.mask_rule  # the background rule's head
    assert prep.brain_volume_cm3 == pytest.approx(1480, abs=3)  # deepbet's own run: 1,480 cm³
    assert (prep.native_mask <= head).all()  # inside the head
    assert 0 < prep.seconds["brain extraction"] < 120


@pytest.mark.slow
@needs_deepbet
def test_cli_trains_and_scores_raw_heads_and_fails_the_phantom(tmp_path):
    """medae train / score with --brain: the phantom is skipped in training and fails scoring
    with one line; a raw T2 head is extracted; the skull-stripped BraTS FLAIR is scored as
    before, byte for byte."""
    phantom = shared(*PHANTOM)
    brats = shared("brain", "brats2013", "pat0001", "Flair_subtrMeanDivStd.nii.gz")
    raw = shared("brain", "raw_heads", "niivue_register", "T2w.nii.gz")
    ixi = shared("brain", "healthy", "ixi002")
    healthy, scans = tmp_path / "healthy", tmp_path / "scans"
    train_on = {"t2.nii.gz": ixi / "hd_bet_IXI002-Guys-0828-T2.nii.gz",
                "t1.nii.gz": ixi / "hd_bet_IXI002-Guys-0828-T1.nii.gz",
                "t2_dilated.nii.gz": ixi / "hd_bet_dilated_IXI002-Guys-0828-T2.nii.gz",
                "raw_t2w.nii.gz": raw, "phantom": phantom}
    for folder, items in ((healthy, train_on),
                          (scans, {"brats.nii.gz": brats, "t2w.nii.gz": raw,
                                   "phantom": phantom})):
        folder.mkdir()
        for name, target in items.items():
            if target.is_dir():  # discovery follows links to files, not to folders
                (folder / name).mkdir()
                for f in target.iterdir():
                    (folder / name / f.name).symlink_to(f)
            else:
                (folder / name).symlink_to(target)

    def medae_cli(*args):
        return subprocess.run([sys.executable, "-m", "medae", *args], capture_output=True,
                              text=True, timeout=900)

    run = tmp_path / "run"
    res = medae_cli("train", "--config", str(ROOT / "configs" / "intensity.yaml"), "--data",
                    str(healthy), "--output", str(run), "--brain", "auto", "-q")
    assert res.returncode == 0, res.stderr[-2000:]
    skipped = list(csv.DictReader((run / "skipped.csv").open()))
    assert len(skipped) == 1 and skipped[0]["case_id"].startswith("phantom")
    assert "brain mask is mostly background" in skipped[0]["error"]
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocess"]["brain"] == "auto"
    # a raw head among the training scans is brain-extracted, and scoring replays it exactly
    [entry] = [e for e in meta["intensity"] if e["case_id"].startswith("raw_t2w")]
    assert entry["mask_rule"].startswith("auto: brain extracted by deepbet 1.0.2")
    from medae.preprocess import PreprocessConfig, prepare_source

    _, again = prepare_source(medae.discover(raw)[0],
                              PreprocessConfig.from_dict(meta["preprocess"]))
    assert (again.stats[0]["low"], again.stats[0]["high"]) == (entry["low"], entry["high"])
    out = tmp_path / "out"
    res = medae_cli("score", "--model", str(run), "--input", str(scans), "--output", str(out),
                    "-q", "--no-overlays")
    assert res.returncode == 1, res.stderr[-2000:]  # the phantom failed, the others scored
    failures = list(csv.DictReader((out / "failures.csv").open()))
    assert len(failures) == 1 and failures[0]["case_id"].startswith("phantom")
    reason = failures[0]["reason"]
    assert reason.startswith(f"{scans / 'phantom'}: brain mask is mostly background: its "
                             "median intensity lies -1% of the way") and "\n" not in reason
    assert reason.endswith("not a brain, not scored (mask by preprocess.brain auto: brain "
                           "extracted by deepbet 1.0.2 (not skull-stripped: no constant "
                           "background))")
    t2w = json.loads((out / "t2w" / "result.json").read_text())
    assert t2w["brain"] == "auto" and t2w["brain_volume_cm3"] == pytest.approx(1426, abs=3)
    assert t2w["mask_rule"].startswith("auto: brain extracted by deepbet 1.0.2 (not "
                                       "skull-stripped: no constant background)")
    assert t2w["stages"]["brain extraction"] > 0
    assert t2w["mask_rule"] == entry["mask_rule"]
    b = json.loads((out / "brats" / "result.json").read_text())
    assert b["mask_rule"].startswith("auto, skull-stripped: skull-stripped background")
    # the same model with --brain none: the BraTS map byte for byte
    res = medae_cli("score", "--model", str(run), "--input", str(scans / "brats.nii.gz"),
                    "--output", str(tmp_path / "none"), "-q", "--no-overlays", "--brain", "none")
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ("anomaly_map.nii.gz", "brain_mask.nii.gz", "candidates.nii.gz"):
        assert (out / "brats" / name).read_bytes() == (tmp_path / "none" / "brats" /
                                                        name).read_bytes()
    assert "brain" not in json.loads((tmp_path / "none" / "brats" / "result.json").read_text())


# ---- N4 bias-field correction ---------------------------------------------------------------

def _biased_brain(shape=(48, 56, 44)):
    """Two tissues (a brighter core) in an ellipsoid, times a linear 40% / 20% bias field."""
    grid = np.indices(shape, dtype=np.float32)
    c = (np.array(shape, np.float32) - 1) / 2
    radii = np.array(shape, np.float32) * 0.42
    r2 = sum(((grid[a] - c[a]) / radii[a]) ** 2 for a in range(3))
    inside = r2 < 1
    rng = np.random.default_rng(0)
    image = np.where(inside, 100 + rng.normal(0, 2, shape), 1).astype(np.float32)
    image[r2 < 0.3] += 40
    field = 1 + 0.4 * (grid[0] - c[0]) / radii[0] + 0.2 * (grid[2] - c[2]) / radii[2]
    return image, image * field.astype(np.float32), inside, inside & (r2 > 0.4)


def _cv(values):
    return float(values.std() / values.mean())


def test_n4_removes_a_known_bias_field():
    from medae.bias import n4_correct

    true, biased, inside, shell = _biased_brain()
    assert _cv(true[shell]) == pytest.approx(0.020, abs=0.002)
    assert _cv(biased[shell]) > 0.2
    corrected = n4_correct(biased, inside, (3.0, 3.0, 3.0), shrink=4)
    assert corrected.dtype == np.float32 and corrected.shape == biased.shape
    assert _cv(corrected[shell]) < 0.03  # back to (nearly) the noise alone
    with pytest.raises(MedaeError, match="N4 bias correction needs positive intensities"):
        n4_correct(biased - 150, inside, (3.0, 3.0, 3.0))


def test_n4_on_and_off_in_preprocessing():
    _, biased, inside, shell = _biased_brain()
    scan = Scan.from_grid(biased, Grid(biased.shape, np.diag([3.0, 3.0, 3.0, 1.0])),
                          source="biased.nii.gz", kind="nifti")
    base = dict(spacing=(3.0, 3.0, 3.0))
    off = preprocess(scan, PreprocessConfig(**base), mask=inside)
    assert "bias correction" not in off.seconds and off.native_inputs[0] is scan.array
    assert "bias_correction" not in PreprocessConfig(**base).to_dict()  # bundles unchanged
    cfg = PreprocessConfig.from_dict({**base, "bias_correction": "n4", "n4_shrink": 4})
    assert cfg.to_dict()["bias_correction"] == "n4"
    on = preprocess(scan, cfg, mask=inside)
    assert on.seconds["bias correction"] > 0
    assert _cv(on.native_inputs[0][shell]) < 0.03 < _cv(off.native_inputs[0][shell])
    assert np.array_equal(on.native_mask, off.native_mask)
    with pytest.raises(MedaeError, match=r"preprocess\.bias_correction: unknown value 'n3'"):
        PreprocessConfig(bias_correction="n3")
    with pytest.raises(MedaeError, match=r"preprocess\.n4_shrink: an integer from 1 to 16"):
        PreprocessConfig(n4_shrink=0)
    negative = Scan.from_grid(biased - 150, scan.grid, source="z.nii.gz", kind="nifti")
    with pytest.raises(MedaeError, match=r"^z.nii.gz: N4 bias correction needs positive"):
        preprocess(negative, cfg, mask=inside)
