"""The training loop: mixed precision, checkpoints, exact resume, early stopping, DDP, logging.

Everything random is drawn from seeds derived from (seed, epoch, step), and the RNG states that
remain (dropout, VAE sampling) are checkpointed, so ``--resume`` continues exactly on a CPU.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from medae.bundle import model_kwargs, save_bundle
from medae.config import (
    DataConfig,
    LossConfig,
    MapConfig,
    TrainConfig,
    dump_config,
    validate_config,
)
from medae.device import resolve_device, resolve_precision
from medae.errors import MedaeError
from medae.io.atomic import atomic_write_bytes, atomic_write_csv
from medae.io.discover import ScanSource
from medae.io.files import read_regular
from medae.models import apply_coarse_noise, autoencoder_loss, create_model
from medae.models.noise import draw_coarse_noise_params
from medae.preprocess import (
    PreprocessConfig,
    increasing,
    normalised_landmarks,
    standardise_prepared,
)
from medae.samples import (
    SLAB_MM,
    Augment,
    SampleDataset,
    cache_cases,
    crossfit_folds,
    sample_seed,
    split_subjects,
)
from medae.scoring.calibration import (
    calibrate_crossfit,
    calibrate_model,
    report_calibration,
)
from medae.scoring.reconstruct import autocast_context
from medae.scoring.scorer import AnomalyModel, scored_channels
from medae.scoring.selection import DetectionMonitor
from medae.version import __version__

log = logging.getLogger("medae")
CHECKPOINT = "checkpoint.pt"
CROSSFIT = "crossfit.json"  # the cross-fitted calibration, kept for --resume


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@dataclass
class History:
    rows: list[dict] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0


def make_loader(ds, batch_size: int, shuffle: bool, epoch: int, seed: int, d: Dist,
            num_workers: int, pin: bool) -> DataLoader:
    if d.world > 1:
        sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=shuffle,
                                     seed=seed, drop_last=shuffle)
        sampler.set_epoch(epoch)
    elif shuffle:
        g = torch.Generator()
        g.manual_seed(sample_seed(seed, "order", epoch))
        sampler = RandomSampler(ds, generator=g)
    else:
        sampler = SequentialSampler(ds)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin, drop_last=False, persistent_workers=False)


def _corrupt(x, mask, noise_cfg: dict | None, seed: int):
    """Denoising models train on inputs with coarse noise; the draw is seeded per step."""
    if noise_cfg is None:
        return x
    g = torch.Generator()
    g.manual_seed(seed)
    params = draw_coarse_noise_params(g, **noise_cfg)
    return apply_coarse_noise(x, mask, params)


#: the largest checkpoint read (weights, optimiser state and the best weights)
MAX_CHECKPOINT_BYTES = 48 << 30
_RESTART = "remove it to train from the start"


def _read_checkpoint(path: Path, dev) -> dict:
    """A checkpoint, read with the input rules (a regular file of bounded size) and loaded
    without unpickling code; one line saying why when it cannot be."""
    try:
        data = read_regular(path, limit=MAX_CHECKPOINT_BYTES)
    except FileNotFoundError:
        raise MedaeError(path, "no checkpoint to resume from") from None
    except MedaeError as exc:
        raise MedaeError(path, f"unreadable checkpoint ({exc.reason})") from None
    except OSError as exc:
        raise MedaeError(path, f"unreadable checkpoint ({exc.strerror or exc})") from None
    try:
        ck = torch.load(io.BytesIO(data), map_location=dev, weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise MedaeError(path, f"unreadable checkpoint ({type(exc).__name__}: truncated or not "
                               f"a medae checkpoint): {_RESTART}") from None
    if not isinstance(ck, dict):
        raise MedaeError(path, f"not a medae checkpoint: {_RESTART}")
    return ck


def _save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getbuffer())


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _Progress:
    def __init__(self, total: int, epoch: int, enabled: bool, prefix: str = ""):
        self.total, self.epoch, self.enabled, self.prefix = total, epoch, enabled, prefix
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def update(self, step: int, loss: float, samples: int) -> None:
        if not (self.enabled and self.tty):
            return
        rate = samples / max(time.perf_counter() - self.t0, 1e-9)
        n = int(30 * step / max(self.total, 1))
        print(f"\r{self.prefix}epoch {self.epoch:3d} [{'#' * n}{'.' * (30 - n)}] "
              f"{step}/{self.total} loss {loss:.4g} {rate:.1f} samples/s", end="",
              file=sys.stderr, flush=True)

    def close(self, line: str) -> None:
        if self.enabled:
            print(("\r" if self.tty else "") + line + " " * 10, file=sys.stderr, flush=True)


def train_step(net, model, batch: dict, *, opt, scaler, sched, device: torch.device,
               precision: str, noise: dict | None, noise_seed: int, loss_args: dict,
               masked: bool, grad_clip: float) -> dict[str, float]:
    """One optimisation step on a batch; returns the loss parts (floats)."""
    x = batch["image"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    x_in = _corrupt(x, mask, noise, noise_seed)
    with autocast_context(device, precision):
        out = net(x_in)
    loss, parts = autoencoder_loss(model, out, x, mask=mask if masked else None, **loss_args)
    if not torch.isfinite(loss):
        return {**parts, "total": float("nan")}
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    sched.step()
    return parts


@dataclass
class _Run:
    """What every model trained for one recipe shares (the final model and cross-fit folds)."""

    config: dict
    dev: torch.device
    d: Dist
    seed: int
    precision: str
    pre: PreprocessConfig
    kwargs: dict
    progress: bool

    @property
    def dims(self) -> int:
        return int(self.kwargs["spatial_dims"])

    @property
    def train(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config["train"])

    @property
    def data(self) -> DataConfig:
        return DataConfig.from_dict(self.config["data"])

    @property
    def loss(self) -> LossConfig:
        return LossConfig.from_dict(self.config["loss"])

    def datasets(self, items: list[dict], val_items: list[dict], keep_z=None
                 ) -> tuple[SampleDataset, SampleDataset | None]:
        dc = self.data
        common = {"patch_size": dc.patch_size, "min_foreground": dc.min_foreground,
                  "lesion_samples": dc.lesion_samples, "lesion_margin_mm": dc.lesion_margin_mm,
                  "spacing": self.pre.spacing or (1.0, 1.0, 1.0)}
        train_ds = SampleDataset(items, self.dims, augment=Augment.from_dict(dc.augment),
                                 seed=self.seed, keep_z=keep_z, **common)
        val_ds = SampleDataset(val_items, self.dims, seed=self.seed, **common) \
            if val_items else None
        if len(train_ds) == 0:
            raise MedaeError("no training samples left after dropping empty and lesion slices")
        return train_ds, val_ds


def train(config: dict, sources: list[ScanSource], output: str | os.PathLike, *,
          resume: bool = False, device: str = "auto", progress: bool = True) -> Path:
    """Train the recipe ``config`` on healthy ``sources``; write the bundle into ``output``.

    Returns the run folder.  ``config`` is the resolved recipe (:func:`medae.config.load_config`).
    Thresholds are calibrated on held-out subjects (``data.calibration: holdout``), or, with
    ``crossfit``, on every subject scored by fold models that did not see it (see
    :func:`medae.samples.crossfit_folds`) while the final model trains on all of them.
    """
    run = Path(output)
    validate_config(config)
    dev = resolve_device(device)
    d = _init_distributed(dev)
    tc, dc = TrainConfig.from_dict(config["train"]), DataConfig.from_dict(config["data"])
    precision = resolve_precision(tc.precision, dev, "train.precision")
    if tc.precision == "auto":
        log.info("train.precision auto: %s on this %s", precision, dev.type)
    if precision == "fp16" and dev.type == "cpu":
        log.warning("fp16 on a CPU is very slow (no fp16 kernels): prefer bf16 or 32 there")
    seed = tc.seed
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)

    # the recipe is checked whole before anything is written or read
    pre = PreprocessConfig.from_dict(config["preprocess"])
    map_cfg = MapConfig.from_dict(config["scoring"], pre.spacing)  # validated before any work
    scored_channels(pre, map_cfg)  # scoring.channels names inputs the model reads
    Augment.from_dict(dc.augment)  # data.augment's keys and ranges
    kwargs = model_kwargs(config)
    model = create_model(**kwargs).to(dev)  # an invalid model fails before any scan is read
    trainable = any(p.requires_grad for p in model.parameters())
    crossfit = dc.calibration == "crossfit"
    if tc.ensemble > 1 and (crossfit or not trainable):
        raise MedaeError("config: train.ensemble > 1 needs a model with parameters and "
                         "data.calibration: holdout (cross-fitted calibration trains single "
                         "fold models, whose maps are not the ensemble's)")
    _open_run(run, config, resume, d)

    if not sources:
        raise MedaeError("no training scans found")
    train_items, val_items, by_id, skipped = _load_cases(sources, pre, dc, seed, crossfit,
                                                         run, d)
    if pre.normalise == "histogram" and pre.standard is None:
        pre = learn_standard(pre, train_items, val_items)
        config = {**config, "preprocess": {**config["preprocess"],
                                           "standard": pre.to_dict()["standard"]}}
    r = _Run(config, dev, d, seed, precision, pre, kwargs, progress)
    train_ds, val_ds = r.datasets(train_items, val_items)
    calibration = None
    if crossfit and trainable:
        calibration = _crossfit_calibration(r, train_items, by_id, map_cfg, run)
    monitor = _monitor(r, model, map_cfg, train_items, val_items, by_id) \
        if tc.select == "ap" and trainable else None
    label = f"member 1/{tc.ensemble}" if tc.ensemble > 1 else ""
    hist, best_state = _fit(r, model, train_ds, val_ds, run=run, resume=resume, label=label,
                            monitor=monitor)
    members = [(model, hist, best_state)] + [
        _member(r, k, train_items, val_items, run, resume, monitor)
        for k in range(1, tc.ensemble)]

    if d.main:
        for member, _hist, state in members:
            if state is not None:
                member.load_state_dict(state)
        network = model if len(members) == 1 else _ensemble([m for m, _, _ in members], dev)
        if calibration is None:
            calibration = _calibrate_holdout(r, network, map_cfg, train_items, val_items, by_id)
        report_calibration(calibration)
        summary = _summary(r, hist, train_items, val_items, train_ds, val_ds, skipped,
                           trainable, monitor)
        if len(members) > 1:
            summary["ensemble"] = {
                "members": len(members), "seeds": [seed + k for k in range(len(members))],
                "best_epochs": [h.best_epoch for _, h, _ in members],
                "best_val": [h.best_val if math.isfinite(h.best_val) else None
                             for _, h, _ in members]}
        intensity = [_intensity_entry(it) for it in train_items]
        save_bundle(run, network, config, training=summary, intensity=intensity,
                    val_cases=[it["case_id"] for it in val_items], calibration=calibration)
    if d.world > 1:
        dist.barrier()
    return run


def _member(r: _Run, k: int, train_items: list[dict], val_items: list[dict], run: Path,
            resume: bool, monitor: DetectionMonitor | None = None
            ) -> tuple[torch.nn.Module, History, dict | None]:
    """Ensemble member ``k`` (k >= 1): the same architecture and data, seed ``seed + k`` (its
    initial weights, sample order, augmentation and noise draws); its log and checkpoint in
    ``run/members/k``, so an interrupted ensemble resumes where it stopped."""
    rk = replace(r, seed=r.seed + k)
    torch.manual_seed(rk.seed)
    model = create_model(**r.kwargs).to(r.dev)
    train_ds, val_ds = rk.datasets(train_items, val_items)
    where = run / "members" / str(k)
    if r.d.main:
        where.mkdir(parents=True, exist_ok=True)
    hist, best = _fit(rk, model, train_ds, val_ds, run=where,
                      resume=resume and (where / CHECKPOINT).exists(),
                      label=f"member {k + 1}/{r.train.ensemble}", monitor=monitor)
    return model, hist, best


def _ensemble(models: list[torch.nn.Module], dev: torch.device) -> torch.nn.Module:
    """The trained members as one network (their mean reconstruction), as a bundle rebuilds it."""
    net = create_model("ensemble", member=dict(models[0].config), size=len(models)).to(dev)
    for slot, trained in zip(net.members, models, strict=True):
        slot.load_state_dict(trained.state_dict())
    return net.eval()


def _monitor(r: _Run, model, map_cfg: MapConfig, train_items: list[dict],
             val_items: list[dict], by_id: dict) -> DetectionMonitor:
    """``train.select: ap``: the labelled validation scans (the training scans when there is no
    validation set, as calibration uses them), each read and checked once, before training."""
    def make(net):
        return AnomalyModel(net, r.pre, map_cfg, device=r.dev, batch_size=r.train.batch_size,
                            precision=r.precision)
    return DetectionMonitor([by_id[it["case_id"]] for it in val_items or train_items], make,
                            model)


def _calibrate_holdout(r: _Run, model, map_cfg: MapConfig, train_items: list[dict],
                       val_items: list[dict], by_id: dict) -> dict:
    """Thresholds from the trained model's maps of the validation scans (of the training scans
    when there is no validation set)."""
    scorer = AnomalyModel(model, r.pre, map_cfg, device=r.dev, batch_size=r.train.batch_size,
                          precision=r.precision)
    calib_items = val_items or train_items
    return calibrate_model(scorer, [by_id[it["case_id"]] for it in calib_items],
                           "validation" if val_items else "training (no validation set)",
                           _calibration_margin(r.data))


def _summary(r: _Run, hist: History, train_items: list[dict], val_items: list[dict],
             train_ds: SampleDataset, val_ds: SampleDataset | None, skipped: list[dict],
             trainable: bool, monitor: DetectionMonitor | None = None) -> dict:
    """The bundle's ``training`` record: data, epochs, model selection and settings."""
    if monitor is not None:  # selected on the labelled scans' AP (best_val holds -AP)
        best = hist.rows[hist.best_epoch] if 0 <= hist.best_epoch < len(hist.rows) else {}
        selected = {"selected_on": f"pooled voxel AP of {len(monitor.names)} labelled "
                                   f"{'validation' if val_items else 'training'} scan(s) "
                                   f"({', '.join(monitor.names)}), every "
                                   f"{r.train.select_every} steps",
                    "best_ap": -hist.best_val if math.isfinite(hist.best_val) else None,
                    "best_loss": best.get("val_loss")}
    else:
        selected = {"best_loss": hist.best_val if math.isfinite(hist.best_val) else None,
                    "selected_on": ("not trained (no parameters)" if not trainable
                                    else "validation" if val_ds else "training")}
    return {
        "train_subjects": len(train_items), "val_subjects": len(val_items),
        "train_samples": len(train_ds), "val_samples": len(val_ds) if val_ds else 0,
        "dropped_lesion_samples": train_ds.dropped_label,
        "lesion_masked_samples": train_ds.masked_label,
        "skipped_scans": len(skipped),
        "epochs_run": len(hist.rows), "best_epoch": hist.best_epoch, **selected,
        "precision": r.precision, "seed": r.seed, "world_size": r.d.world,
        "device": r.dev.type, "medae_version": __version__,
    }


