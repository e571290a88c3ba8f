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
(at most one false-positive candidate per healthy calibration scan on average), and Dice is also
reported at 1% healthy-voxel FPR.  Every finished run's figures go into docs/benchmark_runs.json
(with the commit, date, machine and a hash of the recipe and protocol), which is committed: a run
already there is not repeated (--rerun forces it), so the full benchmark, days on a CPU, can be
done a few runs at a time (--tests, --recipes, --seeds) on any machine.  The tables in
docs/benchmark_results.md (--quick: docs/benchmark_results_quick.md) and, with --readme, the
README's results section are built from that file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["raw", "intensity", "ae2d", "vae2d", "sae2d", "dae2d", "brain_flair", "brain_multi"]
#: rows that are a recipe with different settings: raw thresholding is the intensity recipe with
#: no post-processing, measured in the normalised image's units (the FLAIR value itself inside
#: the brain mask, at the scan's resolution, each scan's 0.5th/99.5th brain percentiles to 0/1)
PCT = "preprocess.normalise=percentile"
#: the quick protocol's training length (--quick)
QUICK_STEPS = 400
#: brain_flair's training length before it trained 400 steps (issue 26): the variants measured
#: with it keep it pinned, so their full-protocol runs stay found (the quick protocol's
#: train.steps=400 comes after and overrides it, so their quick runs stay found too)
S1200 = "train.steps=1200"
#: maps in the normalised image's units, as every recipe measured them before scoring.map_units
#: iqr became their default (issue 26): the variants measured then keep it pinned, so their
#: recorded runs stay found (a run's hash leaves map_units out when it is normalised)
NRM = "scoring.map_units=normalised"
VARIANTS = {"raw": ("intensity", ["scoring.erode_mm=0", "scoring.median_mm=0", NRM]),
            # the recipe in each training precision: brain_flair trains with precision auto
            # (bf16 where the CPU or GPU has it natively, else float32), so its row holds the
            # runs of the precision this machine trains in; these rows hold each one's
            "brain_flair_fp32": ("brain_flair", ['train.precision="32"']),
            "brain_flair_bf16": ("brain_flair", ["train.precision=bf16"]),
            # the multi-sequence recipe in each precision (it also trains with precision auto)
            "brain_multi_fp32": ("brain_multi", ['train.precision="32"']),
            "brain_multi_bf16": ("brain_multi", ["train.precision=bf16"]),
            # the recipes with maps in the normalised image's units (before map_units iqr)
            "brain_flair_normalised": ("brain_flair", [NRM, PCT, S1200]),
            "brain_flair_normalised_fp32": ("brain_flair", [NRM, 'train.precision="32"', PCT,
                                                             S1200]),
            "brain_flair_normalised_bf16": ("brain_flair", [NRM, "train.precision=bf16", PCT,
                                                             S1200]),
            "brain_multi_normalised": ("brain_multi", [NRM, PCT]),
            "brain_multi_normalised_fp32": ("brain_multi", [NRM, 'train.precision="32"', PCT]),
            "brain_multi_normalised_bf16": ("brain_multi", [NRM, "train.precision=bf16", PCT]),
            # each scan's map in interquartile ranges of its own brain intensities (scoring.
            # map_units: iqr) while the model reads percentile-normalised input: the scale of
            # robust normalisation for the threshold, the input the recipes were tuned on (the
            # recipes' default since; these names hold the runs derived from the ones above)
            "brain_flair_iqr_fp32": ("brain_flair", ["scoring.map_units=iqr",
                                                     'train.precision="32"', PCT, S1200]),
            "brain_multi_iqr_fp32": ("brain_multi", ["scoring.map_units=iqr",
                                                     'train.precision="32"', PCT]),
            # ... not for the intensity baseline: its map is the normalised intensity itself,
            # not a residual about a reconstruction, so in IQR units it keeps each scan's
            # offset (median - 0.5th percentile: 2.6 to 4.8 IQR on BraTS) and one threshold
            # holds less (BraTS deployable 0.39 against 0.71, 10 runs)
            "intensity_iqr": ("intensity", ["scoring.map_units=iqr"]),
            # the exploratory variants below were measured on brain_flair as it normalised and
            # measured its maps then (percentile normalisation, normalised units)
            # brain_flair on the scans' own 1 mm grid instead of 1.875 mm in-plane, so the
            # reconstruction keeps the detail of the scan
            "brain_flair_1mm": ("brain_flair", ["preprocess.spacing=[1.0, 1.0, 1.0]",
                                                "preprocess.size=[176, 208, null]", PCT, NRM,
                                                S1200]),
            # ... as it ran in the quick benchmark, before recipes trained in bf16
            "brain_flair_1mm_fp32": ("brain_flair", ["preprocess.spacing=[1.0, 1.0, 1.0]",
                                                     "preprocess.size=[176, 208, null]",
                                                     'train.precision="32"', PCT, NRM, S1200]),
            # an ensemble of three seeds (train.ensemble: members trained on the same patients;
            # the map is the residual of their mean reconstruction); 3x the training time
            "brain_flair_x3": ("brain_flair", ["train.ensemble=3", PCT, NRM, S1200]),
            # each scan normalised by its brain's median and interquartile range (normalise:
            # robust) instead of its 0.5th/99.5th percentiles, which a large bright lesion moves:
            # maps on one scale from scan to scan, so one threshold holds across them (issue 26)
            "raw_robust": ("intensity", ["scoring.erode_mm=0", "scoring.median_mm=0",
                                         "preprocess.normalise=robust", NRM]),
            "intensity_robust": ("intensity", ["preprocess.normalise=robust", NRM]),
            "brain_flair_robust": ("brain_flair", ["preprocess.normalise=robust", NRM, S1200]),
            "brain_flair_robust_fp32": ("brain_flair", ["preprocess.normalise=robust",
                                                        'train.precision="32"', NRM, S1200]),
            "brain_multi_robust": ("brain_multi", ["preprocess.normalise=robust", NRM]),
            "brain_multi_robust_fp32": ("brain_multi", ["preprocess.normalise=robust",
                                                        'train.precision="32"', NRM]),
            # histogram standardisation (Nyul & Udupa): every scan's brain deciles mapped onto
            # the training patients' mean, so that one model reads each patient's tissues at the
            # levels it learned (issue 26: MS patient19's sit lower than patient07's); the brain
            # recipes' default since (their _fp32 names resolve to these protocols), so these
            # names keep those runs found should a recipe change again; brain_flair's at the
            # full protocol is its 1,200-step run (the recipe trains 400 steps since, issue 26)
            "brain_flair_hist_fp32": ("brain_flair", ["preprocess.normalise=histogram",
                                                      'train.precision="32"', S1200]),
            "brain_multi_hist_fp32": ("brain_multi", ["preprocess.normalise=histogram",
                                                      'train.precision="32"']),
            # brain_flair trained on the samples it trained on a release ago (99627fb): axial
            # slices 1.875 mm apart, those that touch a lesion dropped, instead of every 1 mm
            # slice with the lesion (grown by 4 mm) masked out of the noise and the loss (issue
            # 26's bisect: training samples)
            "brain_flair_slices1875_fp32": ("brain_flair", [
                "preprocess.spacing=[1.875, 1.875, 1.875]", "data.lesion_samples=drop",
                'train.precision="32"']),
            # histogram standardisation with its knots at the brain's 10th-70th percentiles
            # instead of its deciles: a large bright tumour holds the 80th and 90th, which the
            # deciles map onto healthy white matter's places, squeezing its contrast (issue 26:
            # BraTS pat0002's per-seed gaps)
            "brain_flair_lm70_fp32": ("brain_flair", [
                "preprocess.landmarks=[10, 20, 30, 40, 50, 60, 70]", 'train.precision="32"']),
            # the epoch kept by the pooled voxel AP of the labelled calibration patient's maps
            # (train.select: ap; MS: the training patient's, his lesions masked out of training)
            # instead of the validation loss, which fell as the AP fell (issue 26's bisect)
            "brain_multi_selap_fp32": ("brain_multi", ["train.select=ap",
                                                       'train.precision="32"']),
            # calibrated on maps of scans (or, with one training patient, 20 mm axial slabs) that
            # the scoring model did not see: fold models trained on the rest (data.calibration:
            # crossfit; one training more per fold, the final model trains on every patient)
            "brain_flair_crossfit_fp32": ("brain_flair", ["data.calibration=crossfit",
                                                          'train.precision="32"', NRM, PCT, S1200]),
            "brain_multi_crossfit_fp32": ("brain_multi", ["data.calibration=crossfit",
                                                          'train.precision="32"', NRM, PCT]),
            # brain_flair with in-plane rotation (±10°) and zoom (±10%) of the training slices
            # as well as the left-right flip (two training patients are few)
            "brain_flair_aug": ("brain_flair", ["data.augment={flip_lr: true, rotate_deg: 10, "
                                                "zoom: 0.1}", PCT, NRM, S1200]),
            # the recipes with their percentile normalisation pinned (each scan's 0.5th/99.5th
            # brain percentiles to 0/1), so their recorded runs stay found should a recipe
            # change to normalise: robust (issue 26)
            "raw_percentile": ("intensity", ["scoring.erode_mm=0", "scoring.median_mm=0", PCT,
                                             NRM]),
            "intensity_percentile": ("intensity", [PCT, NRM]),
            "brain_flair_percentile": ("brain_flair", [PCT, NRM, S1200]),
            "brain_flair_percentile_fp32": ("brain_flair", [PCT, 'train.precision="32"', NRM,
                                                             S1200]),
            "brain_flair_percentile_bf16": ("brain_flair", [PCT, "train.precision=bf16", NRM,
                                                             S1200]),
            "brain_multi_percentile": ("brain_multi", [PCT, NRM]),
            "brain_multi_percentile_fp32": ("brain_multi", [PCT, 'train.precision="32"', NRM]),
            "brain_multi_percentile_bf16": ("brain_multi", [PCT, "train.precision=bf16", NRM])}
