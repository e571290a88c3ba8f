"""scripts/benchmark_brain.py keeps every finished run in a ledger and never repeats one."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("benchmark_brain",
                                                  ROOT / "scripts" / "benchmark_brain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # a data folder shaped like the shared one (empty files: nothing is read)
    for pat in ("pat0001", "pat0002"):
        d = tmp_path / "data" / "brain" / "brats2013" / pat
        d.mkdir(parents=True)
        for name in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "brainmask",
                     "OTMultiClass"):
            (d / f"{name}.nii.gz").touch()
    monkeypatch.setattr(mod, "LEDGER", tmp_path / "runs.json")
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results.md")
    calls = []

    def fake_run(medae, run, base, train_csv, test_csv, seed, device, sets):
        calls.append((run.name, base, seed, list(sets)))

    def fake_row(run):
        seed = int(run.name.split("seed")[1].split("-")[0])
        return {"voxel_ap": 0.5 + seed / 10, "voxel_auroc": 0.9, "best_dice": 0.4,
                "dice_calibrated": 0.3, "dice_fpr01": 0.2, "lesion_recall": 1.0,
                "fp_per_scan": 0.0, "calibration": "held-out validation scans",
                "operating_point": "dice", "dice_gap": -0.1, "dice_candidates_rule": 0.05,
                "calibration_figures": {"sensitivity": 0.8, "requested": "auto"}}

    monkeypatch.setattr(mod, "_one_run", fake_run)
    monkeypatch.setattr(mod, "_row", fake_row)
    mod._calls = calls
    mod._data = tmp_path / "data"
    return mod


def _main(mod, monkeypatch, *argv):
    monkeypatch.setattr(sys, "argv", ["benchmark_brain.py", "--data", str(mod._data),
                                      "--work", str(mod._data.parent / "work"), *argv])
    mod.main()


def _fake_calibrate(bench, monkeypatch) -> list[list[str]]:
    """Replace the benchmark's medae commands by one that writes a recalibrated bundle into
    --output; returns the list the commands are recorded in."""
    commands = []

    def fake_medae(cmd, log):
        commands.append(cmd)
        out = Path(cmd[cmd.index("--output") + 1])
        out.mkdir()
        (out / "model.json").write_text('{"recalibrated": true}')

    monkeypatch.setattr(bench, "_run", fake_medae)
    return commands


def test_runs_are_kept_and_not_repeated(bench, monkeypatch):
    _main(bench, monkeypatch, "--quick", "--recipes", "raw", "brain_flair", "--seeds", "0", "1")
    # raw is one run (a rule has no seed), brain_flair one per seed; the quick fold is pat0002
    assert [(c[1], c[2]) for c in bench._calls] == [("intensity", 0), ("brain_flair", 0),
                                                    ("brain_flair", 1)]
    assert "scoring.erode_mm=0" in bench._calls[0][3]
    assert "train.steps=400" in bench._calls[1][3]
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    assert len(runs) == 3
    assert {r["test"] for r in runs} == {"pat0002"}
    assert sorted(r["voxel_ap"] for r in runs) == pytest.approx([0.5, 0.5, 0.6])
    assert all(len(r["protocol"]) == 12 for r in runs)
    assert sorted(r["recipe"] for r in runs if r["steps"] == 400) == ["brain_flair"] * 2
    assert [r["steps"] for r in runs if r["recipe"] == "raw"] == [None]  # trains nothing

    bench._calls.clear()
    _main(bench, monkeypatch, "--quick", "--recipes", "raw", "brain_flair", "--seeds", "0", "1")
    assert bench._calls == []  # every run is in the ledger
    table = bench.RESULTS.with_name("results_quick.md").read_text()
    assert "| brain_flair | 2 | 0.550 ± 0.071 |" in table
    assert "| raw | 1 | 0.500 |" in table

    # other steps are another protocol: trained again, the earlier runs stay in the ledger
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0",
          "--steps", "10")
    assert [(c[1], c[2]) for c in bench._calls] == [("brain_flair", 0)]
    assert len(json.loads(bench.LEDGER.read_text())["runs"]) == 4

    # with more than one test patient, a per-patient table says where a recipe wins
    _main(bench, monkeypatch, "--recipes", "raw", "--tests", "pat0001", "pat0002")
    table = bench.RESULTS.read_text()
    assert "| raw | 2 | 0.500 ± 0.000 |" in table
    assert "| recipe | pat0001 | pat0002 |" in table
    assert "| raw | 0.500 / 0.400 / 0.300 / 0.050 | 0.500 / 0.400 / 0.300 / 0.050 |" in table

    # --table-only runs nothing and reports only the runs of the asked protocol
    bench._calls.clear()
    _main(bench, monkeypatch, "--tests", "pat0001", "--recipes", "brain_multi", "--table-only")
    assert bench._calls == []
    assert "0 runs" in bench.RESULTS.read_text()


def test_runs_are_found_by_their_settings_not_their_name(bench, monkeypatch):
    """A run is the same run under any name whose settings resolve the same (a variant that
    sets the recipe's own default, or the default after a recipe changes to the variant's
    value); a setting that differs is another protocol."""
    monkeypatch.setitem(bench.VARIANTS, "brain_flair_same",
                        ("brain_flair", ["train.lr=0.001"]))   # the recipe's own value
    monkeypatch.setitem(bench.VARIANTS, "brain_flair_other",
                        ("brain_flair", ["train.lr=0.0005"]))
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0")
    assert len(bench._calls) == 1
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair_same", "--seeds", "0")
    assert len(bench._calls) == 1                       # found: nothing trained again
    table = bench.RESULTS.with_name("results_quick.md").read_text()
    assert "| brain_flair_same | 1 | 0.500 |" in table
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair_other", "--seeds", "0")
    assert len(bench._calls) == 2 and "train.lr=0.0005" in bench._calls[1][3]
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    assert sorted(r["recipe"] for r in runs) == ["brain_flair", "brain_flair_other"]
    assert len({r["protocol"] for r in runs}) == 2


def test_runs_from_before_the_operating_point_rules(bench, monkeypatch):
    """A run recorded before the default operating point followed the calibration data measured
    its deployable figures at the candidate rule: they count in that rule's column, not in the
    default's, and --refresh-operating-point runs it again (the threshold rule is not part of
    the protocol hash, so the same run is found and replaced)."""
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0")
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    for key in ("operating_point", "dice_gap", "dice_candidates_rule"):
        del runs[0][key]
    bench._save_ledger(runs)
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0",
          "--table-only")
    table = bench.RESULTS.with_name("results_quick.md").read_text()
    # AP and [Dice] count; the default's Dice, gap, recall and FP are not known; 0.3 was the
    # candidate rule's
    assert "| brain_flair | 1 | 0.500 | 0.900 | 0.400 | – | – | 0.300 | 0.200 | – | – |" in table
    bench._calls.clear()
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0")
    assert bench._calls == []  # found: the operating point's settings are not in the hash
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0",
          "--refresh-operating-point")
    assert len(bench._calls) == 1
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    assert len(runs) == 1 and runs[0]["operating_point"] == "dice"
    table = bench.RESULTS.with_name("results_quick.md").read_text()
    assert "| brain_flair | 1 | 0.500 | 0.900 | 0.400 | 0.300 | -0.100 | 0.050 | 0.200 | " \
           "1.000 | 0.000 |" in table
    monkeypatch.setitem(bench.VARIANTS, "brain_flair_froc",
                        ("brain_flair", ["scoring.operating_point=froc"]))
    assert bench._protocol("brain_flair", ["scoring.operating_point=froc"], 400) == \
        bench._protocol("brain_flair", [], 400)


def test_degenerate_labelled_points_are_refreshed(bench, monkeypatch, tmp_path):
    """A run whose labelled point caught under half of its calibration patients' lesion voxels
    was recorded before auto replaced such a point by the voxel rule: --refresh-operating-point
    runs it again from the start (its folder set aside), unless the recipe asked for dice."""
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0")
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    runs[0]["calibration_figures"]["sensitivity"] = 0.2
    bench._save_ledger(runs)
    run = tmp_path / "work" / "brats" / "test-pat0002" / bench._calls[0][0]
    run.mkdir(parents=True)
    (run / "model.json").write_text("{}")
    run.with_suffix(".log").write_text("old\n")
    bench._calls.clear()
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0")
    assert bench._calls == []  # without the flag, the ledger's run stands
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0",
          "--refresh-operating-point")
    assert len(bench._calls) == 1
    assert not run.exists() and (run.parent / (run.name + ".stale") / "model.json").exists()
    assert (run.parent / (run.name + ".log.stale")).read_text() == "old\n"
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    assert len(runs) == 1 and runs[0]["calibration_figures"]["sensitivity"] == 0.8
    assert not bench._stale(runs[0])
    assert not bench._stale({**runs[0], "calibration_figures": {"sensitivity": 0.2,
                                                                "requested": "dice"}})
    assert bench._stale({**runs[0], "calibration_figures": {"sensitivity": 0.2}})


def test_recalibrate_calibrates_the_trained_model_again_on_its_own_patients(bench, monkeypatch,
                                                                           tmp_path):
    """--refresh-operating-point --recalibrate: a stale run whose model is still on disk (here
    under another name of the same settings) is calibrated again by medae calibrate on its
    held-out validation patient, not trained again; its row keeps the training's commit."""
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0")
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    runs[0]["calibration_figures"]["sensitivity"] = 0.2
    runs[0]["commit"], runs[0]["minutes"] = "trained1", 8.0
    bench._save_ledger(runs)
    fold = tmp_path / "work" / "brats" / "test-pat0002"
    run = fold / bench._calls[0][0].replace("brain_flair", "brain_flair_old")
    run.mkdir(parents=True)
    (run / "model.json").write_text(json.dumps({"validation_cases": ["pat0001"]}))
    commands = _fake_calibrate(bench, monkeypatch)
    bench._calls.clear()
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0",
          "--refresh-operating-point", "--recalibrate")
    [cmd] = commands
    assert cmd[3] == "calibrate" and cmd[cmd.index("--model") + 1] == str(run)
    manifest = Path(cmd[cmd.index("--data") + 1]).read_text().splitlines()
    assert [line.split(",")[0] for line in manifest] == ["case_id", "pat0001"]
    assert [c[0] for c in bench._calls] == [run.name]  # scored and evaluated, not trained
    assert json.loads((run / "model.json").read_text()) == {"recalibrated": True}
    assert (fold / (run.name + ".stale") / "model.json").exists()
    [row] = json.loads(bench.LEDGER.read_text())["runs"]
    assert row["recalibrated"] and row["trained"] == {"commit": "trained1", "minutes": 8.0}
    assert row["calibration"] == "held-out validation scans"  # the same patients as then


