"""``medae convert-checkpoint``: a trusted pickle-based PyTorch checkpoint into a model bundle.

Its own module because it builds a network from a recipe (training's job) and writes a bundle:
the bundle module itself only reads and writes bundles and knows nothing of training.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medae.bundle import META, model_kwargs, save_bundle
from medae.config import load_config
from medae.errors import MedaeError
from medae.models import create_model
from medae.version import __version__


def convert_checkpoint(checkpoint: str | os.PathLike, config: str | os.PathLike,
                       output: str | os.PathLike, *, trust_pickle_code_execution: bool = False
                       ) -> Path:
    """Turn a pickle-based PyTorch checkpoint into a medae bundle (safetensors + model.json).

    Unpickling can run arbitrary code, so this runs only with ``trust_pickle_code_execution``
    set by the user.  The checkpoint holds a state dict, or a dict with a ``"model"`` or
    ``"state_dict"`` entry; the network is built from the recipe ``config`` and the weights are
    loaded strictly.  The bundle has no calibrated thresholds (score with ``--threshold``).
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if not trust_pickle_code_execution:
        raise MedaeError(checkpoint, "converting a pickle-based checkpoint unpickles it, which can "
                                     "run arbitrary code: pass --trust-pickle-code-execution "
                                     "only if you trust its origin")
    if (output / META).exists():
        raise MedaeError(output, "already holds a model bundle (choose a new folder)")
    cfg = load_config(config)
    if not checkpoint.is_file():
        raise MedaeError(checkpoint, "no such file")
    try:
        obj = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle and torch raise many types for foreign files
        raise MedaeError(checkpoint, f"cannot load checkpoint ({type(exc).__name__}: "
                                     f"{str(exc)[:200]})") from None
    state = obj
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise MedaeError(checkpoint, "holds no state dict (expected a dict of tensors, or a dict "
                                     "with a 'model' or 'state_dict' entry)")
    try:
        model = create_model(**model_kwargs(cfg))
        model.load_state_dict(state, strict=True)
    except MedaeError:
        raise
    except (RuntimeError, TypeError, ValueError) as exc:
        raise MedaeError(checkpoint, f"weights do not fit the recipe's architecture "
                                     f"({' '.join(str(exc).split())[:200]})") from None
    output.mkdir(parents=True, exist_ok=True)
    training = {"note": f"converted from the pickle-based checkpoint {checkpoint.name} with "
                        "--trust-pickle-code-execution; not trained by medae, not calibrated",
                "converted_from": checkpoint.name, "medae_version": __version__}
    return save_bundle(output, model, cfg, training=training, intensity=[], val_cases=[],
                       calibration=None)
