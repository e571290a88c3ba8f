"""Evaluation metrics: agreement with scikit-learn, streaming, Dice, lesion detection, edges."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared
from sklearn.metrics import average_precision_score, roc_auc_score

from medae.errors import MedaeError
from medae.evaluation import (
    PooledVoxels,
    dice,
    lesion_detection,
    ranking_metrics,
    summarise_detection,
)

TOL = 1e-4


def _data(seed: int, kind: str, n: int = 300_000):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.01
    if kind == "continuous":
        s = (rng.normal(size=n) + 1.5 * y).astype(np.float32)
    elif kind == "ties":
        s = np.round(rng.normal(size=n) + 1.5 * y, 1).astype(np.float32)
    elif kind == "float64":
        s = rng.exponential(size=n) + 2.0 * y
    else:  # narrow range far from zero: the adaptive bins must resolve it
        s = (rng.normal(size=n) + 2.0 * y + 100).astype(np.float32)
    return s, y


@pytest.mark.parametrize("kind", ["continuous", "ties", "float64", "offset"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("exact_limit", [10**9, 0], ids=["exact", "histogram"])
def test_agrees_with_sklearn_streamed(kind, seed, exact_limit):
    s, y = _data(seed, kind)
    ref_ap, ref_auc = average_precision_score(y, s), roc_auc_score(y, s)
    one = PooledVoxels(exact_limit=exact_limit)
    one.add(s, y)
    chunked = PooledVoxels(exact_limit=exact_limit)
    for part in np.array_split(np.arange(s.size), 5):
        chunked.add(s[part].reshape(-1, 1), y[part].reshape(-1, 1))
    for acc in (one, chunked):
        assert acc.exact == (exact_limit > s.size)
        assert acc.counts == (s.size, int(y.sum()))
        assert acc.average_precision() == pytest.approx(ref_ap, abs=TOL)
        assert acc.roc_auc() == pytest.approx(ref_auc, abs=TOL)
        lo, hi = acc.bounds()["ap"]
        assert lo - 1e-12 <= ref_ap <= hi + 1e-12
    if exact_limit > s.size:
        assert one.average_precision() == pytest.approx(ref_ap, abs=1e-12)
    assert chunked.average_precision() == pytest.approx(one.average_precision(), abs=1e-12)


def test_switch_from_exact_to_histogram_midway():
    s, y = _data(3, "continuous")
    acc = PooledVoxels(exact_limit=100_000)
    for part in np.array_split(np.arange(s.size), 6):
        acc.add(s[part], y[part])
    assert not acc.exact
    assert acc.average_precision() == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert acc.roc_auc() == pytest.approx(roc_auc_score(y, s), abs=TOL)


def test_histogram_widens_when_later_scans_exceed_the_range():
    rng = np.random.default_rng(5)
    parts = [(rng.random(50_000).astype(np.float32) * 10 ** k, rng.random(50_000) < 0.05)
             for k in (0, 3, -2, 5)]
    for i, (s, y) in enumerate(parts):
        parts[i] = (s + 0.5 * y * s.max(), y)
    s = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    acc = PooledVoxels(exact_limit=0)
    for p in parts:
        acc.add(*p)
    assert acc.average_precision() == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert acc.roc_auc() == pytest.approx(roc_auc_score(y, s), abs=TOL)


def _brute_best_dice(s, y):
    best = max((dice(s > t, y), t) for t in np.r_[np.unique(s), -np.inf])
    return best


@pytest.mark.parametrize("exact_limit", [10**9, 0], ids=["exact", "histogram"])
def test_best_dice_matches_brute_force(exact_limit):
    rng = np.random.default_rng(7)
    y = rng.random(3000) < 0.1
    s = np.round(rng.normal(size=3000) + 2 * y, 2).astype(np.float32)
    acc = PooledVoxels(exact_limit=exact_limit)
    acc.add(s, y)
    d, thr = acc.best_dice()
    ref, _ = _brute_best_dice(s, y)
    assert d == pytest.approx(ref, abs=1e-12)
    assert dice(s > thr, y) == pytest.approx(d, abs=1e-12)
    assert acc.dice_at(thr) == pytest.approx(d, abs=1e-12)


def test_dice_at_registered_thresholds_is_exact_pooled_and_per_scan():
    rng = np.random.default_rng(8)
    scans = [(rng.normal(size=(10, 12, 8)), rng.random((10, 12, 8)) < 0.2) for _ in range(3)]
    thresholds = [0.3, 1.0]
    acc = PooledVoxels(thresholds=thresholds, exact_limit=0)
    for s, y in scans:
        acc.add(s, y)
    s_all = np.concatenate([s.ravel() for s, _ in scans])
    y_all = np.concatenate([y.ravel() for _, y in scans])
    for t in thresholds:
        assert acc.dice_at(t) == pytest.approx(dice(s_all > t, y_all), abs=1e-12)
        assert acc.scan_dice(t) == pytest.approx([dice(s > t, y) for s, y in scans], abs=1e-12)
    with pytest.raises(MedaeError, match="not given"):
        acc.scan_dice(0.5)
    with pytest.raises(MedaeError, match="neither"):
        acc.dice_at(0.123456789)


def test_dice_conventions():
    a = np.zeros((3, 3), bool)
    assert dice(a, a) == 1.0
    b = a.copy()
    b[0, 0] = True
    assert dice(a, b) == 0.0
    assert dice(b, b) == 1.0
    with pytest.raises(MedaeError, match="shape"):
        dice(a, np.zeros((3, 4), bool))


def test_real_flair_thresholding_matches_sklearn_and_published_figures():
    import nibabel as nib

    folder = shared("brain", "brats2013", "pat0001")
    flair = nib.load(folder / "Flair_subtrMeanDivStd.nii.gz").get_fdata(dtype=np.float32)
    truth = nib.load(folder / "OTMultiClass.nii.gz").get_fdata() > 0
    brain = nib.load(folder / "brainmask.nii.gz").get_fdata() > 0
    s, y = flair[brain], truth[brain]
    ref_ap, ref_auc = average_precision_score(y, s), roc_auc_score(y, s)
    for exact_limit in (10**9, 0):
        acc = PooledVoxels(exact_limit=exact_limit)
        for z in range(0, flair.shape[2], 40):  # streamed in slabs
            acc.add(flair[:, :, z:z + 40][brain[:, :, z:z + 40]],
                    truth[:, :, z:z + 40][brain[:, :, z:z + 40]])
        assert acc.average_precision() == pytest.approx(ref_ap, abs=TOL)
        assert acc.roc_auc() == pytest.approx(ref_auc, abs=TOL)
        assert acc.average_precision() == pytest.approx(0.886, abs=0.005)
        assert acc.best_dice()[0] == pytest.approx(0.851, abs=0.005)


def test_edge_cases_match_documented_conventions():
    s = np.random.default_rng(0).random(100)
    none = PooledVoxels()
    none.add(s, np.zeros(100, bool))
    assert none.average_precision() is None and none.roc_auc() is None
    assert none.best_dice()[0] == 1.0  # nothing to find, nothing called
    every = PooledVoxels(exact_limit=0)
    every.add(s, np.ones(100, bool))
    assert every.average_precision() == 1.0 and every.roc_auc() is None
    y = np.arange(100) < 30
    for limit in (10**9, 0):
        const = PooledVoxels(exact_limit=limit)
        const.add(np.full(100, 2.5, np.float32), y)
        assert const.average_precision() == pytest.approx(0.3)
        assert const.average_precision() == pytest.approx(average_precision_score(y, np.ones(100)))
        assert const.roc_auc() == 0.5
    empty = PooledVoxels()
    assert empty.counts == (0, 0) and empty.average_precision() is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_scores_raise_one_line_error(bad):
    s = np.ones(10)
    s[3] = bad
    with pytest.raises(MedaeError, match=r"contains (NaN|infinity)") as err:
        PooledVoxels().add(s, np.zeros(10, bool))
    assert "\n" not in str(err.value)
    with pytest.raises(MedaeError, match="contains"):
        ranking_metrics(list(s), [True] * 5 + [False] * 5)


def test_shape_mismatch_and_bad_labels_raise():
    with pytest.raises(MedaeError, match="shape"):
        PooledVoxels().add(np.zeros(5), np.zeros(6, bool))
    with pytest.raises(MedaeError, match="labels"):
        PooledVoxels().add(np.zeros(3), np.array([0, 2, 1]))
    with pytest.raises(MedaeError, match="float32 range"):
        PooledVoxels(exact_limit=0).add(np.array([1e300]), np.array([True]))


def _cube(vol, corner, size, value=True):
    x, y, z = corner
    vol[x:x + size, y:y + size, z:z + size] = value


def test_lesion_detection_on_hand_made_volume():
    truth = np.zeros((30, 30, 30), bool)
    _cube(truth, (1, 1, 1), 2)  # 8 voxels: hit by candidate 1
    _cube(truth, (10, 10, 10), 5)  # 125 voxels: only touched diagonally by candidate 2
    _cube(truth, (20, 20, 20), 10)  # 1000 voxels: overlapped by candidate 3
    cand = np.zeros_like(truth, np.int32)
    cand[2, 2, 2] = 1  # inside the small lesion
    cand[15, 15, 15] = 2  # diagonal neighbour of the corner (14, 14, 14) of lesion 2: no overlap
    _cube(cand, (25, 25, 25), 8, 3)  # overlaps the large lesion
    r = lesion_detection(truth, cand, voxel_mm3=2.0, size_bins_mm3=(0, 100, 1000, np.inf))
    assert (r["lesions"], r["detected"], r["candidates"], r["fp_candidates"]) == (3, 2, 3, 1)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["fp_mm3"] == 2.0
    assert r["lesion_mm3"] == [16.0, 250.0, 2000.0]
    assert r["lesion_detected"] == [True, False, True]
    assert r["by_size"] == {"0-100 mm3": {"lesions": 1, "detected": 1, "recall": 1.0},
                            "100-1000 mm3": {"lesions": 1, "detected": 0, "recall": 0.0},
                            ">=1000 mm3": {"lesions": 1, "detected": 1, "recall": 1.0}}
    # a bool candidate mask is labelled with 26-connectivity: the diagonal voxel joins nothing
    rb = lesion_detection(truth, cand > 0, 2.0, (0, 100, 1000, np.inf))
    assert (rb["detected"], rb["fp_candidates"]) == (2, 1)
    healthy = lesion_detection(np.zeros_like(truth), cand, 2.0, (0, 100, 1000, np.inf))
    assert healthy["recall"] is None and healthy["fp_candidates"] == 3
    s = summarise_detection([r, healthy])
    assert s["recall"] == pytest.approx(2 / 3) and s["lesions"] == 3
    assert s["fp_per_scan_mean"] == 2.0
    assert s["fp_per_scan_sd"] == pytest.approx(np.std([1, 3], ddof=1))
    assert s["by_size"]["100-1000 mm3"]["recall"] == 0.0
    with pytest.raises(MedaeError, match="shape"):
        lesion_detection(truth, cand[:-1])
    with pytest.raises(MedaeError, match="no scans"):
        summarise_detection([])


def test_26_connectivity_joins_diagonal_voxels_into_one_lesion():
    truth = np.zeros((5, 5, 5), bool)
    truth[1, 1, 1] = truth[2, 2, 2] = True
    r = lesion_detection(truth, np.zeros((5, 5, 5), np.int32))
    assert r["lesions"] == 1 and r["recall"] == 0.0 and r["candidates"] == 0


def test_ranking_metrics_exact_and_single_class():
    rng = np.random.default_rng(2)
    y = rng.random(40) < 0.4
    s = np.round(rng.normal(size=40) + y, 1)
    r = ranking_metrics(list(s), list(y))
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert r["reason"] is None and r["n"] == 40
    one = ranking_metrics([0.1, 0.2], [False, False])
    assert one["auroc"] is None and one["ap"] is None and "healthy" in one["reason"]
    with pytest.raises(MedaeError, match="None"):
        ranking_metrics([0.1, None], [True, False])
    with pytest.raises(MedaeError, match="2 scores but 3"):
        ranking_metrics([0.1, 0.2], [True, False, True])