#: variants that differ from another only in how its maps are measured (``scoring`` settings
#: that ``medae calibrate`` takes): where that variant's model of the fold and seed is on disk,
#: it is calibrated again in the variant's settings (on the patients it calibrated on) instead
#: of trained again, which gives the bundle that training with the settings gives
DERIVED = {"brain_flair_iqr_fp32": ("brain_flair_normalised_fp32", ["--map-units", "iqr"]),
           "brain_multi_iqr_fp32": ("brain_multi_normalised_fp32", ["--map-units", "iqr"]),
           "intensity_iqr": ("intensity", ["--map-units", "iqr"])}
METRICS = [("voxel_ap", "voxel AP"), ("voxel_auroc", "voxel AUROC"),
           ("best_dice", "[Dice] (upper bound)"),
           ("dice_calibrated", "deployable Dice (default operating point)"),
           ("dice_gap", "deployable − [Dice]"),
           ("dice_candidates_rule", "Dice, ≤ 1 FP candidate / calibration scan (former default)"),
           ("dice_fpr01", "Dice @ 1% healthy voxel FPR"),
           ("lesion_recall", "lesion recall"), ("fp_per_scan", "FP candidates / scan")]
#: measured at the default operating point: a run recorded before the operating point followed
#: the calibration data (no 'operating_point' in its row) measured them at the candidate rule,
#: so its figures count in that rule's column and not in these
AT_DEFAULT = ("dice_calibrated", "dice_gap", "lesion_recall", "fp_per_scan")
#: recipe settings that choose only the default threshold, not the model or its maps: left out
#: of a run's protocol hash (each run records the rule its default was calibrated with)
THRESHOLD_ONLY = ("operating_point", "froc_fp")


