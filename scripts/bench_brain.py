#!/usr/bin/env python
"""Brain extraction of the shared raw heads: seconds per head, mask volume, the checks; and
rigid registration of the further sequences of one exam to the first.

    python scripts/bench_brain.py [--threads 2] [--overlays DIR] [--deepbet-itself]
                                  [--stages extraction registration score]
                                  [--model RUN_DIR] [--no-n4] [--space native|template]

For each head in ``MEDAE_DATA/brain/raw_heads`` (default ``../shared/data``) and the GE grid
phantom: what ``preprocess.brain: auto`` decides (the rule, or the one-line refusal), the
seconds deepbet's networks took (medae.brain, on the CPU with ``--threads`` torch threads),
the mask's volume, and the seconds of N4 bias-field correction inside that mask
(``preprocess.bias_correction: n4``, shrink factor ``--n4-shrink``, default 4).
``--overlays DIR`` draws each mask over its scan (DIR/<name>/overlay_*.png);
``--deepbet-itself`` also runs deepbet's own ``BrainExtraction`` (needs its dependencies:
pandas, tqdm, connected-components-3d, fill_voids) and reports the Dice of the two masks.

Registration (``preprocess.registration: rigid``, :mod:`medae.register`): the raw PD of one
adult onto his T1, the raw T1 with the neck onto the T2 slab of niivue_register, and IXI002's
skull-stripped T1 onto its T2 (with the T2's brain mask as the metric's region): the seconds,
the rotation and shift found (how far the brain's centre moves), the mutual information before
(world coordinates as the scanner wrote them) and after, the overlap, or the one-line refusal.

End to end (``--stages score``): a raw 1 mm head (chris_t1, the T2w slab) from its file to the
heat map, candidates, NIfTI and overlays by ``medae score`` with the model's defaults (a
subprocess, ``--threads`` threads), the seconds of each stage from its ``result.json`` (load,
and within it brain extraction, N4, registration; the model's reconstruction, heat map,
candidates, writing, overlays) and the command's whole wall time.  The model is ``--model``,
or the intensity recipe calibrated on IXI002's skull-stripped T2s with ``--brain auto`` (and
N4 unless ``--no-n4``; ``--space template`` registers each head to the MNI template).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import medae
from medae.bias import n4_correct
from medae.brain import extract_brain
from medae.errors import MedaeError
from medae.masks import implausible_brain, mask_volume_cm3
from medae.preprocess import PreprocessConfig, brain_mask
from medae.register import register_rigid

ROOT = Path(__file__).resolve().parents[1]
HEADS = ["mccausland_chris/chris_t1.nii.gz", "mccausland_chris/chris_PD.nii.gz",
         "niivue_register/T2w.nii.gz", "niivue_register/T1_head_ext2.nii.gz"]
PHANTOM = "dicom/ge_mprage_t1/In/05_3D_Ax_T1_MP_RAGE_R22"
#: (first sequence, further sequence, the first's brain mask or None), under MEDAE_DATA/brain
PAIRS = [("raw_heads/mccausland_chris/chris_t1.nii.gz",
          "raw_heads/mccausland_chris/chris_PD.nii.gz", None),
         ("raw_heads/niivue_register/T2w.nii.gz", "raw_heads/niivue_register/T1_head_ext2.nii.gz",
          None),
         ("healthy/ixi002/hd_bet_IXI002-Guys-0828-T2.nii.gz",
          "healthy/ixi002/hd_bet_IXI002-Guys-0828-T1.nii.gz",
          "healthy/ixi002/hd_bet_mask_IXI002-Guys-0828-T2.nii.gz")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overlays", type=Path)
    ap.add_argument("--deepbet-itself", action="store_true")
    ap.add_argument("--n4-shrink", type=int, default=4)
    ap.add_argument("--stages", nargs="+", choices=["extraction", "registration", "score"],
                    default=["extraction", "registration", "score"])
    ap.add_argument("--model", type=Path, help="a trained bundle for --stages score")
    ap.add_argument("--no-n4", action="store_true", help="the quick model without N4")
    ap.add_argument("--space", choices=["native", "template"], default="native")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "extraction" in args.stages:
        extraction(args)
    if "registration" in args.stages:
        registration(args.data / "brain")
    if "score" in args.stages:
        scoring(args)


#: the raw heads scored end to end, under MEDAE_DATA/brain/raw_heads
SCORED = ["mccausland_chris/chris_t1.nii.gz", "niivue_register/T2w.nii.gz"]
#: result.json's stages, in the table's order (brain extraction, N4 and registration run
#: within load)
STAGES = ["load", "brain extraction", "bias correction", "registration",
          "template registration", "reconstruct", "heat map", "candidates", "write NIfTI/CSV",
          "overlays"]


def _medae(threads: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.run([sys.executable, "-m", "medae", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def scoring(args) -> None:
    """One line per raw head: ``medae score`` from file to maps, seconds per stage."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_brain_"))
    run = args.model
    if run is None:
        healthy = tmp / "healthy"
        healthy.mkdir()
        ixi = args.data / "brain" / "healthy" / "ixi002"
        for name in ("hd_bet_IXI002-Guys-0828-T2.nii.gz",
                     "hd_bet_dilated_IXI002-Guys-0828-T2.nii.gz"):
            (healthy / name).symlink_to(ixi / name)
        sets = [] if args.no_n4 else ["--set", "preprocess.bias_correction=n4"]
        if args.space == "template":
            sets += ["--set", "preprocess.space=template"]
        run = tmp / "run"
        res = _medae(args.threads, "train", "--config", str(ROOT / "configs" / "intensity.yaml"),
                     "--data", str(healthy), "--output", str(run), "--brain", "auto", "-q",
                     *sets)
        if res.returncode:
            raise SystemExit(f"training the quick model failed: {res.stderr.strip()[-500:]}")
    print(f"\nmedae score with {run}'s defaults, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f} at the start")
    print("| scan | " + " | ".join(STAGES) + " | command (s) |")
    print("|---|" + "---|" * (len(STAGES) + 1))
    for head in SCORED:
        path = args.data / "brain" / "raw_heads" / head
        out = tmp / f"out_{path.name.split('.')[0]}"
        t0 = time.perf_counter()
        res = _medae(args.threads, "score", "--model", str(run), "--input", str(path),
                     "--output", str(out), "-q")
        wall = time.perf_counter() - t0
        if res.returncode:
            print(f"| {path.name} | failed: {res.stderr.strip()[-300:]} |", flush=True)
            continue
        record = json.loads(next(out.glob("*/result.json")).read_text())
        stages = record["stages"]
        cells = [f"{stages[k]:.1f}" if k in stages else "-" for k in STAGES]
        print(f"| {path.name} | " + " | ".join(cells) + f" | {wall:.1f} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def registration(root: Path) -> None:
    """One line per pair: what rigid registration found, and its seconds."""
    print("\n| first | further | seconds | rotation ° | shift mm (R, A, S) | MI before → after "
          "| overlap | |")
    print("|---|---|---|---|---|---|---|---|")
    for first, further, mask in PAIRS:
        fixed, moving = medae.load_scan(root / first), medae.load_scan(root / further)
        region = medae.load_scan(root / mask).array > 0 if mask else None
        t0 = time.perf_counter()
        try:
            r = register_rigid(fixed, moving, f"sequence {Path(further).name}", region)
        except MedaeError as exc:
            print(f"| {Path(first).name} | {Path(further).name} | "
                  f"{time.perf_counter() - t0:.1f} | | | | | refused: {exc} |", flush=True)
            continue
        print(f"| {Path(first).name} | {Path(further).name} | {r.seconds:.1f} | "
              f"{r.rotation_deg:.2f} | {', '.join(f'{v:.2f}' for v in r.shift_mm)} | "
              f"{r.metric_before:.3f} → {r.metric:.3f} | {100 * r.overlap:.0f}% of its "
              f"{r.region} | |", flush=True)


def extraction(args) -> None:
    """One line per head: brain extraction, its mask, N4 inside it."""
    paths = [args.data / "brain" / "raw_heads" / h for h in HEADS] + [args.data / PHANTOM]
    bet = None
    if args.deepbet_itself:
        from deepbet import BrainExtraction

        bet = BrainExtraction(no_gpu=True)
    print(f"| scan | grid | extraction s | mask cm³ | N4 s (shrink {args.n4_shrink}) | "
          "preprocess.brain auto |")
    print("|---|---|---|---|---|---|")
    for path in paths:
        scan = medae.load_scan(path)
        t0 = time.perf_counter()
        mask = extract_brain(scan.array)
        seconds = time.perf_counter() - t0
        try:
            _, rule = brain_mask(scan.array, PreprocessConfig(brain="auto"), None, scan.spacing)
        except MedaeError as exc:
            rule = f"refused: {exc}"
        grid = "x".join(map(str, scan.shape)) + " at " + "x".join(f"{s:.2g}" for s in scan.spacing)
        extra = ""
        if bet is not None and path.is_file():
            import nibabel as nib

            theirs = np.asarray(nib.as_closest_canonical(bet.run(str(path))[1]).dataobj) > 0
            dice = 2 * np.count_nonzero(mask & theirs) / (mask.sum() + theirs.sum())
            extra = f" (deepbet itself: Dice {dice:.4f})"
        problem = implausible_brain(mask, scan.spacing, one_piece=True, image=scan.array)
        n4 = "-"
        if problem is None:
            t0 = time.perf_counter()
            n4_correct(scan.array, mask, scan.spacing, args.n4_shrink)
            n4 = f"{time.perf_counter() - t0:.1f}"
        print(f"| {path.name} | {grid} mm | {seconds:.1f} | "
              f"{mask_volume_cm3(mask, scan.spacing):,.0f}{extra} | {n4} | {rule} |", flush=True)
        if args.overlays:
            from medae.overlay import write_overlays

            write_overlays(scan.array, mask.astype(np.float32), scan.spacing,
                           args.overlays / path.name.split(".")[0],
                           candidates=mask.astype(np.uint8), threshold=0.5,
                           mask=np.ones(mask.shape, bool), units="brain mask",
                           title=path.name.split(".")[0])


if __name__ == "__main__":
    main()
