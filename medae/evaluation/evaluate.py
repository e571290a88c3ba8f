"""``medae evaluate``: metrics from the written outputs of ``medae score`` and expert masks.

Reads ``OUT/scores.csv`` and each case's ``anomaly_map.nii.gz``, ``candidates.nii.gz``,
``brain_mask.nii.gz`` and ``result.json`` (the threshold used), and the ground truth from a
manifest (``case_id,image[,mask],label``), a folder of label files named by case id, or a
dataset layout (BIDS with a derivatives dataset, BraTS, the Decathlon, nnU-Net v2) whose labels
it finds.  Voxels are pooled inside the brain mask (the manifest's or the layout's, else the one
scoring used), one scan at a time, so the memory stays bounded whatever the test set's size.
Any label > 0 is a lesion.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medae.errors import MedaeError
from medae.evaluation.froc import FROC, FROC_LEVELS
from medae.evaluation.lesions import lesion_detection, summarise_detection
from medae.evaluation.pooled import PooledVoxels
from medae.evaluation.ranking import ranking_metrics
from medae.io.discover import discover_dataset, read_manifest
from medae.io.files import is_regular, read_regular
from medae.io.layouts import LayoutOptions
from medae.io.nifti import MAX_VOXELS


def _load(path: Path, what: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A NIfTI image and its voxels, or one line saying why not (missing, truncated, absurd)."""
    if not is_regular(path):
        raise MedaeError(path, f"{what}: missing or not a regular file")
    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Image) or len(img.shape) < 3:
            raise MedaeError(path, f"{what}: not a 3D NIfTI image")
        if float(np.prod(img.shape, dtype=np.float64)) > MAX_VOXELS:
            raise MedaeError(path, f"{what}: header claims {img.shape}, more than the limit")
        data = np.asanyarray(img.dataobj)
    except MedaeError:
        raise
    except Exception as exc:  # nibabel and gzip raise many types for broken files
        raise MedaeError(path, f"{what}: unreadable ({type(exc).__name__})") from None
    return img, data


def _on_grid(path: Path, ref: nib.Nifti1Image, what: str) -> np.ndarray:
    img, data = _load(path, what)
    if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-3):
        raise MedaeError(path, f"{what} is not on the scan's grid ({img.shape} vs {ref.shape})")
    if data.size != int(np.prod(ref.shape[:3])):
        raise MedaeError(path, f"{what}: one 3D volume expected, got shape {img.shape}")
    return data.reshape(ref.shape[:3])


def _read_scores(table: Path) -> list[dict]:
    """The scored rows of scores.csv, checked: its columns, unique case ids, finite scores."""
    if not table.is_file():
        raise MedaeError(table, "missing: not an output folder of medae score")
    try:
        text = read_regular(table, limit=1 << 30).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MedaeError(table, f"unreadable ({type(exc).__name__})") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in ("case_id", "status", "score") if c not in (reader.fieldnames or [])]
    if missing:
        raise MedaeError(table, f"missing column(s) {', '.join(missing)}: not a scores.csv "
                                "written by medae score")
    rows, seen = [], set()
    for lineno, row in enumerate(reader, start=2):
        if row.get("status") != "ok":
            continue
        case = row.get("case_id") or ""
        if case in seen:
            raise MedaeError(table, f"line {lineno}: case {case!r} is listed twice")
        seen.add(case)
        try:
            score = float(row.get("score") or "")
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise MedaeError(table, f"line {lineno}: score {row.get('score')!r} is not a finite "
                                    "number")
        rows.append(row)
    return rows


def _record(path: Path) -> dict:
    try:
        rec = json.loads(read_regular(path, limit=1 << 24))
        float(rec["threshold"]), str(rec["threshold_rule"])
    except MedaeError:
        raise
    except FileNotFoundError:
        raise MedaeError(path, "missing: the case folder is incomplete") from None
    except Exception as exc:
        raise MedaeError(path, f"unreadable case record ({type(exc).__name__})") from None
    if not math.isfinite(float(rec["threshold"])):
        raise MedaeError(path, "threshold is not a finite number")
    return rec


def _truth_sources(labels: str | os.PathLike, options: LayoutOptions | None = None
                   ) -> dict[str, tuple[Path, Path | None]]:
    """case_id -> (label file, brain mask file or None)."""
    labels = Path(labels)
    if labels.is_file() and labels.suffix.lower() == ".csv":
        out = {}
        for s in read_manifest(labels):
            if s.label is None:
                raise MedaeError(labels, f"case {s.case_id} has no label column value")
            out[s.case_id] = (s.label, s.mask)
        return out
    found = discover_dataset(labels, options)
    if found.layout is not None:  # a dataset (BIDS, BraTS, ...): the labels its cases carry
        return {s.case_id: (s.label, s.mask) for s in found.sources if s.label is not None}
    return {s.case_id: (s.path, None) for s in found.sources if s.kind == "nifti"}


