"""Synthetic demo data: the shipped template, reproducible subjects and lesions, dataset writing
(NIfTI, manifests, a DICOM series that matches its NIfTI twin)."""

from __future__ import annotations

import csv
import json
from importlib import resources

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import medae
from medae import synthetic

MIN_MM3, MAX_MM3 = 150.0, 12000.0   # lesion volumes after the subject's warp (target 300..8000)


@pytest.fixture(scope="module")
def patient():
    return synthetic.make_subject(11, lesions=4, kinds=["hyper", "hyper", "hypo", "hypo"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = synthetic.write_dataset(out, n_healthy=2, n_patients=2, seed=5, dicom_patients=1)
    return out, summary


def test_template_loads_in_ras_with_notice():
    t1, brain, wm, affine = synthetic.load_template()
    assert t1.dtype == np.float32 and t1.shape == brain.shape == wm.shape == (80, 96, 80)
    assert brain.dtype == bool and 0.2 < brain.mean() < 0.6
    assert "".join(nib.aff2axcodes(affine)) == "RAS"
    np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), (2.0, 2.0, 2.0))
    assert np.all(t1[~brain] == 0) and np.median(t1[wm > 0.9]) > 150   # skull-stripped T1
    assert wm.min() >= 0 and wm.max() <= 1 and (wm > 0.9).sum() > 10000
    # the world origin (MNI 0, 0, 0) lies inside the brain
    centre = np.round(np.linalg.solve(affine, [0, 0, 0, 1.0])[:3]).astype(int)
    assert brain[tuple(centre)]
    notice = resources.files("medae").joinpath("data", "NOTICE_MNI_ICBM152.txt").read_text()
    assert "Copyright" in notice and "McGill University" in notice
    assert synthetic.template_notice() == notice
    # fresh copies: callers cannot damage the cached template
    t1[:] = 0
    assert synthetic.load_template()[0].max() > 0


def test_healthy_subject():
    case = synthetic.make_subject(0)
    assert case.image.dtype == np.float32 and case.image.shape == (80, 96, 80)
    assert np.isfinite(case.image).all() and np.all(case.image[~case.brain] == 0)
    assert not case.lesion.any() and case.params["lesions"] == []
    assert 0.2 < case.brain.mean() < 0.6
    _, _, wm, affine = synthetic.load_template()
    np.testing.assert_array_equal(case.affine, affine)
    # roughly the template's anatomy: white matter brighter than the rest of the brain
    inside = case.brain & (wm > 0.9)
    assert case.image[inside].mean() > 1.15 * case.image[case.brain & (wm < 0.1)].mean()


def test_seed_reproducible_and_params_regenerate(patient):
    again = synthetic.make_subject(11, lesions=4, kinds=["hyper", "hyper", "hypo", "hypo"])
    np.testing.assert_array_equal(again.image, patient.image)
    np.testing.assert_array_equal(again.lesion_labels, patient.lesion_labels)
    params = json.loads(json.dumps(patient.params))   # JSON-serialisable, and survives it
    assert params == patient.params
    rebuilt = synthetic.regenerate(params)
    np.testing.assert_array_equal(rebuilt.image, patient.image)
    np.testing.assert_array_equal(rebuilt.brain, patient.brain)
    np.testing.assert_array_equal(rebuilt.lesion, patient.lesion)
    other = synthetic.make_subject(12, lesions=4, kinds=["hyper", "hyper", "hypo", "hypo"])
    assert not np.array_equal(other.image, patient.image)
    assert not np.array_equal(other.lesion, patient.lesion)
    # every kind of draw is recorded
    for key in ("seed", "transform", "displacement", "gamma", "resolution_mm", "bias_field",
                "wm_value", "noise", "lesions"):
        assert key in params
    for lesion in params["lesions"]:
        assert {"kind", "centre_mm", "intensity", "lobes", "seed", "edge_mm"} <= set(lesion)
    with pytest.raises(ValueError, match="version"):
        synthetic.regenerate({**params, "version": 999})


def test_lesions_inside_brain_sized_and_contrasted(patient):
    assert patient.lesion.any() and not (patient.lesion & ~patient.brain).any()
    assert set(np.unique(patient.lesion_labels)) == {0, 1, 2, 3, 4}
    volumes = patient.lesion_volumes_mm3
    assert all(MIN_MM3 <= v <= MAX_MM3 for v in volumes), volumes
    image = patient.image
    for i, lesion in enumerate(patient.params["lesions"]):
        inside = patient.lesion_labels == i + 1
        ring = ndimage.binary_dilation(inside, iterations=2) & ~patient.lesion & patient.brain
        ratio = image[inside].mean() / image[ring].mean()
        if lesion["kind"] == "hyper":
            assert lesion["intensity"] > 0 and ratio > 1.1, (i, ratio)
        else:
            assert lesion["intensity"] < 0 and ratio < 0.9, (i, ratio)


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_lesion_draws_stay_in_range(seed):
    case = synthetic.make_subject(seed, lesions=3)
    assert not (case.lesion & ~case.brain).any()
    assert all(MIN_MM3 <= v <= MAX_MM3 for v in case.lesion_volumes_mm3)
    for lesion in case.params["lesions"]:
        lo, hi = synthetic.LESION_VOLUME_MM3
        assert lo <= lesion["volume_mm3_target"] <= hi


