"""A corpus of broken inputs for the reliability tests (issue 7).

``make_corpus(folder)`` writes one entry per kind of bad input into ``folder`` and returns
``{name: expectation}``, ``name`` being the entry's path relative to ``folder`` (a file, or the
folder holding a DICOM series).  An expectation is one of

* a plain string: the scan fails and its one-line reason in ``failures.csv`` (and in
  ``skipped.csv`` when training) contains this text;
* ``"note: TEXT"``: the file is not a scan; discovery skips it with a note on stderr containing
  TEXT (``note: skipped <path>: skipped, ...``) and nothing is written for it;
* ``"scored: N"``: the documented handling is that the entry becomes N good scans, all scored
  (two series in one folder are two scans; identifiers holding ``../../`` or shell
  metacharacters never reach a file name, since case ids come from folder names and series
  numbers).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import PHANTOM_SHAPE, lesion_phantom, write_dicom_volume

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
EVIL = "../../etc/passwd; rm -rf ~ $(reboot) `id` | & > x"


def _phantom(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    img, _, affine = lesion_phantom(seed=seed, radius=0)  # radius 0: no lesion voxels
    return img, affine


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    return nib.Nifti1Image(data, affine).to_bytes()


def _edit_dicom(path: Path, **values) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in values.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def make_corpus(folder: Path) -> dict[str, str]:
    """Write the broken inputs into ``folder``; return ``{relative name: expectation}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img, aff = _phantom()
    good = _nifti_bytes(img, aff)
    out: dict[str, str] = {}

    # --- NIfTI -----------------------------------------------------------------------------
    (folder / "zero_bytes.nii.gz").write_bytes(b"")
    out["zero_bytes.nii.gz"] = "empty file (0 bytes)"

    packed = gzip.compress(good)
    (folder / "truncated.nii.gz").write_bytes(packed[: len(packed) // 2])
    out["truncated.nii.gz"] = "truncated"

    # a valid header that claims 32000^3 int16 voxels (65 TB): refused from the header alone
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((32000, 32000, 32000))
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    raw = bytearray(hdr.binaryblock) + b"\0" * 4 + b"\1\0" * 64
    (folder / "absurd_dims.nii").write_bytes(bytes(raw))
    out["absurd_dims.nii"] = "more than the limit"

    (folder / "not_nifti.nii").write_bytes(b"this is a text file, not an image\n" * 20)
    out["not_nifti.nii"] = "not a NIfTI file"

    for name, value in (("nan_voxels", np.nan), ("inf_voxels", np.inf)):
        bad = img.copy()
        bad[10, 10, 10:13] = value
        (folder / f"{name}.nii.gz").write_bytes(gzip.compress(_nifti_bytes(bad, aff)))
        out[f"{name}.nii.gz"] = "voxels are NaN or infinite"

    const = np.full(PHANTOM_SHAPE, 100, dtype=np.float32)
    (folder / "constant.nii.gz").write_bytes(gzip.compress(_nifti_bytes(const, aff)))
    out["constant.nii.gz"] = "foreground mask is empty"

    (folder / "flat_2d.nii.gz").write_bytes(gzip.compress(_nifti_bytes(img[:, :, 10], aff)))
    out["flat_2d.nii.gz"] = "2D image"

    four = np.stack([img, img], axis=-1)
    (folder / "four_d.nii.gz").write_bytes(gzip.compress(_nifti_bytes(four, aff)))
    out["four_d.nii.gz"] = "4D image"

    # An unreadable file.  chmod 000 does not stop root (CAP_DAC_OVERRIDE), so as root the
    # unreadable file is a dangling symlink named .nii.gz (open() fails: "no such file").
    # A FIFO is deliberately not used: opening one blocks the reader.
    unreadable = folder / "unreadable.nii.gz"
    if os.geteuid() == 0:
        unreadable.symlink_to(folder / "gone" / "target.nii.gz")
        out["unreadable.nii.gz"] = "no such file"
    else:
        unreadable.write_bytes(gzip.compress(good))
        unreadable.chmod(0)
        out["unreadable.nii.gz"] = "cannot read"

    # --- DICOM -----------------------------------------------------------------------------
    vol = np.clip(img, 0, None).astype(np.int16)

    files = write_dicom_volume(folder / "dicom_missing_slice", vol, series_number=21)
    files[len(files) // 2].unlink()
    out["dicom_missing_slice"] = "missing slice"

    files = write_dicom_volume(folder / "dicom_mixed_orientations", vol, series_number=22)
    for f in files[1::3]:
        _edit_dicom(f, ImageOrientationPatient=[0.0, 1.0, 0.0, 0.0, 0.0, -1.0])
    out["dicom_mixed_orientations"] = "mixed orientations"

    two = folder / "dicom_two_series"
    write_dicom_volume(two / "a", vol, series_number=31)
    write_dicom_volume(two / "b", _phantom(4)[0].clip(0, None).astype(np.int16),
                       series_number=32)
    for sub in ("a", "b"):  # one folder holding both series, file names kept apart
        for f in sorted((two / sub).iterdir()):
            f.rename(two / f"{sub}_{f.name}")
        (two / sub).rmdir()
    out["dicom_two_series"] = "scored: 2"

    files = write_dicom_volume(folder / "dicom_no_pixel_data", vol[:, :, :1], series_number=41)
    _edit_dicom(files[0], PixelData=None)
    out["dicom_no_pixel_data"] = "note: no pixel data"

    dicomdir = folder / "dicom_dicomdir"
    dicomdir.mkdir()
    (dicomdir / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    out["dicom_dicomdir"] = "note: DICOMDIR"

    files = write_dicom_volume(folder / "dicom_sr", vol[:, :, :1], series_number=51)
    _edit_dicom(files[0], SOPClassUID=SR_STORAGE, Modality="SR", PixelData=None)
    ds_meta = files[0]
    import pydicom

    ds = pydicom.dcmread(ds_meta)
    ds.file_meta.MediaStorageSOPClassUID = SR_STORAGE
    ds.save_as(ds_meta)
    out["dicom_sr"] = "note: not an image"

    write_dicom_volume(folder / "dicom_evil_tags", vol, series_number=61,
                       series_description=EVIL, patient_name=EVIL.replace("/", "^"),
                       patient_id="$(touch pwned)")
    out["dicom_evil_tags"] = "scored: 1"
    return out


def is_note(expectation: str) -> bool:
    return expectation.startswith("note: ")


def n_scored(expectation: str) -> int | None:
    return int(expectation.split(":")[1]) if expectation.startswith("scored: ") else None
