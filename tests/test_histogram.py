"""Histogram standardisation (``preprocess.normalise: histogram``, Nyul & Udupa): every scan's
brain deciles mapped onto the standard learned from the training scans, so that a model reads
a patient whose tissues sit at other levels as it read its training patients (issue 26: MS
patient19's healthy tissue sits lower than patient07's in percentile units)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, write_phantoms

from medae.cli import main
from medae.errors import MedaeError
from medae.preprocess import (
    HISTOGRAM_LANDMARKS,
    PreprocessConfig,
    apply_normalisation,
    denormalise,
    intensity_stats,
    normalised_iqr,
    normalised_landmarks,
)


def _tissues(seed: int = 0, n: int = 200_000) -> np.ndarray:
    """Brain-like intensities: 'CSF' 20, 'grey' 70, 'white' 100 in 15/40/45%, noise sd 4."""
    rng = np.random.default_rng(seed)
    classes = rng.choice([20.0, 70.0, 100.0], size=n, p=[0.15, 0.40, 0.45])
    return (classes + rng.normal(0, 4, n)).astype(np.float32)


def _distorted(x: np.ndarray) -> np.ndarray:
    """The same tissues as another scanner might write them: a monotone, non-linear map
    (grey matter pushed towards CSF, a different gain and offset)."""
    return (3.0 * 100 * (x.clip(0) / 100) ** 1.6 + 40).astype(np.float32)


def _standardised(x: np.ndarray, standard) -> tuple[np.ndarray, dict]:
    cfg = PreprocessConfig(normalise="histogram", standard=(tuple(standard),))
    stats = intensity_stats(x, np.ones(x.shape, bool), cfg)
    return apply_normalisation(x, stats), stats


def test_the_standard_undoes_a_monotone_distortion_that_percentiles_keep():
    a = _tissues(0)
    b = _distorted(_tissues(1))  # another patient, same tissues, another scanner's curve
    plain = PreprocessConfig(normalise="percentile")
    learn = intensity_stats(a, np.ones(a.shape, bool), PreprocessConfig(normalise="histogram"))
    standard = normalised_landmarks(learn)
    assert len(standard) == len(HISTOGRAM_LANDMARKS)
    na, _ = _standardised(a, standard)
    nb, _ = _standardised(b, standard)
    pa = apply_normalisation(a, intensity_stats(a, np.ones(a.shape, bool), plain))
    pb = apply_normalisation(b, intensity_stats(b, np.ones(b.shape, bool), plain))
    # the tissue classes' medians (grey matter: the class the distortion moves most)
    truth_a, truth_b = _tissues(0), _tissues(1)
    grey_a = np.abs(np.round(truth_a / 10) * 10 - 70) <= 10
    grey_b = np.abs(np.round(truth_b / 10) * 10 - 70) <= 10
    std_gap = abs(np.median(na[grey_a]) - np.median(nb[grey_b]))
    pct_gap = abs(np.median(pa[grey_a]) - np.median(pb[grey_b]))
    assert std_gap < 0.02
    assert pct_gap > 0.1  # percentile normalisation leaves grey matter where the curve put it


def test_histogram_without_a_standard_is_percentile_and_the_map_inverts():
    x = _distorted(_tissues(2))
    mask = np.ones(x.shape, bool)
    pct = intensity_stats(x, mask, PreprocessConfig(normalise="percentile"))
    hist = intensity_stats(x, mask, PreprocessConfig(normalise="histogram"))
    assert (hist["low"], hist["high"], hist["iqr"]) == (pct["low"], pct["high"], pct["iqr"])
    assert np.array_equal(apply_normalisation(x, hist), apply_normalisation(x, pct))
    assert hist["landmarks"] == pytest.approx(
        list(np.percentile(x.astype(np.float64), HISTOGRAM_LANDMARKS)), rel=1e-5)
    standard = np.linspace(0.08, 0.92, len(HISTOGRAM_LANDMARKS))
    y, stats = _standardised(x, standard)
    # the deciles land on the standard, 0 and 1 where percentile puts them
    assert np.percentile(y, HISTOGRAM_LANDMARKS) == pytest.approx(standard, abs=2e-3)
    assert np.percentile(y, (0.5, 99.5)) == pytest.approx([0.0, 1.0], abs=2e-3)
    # beyond the 99.5th percentile the last segment's slope continues (a lesion keeps contrast)
    bright = np.array([stats["high"] * 1.5], np.float32)
    assert apply_normalisation(bright, stats)[0] > 1.1
    back = denormalise(y, stats)
    assert back == pytest.approx(x, rel=1e-4, abs=1e-3)
    # the interquartile range in normalised units is that of the standardised voxels (the map
    # is monotone: it carries the quartiles over)
    q1, q3 = np.percentile(y, (25, 75))
    assert normalised_iqr(stats) == pytest.approx(float(q3 - q1), rel=1e-3)


def test_the_standard_is_checked_and_kept_out_of_other_bundles():
    assert "standard" not in PreprocessConfig().to_dict()
    row = [0.1 * k for k in range(1, 10)]
    cfg = PreprocessConfig.from_dict({"normalise": "histogram", "standard": [row]})
    assert cfg.to_dict()["standard"] == [row]
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(MedaeError, match=r"only with preprocess\.normalise histogram"):
        PreprocessConfig.from_dict({"normalise": "percentile", "standard": [row]})
    with pytest.raises(MedaeError, match="increasing"):
        PreprocessConfig.from_dict({"normalise": "histogram", "standard": [row[::-1]]})
    with pytest.raises(MedaeError, match="increasing"):
        PreprocessConfig.from_dict({"normalise": "histogram", "standard": [row[:5]]})
    with pytest.raises(MedaeError, match="increasing"):  # one row per input
        PreprocessConfig.from_dict({"normalise": "histogram", "standard": [row, row]})
    with pytest.raises(MedaeError, match="between 0 and 1"):  # an edited bundle
        PreprocessConfig.from_dict({"normalise": "histogram", "standard": [[v + 0.5 for v in row]]})


def _manifest(path: Path, images: list[Path]) -> Path:
    rows = ["case_id,image"] + [f"p{i},{p}" for i, p in enumerate(images)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_training_learns_the_standard_and_scoring_reads_a_distorted_scan_on_it(tmp_path):
    """`medae train` with normalise histogram stores the mean of its training scans' deciles
    (in percentile units) in model.json; scoring a copy of a training scan written through
    another scanner's curve reads it at the levels of the original."""
    images = write_phantoms(tmp_path / "pat", 3, seed=7)
    man = _manifest(tmp_path / "train.csv", images)
    run = tmp_path / "run"
    assert main(["train", "--config", str(ROOT / "configs" / "intensity.yaml"), "--data",
                 str(man), "--output", str(run), "--device", "cpu", "-q",
                 "--set", "data.val_fraction=0.34", "--set", "preprocess.size=[24, 28, 20]",
                 "--set", "preprocess.normalise=histogram"]) == 0
    meta = json.loads((run / "model.json").read_text())
    trained = [e["case_id"] for e in meta["intensity"]]
    assert len(trained) == 2 and meta["validation_cases"]
    expected = []
    for case in trained:
        arr = np.asanyarray(nib.load(images[int(case[1:])]).dataobj).astype(np.float32)
        inside = arr[arr > 0]  # the phantoms' constant background is the mask rule's outside
        lo, hi = np.percentile(inside, (0.5, 99.5))
        expected.append((np.percentile(inside, HISTOGRAM_LANDMARKS) - lo) / (hi - lo))
    standard = meta["preprocess"]["standard"]
    assert meta["config"]["preprocess"]["standard"] == standard
    assert standard[0] == pytest.approx(list(np.mean(expected, axis=0)), abs=2e-3)
    for entry in meta["intensity"]:  # each training scan was read on the standard
        assert entry["standard"] == standard[0]

    from medae.scoring.scorer import load_model

    model = load_model(run, device="cpu")
    assert model.preprocess_config.standard == tuple(tuple(r) for r in standard)
    src = nib.load(images[0])
    arr = np.asanyarray(src.dataobj).astype(np.float32)
    warped = np.where(arr > 0, _distorted(arr), 0).astype(np.float32)
    path = tmp_path / "warped.nii.gz"
    nib.save(nib.Nifti1Image(warped, src.affine), path)
    from medae import load_scan

    prep_a = model.prepare(load_scan(images[0]))
    prep_b = model.prepare(load_scan(path))
    inside = prep_a.mask & prep_b.mask
    gap = np.abs(prep_a.image[0][inside] - prep_b.image[0][inside])
    assert np.median(gap) < 0.02
    plain = PreprocessConfig(normalise="percentile")
    pa = apply_normalisation(arr[arr > 0], intensity_stats(arr, arr > 0, plain))
    pb = apply_normalisation(warped[arr > 0], intensity_stats(warped, arr > 0, plain))
    assert np.median(np.abs(pa - pb)) > 3 * np.median(gap)
    # result.json says how the scan was read: its own deciles and the standard they went to
    out = tmp_path / "scored"
    assert main(["score", "--model", str(run), "--input", str(path), "--output", str(out),
                 "--device", "cpu", "--no-overlays", "-q"]) == 0
    [record] = [json.loads(p.read_text()) for p in out.glob("*/result.json")]
    [norm] = record["normalisation"]
    assert norm["rule"] == "histogram" and norm["standard"] == standard[0]
    warped_in = warped[warped > 0]
    lo, hi = np.percentile(warped_in, (0.5, 99.5))
    assert (norm["low"], norm["high"]) == pytest.approx((lo, hi), rel=1e-4)
    assert norm["landmarks"] == pytest.approx(list(np.percentile(warped_in, HISTOGRAM_LANDMARKS)),
                                              rel=1e-4)


