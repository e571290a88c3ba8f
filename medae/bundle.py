"""The model bundle: ``model.safetensors`` (weights, nothing executable) + ``model.json``.

``model.json`` holds the architecture and its arguments, the preprocessing, the loss and noise
settings, intensity statistics, a training summary, the medae version, and (after calibration)
the thresholds.  Loading validates all of it and checks the weights' SHA-256, so a bundle with
tampered or missing parts gives a :class:`MedaeError` saying why.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from medae.config import DataConfig, MapConfig, validate_config
from medae.errors import MedaeError
from medae.io.atomic import atomic_write_bytes
from medae.io.files import read_regular
from medae.models import create_model, is_registered, list_models
from medae.preprocess import PreprocessConfig
from medae.version import __version__

#: suffixes of pickle-based checkpoints (loading one can run arbitrary code): refused
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
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


def model_kwargs(config: dict) -> dict:
    """The model's construction arguments: the recipe's ``model`` section, with the input size
    and the number of input channels (``preprocess.inputs``) filled in."""
    m = dict(config["model"])
    pre = PreprocessConfig.from_dict(config["preprocess"])
    size = pre.size
    if m.setdefault("in_channels", pre.channels) != pre.channels:
        raise MedaeError(f"config: model.in_channels is {m['in_channels']!r} but "
                         f"preprocess.inputs lists {pre.channels} sequence(s)")
    dims = int(m.get("spatial_dims", 2))
    if "in_shape" not in m:
        shape = DataConfig.from_dict(config["data"]).patch_size or size
        shape = tuple(shape)[:dims] if dims == 2 else tuple(shape)
        if any(s is None for s in shape):
            raise MedaeError("config: preprocess.size (or data.patch_size for 3D) must fix the "
                             f"model's input size, got {shape}")
        m["in_shape"] = list(shape)
    return m


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
    atomic_write_bytes(run / META, (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode())
    return run


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(read_regular(path, limit=MAX_META_BYTES), parse_constant=_no_constant)
    except FileNotFoundError as exc:
        raise MedaeError(path, "missing: not a medae model folder") from exc
    except MedaeError as exc:
        raise MedaeError(path, f"unreadable model metadata ({exc.reason})") from None
    except RecursionError:
        raise MedaeError(path, "unreadable model metadata (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedaeError(path, f"unreadable model metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MedaeError(path, f"not a medae model bundle (format is not {FORMAT!r})")
    return meta


MAX_META_BYTES = 64 << 20
#: the largest weights file read (a bundle is a few MB to a few GB)
MAX_WEIGHTS_BYTES = 16 << 30


def _no_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not a JSON number", name, 0)


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_calibration(cal: Any, path: Path) -> None:
    """``calibration`` is null or complete: finite thresholds and an increasing FPR curve."""
    if cal is None:
        return
    _check(isinstance(cal, dict) and bool(cal), path,
           "calibration: expected null or calibrated thresholds, got an empty value")
    voxel = cal.get("voxel_thresholds")
    _check(isinstance(voxel, dict) and bool(voxel) and all(
        _finite(v) for v in voxel.values()), path,
        "calibration.voxel_thresholds: expected finite numbers")
    curve = cal.get("fpr_curve")
    ok = isinstance(curve, dict) and all(isinstance(curve.get(k), list) for k in
                                         ("fpr", "threshold"))
    ok = ok and 2 <= len(curve["fpr"]) == len(curve["threshold"])
    ok = ok and all(_finite(v) for v in curve["fpr"] + curve["threshold"])
    ok = ok and all(0 < a < b < 1 for a, b in zip(curve["fpr"][:-1], curve["fpr"][1:], strict=True))
    _check(ok, path, "calibration.fpr_curve: expected equal-length lists of finite numbers, "
                     "fpr increasing within (0, 1)")
    scan = cal.get("scan_threshold")
    _check(scan is None or _finite(scan), path,
           "calibration.scan_threshold: expected null or a finite number")
    cand = cal.get("candidate_threshold")  # absent in bundles calibrated before the rule
    _check(cand is None or _finite(cand), path,
           "calibration.candidate_threshold: expected null or a finite number")
    point = cal.get("default_threshold")  # absent in bundles calibrated before the rules
    _check(point is None or _finite(point), path,
           "calibration.default_threshold: expected null or a finite number")
    _check(isinstance(cal.get("warnings", []), list), path,
           "calibration.warnings: expected a list of strings")


def _check(cond: bool, path: Path, reason: str) -> None:
    if not cond:
        raise MedaeError(path, reason)


def _pickle_refusal(path: Path) -> MedaeError:
    return MedaeError(path, "is a pickle-based checkpoint: loading it can run arbitrary code; "
                            "medae loads safetensors bundles. If you trust its origin, convert it "
                            "with `medae convert-checkpoint --trust-pickle-code-execution "
                            f"--checkpoint {path} --config RECIPE.yaml --output RUN_DIR`")


def _refuse_pickles(run: Path) -> None:
    """A pickle checkpoint given where a bundle is expected is refused, never unpickled."""
    if run.name.lower().endswith(PICKLE_SUFFIXES) and not run.is_dir():
        raise _pickle_refusal(run)
    if run.is_dir() and not (run / META).exists():
        if (run / "checkpoint.pt").is_file() and (run / "config.yaml").is_file():
            raise MedaeError(run, "training has not finished (a checkpoint, no model.json): "
                                  "continue it with `medae train ... --output "
                                  f"{run} --resume`")
        pickles = sorted(p for p in run.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
        if pickles:
            raise _pickle_refusal(pickles[0])


def _header_shapes(payload: bytes, wpath: Path) -> dict[str, tuple[int, ...]]:
    """The tensors' shapes from a safetensors header (nothing else is read)."""
    try:
        (size,) = struct.unpack("<Q", payload[:8])
        if size > len(payload) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(payload[8:8 + size])
        shapes = {k: tuple(int(n) for n in v["shape"]) for k, v in header.items()
                  if k != "__metadata__"}
    except (struct.error, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise MedaeError(wpath, f"unreadable safetensors file ({type(exc).__name__} in its "
                                "header)") from None
    return shapes


def _check_sizes(model_cfg: dict, shapes: dict[str, tuple[int, ...]], meta_path: Path,
                 wpath: Path) -> None:
    """The network that ``model.json`` describes, built without memory (PyTorch's meta
    device), must have exactly the tensors the weights file holds: an edited model.json can then
    never make medae allocate more than the weights (a network of 10^12 parameters is refused
    here, before it is built)."""
    try:
        with torch.device("meta"):
            skeleton = create_model(**model_cfg)
        wanted = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    except MedaeError as exc:
        raise MedaeError(meta_path, str(exc)) from None
    except Exception as exc:
        raise MedaeError(meta_path, f"model: cannot be built ({type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:200]})") from None
    if wanted != shapes:
        diff = sorted(set(wanted) ^ set(shapes)) or sorted(
            k for k in wanted if wanted[k] != shapes[k])
        k = diff[0]
        raise MedaeError(wpath, f"weights do not fit the architecture in model.json ({k}: "
                                f"{list(shapes.get(k, ()))} in the weights, "
                                f"{list(wanted.get(k, ()))} in the architecture; "
                                f"{len(diff)} tensor(s) differ)")


def load_bundle(run: str | os.PathLike, device: str | torch.device = "cpu") -> Bundle:
    """Load and validate a bundle; the network is returned in eval mode on ``device``.

    Nothing is unpickled: weights are read from safetensors.  A pickle-based checkpoint (or a
    folder holding one and no ``model.json``) is refused; see
    :func:`medae.convert.convert_checkpoint`.
    """
    run = Path(run)
    _refuse_pickles(run)
    meta_path = run / META
    meta = _read_meta(meta_path)
    version = meta.get("format_version")
    _check(isinstance(version, int), meta_path, "format_version missing or not an integer")
    _check(version <= FORMAT_VERSION, meta_path,
           f"bundle format {version} is newer than this medae ({__version__}) reads: upgrade")
    model_cfg = meta.get("model")
    _check(isinstance(model_cfg, dict) and isinstance(model_cfg.get("name"), str), meta_path,
           "model: missing architecture name")
    _check(is_registered(model_cfg["name"]), meta_path,
           f"model: unknown architecture {model_cfg['name']!r} (known: {', '.join(list_models())})")
    weights = meta.get("weights")
    _check(isinstance(weights, dict) and weights.get("file") == WEIGHTS
           and isinstance(weights.get("sha256"), str), meta_path, "weights: missing or invalid")
    pre = meta.get("preprocess")
    _check(isinstance(pre, dict), meta_path, "preprocess: missing")
    config = meta.get("config")
    _check(isinstance(config, dict), meta_path, "config: missing (the training recipe)")
    try:
        validate_config(config)
        MapConfig.from_dict(config.get("scoring"))
    except (MedaeError, TypeError, ValueError) as exc:
        raise MedaeError(meta_path, str(exc)) from None
    _check_calibration(meta.get("calibration"), meta_path)
    try:
        pre_cfg = PreprocessConfig.from_dict(pre)
    except (MedaeError, TypeError, ValueError) as exc:
        raise MedaeError(meta_path, f"preprocess: {exc}") from None
    wpath = run / WEIGHTS
    try:
        payload = read_regular(wpath, limit=MAX_WEIGHTS_BYTES)
    except FileNotFoundError as exc:
        raise MedaeError(wpath, "missing model weights") from exc
    except MedaeError as exc:
        raise MedaeError(wpath, f"unreadable model weights ({exc.reason})") from None
    except OSError as exc:
        raise MedaeError(wpath, f"unreadable model weights ({exc.strerror or exc})") from None
    _check(hashlib.sha256(payload).hexdigest() == weights["sha256"], wpath,
           "weights do not match the checksum in model.json (modified or corrupt)")
    _check_sizes(model_cfg, _header_shapes(payload, wpath), meta_path, wpath)
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