#: per dataset, the sequences the multi-sequence recipe reads (FLAIR + T1-weighted, and T2
#: where present); one-sequence recipes read the first column (FLAIR)
MULTI_INPUTS = {"BraTS 2013 FLAIR": ["flair", "t1"], "MS Lesjak FLAIR": ["flair", "t1", "t2"]}
#: the map is the recipe's: FLAIR's positive residual, the other sequences are context.  (Scoring
#: T2 as well on MS, max over channels, gave voxel AP 0.149 on patient19, where the same model's
#: FLAIR channel alone gave 0.634 and T2's 0.133: CSF is bright in T2, so T2 residuals flag CSF
#: borders; this was seen on the test patient, and is disclosed with the results.)


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


#: settings each recipe keeps from its own file (its intensity normalisation and the units its
#: map is measured in, which suit how it makes the map), not brain_flair's
OWN_KEYS = ("preprocess.normalise", "preprocess.percentiles", "scoring.map_units")


def _protocol_overrides() -> list[str]:
    """The preprocessing and post-processing of brain_flair.yaml, for every recipe (but the
    intensity normalisation and map units, :data:`OWN_KEYS`: each recipe's own)."""
    cfg = yaml.safe_load((ROOT / "configs" / "brain_flair.yaml").read_text())
    sets = []
    for section in ("preprocess", "scoring"):
        for key, value in cfg[section].items():
            if f"{section}.{key}" not in OWN_KEYS:
                sets.append(f"{section}.{key}={json.dumps(value)}")
    sets += [f"data.{key}={json.dumps(cfg['data'][key])}"
             for key in ("min_foreground", "val_fraction", "lesion_samples", "lesion_margin_mm")
             if key in cfg["data"]]
    return sets


