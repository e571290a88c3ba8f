"""Multi-sequence cases: nnU-Net-named folders, DICOM sub-folders, manifest columns, resampling
onto the first sequence's grid, and the cases that must fail with one line."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, write_dicom_volume

from medae import MedaeError, discover
from medae.io.discover import read_manifest

SHAPE = (20, 24, 16)


def _ramp(shape, spacing, origin=(0.0, 0.0, 0.0)):
    """A volume whose value is a linear function of world position: trilinear resampling
    reproduces it exactly inside the field of view."""
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    ijk = np.indices(shape).reshape(3, -1)
    xyz = aff[:3, :3] @ ijk + aff[:3, 3:4]
    value = 100 + 2.0 * xyz[0] - 1.0 * xyz[1] + 0.5 * xyz[2]
    return value.reshape(shape).astype(np.float32), aff


def _save(path, data, aff):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, aff), path)
    return path


def test_nnunet_folder_groups_sequences_and_resamples(tmp_path):
    flair, aff1 = _ramp(SHAPE, (2.0, 2.0, 2.0))
    t2, aff2 = _ramp((40, 48, 32), (1.0, 1.0, 1.0))  # finer grid, same world extent
    _save(tmp_path / "caseA_0000.nii.gz", flair, aff1)
    _save(tmp_path / "caseA_0001.nii.gz", t2, aff2)
    _save(tmp_path / "other.nii.gz", flair, aff1)
    _save(tmp_path / "scan_2019.nii.gz", flair, aff1)  # a year, not a sequence: no _0000
    sources = discover(tmp_path)
    by_id = {s.case_id: s for s in sources}
    assert sorted(by_id) == ["caseA", "other", "scan_2019"]
    case = by_id["caseA"]
    assert case.sequence_names == ("0000", "0001") and by_id["other"].sequences == ()
    scan = case.load()
    assert scan.shape == SHAPE
    seqs = case.load_sequences(scan)
    assert list(seqs) == ["0000", "0001"]
    np.testing.assert_array_equal(seqs["0000"], scan.array)
    # the 1 mm T2 sampled at the 2 mm FLAIR's voxel centres: the same linear function there
    np.testing.assert_allclose(seqs["0001"][1:-1, 1:-1, 1:-1], flair[1:-1, 1:-1, 1:-1],
                               atol=1e-3)
    assert "sequences 0000, 0001" in case.describe()


def test_dicom_subfolders_named_like_nnunet(tmp_path):
    vol = (np.indices((16, 16, 8)).sum(0) * 10).astype(np.int16)
    write_dicom_volume(tmp_path / "subj" / "caseB_0000", vol, series_number=3)
    write_dicom_volume(tmp_path / "subj" / "caseB_0001", vol[::-1].copy(), series_number=4)
    (case,) = discover(tmp_path)
    assert case.case_id == "subj_caseB" and case.kind == "dicom"
    assert case.sequence_names == ("0000", "0001")
    scan = case.load()
    seqs = case.load_sequences(scan)
    np.testing.assert_allclose(seqs["0001"], scan.array[::-1], atol=1e-4)
    for text in ("Doe", "PID-12345", "FLAIR"):  # no DICOM text in ids or names
        assert text not in case.case_id and text not in "".join(case.sequence_names)


def test_manifest_sequence_columns(tmp_path):
    flair, aff = _ramp(SHAPE, (2.0, 2.0, 2.0))
    t1, aff_t1 = _ramp((20, 24, 16), (2.0, 2.0, 2.0), origin=(4.0, 0.0, 0.0))  # shifted 4 mm
    _save(tmp_path / "p1_flair.nii.gz", flair, aff)
    _save(tmp_path / "p1_t1.nii.gz", t1, aff_t1)
    _save(tmp_path / "p1_mask.nii.gz", (flair > 0).astype(np.uint8), aff)
    man = tmp_path / "cases.csv"
    man.write_text("case_id,flair,t1,mask,label\np1,p1_flair.nii.gz,p1_t1.nii.gz,"
                   "p1_mask.nii.gz,\np2,p1_flair.nii.gz,,,\n")
    p1, p2 = read_manifest(man)
    assert p1.sequence_names == ("flair", "t1") and p1.mask is not None
    scan = p1.load()
    seqs = p1.load_sequences(scan)
    # where both grids overlap (x >= 4 mm), the shifted T1 reads the same function
    np.testing.assert_allclose(seqs["t1"][3:-1], flair[3:-1], atol=1e-3)
    assert seqs["t1"][0].max() == pytest.approx(t1.min())  # outside T1's view: its minimum
    with pytest.raises(MedaeError, match=r"case p2: missing sequence\(s\) t1"):
        p2.load()


def test_missing_and_doubled_sequences_fail_one_case(tmp_path):
    flair, aff = _ramp(SHAPE, (2.0, 2.0, 2.0))
    _save(tmp_path / "caseC_0000.nii.gz", flair, aff)
    _save(tmp_path / "caseC_0002.nii.gz", flair, aff)
    _save(tmp_path / "caseD_0000.nii.gz", flair, aff)
    _save(tmp_path / "caseD_0001.nii.gz", flair, aff)
    _save(tmp_path / "caseD_0001.nii", flair, aff)
    _save(tmp_path / "good_0000.nii.gz", flair, aff)
    by_id = {s.case_id: s for s in discover(tmp_path)}
    with pytest.raises(MedaeError, match=r"caseC_0000.nii.gz: case caseC: missing sequence\(s\) "
                                         r"0001$"):
        by_id["caseC"].load()
    with pytest.raises(MedaeError, match=r"several volumes for sequence\(s\) 0001"):
        by_id["caseD"].load()
    assert by_id["good"].load().shape == SHAPE


def test_grids_that_do_not_overlap_are_refused(tmp_path):
    flair, aff = _ramp(SHAPE, (2.0, 2.0, 2.0))
    far = aff.copy()
    far[:3, 3] = [500.0, 0.0, 0.0]
    _save(tmp_path / "caseE_0000.nii.gz", flair, aff)
    _save(tmp_path / "caseE_0001.nii.gz", flair, far)
    (case,) = discover(tmp_path)
    scan = case.load()
    with pytest.raises(MedaeError) as info:
        case.load_sequences(scan)
    msg = str(info.value)
    assert "caseE_0001.nii.gz" in msg and "sequence 0001 of case caseE covers 0%" in msg
    assert "\n" not in msg


def test_info_shows_sequences(tmp_path):
    flair, aff = _ramp(SHAPE, (2.0, 2.0, 2.0))
    _save(tmp_path / "caseA_0000.nii.gz", flair, aff)
    _save(tmp_path / "caseA_0001.nii.gz", flair, aff)
    res = subprocess.run([sys.executable, "-m", "medae", "info", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    (line,) = res.stdout.splitlines()
    assert line.startswith("caseA\t") and line.endswith("sequences 0000,0001")


def test_info_refuses_sequences_that_do_not_overlap(tmp_path):
    flair, aff = _ramp(SHAPE, (2.0, 2.0, 2.0))
    far = aff.copy()
    far[:3, 3] = [0.0, 0.0, -400.0]
    _save(tmp_path / "caseF_0000.nii.gz", flair, aff)
    _save(tmp_path / "caseF_0001.nii.gz", flair, far)
    res = subprocess.run([sys.executable, "-m", "medae", "info", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1
    (line,) = res.stdout.splitlines()
    assert line.startswith("caseF\tnifti\tFAILED\t") and "not co-registered" in line
