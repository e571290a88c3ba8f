"""Issue 13: hostile and careless inputs never lose data, never kill a job, never leak an
identifier.  The corpus is in hostile.py; the CLI runs under a memory limit and a timeout."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from badinputs import is_note, n_scored
from conftest import PHANTOM_SHAPE, ROOT, write_phantoms
from hostile import IDENTIFIERS, make_hostile_corpus
from test_reliability import ENV, _rows, _texts

import medae
from medae.batch import score_sources
from medae.cli import main
from medae.errors import MedaeError, _display
from medae.io.discover import ScanSource

MEMORY_LIMIT = 3 << 30  # bytes of address space for a whole `medae` process
TIME_LIMIT = 300  # seconds


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _medae(*args):
    """The CLI in a subprocess with bounded memory and time."""
    return subprocess.run([sys.executable, "-m", "medae", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, preexec_fn=_limited, timeout=TIME_LIMIT)


def _inventory(folder: Path) -> dict[str, tuple]:
    """Every entry with its kind, mode and content hash; pipes and links are never opened."""
    inv = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(folder))
        if stat.S_ISLNK(st.st_mode):
            inv[rel] = ("link", os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            inv[rel] = ("file", st.st_mode, st.st_mtime_ns,
                        hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            inv[rel] = ("other", st.st_mode, st.st_mtime_ns)
    return inv


def _assert_no_identifiers(where: str, blobs: list[bytes]) -> None:
    for blob in blobs:
        low = blob.lower()
        for secret in IDENTIFIERS:
            assert secret.lower().encode() not in low, f"{secret!r} found in {where}"


def _assert_clean_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        _assert_no_identifiers(f"the name {p}", [str(p.relative_to(folder)).encode()])
        if p.is_file():
            _assert_no_identifiers(str(p), _texts(p))


@pytest.fixture(scope="session")
def intensity_model(tmp_path_factory) -> Path:
    """The intensity baseline (calibrated only: seconds) on small healthy phantoms."""
    from medae.config import load_config
    from medae.train import train

    root = tmp_path_factory.mktemp("intensity")
    write_phantoms(root / "healthy", 4, shape=PHANTOM_SHAPE, seed=5)
    cfg = load_config(ROOT / "configs" / "intensity.yaml", ["preprocess.size=[24, 28, 20]"])
    return train(cfg, medae.discover(root / "healthy"), root / "run", device="cpu",
                 progress=False)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    expected = make_hostile_corpus(root)
    good = write_phantoms(root / "good", 2, shape=PHANTOM_SHAPE, seed=43)
    for secret in IDENTIFIERS:
        assert secret.lower() not in str(root).lower()
    return root, expected, good


def _names(text: str, entry: Path) -> bool:
    """``text`` starts with the entry (a file, or a file in the entry's folder) as messages
    show it."""
    shown = _display(str(entry))
    return text.startswith((shown + ": ", shown + "/"))


def _failing(expected: dict[str, str]) -> dict[str, str]:
    return {n: w for n, w in expected.items() if not is_note(w) and n_scored(w) is None}


def test_corpus_is_large_enough(hostile):
    _, expected, _ = hostile
    assert len(expected) >= 60
    assert len(_failing(expected)) >= 30 and sum(map(is_note, expected.values())) >= 5


def test_score_over_hostile_corpus(intensity_model, hostile, tmp_path):
    root, expected, good = hostile
    before = _inventory(root)
    out = tmp_path / "out"
    res = _medae("score", "--model", intensity_model, "--input", root, "--output", out,
                 "--device", "cpu", "--no-overlays", "--save-latent")
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    assert _inventory(root) == before  # nothing read was modified, moved or added to

    rows, failures = _rows(out / "scores.csv"), _rows(out / "failures.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    ids = [r["case_id"] for r in rows]
    assert len(ids) == len({i.casefold() for i in ids})  # unique, whatever the letter case
    for path in good:
        assert [r for r in ok if r["source"] == str(path)], path
    lines = res.stderr.splitlines()
    failed_lines = [ln for ln in lines if ": FAILED: " in ln]
    assert len(failed_lines) == len(failures)  # exactly one stderr line per failure
    assert all(ln.startswith(("note: skipped ", "[")) for ln in lines), lines
    for name, want in expected.items():
        entry = str(root / name)
        if is_note(want):
            text = want.removeprefix("note: ")
            notes = [ln for ln in lines if ln.startswith(f"note: skipped {entry}: ") and text in ln]
            assert len(notes) == 1, (name, res.stderr[-2000:])
            assert not [r for r in rows if r["source"] == entry], name
        elif n_scored(want) is not None:
            mine = [r for r in ok
                    if r["source"] == entry or r["source"].startswith((entry + " [", entry + "/"))]
            assert len(mine) == n_scored(want), (name, [r for r in rows if entry in r["source"]])
        else:
            mine = [r for r in failures if _names(r["reason"], root / name)]
            assert len(mine) == 1, (name, failures)
            reason = mine[0]["reason"]
            assert want in reason, (name, reason)
            assert [ln for ln in failed_lines if ln.endswith(reason)], (name, reason)
    assert len(failures) == len(_failing(expected))
    assert len(ok) == len(good) + sum(n_scored(w) or 0 for w in expected.values())
    # names equal to medae's own outputs never clobbered them
    assert json.loads((out / "run.json").read_text())["n_scans"] == len(rows)
    assert np.load(out / "latents.npz")["latent"].shape[0] == len(ok)
    _assert_no_identifiers("medae score output", [res.stdout.encode(), res.stderr.encode()])
    _assert_clean_tree(out)
    # a rerun with --continue redoes only the failures and scores nothing twice
    again = _medae("score", "--model", intensity_model, "--input", root, "--output", out,
                   "--device", "cpu", "--no-overlays", "--continue", "-q")
    assert again.returncode == 1 and f"skipped {len(ok)} " in again.stdout, again.stdout
    assert _rows(out / "scores.csv") == rows or len(_rows(out / "scores.csv")) == len(rows)


def test_info_over_hostile_corpus(hostile):
    root, expected, _ = hostile
    before = _inventory(root)
    res = _medae("-v", "info", root)
    assert res.returncode == 1 and "Traceback" not in res.stderr + res.stdout
    failed = [ln for ln in res.stdout.splitlines() if "\tFAILED\t" in ln]
    assert len(failed) == len(_failing(expected))
    for name, want in _failing(expected).items():
        mine = [ln for ln in failed if _names(ln.split("\t")[3], root / name)]
        assert len(mine) == 1 and want in mine[0], (name, mine)
    _assert_no_identifiers("medae info output", [res.stdout.encode(), res.stderr.encode()])
    assert _inventory(root) == before


def test_train_over_hostile_corpus(hostile, tmp_path):
    root, expected, good = hostile
    before = _inventory(root)
    run = tmp_path / "run"
    res = _medae("-v", "train", "--config", ROOT / "configs" / "intensity.yaml", "--data", root,
                 "--output", run, "--device", "cpu", "--set", "preprocess.size=[24, 28, 20]")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    skipped = _rows(run / "skipped.csv")
    assert len(skipped) == len(_failing(expected))
    for name, want in _failing(expected).items():
        mine = [r for r in skipped if _names(r["error"], root / name)]
        assert len(mine) == 1 and want in mine[0]["error"], (name, mine)
    meta = json.loads((run / "model.json").read_text())
    n_good = len(good) + sum(n_scored(w) or 0 for w in expected.values())
    t = meta["training"]
    assert t["train_subjects"] + t["val_subjects"] == n_good
    _assert_no_identifiers("medae train output", [res.stdout.encode(), res.stderr.encode()])
    _assert_clean_tree(run)
    assert _inventory(root) == before


def test_load_scan_over_hostile_corpus(hostile):
    root, expected, _ = hostile
    for name, want in expected.items():
        path = root / name
        if n_scored(want) == 1:
            assert medae.load_scan(path).array.ndim == 3, name
            continue
        if n_scored(want) or want == "note: a link to a folder":
            continue  # several scans: load_scan asks to pick one; a linked folder given is read
        with pytest.raises(MedaeError) as err:  # pipes and devices are never opened
            medae.load_scan(path)
        message = str(err.value)
        assert "\n" not in message, name
        if not is_note(want):
            assert want in message and message.startswith(_display(str(path))), (name, message)
        for secret in IDENTIFIERS:
            assert secret.lower() not in message.lower(), (name, message)


# ------------------------------------------------------------------------------------------------
# a crash inside one scan (a panic from a compiled decoder) never stops the job


class PanicException(BaseException):
    """What pyo3 raises when Rust code panics: not an Exception subclass."""


def test_base_exception_in_one_scan_is_a_failure(intensity_model, tmp_path, monkeypatch):
    inp = tmp_path / "in"
    write_phantoms(inp, 3, shape=PHANTOM_SHAPE, seed=44)
    real = ScanSource.load

    def load(self):
        if self.case_id == "sub01":
            raise PanicException(f"decoder panicked at {IDENTIFIERS[0]}")
        return real(self)

    monkeypatch.setattr(ScanSource, "load", load)
    out = tmp_path / "out"
    summary = score_sources(medae.load_model(intensity_model, device="cpu"),
                            medae.discover(inp), out, progress=False, overlays=False)
    assert (summary.scored, summary.failed) == (2, 1)
    (fail,) = _rows(out / "failures.csv")
    assert fail["reason"].startswith(f"{inp / 'sub01.nii.gz'}: unexpected PanicException")
    assert IDENTIFIERS[0] not in fail["reason"]  # its message may quote the file: withheld

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ScanSource, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops the job
        score_sources(medae.load_model(intensity_model, device="cpu"), medae.discover(inp),
                      tmp_path / "out2", progress=False, overlays=False)


def test_decoder_panic_while_decoding_dicom_is_one_line(hostile, monkeypatch):
    import pydicom

    root, _, _ = hostile

    def panic(self):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panic))
    with pytest.raises(MedaeError, match=r"cannot decode pixel data.*\(PanicException\)"):
        medae.load_scan(root / "dcm_bad_jpeg2000")


# ------------------------------------------------------------------------------------------------
# outputs only ever replace what medae wrote


def test_output_never_replaces_a_users_folder(intensity_model, tmp_path, capsys):
    scans = tmp_path / "SCANS"
    write_phantoms(scans, 2, shape=PHANTOM_SHAPE, seed=45)
    (scans / "sub00").mkdir()  # the user's own folder, named like the case
    (scans / "sub00" / "notes.txt").write_text("my notes\n")
    shutil.copy(scans / "sub01.nii.gz", scans / "sub00" / "other.nii.gz")
    before = _inventory(scans)
    base = ["score", "--model", str(intensity_model), "--device", "cpu", "--no-overlays"]
    assert main([*base, "--input", str(scans / "sub00.nii.gz"), "--output", str(scans)]) == 1
    err = capsys.readouterr().err
    assert f"{scans / 'sub00'}: exists and was not written by medae" in err
    assert {k: v for k, v in _inventory(scans).items() if k in before} == before
    (fail,) = _rows(scans / "failures.csv")
    assert fail["case_id"] == "sub00" and "not written by medae" in fail["reason"]

    # an output folder inside the input folder is never read back as input
    out = scans / "results"
    assert main([*base, "--input", str(scans), "--output", str(out)]) == 0
    first = _rows(out / "scores.csv")
    assert sorted(r["case_id"] for r in first) == ["sub00", "sub00_other", "sub01"]
    assert main([*base, "--input", str(scans), "--output", str(out), "--continue"]) == 0
    assert "scored 0, skipped 3" in capsys.readouterr().out
    assert main([*base, "--input", str(scans), "--output", str(out)]) == 0  # replaces its own
    assert [r["case_id"] for r in _rows(out / "scores.csv")] == [r["case_id"] for r in first]
    assert (scans / "sub00" / "notes.txt").read_text() == "my notes\n"


def test_output_holding_a_users_tables_or_naming_a_file_is_refused(intensity_model, tmp_path,
                                                                  capsys):
    inp = tmp_path / "in"
    write_phantoms(inp, 1, shape=PHANTOM_SHAPE, seed=46)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scores.csv").write_text("my,own\n1,2\n")
    base = ["score", "--model", str(intensity_model), "--input", str(inp), "--device", "cpu"]
    assert main([*base, "--output", str(mine)]) == 1
    err = capsys.readouterr().err
    assert err == (f"medae: error: {mine / 'scores.csv'}: exists and was not written by medae; "
                   "it would be overwritten: choose another --output\n")
    assert sorted(p.name for p in mine.iterdir()) == ["scores.csv"]
    assert (mine / "scores.csv").read_text() == "my,own\n1,2\n"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main([*base, "--output", str(afile)]) == 1
    assert capsys.readouterr().err == \
        f"medae: error: {afile}: --output exists and is not a folder\n"


# ------------------------------------------------------------------------------------------------
# every flag, override and bundle field checked once, before any work


@pytest.fixture
def healthy(tmp_path):
    write_phantoms(tmp_path / "healthy", 2, shape=PHANTOM_SHAPE, seed=47)
    return tmp_path / "healthy"


@pytest.mark.parametrize("override, text", [
    ("train.batch_size=0", "config: train.batch_size is 0; expected an integer from 1"),
    ("train.seed=abc", "config: train.seed is 'abc'; expected an integer"),
    ("train=5", "config: train is 5; expected a mapping"),
    ("data.val_fraction=2", "config: data.val_fraction is 2; expected a number from 0"),
    ("model.name=resnet_from_the_internet", "model.name is 'resnet_from_the_internet'"),
    ("train.lr=[", "--set 'train.lr=[': the value '[' is not valid YAML"),
    ("train.lr=-1", "config: train.lr is -1; expected a finite number > 0"),
    ("train.lr=.nan", "config: train.lr is nan"),
    ("train.epochs=0", "config: train.epochs is 0"),
    ("loss.kind=huber", "config: loss.kind is 'huber'"),
    ("data.patch_size=[0, 4, 4]", "config: data.patch_size is [0, 4, 4]"),
])
def test_bad_overrides_refused_before_any_work(healthy, tmp_path, capsys, override, text):
    run = tmp_path / "run"
    rc = main(["train", "--config", str(ROOT / "configs" / "intensity.yaml"), "--data",
               str(healthy), "--output", str(run), "--device", "cpu", "--set", override])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("medae: error: ") and text in err, err
    assert len(err.splitlines()) == 1 and not run.exists()


def test_train_output_naming_a_file(healthy, tmp_path, capsys):
    afile = tmp_path / "run"
    afile.write_text("x")
    assert main(["train", "--config", str(ROOT / "configs" / "intensity.yaml"), "--data",
                 str(healthy), "--output", str(afile), "--device", "cpu"]) == 1
    assert capsys.readouterr().err == \
        f"medae: error: {afile}: --output exists and is not a folder\n"


@pytest.mark.parametrize("flags, text", [
    (["--threshold", "nan"], "--threshold nan: expected a finite number"),
    (["--threshold=-inf"], "--threshold -inf: expected a finite number"),
    (["--fpr", "2"], "--fpr 2.0: expected a false-positive rate between 0 and 1"),
    (["--fpr", "nan"], "--fpr nan"),
    (["--fpr", "0.9"], "--fpr 0.9: outside the calibrated range"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--workers", "0"], "--workers 0"),
])
def test_bad_score_flags_refused_before_any_work(intensity_model, healthy, tmp_path, capsys,
                                                 flags, text):
    out = tmp_path / "out"
    rc = main(["score", "--model", str(intensity_model), "--input", str(healthy), "--output",
               str(out), "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("medae: error: ") and text in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("edit, text", [
    (lambda m: m.pop("config"), "config: missing"),
    (lambda m: m["config"].update(train=5), "config: train is 5"),
    (lambda m: m.update(calibration={}), "calibration: expected null or calibrated thresholds"),
    (lambda m: m["calibration"]["voxel_thresholds"].update({"0.01": float("nan")}),
     "NaN is not a JSON number"),
    (lambda m: m["calibration"]["fpr_curve"].update(fpr=[]), "calibration.fpr_curve"),
    (lambda m: m["calibration"].update(scan_threshold="high"), "calibration.scan_threshold"),
    (lambda m: m.update(intensity=_nested(200_000)), "nested too deeply"),
])
def test_bad_bundle_fields_refused(intensity_model, healthy, tmp_path, capsys, edit, text):
    run = tmp_path / "bundle"
    shutil.copytree(intensity_model, run)
    meta = json.loads((run / "model.json").read_text())
    edit(meta)
    payload = json.dumps(meta)
    if "nested" in text:  # raw text: a parser recursing on it would crash
        payload = payload.replace(json.dumps(meta["intensity"]), meta["intensity"])
    (run / "model.json").write_text(payload)
    out = tmp_path / "out"
    rc = main(["score", "--model", str(run), "--input", str(healthy), "--output", str(out),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"medae: error: {run / 'model.json'}: ") and text in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


# ------------------------------------------------------------------------------------------------
# medae evaluate on incomplete prediction folders


@pytest.fixture(scope="module")
def scored(intensity_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("scored")
    images = root / "images"
    write_phantoms(images, 2, shape=PHANTOM_SHAPE, seed=48, lesion=True)
    labels = root / "labels"
    labels.mkdir()
    for p in sorted(images.glob("*_label.nii.gz")):
        p.rename(labels / p.name.replace("_label", ""))
    score_sources(medae.load_model(intensity_model, device="cpu"), medae.discover(images),
                  root / "pred", progress=False, overlays=False)
    return root / "pred", labels


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _scores_edit(edit):
    def apply(pred: Path) -> None:
        text = (pred / "scores.csv").read_text().splitlines()
        (pred / "scores.csv").write_text("\n".join(edit(text)) + "\n")
    return apply


@pytest.mark.parametrize("damage, where, text", [
    (lambda p: (p / "sub00" / "anomaly_map.nii.gz").unlink(), "sub00/anomaly_map.nii.gz",
     "anomaly map: missing"),
    (lambda p: _truncate(p / "sub00" / "anomaly_map.nii.gz"), "sub00/anomaly_map.nii.gz",
     "anomaly map: unreadable"),
    (lambda p: _truncate(p / "sub01" / "candidates.nii.gz"), "sub01/candidates.nii.gz",
     "candidates: unreadable"),
    (lambda p: (p / "sub00" / "brain_mask.nii.gz").unlink(), "sub00/brain_mask.nii.gz",
     "brain mask: missing"),
    (lambda p: (p / "sub01" / "result.json").unlink(), "sub01/result.json", "missing"),
    (lambda p: (p / "sub01" / "result.json").write_text("{"), "sub01/result.json",
     "unreadable case record"),
    (_scores_edit(lambda t: ["name,value", *t[1:]]), "scores.csv",
     "missing column(s) case_id, status, score"),
    (_scores_edit(lambda t: [*t, t[1]]), "scores.csv", "is listed twice"),
    (_scores_edit(lambda t: [t[0], t[1].replace(",ok,", ",ok,").replace(
        t[1].split(",")[2], "nan"), *t[2:]]), "scores.csv", "is not a finite number"),
])
def test_evaluate_fails_cleanly_on_incomplete_predictions(scored, tmp_path, capsys, damage,
                                                          where, text):
    pred, labels = scored
    broken = tmp_path / "pred"
    shutil.copytree(pred, broken)
    damage(broken)
    report = tmp_path / "report"
    rc = main(["evaluate", "--predictions", str(broken), "--labels", str(labels), "--output",
               str(report)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"medae: error: {broken / where}: ") and text in err, err
    assert len(err.splitlines()) == 1 and not report.exists()


def test_evaluate_works_on_the_intact_folder(scored, tmp_path):
    pred, labels = scored
    assert main(["evaluate", "--predictions", str(pred), "--labels", str(labels), "--output",
                 str(tmp_path / "report")]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["n_scans"] == 2 and 0 <= metrics["voxel"]["auroc"] <= 1
    nib.load(pred / "sub00" / "anomaly_map.nii.gz")  # untouched by the damaged copies
