"""Training: loss goes down, exact resume, bundle contents, config validation, DDP on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, write_phantoms
from safetensors.torch import load_file
from scipy import ndimage

import medae.train as train_mod
from medae import MedaeError, discover
from medae.bundle import load_bundle
from medae.config import load_config
from medae.train import train

TINY = [
    "model.channels=[8, 16, 32]", "preprocess.spacing=[2, 2, 2]",
    "preprocess.size=[16, 16, 16]", "train.batch_size=8", "train.warmup_steps=2",
    "train.lr=0.003", "data.augment={}",
]


def _sets(items):
    return [arg for s in items for arg in ("--set", s)]


def _config(*extra, path=ROOT / "configs" / "ae2d.yaml"):
    return load_config(path, [*TINY, *extra])


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("healthy")
    write_phantoms(folder, 5, shape=(14, 16, 12))
    return folder


def test_training_lowers_validation_loss_and_writes_bundle(healthy, tmp_path):
    cfg = _config("train.epochs=4")
    run = train(cfg, discover(healthy), tmp_path / "run", device="cpu", progress=False)
    rows = (run / "log.csv").read_text().splitlines()
    assert len(rows) == 5
    header = rows[0].split(",")
    val = [float(r.split(",")[header.index("val_loss")]) for r in rows[1:]]
    assert val[-1] < 0.7 * val[0]
    meta = json.loads((run / "model.json").read_text())
    assert meta["model"]["name"] == "ae" and meta["model"]["channels"] == [8, 16, 32]
    assert meta["training"]["train_subjects"] == 4 and meta["training"]["val_subjects"] == 1
    assert meta["validation_cases"] and meta["training"]["selected_on"] == "validation"
    assert meta["preprocess"]["size"] == [16, 16, 16]
    assert "low" in meta["intensity"][0]
    assert (run / "config.yaml").is_file()
    bundle = load_bundle(run)
    assert not bundle.model.training
    x = torch.zeros(2, 1, 16, 16)
    assert bundle.model(x).recon.shape == x.shape


def test_resume_after_interruption_gives_identical_weights(healthy, tmp_path, monkeypatch):
    cfg = _config("train.epochs=3", "model.name=vae", "model.dropout=0.1")
    full = train(cfg, discover(healthy), tmp_path / "full", device="cpu", progress=False)

    real_save = train_mod._save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt  # as if killed right after the checkpoint of epoch 1

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, discover(healthy), tmp_path / "cut", device="cpu", progress=False)
    assert not (tmp_path / "cut" / "model.json").exists()
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    train(cfg, discover(healthy), tmp_path / "cut", resume=True, device="cpu", progress=False)
    a = load_file(full / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    log_a = (full / "log.csv").read_text().splitlines()
    log_b = (tmp_path / "cut" / "log.csv").read_text().splitlines()
    strip = [",".join(r.split(",")[:3]) for r in log_a]  # epoch, train_loss, val_loss
    assert strip == [",".join(r.split(",")[:3]) for r in log_b]


def test_lesion_slices_dropped_from_manifest(tmp_path):
    paths = write_phantoms(tmp_path / "pat", 3, shape=(14, 16, 12), lesion=True)
    man = tmp_path / "m.csv"
    man.write_text("case_id,image,label\n" + "".join(
        f"p{i},{p},{p.with_name(p.name.replace('.nii.gz', '_label.nii.gz'))}\n"
        for i, p in enumerate(paths)))
    cfg = _config("train.epochs=1", "data.val_fraction=0")
    run = train(cfg, discover(man), tmp_path / "run", device="cpu", progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["dropped_lesion_samples"] >= 3 * 3  # a 6 mm sphere spans >= 3 slices
    assert meta["training"]["train_samples"] > 0


def test_refuses_overwrite_and_bad_config(healthy, tmp_path):
    with pytest.raises(MedaeError, match=r"unknown key train\.epoch "):
        _config("train.epoch=3")
    with pytest.raises(MedaeError, match=r"model 'ae': unknown argument 'latent'"):
        train(_config("model.latent=3"), discover(healthy), tmp_path / "r", device="cpu",
              progress=False)
    with pytest.raises(MedaeError, match=r"data\.augment\.rotate_deg: a number from 0 to 180"):
        train(_config("data.augment={rotate_deg: -3}"), discover(healthy), tmp_path / "aug",
              device="cpu", progress=False)
    assert not (tmp_path / "aug").exists()  # refused before anything is written
    with pytest.raises(MedaeError, match="no checkpoint"):
        train(_config(), discover(healthy), tmp_path / "none", resume=True, device="cpu")


def test_cli_train_3d_bf16(healthy, tmp_path):
    out = tmp_path / "run3d"
    res = subprocess.run(
        [sys.executable, "-m", "medae", "train", "--config", str(ROOT / "configs" / "ae3d.yaml"),
         "--data", str(healthy), "--output", str(out), "--epochs", "1", "--precision", "bf16",
         "--device", "cpu", "-q", *_sets(TINY),
         "--set", "data.patch_size=[16,16,16]"],
        capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["precision"] == "bf16"
    assert meta["model"]["spatial_dims"] == 3
    loss = float((out / "log.csv").read_text().splitlines()[1].split(",")[1])
    assert np.isfinite(loss)


@pytest.mark.slow
def test_torchrun_two_processes_gloo(healthy, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29517", "-m", "medae", "train",
         "--config", str(ROOT / "configs" / "ae2d.yaml"), "--data", str(healthy),
         "--output", str(out), "--epochs", "2", "--device", "cpu", "-q",
         *_sets(TINY)],
        capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["world_size"] == 2
    assert len((out / "log.csv").read_text().splitlines()) == 3
    assert load_bundle(out).model is not None


def test_bad_training_scans_are_skipped_with_reasons(healthy, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(healthy, data)
    (data / "zero.nii.gz").write_bytes(b"")
    (data / "text.nii").write_text("not an image\n" * 40)
    run = train(_config("train.epochs=1"), discover(data), tmp_path / "run", device="cpu",
                progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["skipped_scans"] == 2
    skipped = (run / "skipped.csv").read_text()
    assert "zero.nii.gz: empty file (0 bytes)" in skipped and "text.nii: not a NIfTI" in skipped
    assert meta["training"]["train_subjects"] + meta["training"]["val_subjects"] == 5


def test_lesion_samples_masked_instead_of_dropped(tmp_path):
    """data.lesion_samples=mask keeps the slices that touch a lesion and leaves the lesion,
    grown by the margin, out of the mask that places the noise and weights the loss."""
    import medae
    from medae.preprocess import PreprocessConfig, preprocess
    from medae.samples import SampleDataset

    paths = write_phantoms(tmp_path / "pat", 2, shape=(14, 16, 12), lesion=True)
    items = []
    for p in paths:
        scan = medae.load_scan(p)
        label = medae.load_scan(p.with_name(p.name.replace(".nii.gz", "_label.nii.gz"))).array
        prep = preprocess(scan, PreprocessConfig(spacing=None), label=label > 0)
        items.append({"case_id": p.name, "prepared": prep})
    drop = SampleDataset(items, 2, min_foreground=0.0)
    masked = SampleDataset(items, 2, min_foreground=0.0, lesion_samples="mask",
                           lesion_margin_mm=2.0, spacing=(2.0, 2.0, 2.0))
    assert drop.dropped_label >= 6 and drop.masked_label == 0
    assert masked.dropped_label == 0 and masked.masked_label == drop.dropped_label
    assert len(masked) == len(drop) + drop.dropped_label
    prep = items[0]["prepared"]
    m = masked.masks[0]
    assert not (m & prep.label).any()  # the lesion is out of the loss ...
    assert (prep.mask & ~m & ~prep.label).any()  # ... and so is a 2 mm (one voxel) rim
    assert (m == (prep.mask & ~ndimage.binary_dilation(prep.label))).all()
    cfg = _config("train.epochs=1", "data.val_fraction=0", "data.lesion_samples=mask")
    man = tmp_path / "m.csv"
    man.write_text("case_id,image,label\n" + "".join(
        f"p{i},{p},{p.with_name(p.name.replace('.nii.gz', '_label.nii.gz'))}\n"
        for i, p in enumerate(paths)))
    run = train(cfg, discover(man), tmp_path / "run", device="cpu", progress=False)
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["dropped_lesion_samples"] == 0
    assert meta["training"]["lesion_masked_samples"] == masked.masked_label
    # calibration leaves the lesion out the same way: the label grown by the margin, not the
    # slices that touch it, so the rest of those slices calibrates too
    from medae.scoring.calibration import healthy_map
    from medae.scoring.scorer import load_model

    assert "lesion labels grown by 4 mm excluded" in meta["calibration"]["voxel_rule"]
    scorer = load_model(run, device="cpu")
    src = discover(man)[0]
    by_slices, _, _ = healthy_map(scorer, src)
    by_margin, _, _ = healthy_map(scorer, src, lesion_margin_mm=2.0)
    # (on this phantom the lesion touches every analysed slice: dropping slices leaves nothing)
    assert by_margin.healthy.sum() > by_slices.healthy.sum()


def test_calibration_margin_is_in_millimetres():
    from medae.masks import grow_mm

    label = np.zeros((9, 9, 9), bool)
    label[4, 4, 4] = True
    assert grow_mm(label, 2.0, (2.0, 2.0, 2.0)).sum() == 7  # the 6 face neighbours
    assert grow_mm(label, 2.9, (2.0, 2.0, 2.0)).sum() == 19  # and the 12 edge ones (2.83)
    assert grow_mm(label, 2.0, (1.0, 1.0, 4.0)).sum() == 13  # 2 voxels in-plane, 0 in z
    assert not grow_mm(np.zeros((3, 3, 3), bool), 5.0, (1, 1, 1)).any()


@pytest.mark.parametrize("avx512_bf16, amx, want", [
    (True, False, "bf16"), (False, True, "bf16"), (False, False, "32"), (None, None, "32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, want):
    """``auto`` trains in bf16 on a CPU with AVX-512 BF16 or AMX, in float32 elsewhere (where
    bf16 is emulated and slower), and in float32 when torch cannot tell."""
    import torch

    from medae.device import resolve_precision

    def probe(value):
        def f():
            if value is None:
                raise RuntimeError("no probe")
            return value
        return f

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", probe(avx512_bf16))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", probe(amx))
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == want
    assert resolve_precision("32", cpu) == "32" and resolve_precision("fp16", cpu) == "fp16"
    with pytest.raises(MedaeError, match=r"train\.precision: expected one of"):
        resolve_precision("fp8", cpu, "train.precision")


def test_auto_precision_is_recorded_as_what_trained(healthy, tmp_path):
    import torch

    from medae.device import native_bf16

    out = tmp_path / "auto"
    train(_config("train.precision=auto", "train.steps=2"), discover(healthy), out,
          device="cpu", progress=False)
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["precision"] == ("bf16" if native_bf16(torch.device("cpu"))
                                             else "32")
