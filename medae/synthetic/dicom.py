"""Writing DICOM: a volume as a classic single-frame MR series (the demo's DICOM patient, and the
DICOM fixtures of the tests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medae.io.nifti import write_nifti
from medae.synthetic.case import SyntheticCase


def _ds(value: float) -> str:
    """A DICOM decimal string (16 characters at most) for ``value``."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(value)


def write_dicom_series(folder: str | Path, volume: np.ndarray, *, positions: np.ndarray,
                       orientation: Sequence[float], spacing: Sequence[float],
                       slope: float = 1.0, attributes: Mapping[str, Any] | None = None,
                       uid_sources: Sequence[str] | None = None,
                       slice_locations: Sequence[float] | None = None,
                       first_file: int = 1) -> list[Path]:
    """Write ``volume`` as an MR image series in ``folder``, one Explicit VR Little Endian file per
    slice, ``IM0001.dcm``, ``IM0002.dcm`` ... (numbered from ``first_file``).

    Args:
        volume: stored values, (columns, rows, slices), cast to int16; slice ``k`` is
            ``volume[:, :, k].T`` (rows x columns).
        positions: (slices, 3) ImagePositionPatient of each slice's first pixel, LPS mm.
        orientation: ImageOrientationPatient: the row direction, then the column direction.
        spacing: mm along a row (between columns), down a column (between rows), between
            slices (SliceThickness).
        slope: RescaleSlope (the intercept is 0): value = stored x slope.
        attributes: further data elements by keyword (patient, study, series: SeriesNumber,
            SeriesDescription ...); they win over the defaults.
        uid_sources: the study, series, frame-of-reference and instance UIDs derive from these
            strings (the same files on every run); None: random UIDs.
        slice_locations: SliceLocation of each slice (left out when None).

    Returns:
        The files written, in slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    def uid(*what: str) -> str:
        if uid_sources is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[*uid_sources, *what])  # root + a hash: deterministic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = uid("study"), uid("series"), uid("frame")
    dx, dy, dz = (float(s) for s in spacing)
    paths = []
    for k in range(volume.shape[2]):
        sop_uid = uid("slice", str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k + first_file:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "MR"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(float(v)) for v in positions[k]]
        ds.ImageOrientationPatient = [_ds(float(v)) for v in orientation]
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.SliceThickness = _ds(dz)
        if slice_locations is not None:
            ds.SliceLocation = _ds(float(slice_locations[k]))
        for keyword, value in (attributes or {}).items():
            setattr(ds, keyword, value)
        pixels = np.ascontiguousarray(volume[:, :, k].T).astype("<i2")
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), "0"
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _series_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Affine of the DICOM series' own grid: (column, row, slice) with x and y reversed."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
    return affine @ flip


def write_case_dicom(case: SyntheticCase, folder: Path, *, case_id: str,
                     series_number: int = 1) -> dict[str, Path]:
    """Write ``case`` as an axial MR DICOM series in ``folder`` (one file per slice) and its brain
    mask / lesion labels as NIfTI on the series' grid next to it (``<folder>_brain.nii.gz``,
    ``<folder>_lesion.nii.gz``).

    Pixels are int16 with RescaleSlope/Intercept mapping them to the float values; the geometry
    (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, LPS) reproduces the NIfTI
    affine (RAS).  UIDs derive from the case's seed, so rewriting gives the same files.  No real
    patient data: PatientName ``Synthetic^Demo``, PatientID ``SYNTH-<case number>``.
    """
    nx, ny, nz = case.image.shape
    a = case.affine
    lps = np.diag([-1.0, -1.0, 1.0])
    # pixel (row r, column c) of slice k is RAS voxel (nx-1-c, ny-1-r, k)
    row_dir = lps @ (-a[:3, 0]) / np.linalg.norm(a[:3, 0])   # along a row: increasing column
    col_dir = lps @ (-a[:3, 1]) / np.linalg.norm(a[:3, 1])   # down a column: increasing row
    dx, dy = float(np.linalg.norm(a[:3, 0])), float(np.linalg.norm(a[:3, 1]))
    dz = float(np.linalg.norm(a[:3, 2]))
    vmax = float(np.abs(case.image).max())
    slope = float(_ds(max(vmax, 1.0) / 32000.0))
    stored = np.round(case.image / slope).astype(np.int16)
    corners = [a @ np.array([nx - 1, ny - 1, k, 1.0]) for k in range(nz)]
    number = "".join(ch for ch in case_id if ch.isdigit()) or "0"
    attributes = {
        "PatientName": "Synthetic^Demo", "PatientID": f"SYNTH-{number}",
        "PatientBirthDate": "", "PatientSex": "O", "StudyDate": "", "StudyTime": "",
        "StudyID": "", "AccessionNumber": "", "ReferringPhysicianName": "",
        "Manufacturer": "medae synthetic",
        "SeriesDescription": "synthetic T1 (MNI ICBM152 2009a)",
        "ImageType": ["DERIVED", "SECONDARY"], "SeriesNumber": series_number,
        "SpacingBetweenSlices": _ds(dz),
    }
    write_dicom_series(folder, stored[::-1, ::-1, :], positions=[lps @ p[:3] for p in corners],
                       orientation=[*row_dir, *col_dir], spacing=(dx, dy, dz), slope=slope,
                       attributes=attributes,
                       uid_sources=["medae.synthetic", str(case.params.get("seed")), case_id],
                       slice_locations=[float(p[2]) for p in corners])
    grid = _series_grid(a, case.image.shape)
    out = {"image": folder, "mask": folder.with_name(folder.name + "_brain.nii.gz")}
    write_nifti(case.brain[::-1, ::-1, :].astype(np.uint8), out["mask"], affine=grid,
                descrip="brain mask (DICOM series grid)")
    if case.params.get("lesions"):
        out["label"] = folder.with_name(folder.name + "_lesion.nii.gz")
        write_nifti(np.ascontiguousarray(case.lesion_labels[::-1, ::-1, :]), out["label"],
                    affine=grid, descrip="lesion labels (DICOM series grid)")
    return out
