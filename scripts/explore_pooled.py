#!/usr/bin/env python
"""One model, two patients it has never seen: how far the pooled voxel AP falls below each
patient's own, and which map settings close the gap.

    python scripts/explore_pooled.py RUN [RUN ...]      # benchmark run folders of one fold

Each RUN is a model of ``scripts/benchmark_brain.py``, trained on some patients of a dataset
and calibrated on one it held out (``validation_cases`` in its ``model.json``); with the fold's
test patient that makes two unseen patients scored by one model, as a user's new patients would
be.  For each map setting (the recipe's, then the variants below; the model is never retrained),
it prints per patient the voxel AP and best Dice, the pooled AP over both, and the Dice the
calibration patient's own Dice-optimal voxel threshold gives on the test patient (the transfer
the default operating point relies on, without the candidate size rule), and the Dice at the
threshold that 1% of its lesion-free brain voxels exceed (the voxel rule, which the default
falls back to where the labelled point is degenerate).  A run without a held-out patient (MS:
one training patient, which calibrates itself) pairs its training patient with the test one.
Map variants:

- ``median 6 mm`` / ``median 9 mm``: wider in-plane median filters (9 mm: a release ago's, 5
  voxels at 1.875 mm), ``rim 6 mm``: with a release ago's brain rim (3 voxels at 1.875 mm);
  ``median 5 mm 3D``: across slices too;
- ``scale: brain qP``: each scan's map divided by the P-th percentile of its own analysed
  voxels (P = 90, 95, 99: a per-scan scale, as if every map were read against its own brain);
  ``scale: brain z``: (map - median) / (q90 - median) of its own analysed voxels; ``scale:
  brain q75`` / ``scale: brain mad``: (map - median) / (q75 - median) or / its median absolute
  deviation (spreads that a lesion of up to a quarter of the brain hardly moves);
  ``scale: intensity IQR``: the map times the scan's normalisation range (its 0.5th-99.5th
  brain percentiles, which a large lesion moves) over 5.5 interquartile ranges of its brain
  intensities (which it hardly moves): the residual in the units robust normalisation would
  give, while the model keeps reading percentile-normalised input (first channel);
  ``scale: intensity med-pP``: the same with the brain's median minus its P-th percentile;
  ``scale: normal-intensity q90 (k IQR)``: the map over the 90th percentile of its analysed
  voxels whose intensity lies within k IQRs of the brain's median (lesions left out);
  ``scale: trimmed q90``: the 90th percentile of the map's values below its own upper fence
  (q75 + 3 IQR of the map, repeated until it settles); ``scale: white stripe sd / width``:
  WhiteStripe's spread (Shinohara et al. 2014: the intensities within 5% of quantile around
  the brain histogram's largest peak) instead of the IQR.

``--calib-trained``: calibrate on the first patient the model was trained on instead of the
held-out one (as a fold with no held-out patient must): does a seen patient's point transfer?

``--scales-only``: the recipe's map and the per-scan scales (one map per scan, quicker).

Voxels inside the brain mask, as ``medae evaluate`` counts them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medae import load_scan  # noqa: E402
from medae.evaluation.pooled import PooledVoxels  # noqa: E402
from medae.io.discover import read_manifest  # noqa: E402
from medae.preprocess import ROBUST_RANGE  # noqa: E402
from medae.scoring.scorer import load_model  # noqa: E402


def _variants(cfg) -> dict:
    """Map settings (the model is never retrained): name -> (map config, None)."""
    return {"recipe": (cfg, None),
            "median 6 mm": (dataclasses.replace(cfg, median_mm=(6.0, 6.0, 0.0)), None),
            "median 9 mm": (dataclasses.replace(cfg, median_mm=(9.375, 9.375, 0.0)), None),
            "median 9 mm, rim 6 mm": (dataclasses.replace(cfg, median_mm=(9.375, 9.375, 0.0),
                                                          erode_mm=6.0), None),
            "median 5 mm 3D": (dataclasses.replace(cfg, median_mm=5.0), None)}


#: per-scan scales of the recipe's map: a percentile of its analysed voxels (divided by it),
#: or "z": (map - median) / (q90 - median)
SCALES = {"scale: brain q90": 90.0, "scale: brain q95": 95.0, "scale: brain q99": 99.0,
          "scale: brain z": "z", "scale: brain q75": "q75", "scale: brain mad": "mad",
          "scale: intensity IQR": "iqr", "scale: intensity med-p0.5": ("low", 0.5),
          "scale: intensity med-p5": ("low", 5.0), "scale: intensity med-q1": ("low", 25.0),
          "scale: normal-intensity q90 (1 IQR)": ("normal", 1.0),
          "scale: normal-intensity q90 (2 IQR)": ("normal", 2.0),
          "scale: trimmed q90": ("trimmed", 3.0),
          "scale: white stripe sd": ("ws", "sd"), "scale: white stripe width": ("ws", "width")}
#: robust normalisation's [0, 1] spans this many interquartile ranges (medae.preprocess)
IQR_SPAN = sum(ROBUST_RANGE)


def _first_input(scan) -> np.ndarray:
    """The scan's first sequence (a multi-sequence scan's array is channels first)."""
    return np.asarray(scan.array if scan.array.ndim == 3 else scan.array[0])


def _scaled(heat: np.ndarray, analysed: np.ndarray, how, scan=None, prep=None) -> np.ndarray:
    if isinstance(how, tuple) and how[0] == "normal":
        # the map's 90th percentile over the analysed voxels whose intensity looks normal
        # (within k IQRs of the brain's median: bright and dark lesions left out)
        first = _first_input(scan)
        q1, med, q3 = np.percentile(first[prep.native_mask], (25, 50, 75))
        k = how[1] * float(q3 - q1)
        normal = analysed & (np.abs(first - med) <= k)
        return heat / max(float(np.percentile(heat[normal], 90)), 1e-12)
    if isinstance(how, tuple) and how[0] == "ws":
        # WhiteStripe (Shinohara et al. 2014): the largest peak of the brain's histogram (white
        # matter) and the intensities within 5% of quantile around it: their sd, or their span
        stats = prep.stats[0]
        first = _first_input(scan)
        inside = np.sort(first[prep.native_mask].astype(np.float64))
        lo, hi = np.percentile(inside, (0.5, 99.5))
        hist, edges = np.histogram(inside[(inside >= lo) & (inside <= hi)], bins=200)
        hist = np.convolve(hist, np.ones(7) / 7, mode="same")
        mode = (edges[np.argmax(hist)] + edges[np.argmax(hist) + 1]) / 2
        q = np.searchsorted(inside, mode) / inside.size
        a, b = np.quantile(inside, (max(q - 0.05, 0), min(q + 0.05, 1)))
        stripe = inside[(inside >= a) & (inside <= b)]
        spread = stripe.std() if how[1] == "sd" else b - a
        return heat * (stats["high"] - stats["low"]) / max(float(spread), 1e-12)
    if isinstance(how, tuple) and how[0] == "trimmed":
        # the 90th percentile of the map's values below its own upper fence (q75 + c IQR of the
        # map), recomputed until it settles: a large lesion's voxels left out
        values = heat[analysed]
        keep = values
        for _ in range(10):
            q25, q75 = np.percentile(keep, (25, 75))
            nxt = values[values <= q75 + how[1] * (q75 - q25)]
            if nxt.size == keep.size:
                break
            keep = nxt
        return heat / max(float(np.percentile(keep, 90)), 1e-12)
    if how == "iqr" or isinstance(how, tuple):
        stats = prep.stats[0]
        if "low" not in stats:
            raise SystemExit("scale: intensity IQR needs a model with percentile or robust "
                             "normalisation")
        inside = _first_input(scan)[
            prep.native_mask].astype(np.float32)
        if how == "iqr":
            q1, q3 = np.percentile(inside, (25, 75))
            return heat * (stats["high"] - stats["low"]) / max(IQR_SPAN * float(q3 - q1), 1e-12)
        # the lower side of the brain's intensities (below its median), which bright lesions
        # do not reach: the residual in units of median - P-th percentile
        low, median = np.percentile(inside, (how[1], 50))
        return heat * (stats["high"] - stats["low"]) / max(float(median - low), 1e-12)
    values = heat[analysed]
    if how in ("z", "q75"):
        median, upper = np.percentile(values, (50, 90 if how == "z" else 75))
        return (heat - median) / max(float(upper - median), 1e-12)
    if how == "mad":
        median = float(np.median(values))
        return (heat - median) / max(float(np.median(np.abs(values - median))), 1e-12)
    return heat / max(float(np.percentile(values, how)), 1e-12)


def _pv(parts) -> PooledVoxels:
    pv = PooledVoxels()
    for x, y in parts:
        pv.add(x, y)
    return pv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--calib-trained", action="store_true",
                    help="calibrate on the first patient the model was trained on (as a fold "
                         "with no held-out patient must), not the held-out one")
    ap.add_argument("--scales-only", action="store_true",
                    help="only the recipe's map and its per-scan scales")
    args = ap.parse_args()
    table: dict[str, list[dict]] = {}
    for run in args.runs:
        meta = json.loads((run / "model.json").read_text())
        # the held-out calibration patient, or (MS: one training patient, which calibrates
        # itself) the training patient
        calib = None if args.calib_trained else (meta.get("validation_cases") or [None])[0]
        if calib is None:
            trained = [s.case_id for s in read_manifest(run.parent / "train.csv")]
            held = set(meta.get("validation_cases") or [])
            trained = [c for c in trained if c not in held]
            calib = trained[0] if len(trained) == 1 or args.calib_trained else None
        test = run.parent.name.removeprefix("test-")
        sources = {s.case_id: s for s in read_manifest(run.parent / "train.csv")}
        sources.update({s.case_id: s for s in read_manifest(run.parent / "test.csv")})
        model = load_model(run, device="cpu")
        base = model.map_config
        maps: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for case in [c for c in (calib, test) if c]:
            src = sources[case]
            scan, prep = model.load(src)
            label = load_scan(src.label).array > 0
            variants = _variants(base)
            for name, (cfg, _) in variants.items():
                if args.scales_only and name != "recipe":
                    continue
                model.map_config = cfg
                m = model.scan_map(scan, prep)
                heat = m.heatmap.astype(np.float64)
                brain = m.brain_mask
                maps.setdefault(name, {})[case] = (heat[brain].astype(np.float32), label[brain])
                if name == "recipe":
                    for sname, how in SCALES.items():
                        scaled = _scaled(heat, m.analysed, how, scan, prep)
                        maps.setdefault(sname, {})[case] = (scaled[brain].astype(np.float32),
                                                            label[brain])
            model.map_config = base
        for name, per in maps.items():
            own = {c: _pv([xy]) for c, xy in per.items()}
            row = {"run": run.name, "calib": calib, "test": test,
                   "ap_test": own[test].average_precision(), "dice_test": own[test].best_dice()[0]}
            if calib:
                thr = own[calib].best_dice()[1]
                x, y = per[calib]
                thr01 = float(np.percentile(x[~y], 99))  # 1% of its lesion-free brain voxels
                row.update(ap_calib=own[calib].average_precision(),
                           ap_pooled=_pv(per.values()).average_precision(),
                           dice_transfer=own[test].dice_at(thr),
                           dice_fpr01=own[test].dice_at(thr01))
            table.setdefault(name, []).append(row)
            print(f"{run.parent.name}/{run.name} [{name}] " + ", ".join(
                f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    print("\n| map | runs | AP calib | AP test | pooled AP | pooled − mean AP | test [Dice] | "
          "test Dice at calib's threshold | ... at calib's 1% voxel FPR |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in table.items():
        keys = ("ap_calib", "ap_test", "ap_pooled", "gap", "dice_test", "dice_transfer",
                "dice_fpr01")
        for r in rows:
            if "ap_pooled" in r:
                r["gap"] = r["ap_pooled"] - (r["ap_calib"] + r["ap_test"]) / 2
        mean = {k: [r[k] for r in rows if k in r] for k in keys}
        print(f"| {name} | {len(rows)} | " + " | ".join(
            f"{np.mean(v):.3f}" if v else "–" for v in mean.values()) + " |")


if __name__ == "__main__":
    main()