#: every finished run's figures, committed: the table is built from it, so a benchmark that takes
#: longer than one sitting (the full one does on a CPU) adds runs across sessions and machines
LEDGER = ROOT / "docs" / "benchmark_runs.json"
RESULTS = ROOT / "docs" / "benchmark_results.md"  # full mode; --quick: benchmark_results_quick.md


def _protocol(base: str, sets: list[str], steps: int | None, device: str = "auto",
              auto_precision: str | None = None) -> str:
    """A short hash of what decides a run's result: the recipe as it resolves with the
    benchmark's overrides (every setting, defaults filled in; ``train.precision: auto`` as the
    precision it trains in on ``device``) and the steps.  A run is found again under any name
    whose settings resolve the same (the recipe's default, or a variant that overrides it to
    the same value); a run of other settings is not reused."""
    from medae.config import load_config
    from medae.device import resolve_device, resolve_precision

    config = load_config(ROOT / "configs" / f"{base}.yaml", sets)
    if auto_precision and config["train"]["precision"] == "auto":
        config["train"]["precision"] = auto_precision  # as on the machine that ran them
    config["train"]["precision"] = resolve_precision(config["train"]["precision"],
                                                     resolve_device(device))
    if config["train"].get("ensemble") == 1:  # one model, as before the setting existed
        del config["train"]["ensemble"]
    if config["train"].get("select") == "loss":  # selected on the loss, as before train.select
        del config["train"]["select"]
        config["train"].pop("select_every", None)
    for key in THRESHOLD_ONLY:  # the threshold rule is recorded per run instead
        config["scoring"].pop(key, None)
    # the benchmark's scans are skull-stripped with plausible brains: preprocess.brain auto
    # (with the adult bounds) gives the masks and maps of the recipes before the setting existed
    pre = config["preprocess"]
    if pre.get("brain") in ("auto", "none") and pre.get("brain_volume_cm3") in (None, [800, 2000]):
        pre.pop("brain", None)
        pre.pop("brain_volume_cm3", None)
    # ... and their sequences share one grid: preprocess.registration auto takes them as they
    # are, as before the setting existed
    if pre.get("registration") in ("auto", "none"):
        pre.pop("registration", None)
    # ... and maps in the normalised image's units, as before scoring.map_units existed
    if config["scoring"].get("map_units") == "normalised":
        config["scoring"].pop("map_units")
    # a recipe that trains the quick protocol's length runs one protocol in both modes (the
    # steps are in the config as well; leaving them out of the blob would change every
    # recorded hash, so only this case is folded)
    if steps is None and config["train"].get("steps") == QUICK_STEPS:
        steps = QUICK_STEPS
    blob = json.dumps([config, steps], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _load_ledger() -> list[dict]:
    return json.loads(LEDGER.read_text())["runs"] if LEDGER.exists() else []


def _save_ledger(runs: list[dict]) -> None:
    runs = sorted(runs, key=lambda r: (r["dataset"], r["test"], r["recipe"], r["seed"],
                                       r["protocol"]))
    doc = {"about": "One entry per benchmark run of scripts/benchmark_brain.py (written by it); "
                    "'protocol' hashes the recipe as it resolves with the protocol overrides "
                    "(every setting) and the steps; 'recipe' is the name it was run under; "
                    "'commit' is the code that trained and scored the model (a row marked "
                    "'recalibrated' was calibrated again and scored by 'commit', with the "
                    "weights that 'trained' names).", "runs": runs}
    tmp = LEDGER.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, LEDGER)


