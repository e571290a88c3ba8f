"""``medae demo``: the whole pipeline in minutes on a CPU, on data generated from the shipped
MNI template: synthetic healthy subjects and patients with known lesions (one as DICOM), a short
training, threshold calibration on healthy validation subjects, scoring, evaluation, overlays,
and an ``index.html`` that shows them all.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medae.batch import score_sources
from medae.config import load_config
from medae.errors import MedaeError
from medae.evaluation.evaluate import evaluate
from medae.evaluation.report import write_report
from medae.io.atomic import atomic_write_bytes, atomic_write_csv
from medae.io.discover import read_manifest
from medae.io.nifti import write_nifti
from medae.report import write_index
from medae.scoring import load_model
from medae.synthetic import write_dataset
from medae.train import train

#: the demo recipe: a small denoising U-Net on axial slices of the 2 mm template grid
RECIPE = [
    "model.name=dae_unet", "model.spatial_dims=2", "model.channels=[16, 32, 64, 128]",
    "model.num_res_units=1", "model.noise_std=0.2", "model.noise_resolution=16",
    "preprocess.spacing=null", "preprocess.size=[80, 96, 80]", "preprocess.mask=auto",
    "preprocess.percentiles=[1, 90]",
    "data.val_fraction=0.25", "data.min_foreground=0.1", "data.augment={flip_lr: true}",
    "loss.masked=true", "scoring.residual=abs", "scoring.erode_mm=2", "scoring.median_mm=[6, 6, 0]",
    "scoring.min_volume_mm3=150", "train.batch_size=16", "train.lr=0.002",
    "train.warmup_steps=20", "train.patience=1000",
]


#: voxel threshold: 0.05% false-positive rate on the healthy validation subjects' brain voxels
DEMO_FPR = 0.0005


@dataclass(frozen=True)
class DemoSize:
    n_healthy: int = 14  # one is held out for scoring, the rest train (3/4) and calibrate (1/4)
    n_patients: int = 4
    steps: int = 800


def run_demo(output: str | os.PathLike, *, size: DemoSize = DemoSize(), seed: int = 0,
             device: str = "auto", progress: bool = True) -> dict:
    """Generate data, train, calibrate, score, evaluate; returns the summary."""
    out = Path(output)
    if (out / "model" / "model.json").exists():
        raise MedaeError(out, "already holds a demo run (choose a new --output folder)")
    t0 = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    say(f"1/5 generating {size.n_healthy} healthy subjects and {size.n_patients} patients "
        "from the MNI template ...")
    write_dataset(out / "data", n_healthy=size.n_healthy, n_patients=size.n_patients,
                         seed=seed, dicom_patients=1)
    data = out / "data"
    healthy = read_manifest(data / "healthy.csv")
    held_out = healthy[-1]
    train_sources = healthy[:-1]
    test_csv = _test_manifest(data, held_out)
    say(f"2/5 training a denoising U-Net for {size.steps} steps on "
        f"{len(train_sources)} healthy subjects (device {device}) ...")
    cfg = load_config(None, [*RECIPE, f"train.steps={size.steps}", f"train.seed={seed}"])
    run = train(cfg, train_sources, out / "model", device=device, progress=progress)
    say("3/5 scoring the patients (one is a DICOM series) and a held-out healthy subject ...")
    model = load_model(run, device=device)
    score_sources(model, read_manifest(test_csv), out / "results", progress=progress,
                  fpr=DEMO_FPR, arguments={"demo": True, "seed": seed, "fpr": DEMO_FPR})
    say("4/5 evaluating against the known lesion masks ...")
    metrics = evaluate(out / "results", test_csv)
    write_report(metrics, out / "report", str(out / "results"), str(test_csv))
    summary = _summary(metrics, held_out.case_id, time.perf_counter() - t0)
    say("5/5 writing index.html ...")
    _index(out, summary)
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _test_manifest(data: Path, held_out) -> Path:
    """Patients (with labels) plus the held-out healthy subject with an empty label."""
    img = nib.load(held_out.path)
    empty = data / "healthy" / f"{held_out.case_id}_nolesion.nii.gz"
    write_nifti(np.zeros(img.shape, np.uint8), empty, header=img.header, descrip="no lesion")
    with open(data / "patients.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows.append({"case_id": held_out.case_id, "image": os.path.relpath(held_out.path, data),
                 "mask": os.path.relpath(held_out.mask, data),
                 "label": os.path.relpath(empty, data)})
    return atomic_write_csv(data / "test.csv", ["case_id", "image", "mask", "label"], rows)


def _summary(metrics: dict, healthy_id: str, seconds: float) -> dict:
    per = {p["case_id"]: p for p in metrics["per_scan"]}
    large = _large_lesions(metrics)
    return {
        "seconds": round(seconds, 1),
        "lesions": metrics["lesions"]["detail"]["lesions"],
        "lesions_found": metrics["lesions"]["detail"]["detected"],
        "lesions_over_500mm3": large[0], "lesions_over_500mm3_found": large[1],
        "voxel_ap": metrics["voxel"]["average_precision"],
        "dice_calibrated": metrics["voxel"]["dice_at_threshold"],
        "best_dice_upper_bound": metrics["voxel"]["best_dice"],
        "healthy_case": healthy_id,
        "healthy_candidates": per[healthy_id]["fp_candidates"] if healthy_id in per else None,
        "patients_fp_candidates": [p["fp_candidates"] for c, p in per.items() if c != healthy_id],
    }


def _large_lesions(metrics: dict) -> tuple[int, int]:
    """Lesions over 500 mm³ and how many of them a candidate hit (from the per-lesion sizes)."""
    total = found = 0
    for det in metrics["per_scan"]:
        for vol, hit in zip(det["lesion_mm3"], det["lesion_detected"], strict=True):
            if vol > 500:
                total += 1
                found += bool(hit)
    return total, found


def _index(out: Path, summary: dict) -> None:
    """The demo's index.html: the batch report of ``results/`` under the demo's own numbers."""
    s = summary
    intro = f"""<p>Voxel AP {s['voxel_ap']:.3f}; Dice at the calibrated threshold
{s['dice_calibrated']:.3f} ([Dice] upper bound {s['best_dice_upper_bound']:.3f}); lesions found
{s['lesions_found']}/{s['lesions']} (over 500 mm³: {s['lesions_over_500mm3_found']}/
{s['lesions_over_500mm3']}); {s['seconds']:.0f} s. <a href="report/report.md">report.md</a></p>
<p><img src="report/pr_curve.png" width="400" alt="precision-recall curve">
<img src="report/dice_threshold.png" width="400" alt="Dice against threshold"></p>"""
    write_index(out / "results", dest=out / "index.html", title="medae demo", intro_html=intro)


def print_summary(summary: dict, out: Path) -> None:
    s = summary
    print(f"\nmedae demo finished in {s['seconds']:.0f} s")
    print(f"  lesions found: {s['lesions_found']}/{s['lesions']} (larger than 500 mm³: "
          f"{s['lesions_over_500mm3_found']}/{s['lesions_over_500mm3']})")
    print(f"  voxel AP {s['voxel_ap']:.3f}, Dice at the calibrated threshold "
          f"{s['dice_calibrated']:.3f} ([Dice] upper bound {s['best_dice_upper_bound']:.3f})")
    print(f"  held-out healthy subject {s['healthy_case']}: {s['healthy_candidates']} "
          "candidate(s)")
    print(f"  look at: medae view {out} (the cases in 3D), {out / 'index.html'}, "
          f"{out / 'report' / 'report.md'}")
