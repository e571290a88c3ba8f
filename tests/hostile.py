"""A corpus of hostile and careless inputs (issue 13), in the expectation format of badinputs.

``make_hostile_corpus(folder)`` writes the entries into ``folder`` and returns
``{name: expectation}`` (see :mod:`badinputs`: a failure reason substring, ``"note: TEXT"`` or
``"scored: N"``).  Every DICOM text tag holds a string starting with :data:`SECRET` (and the
invalid SeriesNumber :data:`BAD_NUMBER`); none may reach any byte medae writes or prints.  File
and folder names never contain them.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from badinputs import _nifti_bytes, _phantom
from conftest import write_dicom_volume

SECRET = "QZSECRET"
BAD_NUMBER = "XYZSECRET"
UNKNOWN_UID = "1.2.826.0.1.3680043.99887766"
IDENTIFIERS = [SECRET, BAD_NUMBER, "99887766", "Zzyzx"]

#: free-text tags filled with SECRET + their name
TEXT_TAGS = ("ProtocolName", "ImageComments", "SeriesDescription", "StudyDescription",
             "InstitutionName", "Manufacturer", "ManufacturerModelName", "StationName",
             "BodyPartExamined", "OperatorsName", "ReferringPhysicianName", "StudyID",
             "DerivationDescription", "AcquisitionDeviceProcessingDescription")


def _dicom_edit(files, **values) -> None:
    """Set (or, with None, delete) elements in every file, whatever pydicom thinks of them."""
    import pydicom

    for path in files:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for key, value in values.items():
                if value is None:
                    if key in ds:
                        delattr(ds, key)
                elif key == "TransferSyntaxUID":
                    ds.file_meta.TransferSyntaxUID = value
                else:
                    setattr(ds, key, value)
            ds.save_as(path)


def _secret_tags(files, image_type=("ORIGINAL", "PRIMARY", f"{SECRET}TYPE")) -> None:
    values = {tag: f"{SECRET}{tag[:6]}" for tag in TEXT_TAGS}
    values["PatientName"] = f"Zzyzx^{SECRET}"
    values["PatientID"] = f"{SECRET}PID"
    values["Modality"] = f"{SECRET[:8]}"
    values["ImageType"] = list(image_type)
    values["SeriesNumber"] = 987654321  # replaced by the invalid IS value below
    _dicom_edit(files, **values)
    for path in files:
        raw = path.read_bytes()
        assert raw.count(b"987654321") == 1
        path.write_bytes(raw.replace(b"987654321", BAD_NUMBER.encode()))


def _vol(seed: int = 3) -> np.ndarray:
    return np.clip(_phantom(seed)[0], 0, None).astype(np.int16)


def _nifti(path: Path, data=None, compress=True) -> None:
    img, aff = _phantom()
    raw = nib.Nifti1Image(img if data is None else data, aff).to_bytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compress else raw)


def _raw_header_edit(path: Path, offset: int, fmt: str, *values) -> None:
    """Overwrite header fields in an uncompressed .nii (bypassing nibabel's checks)."""
    raw = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, raw, offset, *values)
    path.write_bytes(bytes(raw))


def _gzip_bomb(path: Path, extra_bytes: int) -> None:
    """A valid small NIfTI whose gzip stream goes on inflating zeros far beyond the data: one
    fully flushed block of 16 MB of zeros repeated (its trailer is never reached)."""
    img, aff = _phantom()
    raw = nib.Nifti1Image(img, aff).to_bytes()
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = comp.compress(raw) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(b"\0" * (1 << 24)) + comp.flush(zlib.Z_FULL_FLUSH)
    tail = comp.flush()
    path.write_bytes(head + block * (extra_bytes >> 24) + tail)


def _single_frame_dicom(folder: Path, **values) -> Path:
    files = write_dicom_volume(folder, _vol()[:, :, :1], series_number=90)
    _dicom_edit(files, **values)
    return files[0]