def _same(run: dict, key: dict) -> bool:
    return all(run.get(k) == v for k, v in key.items())


def _find(runs: list[dict], **key) -> dict | None:
    return next((r for r in runs if _same(r, key)), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "benchmark")
    ap.add_argument("--quick", action="store_true",
                    help="one fold per dataset and --steps 400 (about an hour on 2 CPU cores)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--tests", nargs="+", metavar="PATIENT",
                    help="test patients to run (default: every one, or the last with --quick)")
    ap.add_argument("--steps", type=int, help="training steps per model (default: the recipe's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rerun", action="store_true",
                    help="train again even where docs/benchmark_runs.json has the run")
    ap.add_argument("--refresh-operating-point", action="store_true",
                    help="run again the runs recorded before the default operating point "
                         "followed the calibration data (their deployable Dice is the "
                         "candidate rule's)")
    ap.add_argument("--recalibrate", action="store_true",
                    help="with --refresh-operating-point: where a stale run's trained model is "
                         "still in --work, calibrate it again (medae calibrate on the patients "
                         "it was calibrated on) instead of training it again")
    ap.add_argument("--table-only", action="store_true",
                    help="run nothing: build the table from docs/benchmark_runs.json")
    ap.add_argument("--readme", action="store_true", help="also update the README's table")
    ap.add_argument("--auto-precision", choices=["bf16", "32"],
                    help="with --table-only: find the runs of recipes with train.precision auto "
                         "as trained in this precision (auto resolves by this machine's CPU or "
                         "GPU: bf16 runs recorded elsewhere are found on a machine without "
                         "native bf16 only this way)")
    args = ap.parse_args()
    steps = args.steps or (QUICK_STEPS if args.quick else None)
    medae = [sys.executable, "-m", "medae"]
    sets = _protocol_overrides()
    machine = None if args.table_only else _machine(args.device)
    ledger = _load_ledger()
    results: dict = {}
    # uncommitted changes to the code mark the runs (the files this script writes do not)
    commit = commit_of(None if args.table_only else
                       ["docs/benchmark_results.md", "docs/benchmark_results_quick.md",
                        "docs/benchmark_runs.json", "README.md"])
    for dname, cases in _datasets(args.data).items():
        names = sorted(cases)
        tests = [t for t in names if t in args.tests] if args.tests else (
            names[-1:] if args.quick else names)
        for test in tests:
            train_cases = {c: cases[c] for c in names if c != test}
            fold = args.work / dname.split()[0].lower() / f"test-{test}"
            for recipe in args.recipes:
                base, variant_sets = VARIANTS.get(recipe, (recipe, []))
                # the thresholding rules train nothing: their runs do not depend on the steps
                extra = ["train.steps=" + str(steps)] if steps and base != "intensity" else []
                if base == "brain_multi":
                    extra += [f"preprocess.inputs={json.dumps(MULTI_INPUTS[dname])}"]
                protocol = _protocol(base, [*sets, *variant_sets, *extra],
                                     steps if base != "intensity" else None, args.device,
                                     args.auto_precision if args.table_only else None)
                # the seed also picks the held-out calibration patient, so the thresholding rules
                # (nothing to train) repeat per seed wherever there is a choice of patient
                one = base == "intensity" and len(train_cases) < 2
                for seed in args.seeds[:1] if one else args.seeds:
                    # found by its settings, whatever name it was run under
                    key = dict(dataset=dname, test=test, seed=seed, protocol=protocol)
                    row = _find(ledger, **key)
                    stale = bool(row) and args.refresh_operating_point and _stale(row)
                    if args.table_only or (row and not args.rerun and not stale):
                        if row:
                            results.setdefault(dname, {}).setdefault(recipe, []).append(row)
                        continue
                    fold.mkdir(parents=True, exist_ok=True)
                    train_csv = _manifest(fold / "train.csv", train_cases)
                    test_csv = _manifest(fold / "test.csv", {test: cases[test]})
                    run = fold / f"{recipe}-seed{seed}-{protocol}"
                    if not run.exists():  # recorded under another name of the same settings
                        run = next((d for d in sorted(fold.glob(f"*-seed{seed}-{protocol}"))
                                    if d.is_dir()), run)
                    t0 = time.time()
                    former = None  # the row of a run calibrated again below
                    if stale and args.recalibrate and (run / "model.json").exists():
                        _recalibrate(medae, run, train_csv, cases, args.device)
                        former = row
                    elif stale and run.exists():  # its bundle holds the former calibration
                        _set_aside(run)
                    derived = None  # the row of the model calibrated again in this variant's way
                    if recipe in DERIVED and not (run / "model.json").exists():
                        parent, how = DERIVED[recipe]
                        pbase, psets = VARIANTS.get(parent, (parent, []))
                        pprotocol = _protocol(pbase, [*sets, *psets, *extra],
                                              steps if pbase != "intensity" else None,
                                              args.device)
                        source = next((d for d in sorted(fold.glob(f"*-seed{seed}-{pprotocol}"))
                                       if (d / "model.json").exists()), None)
                        if source is not None:
                            _recalibrate(medae, source, train_csv, cases, args.device,
                                         output=run, extra=how)
                            derived = dict(_find(ledger, dataset=dname, test=test, seed=seed,
                                                 protocol=pprotocol) or {}, run=source.name)
                    _one_run(medae, run, base, train_csv, test_csv, seed, args.device,
                             [*sets, *variant_sets, *extra])
                    row = _row(run)
                    row.update(key, recipe=recipe,
                               steps=steps if base != "intensity" else None, commit=commit,
                               date=datetime.date.today().isoformat(),
                               minutes=round((time.time() - t0) / 60, 1),
                               machine=machine)
                    if derived is not None:  # trained as its parent variant's run was
                        row.update(trained=derived.get("trained") or dict(
                            commit=derived.get("commit"), minutes=derived.get("minutes")),
                            derived_from=derived["run"],
                            calibration=derived.get("calibration", row["calibration"]))
                    if former:  # the weights are those trained then, calibrated on the same
                        # patients as then (the bundle's source reads "recalibration")
                        row.update(trained=former.get("trained") or dict(
                            commit=former.get("commit"), minutes=former.get("minutes")),
                            recalibrated=True, calibration=former["calibration"])
                    # read again before writing: another benchmark process may have added runs
                    ledger = [r for r in _load_ledger() if not _same(r, key)] + [row]
                    _save_ledger(ledger)
                    results.setdefault(dname, {}).setdefault(recipe, []).append(row)
                    print(f"{dname} test {test} {recipe} seed {seed}: " + ", ".join(
                        f"{k} {_value(row, k):.3f}" for k, _ in METRICS
                        if _value(row, k) is not None), flush=True)
    table = _table(results, args, steps)
    out = RESULTS.with_name(RESULTS.stem + "_quick.md") if args.quick else RESULTS
    out.write_text(table)
    print(table)
    if args.readme:
        _update_readme(table)


