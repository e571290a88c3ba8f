"""Training recipes: YAML files with four sections, defaults, dotted overrides, validation.

A recipe names a model and its arguments (``model``), the preprocessing (``preprocess``, see
:class:`medae.preprocess.PreprocessConfig`), the samples (``data``), the loss (``loss``) and the
optimisation (``train``).  Unknown keys are errors that name the key.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from medae.errors import MedaeError

DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"name": "ae", "spatial_dims": 2},  # other keys: the model's own arguments
    "preprocess": {},  # PreprocessConfig fields
    "data": {
        "val_fraction": 0.2,  # fraction of subjects held out for validation / calibration
        "min_foreground": 0.05,  # skip slices / patches with less foreground than this
        "patch_size": None,  # 3D: patch size in voxels; null = the whole preprocessed volume
        "augment": {},  # Augment fields: flip_lr, intensity_scale, intensity_shift
        "cache_workers": 0,
        "num_workers": 0,
    },
    "loss": {"kind": "mse", "beta": 1.0, "sparsity": 1e-3, "masked": False},
    "train": {
        "epochs": 20,
        "steps": None,  # total optimisation steps; when set, it decides the number of epochs
        "batch_size": 16,
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "warmup_steps": 50,
        "schedule": "cosine",  # cosine | constant
        "grad_clip": 1.0,
        "patience": 10,  # early stopping on the validation loss (epochs without improvement)
        "precision": "32",  # 32 | bf16 | fp16
        "seed": 0,
        "max_steps_per_epoch": None,
    },
    "scoring": {},  # medae.scoring.MapConfig fields (residual, erode, median, ...)
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
            user = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as exc:
            raise MedaeError(path, "no such config file") from exc
        except (OSError, yaml.YAMLError) as exc:
            raise MedaeError(path, f"cannot read YAML ({' '.join(str(exc).split())})") from exc
        if not isinstance(user, dict):
            raise MedaeError(path, "a config must be a mapping of sections")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MedaeError(f"--set {item!r}: expected section.key=value")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = user
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MedaeError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    for section in user:
        if section not in DEFAULTS:
            raise MedaeError(f"config: unknown section {section!r} "
                             f"(known: {', '.join(DEFAULTS)})")
    return _merge(DEFAULTS, user, "")


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
