"""The ``medae`` command: version, help, info, and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medae import __version__
from medae.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _medae(*args):
    return subprocess.run([sys.executable, "-m", "medae", *args], capture_output=True,
                          text=True)


def test_version_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "medae", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == f"medae {__version__}"
    helptext = subprocess.run([sys.executable, "-m", "medae", "--help"], capture_output=True,
                              text=True, check=True).stdout
    assert "info" in helptext


def _nifti(path, shape=(10, 11, 12), zooms=(1.0, 1.5, 2.0)):
    aff = np.diag([-zooms[0], zooms[1], zooms[2], 1.0])
    nib.save(nib.Nifti1Image(np.ones(shape, np.int16), aff), path)


def test_info_lists_scans_and_reports_failures(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    _nifti(tmp_path / "a" / "t1.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    code = main(["info", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert len(out) == 2
    good = next(line for line in out if line.startswith("a_t1"))
    assert good.split("\t")[1:] == ["nifti", "10x11x12", "1x1.5x2 mm", "LAS"]
    bad = next(line for line in out if line.startswith("broken"))
    assert "FAILED" in bad and "broken.nii.gz" in bad


def test_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nothing here"
    res = subprocess.run([sys.executable, "-m", "medae", "info", str(missing)],
                         capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip() == f"medae: error: {missing}: no such file or folder"
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("argv, expect", [
    # --epochs wins over a recipe that sets train.steps (steps would decide the epochs)
    (["--epochs", "1"], {"epochs": 1, "steps": None}),
    (["--steps", "7"], {"epochs": 20, "steps": 7}),
    # a flag wins over --set, whatever the order on the command line
    (["--set", "train.seed=5", "--seed", "3"], {"seed": 3, "steps": 400}),
    (["--precision", "bf16", "--set", "train.precision=fp16"], {"precision": "bf16"}),
    (["--set", "train.epochs=4", "--epochs", "2"], {"epochs": 2, "steps": None}),
    ([], {"epochs": 20, "steps": 400, "seed": 0, "precision": "auto"}),
])
def test_train_flags_win_over_the_recipe(argv, expect):
    from medae.cli import build_parser, train_overrides
    from medae.config import load_config

    args = build_parser().parse_args(["train", "--config", "configs/brain_flair.yaml",
                                      "--data", "x", "--output", "y", *argv])
    cfg = load_config(ROOT / "configs" / "brain_flair.yaml", train_overrides(args))["train"]
    assert {k: cfg[k] for k in expect} == expect


def test_train_epochs_and_steps_exclude_each_other(tmp_path):
    res = _medae("train", "--config", str(ROOT / "configs" / "brain_flair.yaml"), "--data",
                 str(tmp_path), "--output", str(tmp_path / "run"), "--epochs", "1", "--steps",
                 "5")
    assert res.returncode != 0
    assert "--epochs and --steps exclude each other" in res.stderr
    assert not (tmp_path / "run").exists()