def commit_of(outputs: list[str] | None) -> str:
    """The short commit of the code measured, with ``+changes`` when tracked files other than
    ``outputs`` (the files the measuring script writes) differ from it; ``outputs`` None: the
    commit alone."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=ROOT).stdout.strip() or "unknown"
    if outputs is None:
        return head
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            *(f":!{o}" for o in outputs)],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return head + ("+changes" if dirty else "")


def _machine(device: str) -> str:
    """What the runs train on: the GPU's name where CUDA is used, else the CPU cores."""
    try:
        import torch
        if device != "cpu" and torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:
        pass
    return f"{os.cpu_count()} CPU cores"


def _one_run(medae: list[str], run: Path, base: str, train_csv: Path, test_csv: Path,
             seed: int, device: str, sets: list[str]) -> None:
    """Train (unless the folder has a model), score and evaluate at the calibrated default and
    at 1% healthy-voxel FPR."""
    log = run.with_suffix(".log")
    if not (run / "model.json").exists():
        _run([*medae, "train", "--config", str(ROOT / "configs" / f"{base}.yaml"),
              "--data", str(train_csv), "--output", str(run), "--seed", str(seed),
              "--device", device, "-q", *[a for s in sets for a in ("--set", s)]], log)
    cal = json.loads((run / "model.json").read_text()).get("calibration") or {}
    runs = [("scores", "report", []), ("scores-fpr01", "report-fpr01", ["--fpr", "0.01"])]
    if cal.get("default", "candidates") != "candidates" and \
            cal.get("candidate_threshold") is not None:  # the former default, for comparison
        runs.append(("scores-candidates", "report-candidates",
                     ["--threshold", repr(float(cal["candidate_threshold"]))]))
    for scores, report, extra in runs:
        if not (run / report / "metrics.json").exists():
            _run([*medae, "score", "--model", str(run), "--input", str(test_csv),
                  "--output", str(run / scores), "--device", device, "--no-overlays",
                  "--no-image", "-q", *extra], log)
            _run([*medae, "evaluate", "--predictions", str(run / scores), "--labels",
                  str(test_csv), "--output", str(run / report)], log)


