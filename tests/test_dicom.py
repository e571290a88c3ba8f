"""DICOM loader: real data against dcm2niix references, synthetic geometry, broken files,
privacy."""

from __future__ import annotations

import random
import shutil
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from conftest import shared
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from medae.errors import ScanReadError, SeriesSelectionError
from medae.io.dicom import (
    find_dicom_series,
    is_dicom_file,
    load_dicom_folder,
    read_dicom_series,
)

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
DICOMDIR_SOP = "1.2.840.10008.1.3.10"
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# ------------------------------------------------------------------------------------------------
# helpers

def assert_matches_ref(scan, ref_path: Path, expected: np.ndarray | None = None, atol=0.0):
    ref = nib.as_closest_canonical(nib.load(ref_path))
    ref_data = np.asarray(ref.dataobj) if expected is None else expected
    assert scan.shape == ref_data.shape[:3]
    assert np.abs(scan.affine - ref.affine).max() <= 0.05
    np.testing.assert_allclose(scan.array, ref_data, atol=atol, rtol=0)


def write_slice(path: Path, *, position, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.8, 0.6),
                pixels: np.ndarray, series_uid: str, series_number=7, modality="MR",
                sop_class=MR_STORAGE, syntax=ExplicitVRLittleEndian, preamble=True,
                pixel_data=True, **extra) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19700101"
    ds.SeriesDescription = "secret protocol Doe"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    for key, value in extra.items():
        setattr(ds, key, value)
    if pixel_data:
        ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return path


