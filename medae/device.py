"""Devices and numeric precisions: one table, shared by training and scoring; and the host's C
heap around CT-size volumes."""

from __future__ import annotations

import contextlib
import ctypes
import os

import torch

from medae.errors import MedaeError

#: a volume of more than this many voxels (a CT-size scan; BraTS is 9 M) is scored and written
#: alone, with the C heap trimmed between its big steps
LARGE_VOXELS = 1 << 25


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc ``malloc_trim``): after a step on
    a CT-size volume, the threads' malloc arenas otherwise keep what it freed and the next step's
    arrays add to it (bench_memory: a folder of three CT volumes 2287 -> 2149 MiB).  No-op where
    the C library has no ``malloc_trim``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


#: precision name -> autocast dtype (None: plain float32)
PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, where: str = "precision") -> str:
    name = str(name)
    if name not in PRECISIONS:
        raise MedaeError(f"{where}: expected one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU with bf16 units (Ampere and
    later), or a CPU with AVX-512 BF16 or AMX instructions.  Elsewhere bf16 autocast is
    emulated and slower than float32."""
    try:
        if device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        if device.type == "cpu":
            return bool(torch.cpu._is_avx512_bf16_supported()
                        or torch.cpu._is_amx_tile_supported())
    except Exception:  # (private CPU probes: a torch without them trains in float32)
        return False
    return False


def resolve_precision(name: str, device: torch.device, where: str = "precision") -> str:
    """A training precision for ``device``: ``auto`` is bf16 where the device computes it
    natively (:func:`native_bf16`; the recommended recipe trained 1.4-1.9x faster there with
    the same detection: docs/benchmarks.md, the README's benchmark), else 32; any other name
    is checked and kept."""
    if str(name) == "auto":
        return "bf16" if native_bf16(device) else "32"
    return check_precision(name, where)


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