def _open_run(run: Path, config: dict, resume: bool, d: Dist) -> None:
    """Check the run folder (a new one, or one to resume) and keep the resolved recipe in it."""
    if os.path.lexists(run) and not run.is_dir():
        raise MedaeError(run, "--output exists and is not a folder")
    ckpt_path = run / CHECKPOINT
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        if not resume and (run / "model.json").exists():
            raise MedaeError(run, "already holds a trained model (use --resume, or a new folder)")
    if resume and not ckpt_path.exists():
        raise MedaeError(ckpt_path, "no checkpoint to resume from")
    if d.main and not resume:
        atomic_write_bytes(run / "config.yaml", dump_config(config).encode())


def learn_standard(pre: PreprocessConfig, train_items: list[dict], val_items: list[dict]
                   ) -> PreprocessConfig:
    """``normalise: histogram``: the standard is the mean of the training scans' landmarks (in
    ``percentile`` units, per input); the cached scans, prepared before it was known (as
    ``percentile`` gives them), are mapped onto it in place, as preparing them again would.
    Returns the preprocessing with its ``standard``."""
    own = [[normalised_landmarks(st) for st in it["prepared"].stats] for it in train_items]
    standard = tuple(tuple(float(v) for v in increasing(np.mean([o[c] for o in own], axis=0)))
                     for c in range(pre.channels))
    pre = replace(pre, standard=standard)
    for it in train_items + val_items:
        standardise_prepared(it["prepared"], standard)
    log.info("preprocess.normalise histogram: the standard landmarks of %d training scan(s): %s",
             len(train_items), "; ".join(" ".join(f"{v:.3f}" for v in row) for row in standard))
    return pre


