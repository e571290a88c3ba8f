#!/usr/bin/env python
"""How the brain FLAIR recipes' post-processing (``scoring.erode_mm``, ``scoring.median_mm``) is
chosen without looking at a test patient: nested selection on the intensity baseline.

    python scripts/select_postprocessing.py            # prints a Markdown report (~3 min)

For every patient of the shared data (BraTS 2013 pat0001-0004, MS Lesjak patient07/19) it computes
the voxel AP of FLAIR intensity thresholding at the scan's resolution inside the brain mask (the
given one for BraTS, the computed one for MS) for each outer erosion depth and in-plane median
width.  Then, for each benchmark fold (one test patient), it picks the setting with the best mean
AP over the *other* patients (each dataset weighted equally: the recipe serves both), and shows
what that choice gives on the held-out patient next to raw thresholding.

A last table tries, at 4 mm and a 3 mm median, a rim that is not simply left out: its voxels
keep their value where they connect, through voxels at least as high, to a value inside (grey
reconstruction by dilation from the interior), so a lesion that reaches the surface continues
into the rim while the rim never starts a candidate of its own.

The sweep also tries a map standardised by depth (the ``z`` settings): after erosion and median,
each voxel's value minus the median of the analysed voxels at the same depth from the brain's
outer surface (1 mm shells to 10 mm, then the rest), divided by their interquartile range, and
clipped at 0.  The rim of a brain is brighter than its interior in FLAIR, so a lesion at the
surface competes with healthy rim; standardising per shell compares each voxel with its own
shell's healthy tissue.  It enters the nested choice like any other setting.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import reconstruction
from sklearn.metrics import average_precision_score

import medae
from medae.masks import bounding_box, compute_mask, outer_erosion

ROOT = Path(__file__).resolve().parents[1]
ERODE_MM = (0, 2, 4, 6)
MEDIAN_MM = (0, 3, 5)  # in-plane widths; 0 = none
SHELLS_MM = tuple(range(1, 11))  # depth-standardisation shells: 0-1, 1-2, ... 9-10, deeper


def depth_standardise(h: np.ndarray, inside: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """``h`` minus its median over the ``inside`` voxels of the same depth shell, over their
    interquartile range, clipped at 0 (shells of under 1000 voxels join the next deeper one)."""
    out = np.zeros(h.shape, np.float32)
    lo = 0.0
    for hi in (*SHELLS_MM, np.inf):
        sel = inside & (depth > lo) & (depth <= hi)
        if sel.sum() >= 1000 or hi == np.inf:
            if sel.any():
                v = h[sel]
                q1, med, q3 = np.percentile(v, [25, 50, 75])
                out[sel] = np.maximum((v - med) / max(q3 - q1, 1e-6), 0)
            lo = hi
    return out


def _cases(data: Path) -> dict[str, tuple[str, Path, Path, Path | None]]:
    out = {}
    for p in sorted(p for p in (data / "brain" / "brats2013").glob("pat*") if p.is_dir()):
        out[p.name] = ("BraTS", p / "Flair_subtrMeanDivStd.nii.gz", p / "OTMultiClass.nii.gz",
                       p / "brainmask.nii.gz")
    for p in sorted(p for p in (data / "brain" / "ms_lesjak").glob("patient*") if p.is_dir()):
        out[p.name] = ("MS", next(p.glob("FLAIR*.nii.gz")), next(p.glob("GOLD*.nii.gz")), None)
    return out


def sweep(image: Path, label: Path, mask: Path | None) -> dict[tuple[int, int], float]:
    a = medae.load_scan(image).array
    y = medae.load_scan(label).array > 0
    m = medae.load_scan(mask).array > 0 if mask else compute_mask(a)[0]
    floor = float(a[m].min())
    # depth below the brain's outer surface (mm; holes filled, as outer_erosion measures it)
    depth = ndimage.distance_transform_edt(np.pad(ndimage.binary_fill_holes(m), 1))
    depth = depth[1:-1, 1:-1, 1:-1]
    out = {}
    for e in ERODE_MM:
        inside = outer_erosion(m, e, (1.0, 1.0, 1.0))
        for w in MEDIAN_MM:
            h = np.where(inside, a, floor)
            if w:
                h = ndimage.median_filter(h, size=(w, w, 1))
                h[~inside] = floor
            out[(e, w, "")] = float(average_precision_score(y[m], h[m]))
            z = depth_standardise(h, inside, depth)
            out[(e, w, "z")] = float(average_precision_score(y[m], z[m]))
    # the rim continued from the interior instead of left out (4 mm, 3 mm median)
    inside = outer_erosion(m, 4, (1.0, 1.0, 1.0))
    full = np.where(m, ndimage.median_filter(np.where(m, a, floor), size=(3, 3, 1)), floor)
    box = bounding_box(m)
    seed = np.where(inside, full, floor)
    seed[box] = reconstruction(seed[box], full[box], method="dilation")
    out["rim"] = float(average_precision_score(y[m], seed[m]))
    return out


def main() -> None:
    data = Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data"))
    cases = _cases(data)
    if not cases:
        sys.exit(f"no shared brain data under {data}")
    aps = {}
    for name, (_ds, img, lab, msk) in cases.items():
        aps[name] = sweep(img, lab, msk)
        print(f"measured {name}", file=sys.stderr, flush=True)
    settings = [k for k in aps[next(iter(aps))] if k != "rim"]
    print("Voxel AP of FLAIR thresholding (1 mm, inside the brain mask) by outer erosion "
          "(mm) and in-plane median width (mm):\n")
    print("| patient | " + " | ".join(f"e{e} m{w}{z and ' z'}" for e, w, z in settings) + " |")
    print("|---|" + "---|" * len(settings))
    for name, r in aps.items():
        print(f"| {name} | " + " | ".join(f"{r[s]:.3f}" for s in settings) + " |")
    print("\nNested choice per fold (best mean AP over the other patients, datasets weighted "
          "equally):\n")
    print("| test patient | chosen | AP there | its lead over the next setting (others' mean) "
          "| raw thresholding there |")
    print("|---|---|---|---|---|")
    for test in cases:
        def value(s, test=test):
            per_ds = {}
            for name, (ds, *_r) in cases.items():
                if name != test:
                    per_ds.setdefault(ds, []).append(aps[name][s])
            return np.mean([np.mean(v) for v in per_ds.values()])
        best = max(settings, key=value)
        how = ", standardised by depth" if best[2] else ""
        runner = max((s for s in settings if s != best), key=value)
        print(f"| {test} | erode {best[0]} mm, median {best[1]} mm{how} | {aps[test][best]:.3f} "
              f"| {value(best) - value(runner):.4f} | {aps[test][(0, 0, '')]:.3f} |")
    print("\nThe 4 mm rim left out, or continued from the interior (3 mm median both):\n")
    print("| patient | rim left out | rim continued from the interior |")
    print("|---|---|---|")
    for name, r in aps.items():
        print(f"| {name} | {r[(4, 3, '')]:.3f} | {r['rim']:.3f} |")


if __name__ == "__main__":
    main()
