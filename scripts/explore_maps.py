#!/usr/bin/env python
"""Ways of turning a trained model's reconstruction into a heat map, compared on the benchmark's
folds (exploration: what was tried for issue 12, and what it gave).

    python scripts/explore_maps.py --steps 400 --seeds 0                  # brain_flair, 6 folds
    python scripts/explore_maps.py --steps 400 --seeds 0 1 2 --tests pat0001 pat0002
    python scripts/explore_maps.py --recipe brain_multi --steps 400 --seeds 0

Each fold is the benchmark's (scripts/benchmark_brain.py): the model trains on the other
patients' slices with their lesions masked out, with the benchmark's settings, and the test
patient is scanned once; what the model gives (the normalised scan, its reconstruction, the same
scan as the model saw it, on the scan's grid) is kept in ``WORK/<recipe>-<steps>-s<seed>/<test>/``
so the maps can be recomputed without training again.  Every map then gets the recipe's
post-processing (outer 4 mm left out, 3 mm in-plane median) and its voxel AP inside the brain
mask is printed per test patient:

- ``R``  the recipe's map: FLAIR's positive residual max(x - x̂, 0) (medae score's map);
- ``I``  the intensity baseline: the normalised FLAIR value itself;
- ``R+I`` and ``R*I``: the two combined (brighter than expected, and bright);
- ``Rm`` the residual against the scan as the model saw it (downsampled to the model's grid and
  back), so detail finer than the model's grid does not count as unexpected;
- ``ens`` (several seeds): the residual of the seeds' mean reconstruction (an ensemble; here of
  models that each held out their own seed's validation patient, where ``train.ensemble``
  trains its members on the same patients), next to ``R mean``, the seeds' maps' mean AP;
- multi-sequence models: ``T1-`` / ``T1+``, the second input's negative / positive residual,
  and ``max(R,T1-)``.

Nothing here is chosen on the test patients: it is a record of what each map gives, and no map
is adopted by this script.  Quick runs (--steps 400) take about 2 min per fold on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_brain as bb

ROOT = Path(__file__).resolve().parents[1]


def _fold_arrays(run: Path, test_csv: Path, label: Path) -> dict[str, np.ndarray]:
    """Score the test patient with the fold's model: every input's normalised scan (x), its
    reconstruction (r) and the scan as the model saw it (xm), on the scan's grid."""
    import medae
    from medae.io.discover import read_manifest
    from medae.masks import outer_erosion
    from medae.preprocess import apply_normalisation, to_scan_space
    from medae.scoring.reconstruct import reconstruct
    from medae.scoring.scorer import field_of_view, load_model

    model = load_model(run)
    scan, prep = model.load(read_manifest(test_csv)[0])
    recon, _ = reconstruct(model.network, prep.image, prep.mask, batch_size=32,
                           device=model.device, precision="32")
    analysed = outer_erosion(field_of_view(prep) & prep.native_mask,
                             model.map_config.erode_mm, scan.spacing)
    channels = range(len(recon))
    clip = model.preprocess_config.clip
    return {"x": np.stack([apply_normalisation(prep.native_inputs[c], prep.stats[c], clip)
                           for c in channels]).astype(np.float32),
            "r": np.stack([to_scan_space(recon[c], prep) for c in channels]).astype(np.float32),
            "xm": np.stack([to_scan_space(np.asarray(prep.image[c]), prep)
                            for c in channels]).astype(np.float32),
            "analysed": analysed, "brain": prep.native_mask,
            "y": medae.load_scan(label).array > 0,
            "median": np.array(model.map_config.median_size(scan.spacing))}


def _post(res: np.ndarray, analysed: np.ndarray, size) -> np.ndarray:
    res = np.where(analysed, res, 0).astype(np.float32)
    if max(size) > 1:
        res = ndimage.median_filter(res, size=tuple(int(s) for s in size))
        res[~analysed] = 0
    return res


