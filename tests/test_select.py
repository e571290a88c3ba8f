"""``train.select: ap``: the bundle keeps the epoch whose maps of the labelled validation scans
have the highest pooled voxel AP, evaluated every ``train.select_every`` steps (issue 26: on the
brain benchmark the validation loss fell while the AP fell)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import write_manifest as _manifest
from conftest import write_phantoms
from safetensors.torch import load_file
from sklearn.metrics import average_precision_score

import medae
import medae.train as train_mod
from medae.cli import main
from medae.config import load_config
from medae.errors import MedaeError
from medae.io.discover import discover
from medae.train import _select_now, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.channels=[8, 16, 32]", "preprocess.spacing=[2, 2, 2]",
        "preprocess.size=[16, 16, 16]", "train.batch_size=8", "train.warmup_steps=2",
        "train.lr=0.003", "data.augment={}", "data.val_fraction=0.4",
        "data.lesion_samples=mask", "train.patience=100"]


@pytest.fixture(scope="module")
def patients(tmp_path_factory):
    folder = tmp_path_factory.mktemp("patients")
    images = write_phantoms(folder, 5, shape=(14, 16, 12), lesion=True, seed=3)
    return _manifest(folder / "train.csv", images), images


def _rows(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_select_ap_keeps_the_epoch_with_the_best_validation_ap(patients, tmp_path):
    man, _ = patients
    sets = [*TINY, "train.steps=12", "train.max_steps_per_epoch=2", "train.select_every=4"]
    run = train(load_config(ROOT / "configs" / "ae2d.yaml", [*sets, "train.select=ap"]),
                discover(man), tmp_path / "ap", device="cpu", progress=False)
    rows = _rows(run)
    assert len(rows) == 6  # 12 steps of 2
    # evaluated after the epochs that pass steps 4, 8 and 12 (the last): epochs 1, 3, 5
    evaluated = [int(r["epoch"]) for r in rows if r["val_ap"]]
    assert evaluated == [1, 3, 5]
    aps = {int(r["epoch"]): float(r["val_ap"]) for r in rows if r["val_ap"]}
    meta = json.loads((run / "model.json").read_text())
    tr = meta["training"]
    best = max(aps, key=aps.get)
    assert tr["best_epoch"] == best and tr["best_ap"] == pytest.approx(aps[best], abs=1e-12)
    assert tr["selected_on"].startswith("pooled voxel AP of 2 labelled validation scan(s)")
    assert tr["best_loss"] == pytest.approx(float(rows[best]["val_loss"]))
    # the bundle holds that epoch's weights: its maps of the validation scans, scored as
    # `medae score` scores them, give that AP (scikit-learn as the reference)
    model = medae.load_model(run, device="cpu")
    by_id = {s.case_id: s for s in discover(man)}
    scores, labels = [], []
    for case in meta["validation_cases"]:
        scan, prep = model.load(by_id[case])
        m = model.scan_map(scan, prep)
        lesion = by_id[case].load_companion("label", scan)
        scores.append(m.heatmap[m.brain_mask])
        labels.append(lesion[m.brain_mask])
    ref = average_precision_score(np.concatenate(labels), np.concatenate(scores))
    assert ref == pytest.approx(aps[best], abs=1e-6)
    assert 0.05 < ref <= 1.0

    # selecting never changes what the model trains on: the same losses, epoch for epoch
    loss_run = train(load_config(ROOT / "configs" / "ae2d.yaml", sets), discover(man),
                     tmp_path / "loss", device="cpu", progress=False)
    assert [r["train_loss"] for r in _rows(loss_run)] == [r["train_loss"] for r in rows]
    assert "val_ap" not in _rows(loss_run)[0]
    assert json.loads((loss_run / "model.json").read_text())["training"]["selected_on"] == \
        "validation"


def test_select_ap_resumes_exactly(patients, tmp_path, monkeypatch):
    """Killed after an evaluated epoch, resumed: the same selected epoch, AP and weights."""
    man, _ = patients
    cfg = load_config(ROOT / "configs" / "ae2d.yaml", [
        *TINY, "train.steps=8", "train.max_steps_per_epoch=2", "train.select_every=2",
        "train.select=ap"])
    full = train(cfg, discover(man), tmp_path / "full", device="cpu", progress=False)
    real_save = train_mod._save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, discover(man), tmp_path / "cut", device="cpu", progress=False)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    train(cfg, discover(man), tmp_path / "cut", resume=True, device="cpu", progress=False)
    a, b = (json.loads((r / "model.json").read_text())["training"]
            for r in (full, tmp_path / "cut"))
    assert (a["best_epoch"], a["best_ap"]) == (b["best_epoch"], b["best_ap"])
    assert [r["val_ap"] for r in _rows(full)] == [r["val_ap"] for r in _rows(tmp_path / "cut")]
    wa, wb = load_file(full / "model.safetensors"), load_file(tmp_path / "cut" /
                                                                "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_select_ap_counts_an_unlabelled_scan_as_lesion_free(patients, tmp_path):
    """Validation scans with and without labels: the unlabelled ones are all negatives, as
    calibration counts them."""
    _, images = patients
    rows = ["case_id,image,label"] + [
        f"p{i},{p}," + (str(p.with_name(p.name.replace(".nii.gz", "_label.nii.gz")))
                        if i % 2 == 0 else "") for i, p in enumerate(images)]
    man = tmp_path / "mixed.csv"
    man.write_text("\n".join(rows) + "\n")
    cfg = load_config(ROOT / "configs" / "ae2d.yaml", [
        *TINY, "train.steps=4", "train.max_steps_per_epoch=2", "train.select=ap",
        "data.val_fraction=0.8"])  # four of five held out: both kinds among them
    run = train(cfg, discover(man), tmp_path / "run", device="cpu", progress=False)
    meta = json.loads((run / "model.json").read_text())
    by_id = {s.case_id: s for s in discover(man)}
    held = meta["validation_cases"]
    assert {by_id[c].label is None for c in held} == {True, False}
    model = medae.load_model(run, device="cpu")
    scores, labels = [], []
    for case in held:
        scan, prep = model.load(by_id[case])
        m = model.scan_map(scan, prep)
        lesion = by_id[case].load_companion("label", scan)
        lesion = np.zeros(scan.shape, bool) if lesion is None else lesion
        scores.append(m.heatmap[m.brain_mask])
        labels.append(lesion[m.brain_mask])
    ref = average_precision_score(np.concatenate(labels), np.concatenate(scores))
    assert meta["training"]["best_ap"] == pytest.approx(ref, abs=1e-6)


def test_select_ap_needs_labelled_scans(patients, tmp_path, capsys):
    man, images = patients
    bare = _manifest(tmp_path / "bare.csv", images, labels=False)
    cfg = load_config(ROOT / "configs" / "ae2d.yaml", [*TINY, "train.steps=2",
                                                        "train.select=ap"])
    with pytest.raises(MedaeError,
                       match=r"train\.select ap needs lesion labels .* none of the 2 scan"):
        train(cfg, discover(bare), tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run" / "model.json").exists()
    # from the CLI: one line, nothing trained; a bad value is refused before any work
    assert main(["train", "--config", str(ROOT / "configs" / "ae2d.yaml"), "--data", str(man),
                 "--output", str(tmp_path / "bad"), "--device", "cpu",
                 "--set", "train.select=dice"]) != 0
    err = capsys.readouterr().err
    assert "train.select" in err and "loss or ap" in err
    assert not (tmp_path / "bad" / "model.json").exists()


@pytest.mark.parametrize("per, every, epochs, expected", [
    (14, 100, 86, [7, 14, 21, 28, 35, 42, 49, 57, 64, 71, 78, 85]),  # brain_multi's 1,200
    (2, 4, 6, [1, 3, 5]),
    (5, 1, 3, [0, 1, 2]),      # every epoch passes a multiple
    (3, 1000, 4, [3]),         # only the last
])
def test_select_every_evaluates_after_the_epoch_that_passes_a_multiple(per, every, epochs,
                                                                        expected):
    optim = SimpleNamespace(steps_per_epoch=per, epochs=epochs)
    assert [e for e in range(epochs) if _select_now(e, optim, every)] == expected