def _load_cases(sources: list[ScanSource], pre: PreprocessConfig, dc: DataConfig, seed: int,
                crossfit: bool, run: Path, d: Dist
                ) -> tuple[list[dict], list[dict], dict[str, ScanSource], list[dict]]:
    """Split the subjects (no validation subjects when cross-fitting), read and prepare their
    scans; the scans that cannot be read are skipped, logged and listed in ``skipped.csv``.
    Returns the training and validation items, the sources by case id and the skipped rows."""
    train_ids, val_ids = split_subjects([s.case_id for s in sources],
                                        0.0 if crossfit else dc.val_fraction, seed)
    by_id = {s.case_id: s for s in sources}
    workers = dc.cache_workers
    train_items, bad = cache_cases([by_id[i] for i in train_ids], pre, workers)
    val_items, bad_val = (cache_cases([by_id[i] for i in val_ids], pre, workers) if val_ids
                          else ([], []))
    skipped = bad + bad_val
    for s in skipped:
        log.warning("skipped %s: %s", s["case_id"], s["error"])
    if d.main and skipped:
        _write_rows(run / "skipped.csv", skipped)
    if not train_items:
        raise MedaeError("no training scan could be read (see the skipped scans above)")
    return train_items, val_items, by_id, skipped


def _calibration_margin(dc: DataConfig) -> float | None:
    """Calibration leaves labelled lesions out as training does: whole slices (``drop``), or
    the label grown by ``data.lesion_margin_mm`` (``mask``; returned)."""
    return dc.lesion_margin_mm if dc.lesion_samples == "mask" else None


