"""`medae evaluate`: metrics from written outputs agree with scikit-learn; reports; edge cases."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import lesion_phantom, write_phantoms
from sklearn.metrics import average_precision_score, roc_auc_score

from medae import MedaeError
from medae.evaluation.evaluate import evaluate


def _medae(*args):
    return subprocess.run([sys.executable, "-m", "medae", *map(str, args)], capture_output=True,
                          text=True)


@pytest.fixture(scope="module")
def scored(tiny_model, tmp_path_factory):
    """Two lesion phantoms and one healthy phantom, scored; a labels manifest."""
    root = tmp_path_factory.mktemp("evaluate")
    rows = ["case_id,image,label"]
    for i, seed in enumerate((11, 12)):
        img, lesion, aff = lesion_phantom(seed=seed)
        nib.save(nib.Nifti1Image(img, aff), root / f"p{i}.nii.gz")
        nib.save(nib.Nifti1Image(lesion.astype(np.uint8) * 2, aff), root / f"p{i}_lab.nii.gz")
        rows.append(f"p{i},p{i}.nii.gz,p{i}_lab.nii.gz")
    (healthy,) = write_phantoms(root / "h", 1, shape=lesion.shape, seed=40)
    nib.save(nib.Nifti1Image(np.zeros(lesion.shape, np.uint8), aff), root / "h_lab.nii.gz")
    rows.append(f"h,{healthy},h_lab.nii.gz")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    res = _medae("score", "--model", tiny_model, "--input", root / "labels.csv", "--output",
                 root / "out", "--device", "cpu", "--no-overlays", "-q")
    assert res.returncode == 0, res.stderr
    return root


def test_metrics_agree_with_sklearn(scored, tmp_path):
    res = _medae("evaluate", "--predictions", scored / "out", "--labels", scored / "labels.csv",
                 "--output", tmp_path / "report")
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    scores, labels = [], []
    for case in ("h", "p0", "p1"):
        heat = nib.load(scored / "out" / case / "anomaly_map.nii.gz").get_fdata()
        brain = nib.load(scored / "out" / case / "brain_mask.nii.gz").get_fdata() > 0
        lab = nib.load(scored / f"{case}_lab.nii.gz").get_fdata() > 0
        scores.append(heat[brain])
        labels.append(lab[brain])
    s, y = np.concatenate(scores), np.concatenate(labels)
    assert m["voxel"]["voxels"] == s.size and m["voxel"]["lesion_voxels"] == y.sum()
    assert m["voxel"]["average_precision"] == pytest.approx(average_precision_score(y, s),
                                                            abs=1e-4)
    assert m["voxel"]["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-4)
    thr = m["voxel"]["threshold"]
    pred = s > thr
    assert m["voxel"]["dice_at_threshold"] == pytest.approx(
        2 * (pred & y).sum() / (pred.sum() + y.sum()))
    assert m["voxel"]["best_dice"] >= m["voxel"]["dice_at_threshold"]
    per = {p["case_id"]: p for p in m["per_scan"]}
    assert per["h"]["ap"] is None and per["h"]["lesions"] == 0  # no lesion in that scan
    assert m["lesions"]["detail"]["lesions"] == 2
    assert m["scan_level"]["n_abnormal"] == 2 and m["scan_level"]["n"] == 3
    report = (tmp_path / "report" / "report.md").read_text()
    assert "upper bound" in report and "voxel AP" in report
    for name in ("pr_curve.png", "dice_threshold.png", "per_scan.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
    assert "voxel AP" in res.stdout


def test_nan_map_and_mismatched_labels_are_clear_errors(scored, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(scored / "out", out)
    img = nib.load(out / "p0" / "anomaly_map.nii.gz")
    data = img.get_fdata(dtype=np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine, img.header), out / "p0" / "anomaly_map.nii.gz")
    with pytest.raises(MedaeError, match=r"anomaly_map.nii.gz: contains NaN"):
        evaluate(out, scored / "labels.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(f"case_id,image,label\nzz,{scored / 'p0.nii.gz'},{scored / 'p0_lab.nii.gz'}\n")
    with pytest.raises(MedaeError, match="no scored case has a label"):
        evaluate(scored / "out", bad)
    res = _medae("evaluate", "--predictions", tmp_path / "nothing", "--labels", bad,
                 "--output", tmp_path / "r")
    assert res.returncode == 1 and "scores.csv: missing" in res.stderr
    assert "Traceback" not in res.stderr


def test_froc_counts_lesions_and_false_candidates():
    """Two lesions (strong, weak), two false blobs (one under the minimum volume): recall and
    false candidates per scan at thresholds between their strengths."""
    from medae.evaluation.froc import FROC

    heat = np.zeros((30, 30, 10), np.float32)
    lesion = np.zeros(heat.shape, bool)
    lesion[2:5, 2:5, 2:5] = True  # 27 voxels
    heat[2:5, 2:5, 2:5] = 4.0
    lesion[10:13, 10:13, 2:5] = True
    heat[11, 11, 3] = 2.0  # the weak lesion: one hot voxel (under the minimum volume alone)
    heat[10:13, 11, 3] = 2.0  # 3 voxels = 6 mm3 at 2 mm3 per voxel
    heat[20:23, 20:23, 5:8] = 3.0  # a false blob of 27 voxels
    heat[25, 25, 5] = 5.0  # a false single voxel: under the minimum volume
    froc = FROC([1.0, 2.5, 3.5, 4.5])
    froc.add(heat, lesion, voxel_mm3=2.0, min_volume_mm3=5.0)
    froc.add(np.zeros_like(heat), np.zeros_like(lesion), voxel_mm3=2.0, min_volume_mm3=5.0)
    r = froc.result()
    assert r["lesions"] == 2 and r["scans"] == 2
    assert r["recall"] == [1.0, 0.5, 0.5, 0.0]
    assert r["fp_per_scan"] == [0.5, 0.5, 0.0, 0.0]


def test_froc_in_metrics_and_report(scored, tmp_path):
    m = evaluate(scored / "out", scored / "labels.csv")
    froc = m["froc"]
    assert froc["lesions"] == 2 and froc["scans"] == 3
    assert len(froc["thresholds"]) >= 10
    assert froc["thresholds"] == sorted(froc["thresholds"])
    fp, recall = froc["fp_per_scan"], froc["recall"]
    # recall can only fall as the threshold rises; false candidates mostly do too (at low
    # thresholds they can merge into fewer, larger ones)
    assert all(a >= b for a, b in itertools.pairwise(recall))
    assert fp[-1] == min(fp) and max(fp) > 0
    assert recall[0] == 1.0  # the lowest threshold finds both lesions
    from medae.evaluation.report import write_report

    out = write_report(m, tmp_path / "r", "p", "l")
    assert (out / "froc.png").stat().st_size > 5000
    assert "FROC" in (out / "report.md").read_text()
