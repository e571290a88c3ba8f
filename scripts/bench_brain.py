#!/usr/bin/env python
"""Brain extraction of the shared raw heads: seconds per head, mask volume, the checks.

    python scripts/bench_brain.py [--threads 2] [--overlays DIR] [--deepbet-itself]

For each head in ``MEDAE_DATA/brain/raw_heads`` (default ``../shared/data``) and the GE grid
phantom: what ``preprocess.brain: auto`` decides (the rule, or the one-line refusal), the
seconds deepbet's networks took (medae.brain, on the CPU with ``--threads`` torch threads),
the mask's volume, and the seconds of N4 bias-field correction inside that mask
(``preprocess.bias_correction: n4``, shrink factor ``--n4-shrink``, default 4).
``--overlays DIR`` draws each mask over its scan (DIR/<name>/overlay_*.png);
``--deepbet-itself`` also runs deepbet's own ``BrainExtraction`` (needs its dependencies:
pandas, tqdm, connected-components-3d, fill_voids) and reports the Dice of the two masks.
"""

from __future__ import annotations

import argparse
import os
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

ROOT = Path(__file__).resolve().parents[1]
HEADS = ["mccausland_chris/chris_t1.nii.gz", "mccausland_chris/chris_PD.nii.gz",
         "niivue_register/T2w.nii.gz", "niivue_register/T1_head_ext2.nii.gz"]
PHANTOM = "dicom/ge_mprage_t1/In/05_3D_Ax_T1_MP_RAGE_R22"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overlays", type=Path)
    ap.add_argument("--deepbet-itself", action="store_true")
    ap.add_argument("--n4-shrink", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