def _crossfit_calibration(r: _Run, items: list[dict], by_id: dict, map_cfg: MapConfig,
                          run: Path) -> dict | None:
    """Train one model per fold on the other folds, score each calibration scan with the
    model(s) that did not see it, and calibrate on the pooled maps.  The result is kept in
    ``RUN/crossfit.json`` so that ``--resume`` does not train the folds again."""
    done = run / CROSSFIT
    if done.exists():
        try:
            return json.loads(read_regular(done, limit=1 << 26))
        except (OSError, ValueError, RecursionError, MedaeError) as exc:
            raise MedaeError(done, f"unreadable ({getattr(exc, 'reason', None) or exc}): "
                                   f"{_RESTART[:9]} to calibrate again") from None
    folds = crossfit_folds([it["case_id"] for it in items], r.dims, r.seed,
                           r.data.crossfit_folds)
    if folds is None:
        log.warning("data.calibration=crossfit: one subject and a 3D model: no fold can be "
                    "held out, calibrating on the training scan instead")
        return None
    parts: dict[str, list] = {}
    for k, fold in enumerate(folds):
        fit_items = [it for it in items if it["case_id"] not in fold.held_cases]
        keep_z = None
        if fold.slab is not None:  # one subject: train on the other slabs
            fit_items = items
            keep_z = [fold.model_slices(it["prepared"], held=False) for it in items]
        try:
            ds, _ = r.datasets(fit_items, [], keep_z=keep_z)
        except MedaeError as exc:
            raise MedaeError(f"cross-fitting fold {k + 1}/{len(folds)}: {exc.reason or exc}; "
                             "use data.calibration=holdout") from None
        with torch.random.fork_rng(devices=[]):  # the final model's draws stay as without folds
            torch.manual_seed(sample_seed(r.seed, "fold", k))
            fold_model = create_model(**r.kwargs).to(r.dev)
            _, best = _fit(r, fold_model, ds, None, run=None, resume=False,
                           label=f"fold {k + 1}/{len(folds)}")
        if best is not None:
            fold_model.load_state_dict(best)
        scorer = AnomalyModel(fold_model, r.pre, map_cfg, device=r.dev,
                              batch_size=r.train.batch_size,
                              precision=r.precision)
        for case in sorted(fold.held_cases):
            parts.setdefault(case, []).append((scorer, fold))
    if not r.d.main:
        return None
    how = (f"{len(folds)} folds over subjects" if folds[0].slab is None else
           f"{len(folds)} folds over interleaved {SLAB_MM:g} mm axial slabs of one subject")
    calibration = calibrate_crossfit([(by_id[c], parts[c]) for c in sorted(parts)],
                                     f"cross-fitted ({how})", _calibration_margin(r.data))
    atomic_write_bytes(done, json.dumps(calibration, allow_nan=False).encode())
    return calibration