def _row(run: Path) -> dict:
    m = json.loads((run / "report" / "metrics.json").read_text())
    bundle = json.loads((run / "model.json").read_text())
    row = {key: _metric(m, key) for key in ("voxel_ap", "voxel_auroc", "best_dice",
                                            "dice_calibrated", "lesion_recall", "fp_per_scan")}
    m01 = json.loads((run / "report-fpr01" / "metrics.json").read_text())
    row["dice_fpr01"] = _metric(m01, "dice_calibrated")
    cal = bundle["calibration"]
    row["calibration"] = cal["source"]
    row["operating_point"] = cal.get("default", "candidates")
    if row["operating_point"] == "candidates":
        row["dice_candidates_rule"] = row["dice_calibrated"]
    else:
        mc = json.loads((run / "report-candidates" / "metrics.json").read_text())
        row["dice_candidates_rule"] = _metric(mc, "dice_calibrated")
    point = cal.get("operating_point") or {}
    row["calibration_figures"] = {k: point.get(k) for k in
                                  ("threshold", "dice", "sensitivity", "lesion_recall",
                                   "fp_per_scan", "labelled_scans", "lesion_voxels",
                                   "requested")}
    row["calibration_warnings"] = len(cal.get("warnings", []))
    return row


def _stale(row: dict) -> bool:
    """Whether a recorded run predates the default operating point's rules: recorded before
    the point followed the calibration data, or a degenerate labelled point (under half of the
    calibration patients' lesion voxels caught) that ``auto`` now replaces by the voxel rule."""
    if "operating_point" not in row:
        return True
    figures = row.get("calibration_figures") or {}
    return (row["operating_point"] in ("dice", "froc")
            and figures.get("requested", "auto") == "auto"
            and (figures.get("sensitivity") or 0.0) < 0.5)


def _recalibrate(medae: list[str], run: Path, train_csv: Path, cases: dict[str, dict],
                 device: str, output: Path | None = None, extra: list[str] = ()) -> None:
    """Calibrate a run's model again with today's rules, on the patients its training
    calibrated on (its held-out validation patients, or its training patients where it had
    none): in place of its former calibration (the stale folder is set aside), or, with
    ``output``, into that new run folder with ``extra`` arguments of ``medae calibrate``
    (a variant that measures the maps of the same model otherwise)."""
    bundle = json.loads((run / "model.json").read_text())
    held_out = bundle.get("validation_cases") or []
    data = (_manifest(run.with_name(run.name + ".calibration.csv"),
                      {c: cases[c] for c in held_out}) if held_out else train_csv)
    target = output or run
    fresh = target.with_name(target.name + ".recalibrated")
    if fresh.exists():
        shutil.rmtree(fresh)
    _run([*medae, "calibrate", "--model", str(run), "--data", str(data), "--output", str(fresh),
          "--device", device, *extra], target.with_suffix(".log"))
    if output is None:
        _set_aside(run, with_log=False)  # the log stays: it holds the training and this
    fresh.rename(target)