def write_series(folder: Path, positions, *, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.8, 0.6),
                 shape=(6, 5), series_uid=None, per_slice=None, **kw) -> list[Path]:
    """Write one slice per position under random names, in random order.

    Slice ``k`` (index into ``positions``) holds ``1000*k + 10*row + col``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    order = list(range(len(positions)))
    random.Random(len(positions)).shuffle(order)
    paths = []
    for k in order:
        rows, cols = shape
        pixels = 1000 * k + 10 * np.arange(rows)[:, None] + np.arange(cols)[None, :]
        extra = {"InstanceNumber": k + 1, **kw, **(per_slice or {}).get(k, {})}
        paths.append(write_slice(folder / uuid.uuid4().hex[:12], position=positions[k],
                                 orientation=orientation, spacing=spacing, pixels=pixels,
                                 series_uid=series_uid, **extra))
    return paths


def axial(n, step=2.0, start=(10.0, -20.0, 5.0)):
    return [np.add(start, (0, 0, step * k)) for k in range(n)]


# ------------------------------------------------------------------------------------------------
# real data

@pytest.mark.parametrize("number", range(1, 10))
def test_mosaic_transfer_syntaxes_match_dcm2niix(number):
    folder = shared("dicom", "transfer_syntaxes")
    path = folder / "In" / f"{number}.dcm"
    found, notes = find_dicom_series([path])
    assert len(found) == 1 and not notes
    assert found[0].n_slices == 35
    assert found[0].describe().endswith(", 35 slices of 64x64 (mosaic)")
    scan = load_dicom_folder(path)
    assert scan.shape == (64, 64, 35)
    assert scan.source == str(path)
    assert_matches_ref(scan, folder / "Ref" / f"{number}.nii")
    assert scan.meta["Modality"] == "MR" and scan.meta["NumberOfSlices"] == 35


def test_philips_enhanced_splits_magnitude_and_fieldmap():
    folder = shared("dicom", "enhanced_multiframe")
    found, notes = find_dicom_series([folder / "In" / "Philips" / "IM_0027_fMAP.dcm"])
    assert not notes
    by_label = {s.volume: s for s in found}
    assert set(by_label) == {"mag", "fieldmap"}
    assert len({s.key for s in found}) == 2
    for label, ref, slope, intercept in (
            ("mag", "Philips_WIP_B0_NS_801_e1.nii", 1.27985347985347, 0.0),
            ("fieldmap", "Philips_WIP_B0_NS_801_e2_fieldmaphz.nii", 0.24420024420024, -500.0)):
        series = by_label[label]
        assert series.n_slices == 32
        scan = read_dicom_series(series)
        assert scan.shape == (64, 64, 32)
        # the reference stores raw int16 values; scale them as the DICOM does
        ref_img = nib.as_closest_canonical(nib.load(folder / "Ref" / ref))
        stored = np.asarray(ref_img.dataobj.get_unscaled())
        assert stored.dtype == np.int16
        expected = stored.astype(np.float64) * slope + intercept
        assert_matches_ref(scan, folder / "Ref" / ref, expected, atol=1e-3)
        assert scan.meta["RescaleSlope"] == pytest.approx(slope)
        assert scan.source.endswith(f"#{label}")
    fieldmap = read_dicom_series(by_label["fieldmap"])
    assert fieldmap.array.min() >= -500.0 and fieldmap.array.max() <= 500.0  # Hz


def test_siemens_xa10_enhanced_four_volumes():
    folder = shared("dicom", "enhanced_multiframe")
    files = sorted((folder / "In" / "Siemens" / "XA10").glob("*.dcm"))
    found, _ = find_dicom_series(files[::-1])
    assert [s.volume for s in found] == ["vol1", "vol2", "vol3", "vol4"]
    ref = nib.as_closest_canonical(nib.load(folder / "Ref" / "Siemens_REST1_w_SMS_PF7-8_6.nii"))
    ref_data = np.asarray(ref.dataobj)
    assert ref_data.shape == (64, 64, 6, 4)
    for t, series in enumerate(found):
        assert series.files == (files[t],)
        scan = read_dicom_series(series)
        assert scan.shape == (64, 64, 6)
        assert np.abs(scan.affine - ref.affine).max() <= 0.05
        np.testing.assert_array_equal(scan.array, ref_data[..., t])


@pytest.fixture(scope="module")
def ge_scan():
    return load_dicom_folder(shared("dicom", "ge_mprage_t1", "In"))


def test_ge_mprage_130_slices(ge_scan):
    scan = ge_scan
    assert scan.shape == (256, 256, 130)
    np.testing.assert_allclose(scan.spacing, (0.9375, 0.9375, 1.2), atol=1e-4)
    assert scan.orientation == "RAS"
    assert scan.meta["NumberOfSlices"] == 130 and scan.meta["SeriesNumber"] == 5
    # grid affine: first column along the row direction cosine of IOP (LPS → RAS)
    iop = np.array([0.9980103504615, 0.0452014909236, 0.0439564055634,
                    -0.0342042911651, 0.9738053317375, -0.2247960016224])
    np.testing.assert_allclose(scan.grid.affine[:3, 0], iop[:3] * [-1, -1, 1] * 0.9375, atol=1e-6)
    np.testing.assert_allclose(scan.grid.affine[:3, 1], iop[3:] * [-1, -1, 1] * 0.9375, atol=1e-6)
    normal = np.cross(iop[:3], iop[3:]) * [-1, -1, 1]
    np.testing.assert_allclose(scan.grid.affine[:3, 2], normal * 1.2, atol=1e-3)
    assert scan.array.max() > 100 and np.isfinite(scan.array).all()
    # a slice lands where its position says, with the values pydicom decodes
    source = shared("dicom", "ge_mprage_t1", "In", "05_3D_Ax_T1_MP_RAGE_R22")
    ds = pydicom.dcmread(source / "i200.MRDC.33")
    ipp = np.array(ds.ImagePositionPatient, dtype=float) * [-1, -1, 1]
    k = np.linalg.solve(scan.grid.affine[:3, :3], ipp - scan.grid.affine[:3, 3])
    np.testing.assert_allclose(k[:2], 0, atol=1e-3)
    assert abs(k[2] - round(k[2])) < 1e-3
    np.testing.assert_array_equal(scan.to_grid(scan.array)[:, :, round(k[2])],
                                  ds.pixel_array.T.astype(np.float32))


def test_ge_shuffled_renamed_copy_is_identical(ge_scan, tmp_path):
    source = shared("dicom", "ge_mprage_t1", "In", "05_3D_Ax_T1_MP_RAGE_R22")
    files = sorted(source.iterdir())
    random.Random(3).shuffle(files)
    for i, f in enumerate(files):
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        shutil.copy(f, sub / f"{uuid.uuid4().hex}.x{i}")
    scan = load_dicom_folder(tmp_path)
    np.testing.assert_array_equal(scan.array, ge_scan.array)
    np.testing.assert_array_equal(scan.affine, ge_scan.affine)


def test_ct_17_slices():
    folder = shared("dicom", "ct_17_slices", "tests", "image_data", "dicom")
    scan = load_dicom_folder(folder)
    assert scan.shape == (88, 128, 17)
    np.testing.assert_allclose(scan.spacing, (2.0, 2.0, 2.0))
    # IOP (-1,0,0,0,-1,0) in LPS is +x,+y in RAS; slices go up in z from IMG0001
    first = pydicom.dcmread(folder / "IMG0001.dcm")
    last = pydicom.dcmread(folder / "IMG0017.dcm")
    ipp = np.array(first.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(scan.grid.affine[:3, 3], ipp * [-1, -1, 1])
    np.testing.assert_allclose(np.diag(scan.grid.affine)[:3], (2.0, 2.0, 2.0))
    for k, ds in ((0, first), (16, last)):
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(scan.to_grid(scan.array)[:, :, k], hu.T)
    assert scan.meta["Modality"] == "CT" and scan.meta["RescaleIntercept"] == 0.0


# ------------------------------------------------------------------------------------------------
# synthetic geometry

def test_oblique_sort_and_affine(tmp_path):
    row = np.array([0.9, 0.3, 0.3])
    row /= np.linalg.norm(row)
    col = np.cross([0.2, 0.1, 1.0], row)
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    p0 = np.array([-40.0, 12.5, 33.0])
    step = 1.7
    n = 7
    positions = [p0 + k * step * normal for k in range(n)]
    write_series(tmp_path, positions, orientation=(*row, *col), spacing=(0.8, 0.6), shape=(6, 5))
    scan = load_dicom_folder(tmp_path)
    lps = np.eye(4)
    lps[:3, 0] = row * 0.6      # columns step by PixelSpacing[1]
    lps[:3, 1] = col * 0.8      # rows step by PixelSpacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = p0
    np.testing.assert_allclose(scan.grid.affine, LPS_TO_RAS @ lps, atol=1e-6)
    grid = scan.to_grid(scan.array)
    assert grid.shape == (5, 6, n)
    i, j, k = np.meshgrid(np.arange(5), np.arange(6), np.arange(n), indexing="ij")
    np.testing.assert_array_equal(grid, 1000 * k + 10 * j + i)
    # the canonical array maps to the same world points
    centre = np.array([2, 3, 3, 1.0])
    world = scan.grid.affine @ centre
    vox = np.round(np.linalg.solve(scan.affine, world)).astype(int)
    assert scan.array[tuple(vox[:3])] == grid[2, 3, 3]


def test_reverse_order_positions_sorted_along_normal(tmp_path):
    positions = axial(5, step=-3.0)    # slice k lies lower for higher k
    write_series(tmp_path, positions)
    scan = load_dicom_folder(tmp_path)
    np.testing.assert_allclose(scan.grid.affine[:3, 2], (0, 0, 3.0))
    np.testing.assert_allclose(scan.grid.affine[:3, 3], np.array(positions[-1]) * [-1, -1, 1])
    grid = scan.to_grid(scan.array)
    assert [int(grid[0, 0, k]) // 1000 for k in range(5)] == [4, 3, 2, 1, 0]


def test_ct_rescale_to_hounsfield(tmp_path):
    uid = generate_uid()
    for k, pos in enumerate(axial(4)):
        write_slice(tmp_path / f"s{k}", position=pos, series_uid=uid, modality="CT",
                    sop_class=CT_STORAGE, pixels=np.full((4, 4), 24 + k, np.int16),
                    RescaleSlope=1, RescaleIntercept=-1024)
    scan = load_dicom_folder(tmp_path)
    assert sorted(np.unique(scan.array)) == [-1000, -999, -998, -997]
    assert scan.array.dtype == np.float32


@pytest.mark.parametrize("positions, reason", [
    ([(0, 0, z) for z in (0, 2, 4, 8, 10, 12)], "1 missing slice"),
    ([(0, 0, z) for z in (0, 2, 4, 10, 12, 14)], "2 missing slices"),
    ([(0, 0, z) for z in (0, 2, 4, 6.5, 8.5, 10.5)], "uneven slice spacing"),
    ([(0, 0.5 * k, 2.0 * k) for k in range(6)], "gantry tilt"),
    ([(0, 0, 0), (0, 0, 2)], "only 2 slices"),
    ([(0, 0, 0), (0, 0, 2), (0, 0, 2), (0, 0, 4)], "duplicate slice positions"),
])
def test_bad_geometry_refused(tmp_path, positions, reason):
    write_series(tmp_path, positions)
    with pytest.raises(ScanReadError) as err:
        load_dicom_folder(tmp_path)
    message = str(err.value)
    assert reason in message and "\n" not in message
    assert message.startswith(str(tmp_path))


def test_mixed_orientations_refused(tmp_path):
    uid = generate_uid()
    write_series(tmp_path, axial(3), series_uid=uid)
    write_series(tmp_path, axial(3, start=(0, 0, 1)), series_uid=uid,
                 orientation=(0, 1, 0, 0, 0, -1))
    with pytest.raises(ScanReadError, match="mixed orientations"):
        load_dicom_folder(tmp_path)


def test_missing_position_refused(tmp_path):
    paths = write_series(tmp_path / "a", axial(3))
    ds = pydicom.dcmread(paths[0])
    del ds.ImagePositionPatient
    ds.save_as(paths[0])
    with pytest.raises(ScanReadError, match="missing ImagePositionPatient"):
        load_dicom_folder(tmp_path / "a")


# ------------------------------------------------------------------------------------------------
# several series, volumes, skipped files

def test_two_series_need_selection(tmp_path):
    write_series(tmp_path / "s1", axial(4), series_number=3)
    write_series(tmp_path / "s2", axial(5, step=1.0), series_number=4, shape=(4, 4))
    found, _ = find_dicom_series(sorted(p for p in tmp_path.rglob("*") if p.is_file()))
    assert [s.n_slices for s in found] == [4, 5]
    with pytest.raises(SeriesSelectionError) as err:
        load_dicom_folder(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "--series" not in message
    assert "medae.load_scan(path, series=<key>)" in message and "`medae info`" in message
    for s in found:
        assert f"{s.key} ({s.describe()})" in message
        assert len(s.key) == 10 and all(c in "0123456789abcdef" for c in s.key)
        scan = load_dicom_folder(tmp_path, series=s.key)
        assert scan.shape[2] == s.n_slices
    with pytest.raises(SeriesSelectionError, match="no series with key"):
        load_dicom_folder(tmp_path, series="0000000000")


@pytest.mark.parametrize("attribute, labels", [
    ("AcquisitionNumber", ["vol1", "vol2"]),
    ("EchoNumbers", ["echo1", "echo2"]),
])
def test_multi_volume_series_is_split(tmp_path, attribute, labels):
    uid = generate_uid()
    write_series(tmp_path, axial(4), series_uid=uid, **{attribute: 1})
    write_series(tmp_path, axial(4), series_uid=uid, **{attribute: 2},
                 per_slice={k: {"InstanceNumber": 10 + k} for k in range(4)})
    found, notes = find_dicom_series(sorted(tmp_path.iterdir()))
    assert not notes
    assert [s.volume for s in found] == labels
    assert len({s.key for s in found}) == 2 and all(s.n_slices == 4 for s in found)
    for s in found:
        scan = read_dicom_series(s)
        assert scan.shape == (5, 6, 4) and scan.source.endswith(f"#{s.volume}")
    with pytest.raises(SeriesSelectionError):
        load_dicom_folder(tmp_path)


def test_repeated_positions_split_by_instance_rank(tmp_path):
    uid = generate_uid()
    write_series(tmp_path, axial(3), series_uid=uid)
    write_series(tmp_path, axial(3), series_uid=uid,
                 per_slice={k: {"InstanceNumber": 10 + k} for k in range(3)})
    found, _ = find_dicom_series(sorted(tmp_path.iterdir()))
    assert [s.volume for s in found] == ["vol1", "vol2"]


def test_non_images_are_skipped_with_notes(tmp_path):
    paths = write_series(tmp_path, axial(3))
    uid = generate_uid()
    pix = np.zeros((2, 2))
    sr = write_slice(tmp_path / "report", position=(0, 0, 0), pixels=pix, series_uid=uid,
                     sop_class=SR_STORAGE, modality="SR", pixel_data=False)
    dicomdir = write_slice(tmp_path / "index", position=(0, 0, 0), pixels=pix, series_uid=uid,
                           sop_class=DICOMDIR_SOP, pixel_data=False)
    nopix = write_slice(tmp_path / "nopixels", position=(0, 0, 9), pixels=pix,
                        series_uid=generate_uid(), pixel_data=False)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    found, notes = find_dicom_series(sorted(tmp_path.iterdir()))
    assert len(found) == 1 and found[0].n_slices == 3 and set(found[0].files) == set(paths)
    assert len(notes) == 5
    text = "\n".join(notes)
    assert f"{sr}: skipped, not an image (ComprehensiveSRStorage)" in text
    assert f"{dicomdir}: skipped, DICOMDIR" in text
    assert f"{tmp_path / 'DICOMDIR'}: skipped, DICOMDIR" in text
    assert f"{nopix}: skipped, no pixel data" in text
    assert f"{tmp_path / 'notes.txt'}: skipped, not a DICOM file" in text
    assert load_dicom_folder(tmp_path).shape == (5, 6, 3)


def test_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ScanReadError, match="no DICOM image series found"):
        load_dicom_folder(tmp_path)


def test_no_patient_identifiers_leak(tmp_path):
    write_series(tmp_path, axial(3), series_number=12)
    found, _ = find_dicom_series(sorted(tmp_path.iterdir()))
    scan = read_dicom_series(found[0])
    texts = [repr(scan.meta), scan.source, found[0].describe(), found[0].key, repr(found[0]),
             scan.describe()]
    for text in texts:
        for secret in ("Doe", "Jane", "PID-12345", "12345", "19700101", "secret"):
            assert secret not in text
    assert found[0].describe() == "MR series 12, 3 slices of 5x6"
    assert scan.meta["SeriesNumber"] == 12 and scan.meta["NumberOfSlices"] == 3


def test_preamble_less_file_detected(tmp_path):
    uid = generate_uid()
    for k, pos in enumerate(axial(3)):
        write_slice(tmp_path / f"raw{k}", position=pos, pixels=np.full((3, 3), k, np.int16),
                    series_uid=uid, syntax=ImplicitVRLittleEndian, preamble=False)
    assert is_dicom_file(tmp_path / "raw0")
    assert not is_dicom_file(tmp_path / "nothing")
    (tmp_path / "img.nii").write_bytes(b"\x08\x00\x05\x00CS\n\x00ISO")
    assert not is_dicom_file(tmp_path / "img.nii")
    scan = load_dicom_folder(tmp_path)
    assert scan.shape == (3, 3, 3)


# ------------------------------------------------------------------------------------------------
# broken files

def test_truncated_native_pixel_data(tmp_path):
    paths = write_series(tmp_path, axial(3))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-20])
    with pytest.raises(ScanReadError) as err:
        load_dicom_folder(tmp_path)
    assert str(err.value).startswith(str(paths[1])) and "truncated" in str(err.value)


def stack_copies(name: str, folder: Path, n=3) -> None:
    """``n`` copies of one bundled pydicom slice as an axial stack (2 mm apart)."""
    source = pydicom.dcmread(PYDICOM_FILES / name)
    for k in range(n):
        source.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        source.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        source.SOPInstanceUID = generate_uid()
        source.save_as(folder / f"s{k}.dcm")


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_RLE.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_encodings_of_classic_slices(tmp_path, name):
    if not (PYDICOM_FILES / name).exists():
        pytest.skip(f"{name} not bundled with this pydicom")
    stack_copies(name, tmp_path)
    scan = load_dicom_folder(tmp_path)
    reference = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm").pixel_array
    grid = scan.to_grid(scan.array)
    assert grid.shape == (64, 64, 3)
    for k in range(3):
        np.testing.assert_array_equal(grid[:, :, k], reference.T)


def test_corrupt_compressed_pixel_data(tmp_path):
    stack_copies("MR_small_RLE.dcm", tmp_path)
    names = ["s0.dcm", "s1.dcm", "s2.dcm"]
    for i, name in enumerate(names):
        (tmp_path / name).rename(tmp_path / f"rle{i}.dcm")
    broken = pydicom.dcmread(tmp_path / "rle1.dcm")
    broken.PixelData = broken.PixelData[:400]
    broken.save_as(tmp_path / "rle1.dcm")
    with pytest.raises(ScanReadError) as err:
        load_dicom_folder(tmp_path)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "rle1.dcm")) and "cannot decode pixel data" in message
    assert "\n" not in message


@pytest.mark.parametrize("name, reason", [
    ("rtplan.dcm", "not an image"),
    ("rtplan_truncated.dcm", "not an image"),
    ("test-SR.dcm", "not an image"),
    ("no_meta.dcm", "not a DICOM file"),
    ("MR_truncated.dcm", "only 1 slice"),
    ("badVR.dcm", "not an image"),
    ("priv_SQ.dcm", "no pixel data"),
    ("SC_rgb_rle_2frame.dcm", "missing ImagePositionPatient per frame"),
    ("JPEG2000.dcm", "missing ImagePositionPatient"),
    ("waveform_ecg.dcm", "not an image"),
])
def test_pydicom_broken_files_give_one_line(name, reason):
    path = PYDICOM_FILES / name
    if not path.exists():
        pytest.skip(f"{path} not bundled with this pydicom")
    with pytest.raises(ScanReadError) as err:
        load_dicom_folder(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_pydicom_broken_files_in_folder_are_notes(tmp_path):
    names = ["rtplan.dcm", "test-SR.dcm", "no_meta.dcm", "priv_SQ.dcm", "waveform_ecg.dcm"]
    for name in names:
        if (PYDICOM_FILES / name).exists():
            shutil.copy(PYDICOM_FILES / name, tmp_path / name)
    found, notes = find_dicom_series(sorted(tmp_path.iterdir()))
    assert found == [] and len(notes) == len(list(tmp_path.iterdir()))
    assert all(": skipped, " in note and "\n" not in note for note in notes)
    with pytest.raises(ScanReadError, match="no DICOM image series found"):
        load_dicom_folder(tmp_path)
