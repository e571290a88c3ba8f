"""The same tiny cases written as a manifest and in every dataset layout (BIDS, BraTS 2021 and
2023 naming, the Decathlon, nnU-Net v2), for tests/test_layouts.py."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (14, 16, 12)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
#: canonical sequence -> BIDS suffix (+ entity), BraTS 2021 and 2023 suffixes, channel name
SEQS = ("flair", "t1", "t1c", "t2")
BIDS = {"flair": "FLAIR", "t1": "T1w", "t1c": "ce-gd_T1w", "t2": "T2w"}
BRATS21 = {"flair": "flair", "t1": "t1", "t1c": "t1ce", "t2": "t2"}
BRATS23 = {"flair": "t2f", "t1": "t1n", "t1c": "t1c", "t2": "t2w"}
CHANNELS = {"flair": "FLAIR", "t1": "T1w", "t1c": "t1gd", "t2": "T2w"}


def make_cases(n: int = 5, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """``n`` cases of four co-registered sequences of an ellipsoid head (float32), a lesion
    label (uint8) and a brain mask (uint8); case ``c02`` has a bright lesion in its FLAIR."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    out = {}
    for i in range(n):
        radii = np.array(SHAPE) * rng.uniform(0.36, 0.42, 3)
        r = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2)
                    .sum(0))
        brain = r < 1
        case = {}
        for k, seq in enumerate(SEQS):
            base = np.where(brain, 100 + 30 * k + (40 - 20 * k) * (r < 0.5), 0)
            case[seq] = (base + brain * rng.normal(0, 3, SHAPE)).astype(np.float32)
        les = np.sqrt(((grid - centre[:, None, None, None] - 1) ** 2).sum(0)) < 1.5
        if i == 2:
            case["flair"][les] = 400
        case["label"] = (les & (i == 2)).astype(np.uint8)
        case["mask"] = brain.astype(np.uint8)
        out[f"c{i:02d}"] = case
    return out


def save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def write_manifest(root: Path, cases, with_mask: bool = True) -> Path:
    """3D files and ``root/cases.csv``: case_id,flair,t1,t1c,t2[,mask],label."""
    lines = ["case_id," + ",".join(SEQS) + (",mask" if with_mask else "") + ",label"]
    for case, vols in cases.items():
        cells = [str(save(root / "files" / f"{case}_{s}.nii.gz", vols[s])) for s in SEQS]
        if with_mask:
            cells.append(str(save(root / "files" / f"{case}_mask.nii.gz", vols["mask"])))
        cells.append(str(save(root / "files" / f"{case}_label.nii.gz", vols["label"])))
        lines.append(",".join([case, *cells]))
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


def write_bids(root: Path, cases, *, masks: bool = True) -> Path:
    """``sub-<case>/anat/sub-<case>_<suffix>.nii.gz`` and a derivatives dataset ``lesions``
    with ``desc-lesion_mask`` and ``desc-brain_mask``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    deriv = root / "derivatives" / "lesions"
    for case, vols in cases.items():
        sub = f"sub-{case}"
        for s in SEQS:
            save(root / sub / "anat" / f"{sub}_{BIDS[s]}.nii.gz", vols[s])
        save(deriv / sub / "anat" / f"{sub}_space-orig_desc-lesion_mask.nii.gz", vols["label"])
        if masks:
            save(deriv / sub / "anat" / f"{sub}_space-orig_desc-brain_mask.nii.gz",
                 vols["mask"])
    (deriv / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (deriv / "dataset_description.json").write_text(json.dumps(
        {"Name": "lesions", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}))
    return root


def write_brats(root: Path, cases, edition: int = 2021) -> Path:
    """BraTS case folders: 2021 ``<case>/<case>_t1ce.nii.gz``, 2023 ``<case>-t1c.nii.gz``."""
    names, sep = (BRATS21, "_") if edition == 2021 else (BRATS23, "-")
    for case, vols in cases.items():
        for s in SEQS:
            save(root / case / f"{case}{sep}{names[s]}.nii.gz", vols[s])
        save(root / case / f"{case}{sep}seg.nii.gz", vols["label"])
    return root


def write_decathlon(root: Path, cases) -> Path:
    """``imagesTr/<case>.nii.gz`` with the four sequences as the volumes of one 4D file."""
    modality = {str(k): CHANNELS[s] for k, s in enumerate(SEQS)}
    training = []
    for case, vols in cases.items():
        data = np.stack([vols[s] for s in SEQS], axis=-1)
        save(root / "imagesTr" / f"{case}.nii.gz", data)
        save(root / "labelsTr" / f"{case}.nii.gz", vols["label"])
        training.append({"image": f"./imagesTr/{case}.nii.gz",
                         "label": f"./labelsTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(
        {"name": "tiny", "modality": modality, "labels": {"0": "background", "1": "lesion"},
         "numTraining": len(training), "training": training, "test": []}))
    return root


def write_nnunet(root: Path, cases) -> Path:
    """``imagesTr/<case>_000k.nii.gz`` and ``labelsTr/<case>.nii.gz`` (nnU-Net v2)."""
    for case, vols in cases.items():
        for k, s in enumerate(SEQS):
            save(root / "imagesTr" / f"{case}_{k:04d}.nii.gz", vols[s])
        save(root / "labelsTr" / f"{case}.nii.gz", vols["label"])
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {str(k): CHANNELS[s] for k, s in enumerate(SEQS)},
         "labels": {"background": 0, "lesion": 1}, "numTraining": len(cases),
         "file_ending": ".nii.gz"}))
    return root