def _set_aside(run: Path, with_log: bool = True) -> None:
    """Move a stale run's folder and log out of the way (``.stale``), so it is run again from
    the start with the code of today; an older set-aside copy is replaced."""
    for path in (run, run.with_suffix(".log")) if with_log else (run,):
        if path.exists():
            old = path.with_name(path.name + ".stale")
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
            path.rename(old)


def _metric(m: dict, key: str) -> float:
    value = {
        "voxel_ap": m["voxel"]["average_precision"], "voxel_auroc": m["voxel"]["auroc"],
        "best_dice": m["voxel"]["best_dice"], "dice_calibrated": m["voxel"]["dice_at_threshold"],
        "lesion_recall": m["lesions"]["recall"], "fp_per_scan": m["lesions"]["fp_per_scan"],
    }[key]
    return float("nan") if value is None else float(value)


def _value(row: dict, key: str) -> float | None:
    """A row's figure for the table's column ``key`` (None where the run did not measure it:
    the default operating point's figures of a run recorded before the rule followed the
    calibration data belong to the former candidate rule's column)."""
    current = "operating_point" in row
    if key in AT_DEFAULT and not current:
        return None
    if key == "dice_candidates_rule" and not current:
        return row.get("dice_calibrated")
    if key == "dice_gap":  # derived, not stored
        return row["dice_calibrated"] - row["best_dice"]
    return row.get(key)


def _fmt(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    note = f" (n={len(known)})" if len(known) < len(values) and known else ""
    if not known:
        return "–"
    if len(known) == 1:
        return f"{known[0]:.3f}{note}"
    return f"{statistics.mean(known):.3f} ± {statistics.stdev(known):.3f}{note}"


def _table(results: dict, args, steps) -> str:
    cmd = "python scripts/benchmark_brain.py" + (" --quick" if args.quick else "")
    rows = [r for per in results.values() for rs in per.values() for r in rs]
    commits = sorted({r["commit"] for r in rows})
    dates = sorted({r["date"] for r in rows})
    minutes = sum(r.get("minutes", 0) for r in rows)
    machines = sorted({r.get("machine", "?") for r in rows})
    lines = [f"Built by `{cmd}` from docs/benchmark_runs.json: {len(rows)} runs at commit"
             f"{'s' if len(commits) > 1 else ''} {', '.join(commits) or '-'}, "
             f"{' to '.join(dict.fromkeys([dates[0], dates[-1]])) if dates else '-'} "
             f"({minutes:.0f} min of runs on {', '.join(machines) or '-'}); seeds "
             f"{', '.join(map(str, args.seeds))}; training steps per model: "
             f"{steps or 'the recipe default'}; mean ± sd over seeds and folds.", ""]
    for dname, per in results.items():
        # rows in the order the recipes were asked for (not the order their runs were found)
        per = {r: per[r] for r in sorted(per, key=lambda r: args.recipes.index(r)
                                         if r in args.recipes else len(args.recipes))}
        tests = sorted({r["test"] for rs in per.values() for r in rs})
        lines += [f"**{dname}**, test patient{'s' if len(tests) > 1 else ''} "
                  f"{', '.join(tests)}", "",
                  "| recipe | n | " + " | ".join(label for _, label in METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        for recipe, rs in per.items():
            cells = [_fmt([_value(r, k) for r in rs]) for k, _ in METRICS]
            note = " (train-calibrated)" if rs[0]["calibration"].startswith("training") else ""
            lines.append(f"| {recipe}{note} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
        if len(tests) > 1:  # whether a recipe wins on every patient, not only on average
            lines += ["Per test patient (mean over seeds): voxel AP / [Dice] / deployable Dice "
                      "(default operating point) / Dice at the former candidate rule",
                      "", "| recipe | " + " | ".join(tests) + " |",
                      "|---|" + "---|" * len(tests)]
            for recipe, rs in per.items():
                cells = []
                for t in tests:
                    mine = [r for r in rs if r["test"] == t]
                    cells.append(" / ".join(
                        _mean([_value(r, k) for r in mine])
                        for k in ("voxel_ap", "best_dice", "dice_calibrated",
                                  "dice_candidates_rule")) if mine else "-")
                lines.append(f"| {recipe} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _mean(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.mean(known):.3f}" if known else "–"


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