def _maps(folds: list[dict]) -> dict[str, np.ndarray]:
    """Raw (unfiltered) maps of one test patient; ``folds``: one per seed, the first is shown."""
    d = folds[0]
    x, r, xm = d["x"][0], d["r"][0], d["xm"][0]
    out = {"R": np.maximum(x - r, 0), "I": np.maximum(x, 0)}
    out["R+I"] = out["R"] + out["I"]
    out["R*I"] = out["R"] * out["I"]
    out["Rm"] = np.maximum(xm - r, 0)
    if len(folds) > 1:
        out["ens"] = np.maximum(x - np.mean([f["r"][0] for f in folds], axis=0), 0)
    if len(d["x"]) > 1:
        out["T1-"] = np.maximum(d["r"][1] - d["x"][1], 0)
        out["T1+"] = np.maximum(d["x"][1] - d["r"][1], 0)
        out["max(R,T1-)"] = np.maximum(out["R"], out["T1-"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="brain_flair")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tests", nargs="+", metavar="PATIENT")
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "explore")
    args = ap.parse_args()
    sets = bb._protocol_overrides()
    medae_cli = [sys.executable, "-m", "medae"]
    base, variant_sets = bb.VARIANTS.get(args.recipe, (args.recipe, []))
    rows = []
    for dname, cases in bb._datasets(args.data).items():
        names = sorted(cases)
        for test in names:
            if args.tests and test not in args.tests:
                continue
            extra = [f"train.steps={args.steps}"]
            if base == "brain_multi":
                extra += [f"preprocess.inputs={json.dumps(bb.MULTI_INPUTS[dname])}"]
            folds = []
            for seed in args.seeds:
                fold = args.work / f"{args.recipe}-{args.steps}-s{seed}" / test
                cache = fold / "arrays.npz"
                if not cache.exists():
                    fold.mkdir(parents=True, exist_ok=True)
                    train_csv = bb._manifest(fold / "train.csv",
                                             {c: cases[c] for c in names if c != test})
                    test_csv = bb._manifest(fold / "test.csv", {test: cases[test]})
                    run = fold / "model"
                    if not (run / "model.json").exists():
                        bb._run([*medae_cli, "train", "--config",
                                 str(ROOT / "configs" / f"{base}.yaml"), "--data", str(train_csv),
                                 "--output", str(run), "--seed", str(seed), "-q",
                                 *[a for s in [*sets, *variant_sets, *extra]
                                   for a in ("--set", s)]], fold / "log")
                    arrays = _fold_arrays(run, test_csv, cases[test]["label"])
                    tmp = fold / "arrays.tmp.npz"
                    np.savez_compressed(tmp, **arrays)
                    tmp.replace(cache)
                folds.append(dict(np.load(cache)))
            d = folds[0]
            brain, y = d["brain"], d["y"]
            aps = {k: float(average_precision_score(y[brain], _post(v, d["analysed"],
                                                                     d["median"])[brain]))
                   for k, v in _maps(folds).items()}
            aps["raw"] = float(average_precision_score(y[brain], d["x"][0][brain]))
            if len(folds) > 1:  # each seed's own map, and their mean AP
                aps["R seeds"] = [float(average_precision_score(
                    y[brain], _post(np.maximum(f["x"][0] - f["r"][0], 0), d["analysed"],
                                    d["median"])[brain])) for f in folds]
                aps["R mean"] = float(np.mean(aps["R seeds"]))
            rows.append((dname, test, aps))
            print(test, json.dumps(aps), flush=True)
    keys = [k for k in rows[0][2] if k != "R seeds"] if rows else []
    print(f"\nVoxel AP by map, {args.recipe}, {args.steps} steps, seeds "
          f"{' '.join(map(str, args.seeds))} (first seed's model unless 'ens'):\n")
    print("| patient | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for _dname, test, aps in rows:
        print(f"| {test} | " + " | ".join(f"{aps[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
