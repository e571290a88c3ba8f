#!/usr/bin/env python
"""The research benchmark on real brain FLAIR, end to end through the medae CLI.

    python scripts/benchmark_brain.py            # full: every fold, 3 seeds (hours on a CPU)
    python scripts/benchmark_brain.py --quick    # one fold per dataset, 3 seeds, shorter training

Data (MEDAE_DATA, default ../shared/data): BraTS 2013 pat0001-pat0004 (FLAIR, T1c) and the
Lesjak MS patients 07 and 19 (FLAIR, T1, T2).  One-sequence recipes read FLAIR; brain_multi reads
FLAIR + T1-weighted (BraTS: T1c), and T2 on MS.  There is no healthy FLAIR, so (Kascenas et
al.) each fold trains on the axial slices of its training patients with the lesions left out
(the labels are used only for that: the recipe's data.lesion_samples drops or masks them),
calibrates thresholds on the lesion-free slices of a held-out training patient (MS: of the
single training patient, marked "train-calibrated"), scores the test patient, and evaluates
against its expert mask.  Folds are over patients; the test patient never influences training,
calibration or any setting.  Every recipe gets the preprocessing and post-processing of
configs/brain_flair.yaml, so only the model differs; the intensity baseline is scored on the same
voxels, and "raw" is the FLAIR value itself inside the brain mask at the scan's resolution with no
post-processing (the number a reviewer computes first).  Thresholds are the calibrated default
(at most one false-positive candidate per healthy calibration scan on average).  Writes
docs/benchmark_results.md (and, with --readme, the README's results section).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["raw", "intensity", "ae2d", "vae2d", "sae2d", "dae2d", "brain_flair", "brain_multi"]
#: rows that are a recipe with different settings: raw thresholding is the intensity recipe with
#: no post-processing (the FLAIR value itself inside the brain mask, at the scan's resolution)
VARIANTS = {"raw": ("intensity", ["scoring.erode_mm=0", "scoring.median_mm=0"])}
METRICS = [("voxel_ap", "voxel AP"), ("voxel_auroc", "voxel AUROC"),
           ("best_dice", "[Dice] (upper bound)"),
           ("dice_calibrated", "deployable Dice (≤ 1 FP candidate / healthy scan)"),
           ("dice_fpr01", "Dice @ 1% healthy voxel FPR"),
           ("lesion_recall", "lesion recall"), ("fp_per_scan", "FP candidates / scan")]


#: per dataset, the sequences the multi-sequence recipe reads (FLAIR + T1-weighted, and T2
#: where present); one-sequence recipes read the first column (FLAIR)
MULTI_INPUTS = {"BraTS 2013 FLAIR": ["flair", "t1"], "MS Lesjak FLAIR": ["flair", "t1", "t2"]}
#: the inputs whose positive residual makes the map: where lesions are bright (not T1-weighted)
MULTI_SCORED = {"BraTS 2013 FLAIR": ["flair"], "MS Lesjak FLAIR": ["flair", "t2"]}


def _datasets(data: Path) -> dict[str, dict]:
    """Per dataset and patient: sequences (FLAIR first), brain mask (or None) and label."""
    brats = data / "brain" / "brats2013"
    ms = data / "brain" / "ms_lesjak"
    out = {}
    pats = sorted(p for p in brats.glob("pat*") if p.is_dir())
    if pats:  # BraTS 2013 here has FLAIR and T1c (the T1-weighted input)
        out["BraTS 2013 FLAIR"] = {p.name: {
            "flair": p / "Flair_subtrMeanDivStd.nii.gz", "t1": p / "T1c_subtrMeanDivStd.nii.gz",
            "mask": p / "brainmask.nii.gz", "label": p / "OTMultiClass.nii.gz"} for p in pats}
    pats = sorted(p for p in ms.glob("patient*") if p.is_dir())
    if pats:
        out["MS Lesjak FLAIR"] = {p.name: {
            "flair": next(p.glob("FLAIR*.nii.gz")), "t1": next(p.glob("T1_*.nii.gz")),
            "t2": next(p.glob("T2_*.nii.gz")), "mask": None,
            "label": next(p.glob("GOLD_STANDARD*.nii.gz"))} for p in pats}
    return out


def _manifest(path: Path, cases: dict[str, dict]) -> Path:
    """``case_id,flair,t1[,t2],mask,label``: one column per sequence, FLAIR first."""
    seqs = [k for k in next(iter(cases.values())) if k not in ("mask", "label")]
    lines = [",".join(["case_id", *seqs, "mask", "label"])]
    for case, f in cases.items():
        lines.append(",".join([case, *(str(f[k]) for k in seqs), str(f["mask"] or ""),
                               str(f["label"])]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if res.returncode not in (0,):
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}; see {log}")


def _protocol_overrides() -> list[str]:
    """The preprocessing and post-processing of brain_flair.yaml, for every recipe."""
    cfg = yaml.safe_load((ROOT / "configs" / "brain_flair.yaml").read_text())
    sets = []
    for section in ("preprocess", "scoring"):
        for key, value in cfg[section].items():
            sets.append(f"{section}.{key}={json.dumps(value)}")
    sets += [f"data.{key}={json.dumps(cfg['data'][key])}"
             for key in ("min_foreground", "val_fraction", "lesion_samples", "lesion_margin_mm")
             if key in cfg["data"]]
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmark")
    ap.add_argument("--quick", action="store_true",
                    help="one fold per dataset and --steps 400 (about an hour on 2 CPU cores)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--steps", type=int, help="training steps per model (default: the recipe's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--readme", action="store_true", help="also update the README's table")
    args = ap.parse_args()
    steps = args.steps or (400 if args.quick else None)
    medae = [sys.executable, "-m", "medae"]
    sets = _protocol_overrides()
    results: dict = {}
    t_start = time.time()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip() or "unknown"
    for dname, cases in _datasets(args.data).items():
        names = sorted(cases)
        tests = names[-1:] if args.quick else names
        for test in tests:
            train_cases = {c: cases[c] for c in names if c != test}
            fold = args.work / dname.split()[0].lower() / f"test-{test}"
            fold.mkdir(parents=True, exist_ok=True)
            train_csv = _manifest(fold / "train.csv", train_cases)
            test_csv = _manifest(fold / "test.csv", {test: cases[test]})
            for recipe in args.recipes:
                base, variant_sets = VARIANTS.get(recipe, (recipe, []))
                for seed in args.seeds if base != "intensity" else args.seeds[:1]:
                    run = fold / f"{recipe}-seed{seed}"
                    log = run.with_suffix(".log")
                    if not (run / "report" / "metrics.json").exists():
                        extra = ["--set", f"train.steps={steps}"] if steps else []
                        if base == "brain_multi":
                            inputs = json.dumps(MULTI_INPUTS[dname])
                            scored = json.dumps(MULTI_SCORED[dname])
                            extra += ["--set", f"preprocess.inputs={inputs}",
                                      "--set", f"scoring.channels={scored}"]
                        if not (run / "model.json").exists():
                            _run([*medae, "train", "--config", str(ROOT / "configs" /
                                                                    f"{base}.yaml"),
                                  "--data", str(train_csv), "--output", str(run), "--seed",
                                  str(seed), "--device", args.device, "-q",
                                  *[a for s in [*sets, *variant_sets] for a in ("--set", s)],
                                  *extra], log)
                        _run([*medae, "score", "--model", str(run), "--input", str(test_csv),
                              "--output", str(run / "scores"), "--device", args.device,
                              "--no-overlays", "--no-image", "-q"], log)
                        _run([*medae, "evaluate", "--predictions", str(run / "scores"),
                              "--labels", str(test_csv), "--output", str(run / "report")], log)
                    if not (run / "report-fpr01" / "metrics.json").exists():
                        # the voxel rule of earlier tables: Dice at 1% healthy-voxel FPR
                        _run([*medae, "score", "--model", str(run), "--input", str(test_csv),
                              "--output", str(run / "scores-fpr01"), "--device", args.device,
                              "--no-overlays", "--no-image", "-q", "--fpr", "0.01"], log)
                        _run([*medae, "evaluate", "--predictions", str(run / "scores-fpr01"),
                              "--labels", str(test_csv), "--output", str(run / "report-fpr01")],
                             log)
                    m = json.loads((run / "report" / "metrics.json").read_text())
                    bundle = json.loads((run / "model.json").read_text())
                    row = {key: _metric(m, key) for key, _ in METRICS if key != "dice_fpr01"}
                    m01 = json.loads((run / "report-fpr01" / "metrics.json").read_text())
                    row["dice_fpr01"] = _metric(m01, "dice_calibrated")
                    row["calibration"] = bundle["calibration"]["source"]
                    results.setdefault(dname, {}).setdefault(recipe, []).append(row)
                    print(f"{dname} test {test} {recipe} seed {seed}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)),
                        flush=True)
    table = _table(results, args, steps, time.time() - t_start, commit)
    out = ROOT / "docs" / "benchmark_results.md"
    out.write_text(table)
    print(table)
    if args.readme:
        _update_readme(table)


def _metric(m: dict, key: str) -> float:
    value = {
        "voxel_ap": m["voxel"]["average_precision"], "voxel_auroc": m["voxel"]["auroc"],
        "best_dice": m["voxel"]["best_dice"], "dice_calibrated": m["voxel"]["dice_at_threshold"],
        "lesion_recall": m["lesions"]["recall"], "fp_per_scan": m["lesions"]["fp_per_scan"],
    }[key]
    return float("nan") if value is None else float(value)


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _table(results: dict, args, steps, seconds: float, commit: str) -> str:
    cmd = "python scripts/benchmark_brain.py" + (" --quick" if args.quick else "")
    lines = [f"Produced by `{cmd}` at commit {commit} on {datetime.date.today().isoformat()} "
             f"({seconds / 60:.0f} min, {os.cpu_count()} CPU cores); seeds "
             f"{', '.join(map(str, args.seeds))}; training steps per model: "
             f"{steps or 'the recipe default'}; mean ± sd over seeds and folds.", ""]
    for dname, per in results.items():
        lines += [f"**{dname}**", "",
                  "| recipe | n | " + " | ".join(label for _, label in METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        for recipe, rows in per.items():
            cells = [_fmt([r[k] for r in rows]) for k, _ in METRICS]
            note = " (train-calibrated)" if rows[0]["calibration"].startswith("training") else ""
            lines.append(f"| {recipe}{note} | {len(rows)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _update_readme(table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
    if start not in text or end not in text:
        raise SystemExit("README.md has no benchmark markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


if __name__ == "__main__":
    main()