def test_write_dataset_files_and_manifests(dataset):
    out, summary = dataset
    for name in ("healthy.csv", "patients.csv", "patients_nifti.csv", "lesions.csv",
                 "dataset.json", "NOTICE_MNI_ICBM152.txt"):
        assert (out / name).is_file(), name
    for case in ("sub-00", "sub-01"):
        assert (out / "healthy" / f"{case}.nii.gz").is_file()
        assert (out / "healthy" / f"{case}_brain.nii.gz").is_file()
        assert (out / "params" / f"{case}.json").is_file()
    for case in ("pat-00", "pat-01"):
        for suffix in ("", "_brain", "_lesion"):
            assert (out / "patients" / f"{case}{suffix}.nii.gz").is_file()
    healthy = medae.read_manifest(out / "healthy.csv")
    assert [s.case_id for s in healthy] == ["sub-00", "sub-01"]
    assert all(s.kind == "nifti" and s.mask is not None and s.label is None for s in healthy)
    patients = medae.read_manifest(out / "patients.csv")
    assert [s.kind for s in patients] == ["dicom", "nifti"]
    for source in patients + medae.read_manifest(out / "patients_nifti.csv"):
        scan = source.load()
        label = source.load_companion("label", scan)
        mask = source.load_companion("mask", scan)
        assert label.any() and not (label & ~mask).any()
    # the NIfTI files hold the generated case (int16 with scaling), params rebuild it
    params = json.loads((out / "params" / "pat-01.json").read_text())
    case = synthetic.regenerate(params)
    scan = medae.load_scan(out / "patients" / "pat-01.nii.gz")
    np.testing.assert_allclose(scan.array, case.image, atol=0.05)
    np.testing.assert_allclose(scan.affine, case.affine)
    label = medae.load_scan(out / "patients" / "pat-01_lesion.nii.gz")
    np.testing.assert_array_equal(label.array, case.lesion_labels)
    with open(out / "lesions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    n_lesions = sum(len(c["lesion_volumes_mm3"]) for c in summary["cases"]
                    if c["group"] == "patients")
    assert len(rows) == n_lesions and {r["kind"] for r in rows} <= {"hyper", "hypo"}


def test_dicom_patient_matches_nifti_twin(dataset):
    out, _ = dataset
    series = out / "patients_dicom" / "pat-00"
    files = sorted(series.iterdir())
    assert len(files) == 80
    import pydicom

    ds = pydicom.dcmread(files[0])
    assert str(ds.PatientName) == "Synthetic^Demo" and ds.PatientID == "SYNTH-00"
    assert ds.Modality == "MR" and ds.pixel_array.dtype == np.int16
    dicom = medae.load_scan(series)
    nifti = medae.load_scan(out / "patients" / "pat-00.nii.gz")
    assert dicom.kind == "dicom" and dicom.shape == nifti.shape
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=0.01)
    tolerance = float(ds.RescaleSlope) / 2 + 0.05   # both files round their values
    np.testing.assert_allclose(dicom.array, nifti.array, atol=tolerance)
    # the series' own grid is LPS-ordered (x and y reversed); labels are stored on it
    assert "".join(nib.aff2axcodes(dicom.grid.affine)) == "LPS"
    for suffix in ("_lesion", "_brain"):
        companion = medae.load_scan(out / "patients_dicom" / f"pat-00{suffix}.nii.gz")
        assert companion.grid.shape == dicom.grid.shape
        np.testing.assert_allclose(companion.grid.affine, dicom.grid.affine, atol=0.01)
        twin = medae.load_scan(out / "patients" / f"pat-00{suffix}.nii.gz")
        np.testing.assert_array_equal(companion.array, twin.array)
    # rewriting gives the same UIDs (they derive from the seed)
    again = synthetic.write_case_dicom(synthetic.regenerate(
        json.loads((out / "params" / "pat-00.json").read_text())), out / "again",
        case_id="pat-00")
    ds2 = pydicom.dcmread(sorted(again["image"].iterdir())[0])
    assert ds2.SeriesInstanceUID == ds.SeriesInstanceUID and ds2.SOPInstanceUID == ds.SOPInstanceUID