@dataclass
class _Optimiser:
    """AdamW with warm-up then cosine (or constant) learning rate, the fp16 loss scaler, and
    how many epochs of how many steps the run takes."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    epochs: int
    steps_per_epoch: int

    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load(self, ck: dict) -> None:
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])


def _optimiser(r: _Run, model, n_samples: int) -> _Optimiser:
    tc = r.train
    trainable = [p for p in model.parameters() if p.requires_grad]
    # a model without parameters (the intensity baseline) is only calibrated
    opt = torch.optim.AdamW(trainable or [torch.zeros(1, requires_grad=True)],
                            lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil(n_samples / (tc.batch_size * r.d.world))
    if tc.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, tc.max_steps_per_epoch)
    epochs = tc.epochs
    if tc.steps:
        epochs = math.ceil(tc.steps / steps_per_epoch)
    epochs = epochs if trainable else 0
    total = max(1, epochs * steps_per_epoch)
    warm = tc.warmup_steps

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if tc.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    scaler = torch.amp.GradScaler(r.dev.type, enabled=r.precision == "fp16")
    return _Optimiser(opt, sched, scaler, epochs, steps_per_epoch)


def _fit(r: _Run, model, train_ds: SampleDataset, val_ds: SampleDataset | None, *,
         run: Path | None, resume: bool, label: str = "",
         monitor: DetectionMonitor | None = None) -> tuple[History, dict | None]:
    """Optimise ``model``: the epoch loop with mixed precision, early stopping on the
    validation loss (or, with ``monitor``, on the labelled scans' AP, evaluated every
    ``train.select_every`` steps and after the last epoch) and (with ``run``) a log,
    TensorBoard and an atomic checkpoint per epoch.  Returns the history and the best state
    (None for a model without parameters)."""
    tc, lc = r.train, r.loss
    dev, d, seed, precision = r.dev, r.d, r.seed, r.precision
    ddp = d.world > 1 and any(p.requires_grad for p in model.parameters())
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    optim = _optimiser(r, model, len(train_ds))
    hist, start, best_state = History(), 0, None
    ckpt_path = run / CHECKPOINT if run is not None else None
    if resume and ckpt_path is not None:
        ck = _read_checkpoint(ckpt_path, dev)
        try:
            model.load_state_dict(ck["model"])
            optim.load(ck)
            hist = History(ck["history"], ck["best_val"], ck["best_epoch"], ck["bad_epochs"])
            best_state, start = ck["best_model"], ck["epoch"] + 1
            _set_rng_state(ck["rng"], dev)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise MedaeError(ckpt_path, f"checkpoint does not fit this run "
                                        f"({type(exc).__name__}): {_RESTART}") from None

    main = d.main and run is not None
    board = _tensorboard(run) if main else None
    loss_args = {"kind": lc.kind, "beta": lc.beta, "sparsity": lc.sparsity}
    noise = getattr(model, "noise", None)  # denoising models carry their noise settings
    noise_cfg = noise.to_dict() if noise is not None else None
    prefix = f"{label} " if label else ""
    for epoch in range(start, optim.epochs):
        if hist.bad_epochs >= tc.patience and (val_ds is not None or monitor is not None):
            break
        t0 = time.perf_counter()
        train_parts, seen, bar = _epoch(r, net, model, train_ds, optim, epoch, noise_cfg,
                                        loss_args, prefix)
        seconds = time.perf_counter() - t0
        val_loss = _validate(model, val_ds, dev, precision, tc.batch_size, noise_cfg, seed, lc,
                             loss_args) if val_ds is not None else None
        if d.world > 1:
            stats = torch.tensor([train_parts.get("total", 0.0), seen], dtype=torch.float64)
            dist.all_reduce(stats)
            train_parts["total"] = float(stats[0] / d.world)
            seen = int(stats[1])
        val_ap = None
        if monitor is None:
            score = val_loss if val_loss is not None else train_parts["total"]
        elif _select_now(epoch, optim, tc.select_every):
            val_ap = monitor(model)
            score = -val_ap  # best_val holds the selection score, lower is better
        else:
            score = None  # not an evaluation: neither better nor worse
        if score is not None and score < hist.best_val:
            hist.best_val, hist.best_epoch, hist.bad_epochs = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif score is not None:
            hist.bad_epochs += 1
        row = {"epoch": epoch, "train_loss": train_parts["total"], "val_loss": val_loss,
               **({"val_ap": val_ap} if monitor is not None else {}),
               "lr": optim.sched.get_last_lr()[0], "samples_per_s": seen / max(seconds, 1e-9),
               "seconds": seconds, **{f"train_{k}": v for k, v in train_parts.items()
                                      if k != "total"}}
        hist.rows.append(row)
        val_txt = f"val {val_loss:.4g}" if val_loss is not None else "no validation set"
        if val_ap is not None:
            val_txt += f" AP {val_ap:.4f}"
        bar.close(f"{prefix}epoch {epoch:3d} train {train_parts['total']:.4g} {val_txt} "
                  f"{row['samples_per_s']:.1f} samples/s")
        if main:
            _log_epoch(run, hist, row, board)
            _save_checkpoint(ckpt_path, {
                "epoch": epoch, "model": model.state_dict(), **optim.state(),
                "history": hist.rows, "best_val": hist.best_val, "best_epoch": hist.best_epoch,
                "bad_epochs": hist.bad_epochs, "best_model": best_state,
                "rng": _rng_state(dev)})
    if board is not None:
        board.close()
    return hist, best_state


def _select_now(epoch: int, optim: _Optimiser, every: int) -> bool:
    """``train.select: ap`` evaluates after the epoch in which the step count passes a multiple
    of ``every``, and after the last epoch."""
    per = optim.steps_per_epoch
    return epoch == optim.epochs - 1 or (epoch + 1) * per // every > epoch * per // every


def _epoch(r: _Run, net, model, train_ds: SampleDataset, optim: _Optimiser, epoch: int,
           noise_cfg: dict | None, loss_args: dict, prefix: str
           ) -> tuple[dict, int, _Progress]:
    """One pass of ``optim.steps_per_epoch`` steps; returns the mean loss parts, the number of
    samples seen and the progress bar (closed by the caller with the epoch's line)."""
    tc, d = r.train, r.d
    train_ds.set_epoch(epoch)
    loader = make_loader(train_ds, tc.batch_size, True, epoch, r.seed, d, r.data.num_workers,
                         r.dev.type == "cuda")
    net.train()
    bar = _Progress(optim.steps_per_epoch, epoch, r.progress and d.main, prefix)
    seen, sums = 0, {}
    for step, batch in enumerate(loader):
        if step >= optim.steps_per_epoch:
            break
        parts = train_step(net, model, batch, opt=optim.opt, scaler=optim.scaler,
                           sched=optim.sched, device=r.dev, precision=r.precision,
                           noise=noise_cfg, noise_seed=sample_seed(r.seed, "noise", epoch, step),
                           loss_args=loss_args, masked=r.loss.masked,
                           grad_clip=tc.grad_clip or 0.0)
        if not math.isfinite(parts["total"]):
            raise MedaeError(f"{prefix}epoch {epoch} step {step}: the loss is not finite "
                             f"({parts}); lower train.lr or use --precision 32")
        x = batch["image"]
        seen += x.shape[0]
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * x.shape[0]
        bar.update(step + 1, parts["total"], seen)
    return {k: v / max(seen, 1) for k, v in sums.items()}, seen, bar


def _log_epoch(run: Path, hist: History, row: dict, board) -> None:
    """The epoch's row into ``log.csv`` (and TensorBoard when installed)."""
    _write_rows(run / "log.csv", hist.rows)
    if board is not None:
        for key, value in row.items():
            if key != "epoch" and value is not None:
                board.add_scalar(key, value, row["epoch"])
        board.flush()


def _intensity_entry(item: dict) -> dict:
    """A training scan's normalisation statistics for the bundle (one-sequence models: flat, as
    before; multi-sequence: one entry per input)."""
    prep = item["prepared"]
    entry = {"case_id": item["case_id"], "mask_rule": prep.mask_rule}
    if len(prep.stats) == 1:
        entry = {"case_id": item["case_id"], **prep.stats[0], "mask_rule": prep.mask_rule}
        if prep.template is not None:  # preprocess.space template: each scan's affine fit
            entry["template"] = prep.template.record()
        return entry
    if prep.template is not None:
        entry["template"] = prep.template.record()
    entry["inputs"] = [{"sequence": name, **st}
                       for name, st in zip(prep.inputs, prep.stats, strict=True)]
    if prep.registration:  # preprocess.registration: each registered sequence's transform
        entry["registered"] = prep.registration
    return entry


@torch.no_grad()
def _validate(model, ds, dev, precision, bs, noise_cfg, seed, lc, loss_args) -> float:
    model.eval()
    total, n = 0.0, 0
    loader = DataLoader(ds, batch_size=bs, shuffle=False)
    for step, batch in enumerate(loader):
        x = batch["image"].to(dev)
        mask = batch["mask"].to(dev)
        x_in = _corrupt(x, mask, noise_cfg, sample_seed(seed, "val-noise", step))
        with autocast_context(dev, precision):
            out = model(x_in)
        loss, _ = autoencoder_loss(model, out, x, mask=mask if lc.masked else None,
                                   **loss_args)
        total += float(loss) * x.shape[0]
        n += x.shape[0]
    model.train()
    return total / max(n, 1)


def _tensorboard(run: Path):
    """A TensorBoard writer into RUN_DIR/tensorboard when the package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run / "tensorboard"))


def _write_rows(path: Path, rows: list[dict]) -> None:
    """A table whose columns are every key of ``rows``, in first-seen order."""
    atomic_write_csv(path, list(dict.fromkeys(k for r in rows for k in r)), rows)

