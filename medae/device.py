"""Devices and numeric precisions: one table, shared by training and scoring."""

from __future__ import annotations

import os

import torch

from medae.errors import MedaeError

#: precision name -> autocast dtype (None: plain float32)
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, where: str = "precision") -> str:
    name = str(name)
    if name not in PRECISIONS:
        raise MedaeError(f"{where}: expected one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun,
    ``cuda`` means this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedaeError("--device cuda: no CUDA device is available (use --device cpu)")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise MedaeError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)
