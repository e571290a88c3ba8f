"""The model bundle: ``model.safetensors`` (weights, nothing executable) + ``model.json``.

``model.json`` holds the architecture and its arguments, the preprocessing, the loss and noise
settings, intensity statistics, a training summary, the medae version, and (after calibration)
the thresholds.  Loading validates all of it and checks the weights' SHA-256, so a bundle with
tampered or missing parts gives a :class:`MedaeError` saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from medae import __version__
from medae.errors import MedaeError
from medae.io.atomic import atomic_write_bytes
from medae.models import create_model, list_models
from medae.preprocess import PreprocessConfig

FORMAT = "medae-bundle"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


@dataclass
class Bundle:
    """A loaded model bundle: the network (eval mode) and its recorded settings."""

    path: Path
    model: torch.nn.Module
    preprocess: PreprocessConfig
    meta: dict[str, Any]

    @property
    def config(self) -> dict:
        return self.meta["config"]


def save_bundle(run: str | os.PathLike, model: torch.nn.Module, config: dict, *,
                training: dict, intensity: list[dict], val_cases: list[str],
                calibration: dict | None = None) -> Path:
    """Write weights and metadata atomically into ``run``."""
    run = Path(run)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    payload = st_save(state)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "medae_version": __version__,
        "model": dict(model.config),
        "preprocess": PreprocessConfig.from_dict(config["preprocess"]).to_dict(),
        "config": config,
        "training": training,
        "intensity": intensity,
        "validation_cases": list(val_cases),
        "calibration": calibration,
        "weights": {"file": WEIGHTS, "sha256": hashlib.sha256(payload).hexdigest()},
    }
    atomic_write_bytes(run / WEIGHTS, payload)
    atomic_write_bytes(run / META, (json.dumps(meta, indent=2) + "\n").encode())
    return run


def update_meta(run: str | os.PathLike, **fields: Any) -> dict:
    """Replace top-level fields of ``model.json`` (e.g. ``calibration``), atomically."""
    path = Path(run) / META
    meta = _read_meta(path)
    meta.update(fields)
    atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise MedaeError(path, "missing: not a medae model folder") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedaeError(path, f"unreadable model metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MedaeError(path, f"not a medae model bundle (format is not {FORMAT!r})")
    return meta


def _check(cond: bool, path: Path, reason: str) -> None:
    if not cond:
        raise MedaeError(path, reason)


def load_bundle(run: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """Load and validate a bundle; the network is returned in eval mode on ``device``."""
    run = Path(run)
    meta_path = run / META
    meta = _read_meta(meta_path)
    version = meta.get("format_version")
    _check(isinstance(version, int), meta_path, "format_version missing or not an integer")
    _check(version <= FORMAT_VERSION, meta_path,
           f"bundle format {version} is newer than this medae ({__version__}) reads: upgrade")
    model_cfg = meta.get("model")
    _check(isinstance(model_cfg, dict) and isinstance(model_cfg.get("name"), str), meta_path,
           "model: missing architecture name")
    _check(model_cfg["name"] in list_models(), meta_path,
           f"model: unknown architecture {model_cfg['name']!r} (known: {', '.join(list_models())})")
    weights = meta.get("weights")
    _check(isinstance(weights, dict) and weights.get("file") == WEIGHTS
           and isinstance(weights.get("sha256"), str), meta_path, "weights: missing or invalid")
    pre = meta.get("preprocess")
    _check(isinstance(pre, dict), meta_path, "preprocess: missing")
    try:
        pre_cfg = PreprocessConfig.from_dict(pre)
    except (MedaeError, TypeError, ValueError) as exc:
        raise MedaeError(meta_path, f"preprocess: {exc}") from None
    wpath = run / WEIGHTS
    try:
        payload = wpath.read_bytes()
    except FileNotFoundError as exc:
        raise MedaeError(wpath, "missing model weights") from exc
    _check(hashlib.sha256(payload).hexdigest() == weights["sha256"], wpath,
           "weights do not match the checksum in model.json (modified or corrupt)")
    try:
        state = st_load(payload)
    except (SafetensorError, ValueError) as exc:
        raise MedaeError(wpath, f"unreadable safetensors file ({exc})") from None
    try:
        model = create_model(**model_cfg)
        model.load_state_dict(state, strict=True)
    except MedaeError as exc:
        raise MedaeError(meta_path, str(exc)) from None
    except (RuntimeError, TypeError, ValueError) as exc:
        raise MedaeError(wpath, f"weights do not fit the architecture ({str(exc)[:200]})") from None
    model.to(device).eval()
    return Bundle(path=run, model=model, preprocess=pre_cfg, meta=meta)