def test_each_input_learns_its_own_standard():
    """A two-sequence model: each input's standard is the mean of the training scans' deciles of
    that input, and every cached scan (training and validation) is mapped onto it in place."""
    from medae.preprocess import Prepared
    from medae.train import learn_standard

    cfg = PreprocessConfig(normalise="histogram", inputs=("flair", "t1"))

    def item(seed: int) -> dict:
        flair = _tissues(seed, 20_000).reshape(20, 20, 50)
        t1 = _distorted(_tissues(seed + 10, 20_000)).reshape(20, 20, 50)
        mask = np.ones(flair.shape, bool)
        stats = [intensity_stats(a, mask, cfg, c) for c, a in enumerate((flair, t1))]
        image = np.stack([apply_normalisation(a, s) for a, s in zip((flair, t1), stats,
                                                                    strict=True)])
        prep = Prepared(image=image, mask=mask, scan_shape=flair.shape,
                        resampled_shape=flair.shape, offset=(0, 0, 0), stats=stats)
        return {"case_id": f"c{seed}", "prepared": prep}

    train, val = [item(0), item(1)], [item(2)]
    own = [[normalised_landmarks(s) for s in it["prepared"].stats] for it in train]
    learned = learn_standard(cfg, train, val)
    assert len(learned.standard) == 2
    for c in range(2):
        assert learned.standard[c] == pytest.approx(list(np.mean([o[c] for o in own], axis=0)))
    assert learned.standard[0] != pytest.approx(learned.standard[1], abs=0.05)
    for it in train + val:
        for c in range(2):
            values = it["prepared"].image[c]
            assert np.percentile(values, HISTOGRAM_LANDMARKS) == pytest.approx(
                learned.standard[c], abs=3e-3)
            assert it["prepared"].stats[c]["standard"] == list(learned.standard[c])


