"""Discovery of scans in folder trees, case ids, and CSV manifests."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from medae import MedaeError, discover, read_manifest


def _nifti(path, shape=(6, 6, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)


def test_folder_tree_case_ids_are_safe_stable_and_unique(tmp_path):
    _nifti(tmp_path / "site A" / "sub-01" / "flair.nii.gz")
    _nifti(tmp_path / "site A" / "sub-02" / "flair.nii")
    _nifti(tmp_path / "site;A" / "sub-01" / "flair.nii.gz")  # sanitises to the same id
    _nifti(tmp_path / ".hidden" / "x.nii.gz")
    (tmp_path / "readme.txt").write_text("not a scan")
    first = discover(tmp_path)
    ids = [s.case_id for s in first]
    # the second of two names cleaning to one id gets a suffix hashed from its relative path
    suffix = hashlib.sha1(b"site;A/sub-01/flair.nii.gz#").hexdigest()[:6]
    assert ids == ["site_A_sub-01_flair", f"site_A_sub-01_flair_{suffix}", "site_A_sub-02_flair"]
    assert all(s.kind == "nifti" for s in first)
    assert [s.case_id for s in discover(tmp_path)] == ids  # stable
    single = discover(tmp_path / "site A" / "sub-02" / "flair.nii")
    assert [s.case_id for s in single] == ["flair"]
    assert single[0].load().shape == (6, 6, 6)


def test_manifest_paths_relative_to_manifest(tmp_path):
    _nifti(tmp_path / "img" / "p1.nii.gz")
    _nifti(tmp_path / "img" / "p1_mask.nii.gz")
    _nifti(tmp_path / "img" / "p2.nii.gz")
    man = tmp_path / "cases.csv"
    man.write_text("case_id,image,mask,label\n"
                   "p1,img/p1.nii.gz,img/p1_mask.nii.gz,\n"
                   f"p2,{tmp_path / 'img' / 'p2.nii.gz'},,\n")
    sources = read_manifest(man)
    assert [s.case_id for s in sources] == ["p1", "p2"]
    assert sources[0].mask == tmp_path / "img" / "p1_mask.nii.gz"
    assert sources[0].label is None and sources[1].mask is None
    assert [s.case_id for s in discover(man)] == ["p1", "p2"]


@pytest.mark.parametrize("body,reason", [
    ("case,image\nx,a.nii.gz\n", "at least case_id,image"),
    ("case_id,mask\nx,a.nii.gz\n", "at least case_id,image"),
    ("case_id,image,image\np1,a,b\n", "must be unique words"),
    ("case_id,image\n../x,img/p1.nii.gz\n", "line 2: case_id '../x'"),
    ("case_id,image\np1,img/p1.nii.gz\np1,img/p1.nii.gz\n", "line 3: duplicate case_id"),
    ("case_id,image\np1,img/missing.nii.gz\n", "line 2: image img/missing.nii.gz does not exist"),
    ("case_id,image,weight\np1,img/p1.nii.gz,1\n", "line 2: weight 1 does not exist"),
    ("case_id,image\n", "lists no scans"),
])
def test_manifest_errors(tmp_path, body, reason):
    _nifti(tmp_path / "img" / "p1.nii.gz")
    man = tmp_path / "m.csv"
    man.write_text(body)
    with pytest.raises(MedaeError) as info:
        read_manifest(man)
    assert reason in str(info.value)
    assert str(info.value).startswith(str(man))
