"""Training recipes: YAML files with four sections, defaults, dotted overrides, validation.

A recipe names a model and its arguments (``model``), the preprocessing (``preprocess``, see
:class:`medae.preprocess.PreprocessConfig`), the samples (``data``), the loss (``loss``) and the
optimisation (``train``).  Unknown keys are errors that name the key.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import yaml

from medae.errors import MedaeError
from medae.io.files import read_regular


class _Section:
    """A typed, read-only view of one validated recipe section (``from_dict``)."""

    @classmethod
    def from_dict(cls, values: dict):
        """The section's values (defaults filled in and validated by :func:`load_config`) as
        this type: numbers converted to the field's type, unknown keys refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise MedaeError(f"config: unknown key {cls.SECTION}.{unknown[0]} "
                             f"(known: {', '.join(sorted(names))})")
        kw = {}
        for f in fields(cls):
            v = values.get(f.name, f.default if f.default is not MISSING else f.default_factory())
            kind = str(f.type).split(" ")[0]
            if v is not None and kind in ("int", "float", "str") and not isinstance(v, bool):
                v = {"int": int, "float": float, "str": str}[kind](v)
            kw[f.name] = v
        return cls(**kw)


@dataclass(frozen=True)
class DataConfig(_Section):
    """``data``: which samples train the model and which scans calibrate it."""

    SECTION: ClassVar[str] = "data"
    val_fraction: float = 0.2  # fraction of subjects held out for validation / calibration
    # thresholds calibrated on the held-out subjects ("holdout"), or on every subject scored by
    # fold models that did not see it ("crossfit": few subjects; the final model then trains on
    # every subject, without a validation set)
    calibration: str = "holdout"
    crossfit_folds: int = 5  # at most this many folds (one subject, 2D: two slab folds)
    min_foreground: float = 0.05  # skip slices / patches with less foreground than this
    # with a lesion label: "drop" the slices / patches that touch it, or keep them and "mask" the
    # lesion (dilated by lesion_margin_mm) out of the noise, the loss and the calibration
    lesion_samples: str = "drop"
    lesion_margin_mm: float = 4.0
    patch_size: list | None = None  # 3D: patch size in voxels; null = the whole volume
    augment: dict = field(default_factory=dict)  # medae.samples.Augment fields
    cache_workers: int = 0
    num_workers: int = 0


@dataclass(frozen=True)
class LossConfig(_Section):
    """``loss``: the reconstruction loss (and the VAE / sparse terms' weights)."""

    SECTION: ClassVar[str] = "loss"
    kind: str = "mse"  # mse | l1 | bce
    beta: float = 1.0  # VAE: weight of the KL term
    sparsity: float = 1e-3  # sparse AE: weight of the L1 term on the code
    masked: bool = False  # the loss counts voxels inside the brain mask only


@dataclass(frozen=True)
class TrainConfig(_Section):
    """``train``: optimisation."""

    SECTION: ClassVar[str] = "train"
    epochs: int = 20
    steps: int | None = None  # total optimisation steps; when set, it decides the epochs
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant
    grad_clip: float | None = 1.0
    # which epoch's weights the bundle keeps: the lowest validation loss ("loss"), or the
    # highest pooled voxel AP of the labelled validation scans' maps ("ap": scored as medae
    # score maps them, every select_every steps and at the end; without a validation set, the
    # labelled training scans', as calibration uses them)
    select: str = "loss"
    select_every: int = 100  # train.select ap: steps between two AP evaluations
    # early stopping: epochs without a lower validation loss (select: loss), or AP evaluations
    # without a higher AP (select: ap)
    patience: int = 10
    precision: str = "32"  # 32 | bf16 | fp16 | auto (bf16 where the device has it natively)
    seed: int = 0
    max_steps_per_epoch: int | None = None
    # members trained from seeds seed, seed+1, ... on the same data; the map is the residual of
    # their mean reconstruction (medae.models.ensemble); 1 = one model
    ensemble: int = 1


def _defaults(cls) -> dict[str, Any]:
    return {f.name: f.default if f.default is not MISSING else f.default_factory()
            for f in fields(cls)}


DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": "ae", "spatial_dims": 2},  # other keys: the model's own arguments
    "preprocess": {},  # PreprocessConfig fields
    "data": _defaults(DataConfig),
    "loss": _defaults(LossConfig),
    "train": _defaults(TrainConfig),
    "scoring": {},  # medae.scoring.MapConfig fields (residual, erode_mm, median_mm, ...)
}
# keys validated by the model factory, PreprocessConfig and MapConfig
_OPEN_SECTIONS = {"model", "preprocess", "scoring"}