def test_auto_precision_finds_runs_trained_elsewhere(bench, monkeypatch):
    """A recipe with train.precision auto is hashed with the precision it trains in; tables
    built on a machine where auto resolves otherwise find the recorded runs with
    --auto-precision."""
    monkeypatch.setitem(bench.VARIANTS, "brain_flair_fp32_named",
                        ("brain_flair", ['train.precision="32"']))
    monkeypatch.setitem(bench.VARIANTS, "brain_flair_bf16_named",
                        ("brain_flair", ["train.precision=bf16"]))
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair_bf16_named", "--seeds", "0")
    assert len(bench._calls) == 1
    sets = [*bench._protocol_overrides(), "train.steps=400"]
    as_bf16 = bench._protocol("brain_flair", sets, 400, "cpu", "bf16")
    as_32 = bench._protocol("brain_flair", sets, 400, "cpu", "32")
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    assert runs[0]["protocol"] == as_bf16 != as_32
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0",
          "--table-only", "--auto-precision", "bf16")
    table = bench.RESULTS.with_name("results_quick.md").read_text()
    assert "| brain_flair | 1 | 0.500 |" in table
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0",
          "--table-only", "--auto-precision", "32")
    table = bench.RESULTS.with_name("results_quick.md").read_text()
    assert "| brain_flair |" not in table


