"""Writing a ready-to-use demo dataset: NIfTI images, brain masks, lesion labels, parameter files,
manifests in medae's CSV format, and patients also as DICOM series."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from medae.io.atomic import atomic_write_bytes, atomic_write_csv
from medae.io.nifti import write_nifti
from medae.synthetic.case import SyntheticCase
from medae.synthetic.dicom import write_case_dicom
from medae.synthetic.params import PARAMS_VERSION
from medae.synthetic.render import make_subject
from medae.synthetic.template import (
    NOTICE_FILE,
    TEMPLATE_NAME,
    shipped_template,
    template_notice,
)


def write_case_nifti(case: SyntheticCase, stem: Path) -> dict[str, Path]:
    """Write ``<stem>.nii.gz`` (int16 with scaling), ``<stem>_brain.nii.gz`` and, for patients,
    ``<stem>_lesion.nii.gz`` (uint8, lesion i as value i + 1).  Returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = {"image": stem.with_name(stem.name + ".nii.gz"),
           "mask": stem.with_name(stem.name + "_brain.nii.gz")}
    write_nifti(case.image, out["image"], affine=case.affine, dtype=np.int16,
                descrip="medae synthetic T1")
    write_nifti(case.brain.astype(np.uint8), out["mask"], affine=case.affine, descrip="brain mask")
    if case.params.get("lesions"):
        out["label"] = stem.with_name(stem.name + "_lesion.nii.gz")
        write_nifti(case.lesion_labels, out["label"], affine=case.affine, descrip="lesion labels")
    return out


def _case_seed(seed: int, group: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), group, index]).generate_state(1)[0] >> 1)


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def write_dataset(out_dir: str | os.PathLike, *, n_healthy: int, n_patients: int, seed: int = 0,
                  dicom_patients: int = 1, lesions: tuple[int, int] = (2, 4)) -> dict[str, Any]:
    """Write a demo dataset under ``out_dir`` and return a summary.

    Layout::

        healthy/sub-XX.nii.gz, sub-XX_brain.nii.gz
        patients/pat-XX.nii.gz, pat-XX_brain.nii.gz, pat-XX_lesion.nii.gz
        patients_dicom/pat-XX/IM0001.dcm ...        (the first ``dicom_patients`` patients)
        patients_dicom/pat-XX_brain.nii.gz, pat-XX_lesion.nii.gz   (on the series' grid)
        params/<case>.json                           (regenerate(json.load(...)) rebuilds a case)
        healthy.csv                  case_id,image,mask
        patients.csv                 case_id,image,mask,label (DICOM patients by their series)
        patients_nifti.csv           the same with every patient as NIfTI
        lesions.csv                  one row per lesion (label value): kind, centre of mass in
                                     the image (RAS mm), volume (mm³), intensity change
        dataset.json                 seed, counts and this summary

    Patients get ``lesions`` (min, max) lesions each; every fourth lesion of the dataset is
    hypointense, the others hyperintense.  Lesion labels hold lesion ``i`` as value ``i + 1``.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if n_healthy < 0 or n_patients < 0 or not 0 <= dicom_patients <= n_patients:
        raise ValueError("need n_healthy >= 0 and 0 <= dicom_patients <= n_patients")
    for sub in ("healthy", "patients", "params"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(max(n_healthy, n_patients, 1) - 1)))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    healthy_rows, patient_rows, nifti_rows, lesion_rows, cases = [], [], [], [], []

    def save_params(case_id: str, params: dict[str, Any]) -> Path:
        path = out / "params" / f"{case_id}.json"
        return atomic_write_bytes(path, (json.dumps(params, indent=1) + "\n").encode())

    for i in range(n_healthy):
        case_id = f"sub-{i:0{width}d}"
        case = make_subject(_case_seed(seed, 0, i))
        paths = write_case_nifti(case, out / "healthy" / case_id)
        save_params(case_id, case.params)
        healthy_rows.append([case_id, _rel(paths["image"], out), _rel(paths["mask"], out)])
        cases.append({"case_id": case_id, "group": "healthy", "seed": case.params["seed"]})
    n_lesions_total = 0
    for i in range(n_patients):
        case_id = f"pat-{i:0{width}d}"
        n = int(rng.integers(lesions[0], lesions[1] + 1))
        kinds = ["hypo" if (n_lesions_total + j) % 4 == 3 else "hyper" for j in range(n)]
        n_lesions_total += n
        case = make_subject(_case_seed(seed, 1, i), lesions=n, kinds=kinds)
        paths = write_case_nifti(case, out / "patients" / case_id)
        save_params(case_id, case.params)
        row = [case_id, *(_rel(paths[k], out) for k in ("image", "mask", "label"))]
        nifti_rows.append(row)
        if i < dicom_patients:
            dpaths = write_case_dicom(case, out / "patients_dicom" / case_id, case_id=case_id)
            row = [case_id, *(_rel(dpaths[k], out) for k in ("image", "mask", "label"))]
        patient_rows.append(row)
        for j, (lesion, volume, centre) in enumerate(zip(
                case.params["lesions"], case.lesion_volumes_mm3, case.lesion_centres_mm,
                strict=True)):
            lesion_rows.append([case_id, j + 1, lesion["kind"], *(centre or ["", "", ""]),
                                round(volume, 1), lesion["intensity"]])
        cases.append({"case_id": case_id, "group": "patients", "seed": case.params["seed"],
                      "dicom": i < dicom_patients,
                      "lesion_volumes_mm3": [round(v, 1) for v in case.lesion_volumes_mm3]})

    def write_csv(name: str, header: list[str], rows: list[list]) -> Path:
        return atomic_write_csv(out / name, header, rows)

    summary: dict[str, Any] = {
        "generator": "medae.synthetic", "version": PARAMS_VERSION, "template": TEMPLATE_NAME,
        "seed": int(seed), "n_healthy": n_healthy, "n_patients": n_patients,
        "dicom_patients": dicom_patients, "shape": list(shipped_template().shape),
        "spacing_mm": list(shipped_template().spacing), "cases": cases,
    }
    if healthy_rows:
        summary["healthy_csv"] = str(write_csv("healthy.csv", ["case_id", "image", "mask"],
                                               healthy_rows))
    if patient_rows:
        header = ["case_id", "image", "mask", "label"]
        summary["patients_csv"] = str(write_csv("patients.csv", header, patient_rows))
        summary["patients_nifti_csv"] = str(write_csv("patients_nifti.csv", header, nifti_rows))
        summary["lesions_csv"] = str(write_csv(
            "lesions.csv", ["case_id", "lesion", "kind", "x_mm", "y_mm", "z_mm", "volume_mm3",
                            "intensity"], lesion_rows))
    atomic_write_bytes(out / NOTICE_FILE, template_notice().encode())
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_bytes(out / "dataset.json", (json.dumps(summary, indent=1) + "\n").encode())
    return summary