def test_landmarks_below_a_large_bright_lesion_keep_its_contrast():
    """A lesion filling a quarter of the brain holds the 80th and 90th percentiles: with the
    deciles as knots the standard maps them onto healthy white matter's places and squeezes
    the lesion towards it; landmarks up to the 70th leave the bright tail out of the knots."""
    a = _tissues(0)  # a training scan without lesion
    healthy = _tissues(1)
    rng = np.random.default_rng(5)
    b = np.concatenate([healthy, (160 + rng.normal(0, 5, len(healthy) // 3)).astype(np.float32)])
    white_a = np.abs(np.round(a / 10) * 10 - 100) <= 10
    contrast = {}
    for lm in (HISTOGRAM_LANDMARKS, (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0)):
        cfg = PreprocessConfig(normalise="histogram", landmarks=lm)
        standard = normalised_landmarks(intensity_stats(a, np.ones(a.shape, bool), cfg))
        assert len(standard) == len(lm)
        cfg = PreprocessConfig(normalise="histogram", landmarks=lm, standard=(tuple(standard),))
        na = apply_normalisation(a, intensity_stats(a, np.ones(a.shape, bool), cfg))
        nb = apply_normalisation(b, intensity_stats(b, np.ones(b.shape, bool), cfg))
        contrast[len(lm)] = float(np.median(nb[len(healthy):]) - np.median(na[white_a]))
    assert contrast[9] < 0.035  # the deciles: lesion 0.93 against white matter 0.91
    assert contrast[7] > 0.07 and contrast[7] > 2.5 * contrast[9]


def test_landmarks_are_checked_and_only_non_default_ones_reach_the_bundle():
    lm7 = [10, 20, 30, 40, 50, 60, 70]
    cfg = PreprocessConfig.from_dict({"normalise": "histogram", "landmarks": lm7})
    assert cfg.landmarks == tuple(lm7) and cfg.to_dict()["landmarks"] == lm7
    assert "landmarks" not in PreprocessConfig(normalise="histogram").to_dict()  # old bundles
    assert PreprocessConfig.from_dict({"normalise": "histogram"}).landmarks == HISTOGRAM_LANDMARKS
    row = [0.1 * i for i in range(1, 8)]
    assert PreprocessConfig.from_dict({"normalise": "histogram", "landmarks": lm7,
                                       "standard": [row]}).standard == (tuple(row),)
    with pytest.raises(MedaeError, match=r"preprocess\.standard: per input, 7 "):
        PreprocessConfig.from_dict({"normalise": "histogram", "landmarks": lm7,
                                    "standard": [[*row, 0.75, 0.8]]})
    for bad in ([70, 10], [0.2, 50], [50, 99.5], [], [50, float("nan")], "50", [True]):
        with pytest.raises(MedaeError, match=r"preprocess\.landmarks: 1 to 32 increasing"):
            PreprocessConfig.from_dict({"normalise": "histogram", "landmarks": bad})
    with pytest.raises(MedaeError, match=r"landmarks: only with preprocess\.normalise histogram"):
        PreprocessConfig.from_dict({"normalise": "percentile", "landmarks": lm7})
    # the percentile recipes' own pair need not enclose the deciles (the demo's [1, 90])
    assert PreprocessConfig(normalise="percentile",
                            percentiles=(1.0, 90.0)).landmarks == HISTOGRAM_LANDMARKS