def test_a_map_units_variant_calibrates_its_parents_model_again(bench, monkeypatch, tmp_path):
    """brain_flair_iqr_fp32 measures brain_flair_normalised_fp32's model (maps in the normalised
    image's units, as the recipe measured them before map_units iqr) in IQR units: where that
    model of the fold and seed is on disk it is calibrated again (medae calibrate --map-units
    iqr, on its own held-out patient) into the variant's run folder, not trained again; the
    parent's folder and row stay as they were; without a parent model it trains."""
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair_normalised_fp32", "--seeds",
          "0", "1")
    runs = json.loads(bench.LEDGER.read_text())["runs"]
    for r in runs:
        r["commit"], r["minutes"] = "trained1", 8.0
    bench._save_ledger(runs)
    fold = tmp_path / "work" / "brats" / "test-pat0002"
    parent = fold / bench._calls[0][0]
    parent.mkdir(parents=True)
    (parent / "model.json").write_text(json.dumps({"validation_cases": ["pat0001"]}))
    commands = _fake_calibrate(bench, monkeypatch)
    bench._calls.clear()
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair_iqr_fp32", "--seeds", "0",
          "1")
    [cmd] = commands  # seed 0 has its parent's model, seed 1 none
    assert cmd[3] == "calibrate" and cmd[cmd.index("--model") + 1] == str(parent)
    assert cmd[-2:] == ["--map-units", "iqr"]
    manifest = Path(cmd[cmd.index("--data") + 1]).read_text().splitlines()
    assert [line.split(",")[0] for line in manifest] == ["case_id", "pat0001"]
    derived = Path(cmd[cmd.index("--output") + 1]).with_suffix("")
    assert derived.name.startswith("brain_flair_iqr_fp32-seed0-")
    assert json.loads((derived / "model.json").read_text()) == {"recalibrated": True}
    assert json.loads((parent / "model.json").read_text()) == {"validation_cases": ["pat0001"]}
    assert [c[0] for c in bench._calls] == [derived.name, derived.name.replace("seed0", "seed1")]
    assert "scoring.map_units=iqr" in bench._calls[1][3]  # seed 1: trained with the setting
    rows = {(r["recipe"], r["seed"]): r for r in json.loads(bench.LEDGER.read_text())["runs"]}
    assert len(rows) == 4 and rows["brain_flair_normalised_fp32", 0]["commit"] == "trained1"
    row = rows["brain_flair_iqr_fp32", 0]
    assert row["derived_from"] == parent.name
    assert row["trained"] == {"commit": "trained1", "minutes": 8.0}
    assert row["protocol"] != rows["brain_flair_normalised_fp32", 0]["protocol"]
    assert "derived_from" not in rows["brain_flair_iqr_fp32", 1]
    # the name finds its runs again, and the recipe's float32 name (histogram standardisation
    # since) is another protocol: a run of its own, not these
    bench._calls.clear()
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair_iqr_fp32", "--seeds", "0", "1")
    assert bench._calls == []
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair_fp32", "--seeds", "0")
    [(name, *_)] = bench._calls
    assert name.startswith("brain_flair_fp32-seed0-") and name.split("-")[-1] != row["protocol"]