def evaluate(predictions: str | os.PathLike, labels: str | os.PathLike,
             options: LayoutOptions | None = None) -> dict:
    """Compute every metric; returns the ``metrics.json`` content (see the module docstring).

    ``labels`` is a manifest, a folder of label files named by case id, or a dataset in a
    layout medae recognises (``medae.io.layouts``; ``options``: BIDS filters and derivatives),
    whose cases' labels and brain masks are used."""
    pred = Path(predictions)
    rows = _read_scores(pred / "scores.csv")
    truth = _truth_sources(labels, options)
    cases = [r for r in rows if r["case_id"] in truth]
    if not cases:
        raise MedaeError(pred, f"no scored case has a label in {labels} (case ids must match)")
    missing = sorted(set(truth) - {r["case_id"] for r in rows})
    records = {r["case_id"]: _record(pred / r["case_id"] / "result.json") for r in cases}
    thresholds = sorted({float(rec["threshold"]) for rec in records.values()})
    pooled = PooledVoxels(thresholds=thresholds)
    per_scan, detections = [], []
    sample = []  # brain voxels' scores, subsampled, to place the FROC thresholds
    rng = np.random.default_rng(0)
    for r in cases:
        case = r["case_id"]
        heat_img, heat = _load(pred / case / "anomaly_map.nii.gz", "anomaly map")
        heat = np.asarray(heat, dtype=np.float32).reshape(heat_img.shape[:3])
        label_path, mask_path = truth[case]
        lesion = _on_grid(label_path, heat_img, "label") > 0
        brain_path = mask_path or pred / case / "brain_mask.nii.gz"
        brain = _on_grid(brain_path, heat_img, "brain mask") > 0
        if not np.isfinite(heat).all():
            raise MedaeError(pred / case / "anomaly_map.nii.gz", "contains NaN or infinite values")
        pooled.add(heat[brain], lesion[brain])
        values = heat[brain]
        sample.append(values if values.size <= 200_000 else
                      rng.choice(values, 200_000, replace=False))
        one = PooledVoxels()
        one.add(heat[brain], lesion[brain])
        voxel_mm3 = float(abs(np.linalg.det(heat_img.affine[:3, :3])))
        cands = _on_grid(pred / case / "candidates.nii.gz", heat_img, "candidates")
        det = lesion_detection(lesion, cands.astype(np.int32), voxel_mm3=voxel_mm3)
        detections.append(det)
        per_scan.append({"case_id": case, "lesion_voxels": int(lesion[brain].sum()),
                         "threshold": records[case]["threshold"],
                         "ap": one.average_precision(), "score": float(r["score"]),
                         "lesions": det["lesions"], "detected": det["detected"],
                         "fp_candidates": det["fp_candidates"],
                         "lesion_mm3": det["lesion_mm3"],
                         "lesion_detected": det["lesion_detected"]})
    froc = _froc(pred, cases, truth, records, np.concatenate(sample))
    for thr in thresholds:
        for entry, d in zip(per_scan, pooled.scan_dice(thr), strict=True):
            if entry["threshold"] == thr:
                entry["dice_at_threshold"] = d
    best, best_thr = pooled.best_dice()
    thr_used = thresholds[0] if len(thresholds) == 1 else None
    dice_cal = pooled.dice_at(thr_used) if thr_used is not None else None
    dices = [e["dice_at_threshold"] for e in per_scan]
    det = summarise_detection(detections)
    abnormal = [e["lesion_voxels"] > 0 for e in per_scan]
    return {
        "n_scans": len(per_scan), "unlabelled_in_manifest": missing,
        "voxel": {
            "voxels": pooled.counts[0], "lesion_voxels": pooled.counts[1],
            "average_precision": pooled.average_precision(), "auroc": pooled.roc_auc(),
            "bounds": pooled.bounds(),
            "best_dice": best, "best_dice_threshold": best_thr,
            "best_dice_note": "upper bound: threshold chosen with the test labels",
            "threshold": thr_used,
            "threshold_rule": records[cases[0]["case_id"]]["threshold_rule"],
            "dice_at_threshold": dice_cal,
            "dice_per_scan_mean": float(np.mean(dices)),
            "dice_per_scan_sd": float(np.std(dices, ddof=1)) if len(dices) > 1 else 0.0,
        },
        "lesions": {"recall": det["recall"], "fp_per_scan": det["fp_per_scan_mean"],
                    "fp_per_scan_sd": det["fp_per_scan_sd"], "detail": det},
        "froc": froc,
        "scan_level": ranking_metrics([e["score"] for e in per_scan], abnormal),
        "per_scan": per_scan,
        "curve": pooled.curve(),
    }


def _froc(pred: Path, cases: list[dict], truth: dict, records: dict, sample: np.ndarray) -> dict:
    """A second pass over the maps: the FROC curve at thresholds spread over the brain voxels'
    scores (the fraction of voxels above each is :data:`FROC_LEVELS`)."""
    thresholds = np.quantile(sample, 1 - FROC_LEVELS) if sample.size else []
    froc = FROC([t for t in thresholds if t > 0])
    for r in cases:
        case = r["case_id"]
        heat_img = nib.load(pred / case / "anomaly_map.nii.gz")
        heat = heat_img.get_fdata(dtype=np.float32)
        label_path, mask_path = truth[case]
        lesion = _on_grid(label_path, heat_img, "label") > 0
        brain_path = mask_path or pred / case / "brain_mask.nii.gz"
        brain = _on_grid(brain_path, heat_img, "brain mask") > 0
        voxel_mm3 = float(abs(np.linalg.det(heat_img.affine[:3, :3])))
        froc.add(np.where(brain, heat, 0), lesion & brain, voxel_mm3,
                 float(records[case].get("min_volume_mm3", 0.0)))
    return froc.result()