def _merge(base: dict, extra: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if key not in base and where not in _OPEN_SECTIONS and where != "data.augment":
            known = ", ".join(sorted(base))
            raise MedaeError(f"config: unknown key {where + '.' if where else ''}{key} "
                             f"(known: {known})")
        if isinstance(base.get(key), dict) and base[key] and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{where}.{key}" if where else key)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple = ()) -> dict:
    """Read a recipe, fill in defaults, apply ``section.key=value`` overrides (YAML values)."""
    user: dict = {}
    if path is not None:
        try:
            user = yaml.safe_load(read_regular(path, limit=1 << 24).decode()) or {}
        except FileNotFoundError as exc:
            raise MedaeError(path, "no such config file") from exc
        except MedaeError as exc:
            raise MedaeError(path, f"cannot read the config ({exc.reason})") from None
        except (UnicodeDecodeError, RecursionError):
            raise MedaeError(path, "cannot read YAML (not UTF-8 text, or nested too deeply)"
                             ) from None
        except (OSError, yaml.YAMLError) as exc:
            raise MedaeError(path, f"cannot read YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(user, dict):
            raise MedaeError(path, "a config must be a mapping of sections")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MedaeError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise MedaeError(f"--set {item!r}: the value {raw!r} is not valid YAML") from None
        node = user
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MedaeError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    for section, value in user.items():
        if section not in DEFAULTS:
            raise MedaeError(f"config: unknown section {section!r} "
                             f"(known: {', '.join(DEFAULTS)})")
        if value is not None and not isinstance(value, dict):
            raise MedaeError(f"config: {section} is {value!r}; expected a mapping of "
                             f"{section} keys")
    config = _merge(DEFAULTS, {k: v for k, v in user.items() if v is not None}, "")
    return validate_config(config)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _num(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


# key -> (test, what is allowed); checked once, before any work
_RULES: dict[str, tuple[Any, str]] = {
    "train.epochs": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "train.steps": (lambda v: v is None or (_int(v) and v >= 1), "null or an integer >= 1"),
    "train.batch_size": (lambda v: _int(v) and 1 <= v <= 1 << 16, "an integer from 1 to 65536"),
    "train.lr": (lambda v: _num(v) and v > 0, "a finite number > 0"),
    "train.weight_decay": (lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    "train.warmup_steps": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "train.schedule": (lambda v: v in ("cosine", "constant"), "cosine or constant"),
    "train.grad_clip": (lambda v: v is None or (_num(v) and v >= 0),
                        "null or a finite number >= 0"),
    "train.patience": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "train.select": (lambda v: v in ("loss", "ap"), "loss or ap"),
    "train.select_every": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "train.precision": (lambda v: str(v) in ("32", "bf16", "fp16", "auto"),
                        "32, bf16, fp16 or auto"),
    "train.seed": (lambda v: _int(v) and 0 <= v < 2**63, "an integer from 0 to 2**63 - 1"),
    "train.max_steps_per_epoch": (lambda v: v is None or (_int(v) and v >= 1),
                                  "null or an integer >= 1"),
    "data.val_fraction": (lambda v: _num(v) and 0 <= v < 1, "a number from 0 to below 1"),
    "data.min_foreground": (lambda v: _num(v) and 0 <= v <= 1, "a number from 0 to 1"),
    "data.lesion_samples": (lambda v: v in ("drop", "mask"), "drop or mask"),
    "data.calibration": (lambda v: v in ("holdout", "crossfit"), "holdout or crossfit"),
    "data.crossfit_folds": (lambda v: _int(v) and 2 <= v <= 20, "an integer from 2 to 20"),
    "data.lesion_margin_mm": (lambda v: _num(v) and 0 <= v <= 100, "a number from 0 to 100"),
    "data.patch_size": (lambda v: v is None or (isinstance(v, list) and len(v) in (2, 3)
                                                and all(_int(s) and s >= 1 for s in v)),
                        "null or a list of 2 or 3 integers >= 1"),
    "data.augment": (lambda v: isinstance(v, dict), "a mapping"),
    "data.cache_workers": (lambda v: _int(v) and 0 <= v <= 256, "an integer from 0 to 256"),
    "data.num_workers": (lambda v: _int(v) and 0 <= v <= 256, "an integer from 0 to 256"),
    "loss.kind": (lambda v: v in ("mse", "l1", "bce"), "mse, l1 or bce"),
    "loss.beta": (lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    "loss.sparsity": (lambda v: _num(v) and v >= 0, "a finite number >= 0"),
    "loss.masked": (lambda v: isinstance(v, bool), "true or false"),
    "model.name": (lambda v: isinstance(v, str) and v in _model_names(), "a registered model"),
    "train.ensemble": (lambda v: _int(v) and 1 <= v <= 16, "an integer from 1 to 16"),
    "model.spatial_dims": (lambda v: v in (2, 3), "2 or 3"),
}


_FLOAT_KEYS = {"train.lr", "train.weight_decay", "train.grad_clip", "data.val_fraction",
               "data.min_foreground", "data.lesion_margin_mm", "loss.beta", "loss.sparsity"}


def _model_names() -> list[str]:
    from medae.models import list_models

    return list_models()


def validate_config(config: dict) -> dict:
    """Check every section is a mapping and every known key's type and range; returns
    ``config``.  One line naming the key, the value and what is allowed."""
    for section in DEFAULTS:
        if not isinstance(config.get(section), dict):
            raise MedaeError(f"config: {section} is {config.get(section)!r}; expected a mapping")
    for key, (ok, allowed) in _RULES.items():
        section, name = key.split(".")
        if name not in config[section]:
            continue
        value = config[section][name]
        if isinstance(value, str) and key in _FLOAT_KEYS:  # YAML 1.1 reads 1e-3 as text
            with contextlib.suppress(ValueError):
                value = config[section][name] = float(value)
        if not ok(value):
            extra = f" ({', '.join(_model_names())})" if key == "model.name" else ""
            raise MedaeError(f"config: {key} is {value!r}; expected {allowed}{extra}")
    for cls in (DataConfig, LossConfig, TrainConfig):  # the typed views training reads
        cls.from_dict(config[cls.SECTION])
    return config


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)


RESIDUALS = ("abs", "squared", "positive")
#: the units of the heat map (``scoring.map_units``)
MAP_UNITS = ("normalised", "iqr")
#: default threshold rules (``scoring.operating_point``; see :mod:`medae.scoring.threshold`)
OPERATING_POINTS = ("auto", "dice", "froc", "candidates", "fpr")
#: false candidates per calibration scan the ``froc`` rule allows by default
FROC_FP_PER_SCAN = 2.0


@dataclass(frozen=True)
class MapConfig:
    """Post-processing of the residual, stored in the bundle (``scoring`` section).

    Attributes:
        residual: ``"abs"`` |x - x̂|, ``"squared"`` (x - x̂)², or ``"positive"`` max(x - x̂, 0)
            (only brighter-than-expected voxels, e.g. lesions in FLAIR).
        erode_mm: leave out the outer rim of the brain mask, this many mm deep (the brain edge
            is reconstructed poorly by every autoencoder and is not a lesion).  Only the outer
            surface is eroded: holes inside the mask do not grow.
        median_mm: median filter width in mm at the scan's resolution: one width (every axis)
            or three (e.g. ``[5, 5, 0]``: within each axial slice); each becomes the largest odd
            number of voxels no wider than that (under 3 voxels: no filtering on that axis).
        min_volume_mm3: candidates smaller than this are dropped.
        scan_percentile: the scan score is this percentile of the map inside the brain.
        channels: multi-sequence models: the inputs (``preprocess.inputs`` names) whose
            residuals make the map (``None``: every input).  E.g. ``[flair, t2]``: lesions are
            bright there, while a T1-weighted input helps the reconstruction but its positive
            residual (bright vessels, enhancement) is not a lesion sign.
        operating_point: the default threshold rule, calibrated at training (see
            :mod:`medae.scoring.threshold`): ``auto`` (calibration scans with lesion labels:
            ``dice``; truly healthy ones: ``candidates`` with at least 3 of them, else ``fpr``),
            ``dice`` (the best pooled Dice of the candidates on labelled calibration scans),
            ``froc`` (the most lesions touched at <= ``froc_fp`` false candidates per scan),
            ``candidates`` (<= 1 false candidate per healthy scan), ``fpr`` (1% of healthy
            voxels above it).
        froc_fp: false candidates per calibration scan that ``froc`` allows.
        map_units: the residual's units: ``normalised`` (the normalised image's, in which the
            model reads and reconstructs the scan) or ``iqr`` (interquartile ranges of that
            scan's own brain intensities, per input sequence: a scale that a large lesion hardly
            moves, where it moves the 99.5th percentile that percentile normalisation maps to 1,
            so that one threshold means the same on every scan; maps ranked the same within a
            scan either way).

    Bundles written before maps were computed at the scan's resolution used ``erode`` and
    ``median`` in voxels of the model grid: :meth:`from_dict` converts them with the model's
    spacing.
    """

    residual: str = "abs"
    erode_mm: float = 4.0
    median_mm: float | tuple[float, float, float] = (3.0, 3.0, 0.0)
    min_volume_mm3: float = 20.0
    scan_percentile: float = 99.0
    channels: tuple[str, ...] | None = None
    operating_point: str = "auto"
    froc_fp: float = FROC_FP_PER_SCAN
    map_units: str = "normalised"

    def __post_init__(self) -> None:
        if self.map_units not in MAP_UNITS:
            raise MedaeError(f"scoring.map_units: expected one of {MAP_UNITS}, "
                             f"got {self.map_units!r}")
        if self.operating_point not in OPERATING_POINTS:
            raise MedaeError(f"scoring.operating_point: expected one of {OPERATING_POINTS}, "
                             f"got {self.operating_point!r}")
        if self.channels is not None and (
                not isinstance(self.channels, tuple) or not self.channels
                or not all(isinstance(c, str) and c for c in self.channels)):
            raise MedaeError("scoring.channels: null or a list of input sequence names, "
                             f"got {self.channels!r}")
        if self.residual not in RESIDUALS:
            raise MedaeError(f"scoring.residual: expected one of {RESIDUALS}, "
                             f"got {self.residual!r}")
        widths = self.median_mm if isinstance(self.median_mm, tuple) else (self.median_mm,)
        if len(widths) not in (1, 3) or any(
                isinstance(m, bool) or not isinstance(m, int | float) or not 0 <= m < 1e3
                for m in widths):
            raise MedaeError("scoring.median_mm: one or three widths in mm (0 <= w < 1000), "
                             f"got {self.median_mm!r}")
        for key in ("erode_mm", "min_volume_mm3", "froc_fp"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not 0 <= value < 1e9:
                raise MedaeError(f"scoring.{key}: expected a number >= 0, got {value!r}")
        if not 0 < self.scan_percentile <= 100:
            raise MedaeError("scoring.scan_percentile must be in (0, 100]")

    @classmethod
    def from_dict(cls, values: dict | None, model_spacing=None) -> MapConfig:
        """Validate a ``scoring`` section (legacy ``erode``/``median`` in model voxels are
        converted to mm with ``model_spacing``, 1 mm when the model kept the scan's grid)."""
        values = dict(values or {})
        spacing = np.asarray(model_spacing if model_spacing is not None else (1.0,) * 3, float)
        if "erode" in values:
            if "erode_mm" in values:
                raise MedaeError("scoring: give erode_mm (mm), not also erode (model voxels)")
            values["erode_mm"] = float(values.pop("erode")) * float(spacing.mean())
        if "median" in values:
            if "median_mm" in values:
                raise MedaeError("scoring: give median_mm (mm), not also median (model voxels)")
            m = values.pop("median")
            m = [m] * 3 if not isinstance(m, list | tuple) else list(m)
            if len(m) != 3:
                raise MedaeError(f"scoring.median: one or three sizes, got {m!r}")
            values["median_mm"] = [0.0 if v <= 1 else float(v) * float(s)
                                   for v, s in zip(m, spacing, strict=True)]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedaeError(f"scoring: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        for key in ("median_mm", "channels"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["channels"] is None:  # one-sequence bundles stay as they were
            del d["channels"]
        if d["map_units"] == "normalised":  # ... and bundles in the units they always had
            del d["map_units"]
        for key in ("median_mm", "channels"):
            if isinstance(d.get(key), tuple):
                d[key] = list(d[key])
        return d

    def median_size(self, spacing) -> tuple[int, int, int]:
        """The median filter's size in voxels of a grid with ``spacing`` (odd, >= 1)."""
        widths = self.median_mm if isinstance(self.median_mm, tuple) else (self.median_mm,) * 3
        return tuple(max(1, 2 * int(np.floor((w / s + 1e-6 - 1) / 2)) + 1)
                     for w, s in zip(widths, spacing, strict=True))