def make_hostile_corpus(folder: Path) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img, aff = _phantom()
    out: dict[str, str] = {}

    # --- identifiers in DICOM text -----------------------------------------------------------
    files = write_dicom_volume(folder / "dcm_secret_tags", _vol(), series_number=7)
    _secret_tags(files)
    out["dcm_secret_tags"] = "scored: 1"

    # one series, two volumes at the same positions told apart only by a free-text ImageType
    two = folder / "dcm_secret_imagetypes"
    a = write_dicom_volume(two / "a", _vol(), series_number=8)
    b = write_dicom_volume(two / "b", _vol(4), series_number=8)
    import pydicom

    uid = pydicom.dcmread(a[0]).SeriesInstanceUID
    _secret_tags(a, ("ORIGINAL", "PRIMARY", f"{SECRET}A"))
    _secret_tags(b, ("ORIGINAL", "PRIMARY", f"{SECRET}B"))
    _dicom_edit(b, SeriesInstanceUID=uid)
    out["dcm_secret_imagetypes"] = "scored: 2"

    files = write_dicom_volume(folder / "dcm_unknown_syntax", _vol(), series_number=9)
    _secret_tags(files)
    _dicom_edit(files, TransferSyntaxUID=UNKNOWN_UID)
    out["dcm_unknown_syntax"] = "20 files: unreadable DICOM header"

    files = write_dicom_volume(folder / "dcm_bad_jpeg2000", _vol(), series_number=10)
    _secret_tags(files)
    from pydicom.encaps import encapsulate

    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"QZSECRET" * 8])
        ds["PixelData"].VR = "OB"
        ds.save_as(f)
    out["dcm_bad_jpeg2000"] = "cannot decode pixel data"

    image = nib.Nifti1Image(img, aff)
    for field in ("descrip", "aux_file", "intent_name"):
        image.header[field] = f"{SECRET}{field}".encode()[:15]
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", f"{SECRET}ext".encode()))
    (folder / "nii_secret_text.nii.gz").write_bytes(gzip.compress(image.to_bytes()))
    out["nii_secret_text.nii.gz"] = "scored: 1"

    # --- denial of service -------------------------------------------------------------------
    _single_frame_dicom(folder / "dcm_20m_frames", NumberOfFrames=20_000_000)
    out["dcm_20m_frames/IM0000.dcm"] = "20000000 frame"

    f = _single_frame_dicom(folder / "dcm_3m_frames_compressed", NumberOfFrames=3_000_000)
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51\0\0"])
    ds["PixelData"].VR = "OB"
    ds.save_as(f)
    out["dcm_3m_frames_compressed/IM0000.dcm"] = "3000000 compressed frames"

    _single_frame_dicom(folder / "dcm_huge_rows", Rows=40000, Columns=40000)
    out["dcm_huge_rows/IM0000.dcm"] = "pixel data holds"

    _single_frame_dicom(folder / "dcm_zero_rows", Rows=0)
    out["dcm_zero_rows/IM0000.dcm"] = "Rows/Columns"

    _gzip_bomb(folder / "gzip_bomb.nii.gz", 4 << 30)
    out["gzip_bomb.nii.gz"] = "scored: 1"  # the declared voxels are read, the rest never

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1200, 1200, 1400))
    hdr.set_data_dtype(np.uint8)
    (folder / "claims_2gb.nii.gz").write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4096))
    out["claims_2gb.nii.gz"] = "truncated gzip stream"

    os.mkfifo(folder / "named_pipe.nii.gz")
    out["named_pipe.nii.gz"] = "note: not a regular file"
    (folder / "dcm_with_pipe").mkdir()
    os.mkfifo(folder / "dcm_with_pipe" / "IM0001")
    out["dcm_with_pipe/IM0001"] = "note: not a regular file"
    os.symlink("/dev/zero", folder / "dev_zero.nii.gz")
    out["dev_zero.nii.gz"] = "note: not a regular file"
    os.symlink("/dev/urandom", folder / "dev_urandom.dcm")
    out["dev_urandom.dcm"] = "note: not a regular file"
    os.symlink("/dev/zero", folder / "dev_zero_noext")
    out["dev_zero_noext"] = "note: not a regular file"

    # --- geometry that cannot be right ---------------------------------------------------------
    overflow = "NaN or infinite after RescaleSlope/RescaleIntercept"
    geometry = {
        "dcm_zero_orientation": ({"ImageOrientationPatient": [0.0] * 6},
                                 "ImageOrientationPatient is not two unit vectors"),
        "dcm_parallel_orientation": ({"ImageOrientationPatient": [1.0, 0, 0, 1.0, 0, 0]},
                                     "not orthogonal"),
        "dcm_zero_spacing": ({"PixelSpacing": [0.0, 0.0]}, "PixelSpacing 0x0 mm is outside"),
        "dcm_negative_spacing": ({"PixelSpacing": [-1.0, -1.0]}, "PixelSpacing -1x-1 mm"),
        "dcm_huge_spacing": ({"PixelSpacing": [1e9, 1e9]}, "is outside"),
        "dcm_rescale_1e39": ({"RescaleSlope": "1e39"}, overflow),
        "dcm_rescale_intercept_1e39": ({"RescaleIntercept": "-1e39"}, overflow),
        "dcm_rescale_product_inf": ({"RescaleSlope": "1e37"}, overflow),
    }
    for name, (values, reason) in geometry.items():
        files = write_dicom_volume(folder / name, _vol(), series_number=11)
        _dicom_edit(files, **values)
        out[name] = reason
    files = write_dicom_volume(folder / "dcm_absurd_position", _vol(), series_number=12)
    for k, f in enumerate(files):
        _dicom_edit([f], ImagePositionPatient=[1e20, 0.0, float(2 * k)])
    out["dcm_absurd_position"] = "ImagePositionPatient more than"
    files = write_dicom_volume(folder / "dcm_slices_5m_apart", _vol(), series_number=13)
    for k, f in enumerate(files):
        _dicom_edit([f], ImagePositionPatient=[0.0, 0.0, 5000.0 * k])
    out["dcm_slices_5m_apart"] = "mm apart"
    files = write_dicom_volume(folder / "dcm_one_corrupt_file", _vol(), series_number=14)
    head = files[3].read_bytes()[:200]
    files[3].write_bytes(head + b"\xff" * 50)
    out["dcm_one_corrupt_file"] = "missing slice"
    out["dcm_one_corrupt_file/IM0003.dcm"] = "note: no pixel data"

    # NIfTI-1 header fields patched in the raw bytes (nibabel would refuse or rewrite them):
    # pixdim[1..3] at 80, scl_slope 112, scl_inter 116, qform_code 252, sform_code 254,
    # qoffset_x 268, srow_x 280, srow_y 296
    no_codes = [(252, "hh", 0, 0)]
    qform_only = [(252, "hh", 1, 0)]
    nifti = {
        "nii_zero_pixdim.nii": ([*no_codes, (80, "3f", 0, 0, 0)], "voxel size 0x0x0 mm"),
        "nii_huge_pixdim.nii": ([*no_codes, (80, "3f", 1e6, 1e6, 1e6)], "voxel size"),
        "nii_tiny_pixdim.nii": ([*no_codes, (80, "3f", 1e-9, 1e-9, 1e-9)], "voxel size"),
        "nii_inf_pixdim.nii": ([*no_codes, (80, "f", np.inf)], "affine is not finite"),
        "nii_absurd_origin.nii": ([(252, "hh", 0, 1), (292, "f", 1e12)], "origin"),
        "nii_singular.nii": ([(252, "hh", 0, 1), (296, "4f", 0, 2, 2, 0), (312, "4f", 0, 2, 2, 0)],
                             "singular"),
        "nii_inf_srow.nii": ([(252, "hh", 0, 1), (280, "f", np.inf)], "affine is not finite"),
        "nii_nan_qoffset.nii": ([*qform_only, (268, "f", np.nan)], "affine is not finite"),
        "nii_inf_slope.nii": ([(112, "f", np.inf)], "scl_slope is inf"),
        "nii_inf_inter.nii": ([(112, "ff", 2.0, np.inf)], "scl_inter is inf"),
        "nii_slope_overflow.nii": ([(112, "f", 1e38)], "NaN or infinite"),
        "nii_nan_slope.nii": ([(112, "f", np.nan)], "scored: 1"),  # NaN scl_slope: unscaled
    }
    for name, (patches, reason) in nifti.items():
        _nifti(folder / name, compress=False)
        for offset, fmt, *values in patches:
            _raw_header_edit(folder / name, offset, fmt, *values)
        out[name] = reason

    # --- names that collide, or take medae's own output names ------------------------------------
    for name in ("col a", "col_a", "col+a", "scores.csv", "run.json", "failures.csv",
                 "index.html", "latents.npz", "SCORES.CSV", "new\nline"):
        _nifti(folder / f"{name}.nii.gz")
        out[f"{name}.nii.gz"] = "scored: 1"
    sub = folder / "col"
    sub.mkdir()
    _nifti(sub / "a.nii.gz")  # case id col_a as well
    out["col/a.nii.gz"] = "scored: 1"

    # --- careless files ----------------------------------------------------------------------
    (folder / "bad\nname.nii.gz").write_bytes(b"")
    out["bad\nname.nii.gz"] = "empty file"
    (folder / "notes.dcm").write_text("not a DICOM file\n" * 10)
    out["notes.dcm"] = "note: not a DICOM file"
    (folder / "short_header.nii").write_bytes(b"\x5c\x01\x00\x00" + b"\0" * 96)
    out["short_header.nii"] = "not a NIfTI file"
    (folder / "plain_named_gz.nii.gz").write_bytes(_nifti_bytes(img, aff))
    out["plain_named_gz.nii.gz"] = "not gzip-compressed"
    _nifti(folder / "complex.nii.gz", data=img.astype(np.complex64))
    out["complex.nii.gz"] = "unsupported voxel type"
    _nifti(folder / "five_d.nii.gz", data=np.stack([np.stack([img, img], -1)] * 2, -1))
    out["five_d.nii.gz"] = "5D image"
    plain = _nifti_bytes(img, aff)
    good = gzip.compress(plain)
    (folder / "two_members.nii.gz").write_bytes(gzip.compress(plain[:400])
                                                + gzip.compress(plain[400:]))
    out["two_members.nii.gz"] = "scored: 1"
    (folder / "trailing_garbage.nii.gz").write_bytes(good + b"garbage after the stream")
    out["trailing_garbage.nii.gz"] = "scored: 1"
    raw = bytearray(_nifti_bytes(img, aff))
    struct.pack_into("<f", raw, 108, 1e9)  # vox_offset far beyond the file
    (folder / "offset_beyond.nii").write_bytes(bytes(raw))
    out["offset_beyond.nii"] = "truncated"
    write_dicom_volume(folder / "series.nii.gz", _vol(), series_number=15)  # a folder so named
    out["series.nii.gz"] = "scored: 1"
    os.symlink(folder / "col_a.nii.gz", folder / "link_to_good.nii.gz")
    out["link_to_good.nii.gz"] = "scored: 1"
    # links to folders (issue 29): named in a note, never followed (no loop, no way out)
    os.symlink(folder / "series.nii.gz", folder / "link_to_series")
    out["link_to_series"] = "note: a link to a folder"
    os.symlink(folder, folder / "link_to_itself")
    out["link_to_itself"] = "note: a link to a folder"
    _single_frame_dicom(folder / "dcm_short_pixels", NumberOfFrames=3)
    out["dcm_short_pixels/IM0000.dcm"] = "pixel data holds"
    return out