def test_map_units_are_each_recipes_own_and_normalised_keeps_old_hashes(bench):
    """brain_flair measures its maps in IQR units; the benchmark copies its post-processing to
    every recipe but not its map units (the intensity baseline keeps its own), and a run pinned
    to normalised units has the hash it had before the setting existed."""
    sets = bench._protocol_overrides()
    assert not any(s.startswith("scoring.map_units") for s in sets)
    plain = bench._protocol("intensity", sets, None)
    assert plain == bench._protocol("intensity", [*sets, bench.NRM], None)
    assert plain != bench._protocol("intensity", [*sets, "scoring.map_units=iqr"], None)
    flair = [*sets, "train.steps=400", 'train.precision="32"']
    assert bench._protocol("brain_flair", flair, 400) == \
        bench._protocol("brain_flair", [*flair, "scoring.map_units=iqr"], 400)
    assert bench._protocol("brain_flair", flair, 400) != \
        bench._protocol("brain_flair", [*flair, bench.NRM], 400)


def test_a_recipe_at_the_quick_length_is_one_protocol_and_pinned_variants_keep_theirs(
        bench, monkeypatch):
    """brain_flair trains 400 steps, the quick protocol's length: its full-protocol run is its
    quick run (one hash, found in either mode); a recipe at another length has two protocols;
    the variants measured at 1,200 steps (S1200) keep that length at the full protocol."""
    sets, n = bench._protocol_overrides(), bench.QUICK_STEPS
    at_quick = f"train.steps={n}"
    quick = bench._protocol("brain_flair", [*sets, at_quick], n)
    assert bench._protocol("brain_flair", sets, None) == quick
    assert bench._protocol("brain_flair", [*sets, bench.S1200], None) != quick
    # ... and quick overrides the pin: the pinned variant's quick run is the recipe's
    assert bench._protocol("brain_flair", [*sets, bench.S1200, at_quick], n) == quick
    multi = [*sets, "preprocess.inputs=[\"flair\", \"t1\"]"]
    assert bench._protocol("brain_multi", multi, None) != \
        bench._protocol("brain_multi", [*multi, at_quick], n)
    for name in ("brain_flair_hist_fp32", "brain_flair_normalised", "brain_flair_x3"):
        assert bench.S1200 in bench.VARIANTS[name][1]
    # a full-protocol run of the recipe finds the quick run recorded before
    _main(bench, monkeypatch, "--quick", "--recipes", "brain_flair", "--seeds", "0")
    assert len(bench._calls) == 1
    bench._calls.clear()
    _main(bench, monkeypatch, "--recipes", "brain_flair", "--tests", "pat0002", "--seeds", "0")
    assert bench._calls == []
