"""Shared option checking and MONAI-block encoder/decoder stacks for the autoencoders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from torch import Tensor, nn

NORMS = ("instance", "batch", "group", None)


def check_config(spatial_dims: int, in_channels: int, channels: Sequence[int],
                 strides: int | Sequence[int] | None, latent_size: int | None,
                 in_shape: Sequence[int] | None, norm: str | None, dropout: float | None,
                 num_res_units: int, act: Any, out_activation: str | None) -> dict[str, Any]:
    """Validate the architecture options; ValueError names the bad key.

    Returns:
        The normalised options (tuples, per-level strides, MONAI norm/act specs).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if not _is_int(in_channels) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if (isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels
            or not all(_is_int(c) and c > 0 for c in channels)):
        raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}")
    channels = tuple(channels)
    if strides is None:
        strides = 2
    strides = (strides,) * len(channels) if _is_int(strides) else tuple(strides)
    if len(strides) != len(channels) or not all(_is_int(s) and s > 0 for s in strides):
        raise ValueError(f"strides must be a positive int or one per level, got {strides!r}")
    if in_shape is not None:
        if len(in_shape) != spatial_dims or not all(_is_int(n) and n > 0 for n in in_shape):
            raise ValueError(f"in_shape must be {spatial_dims} positive ints, got {in_shape!r}")
        in_shape = tuple(in_shape)
    if latent_size is not None:
        if not _is_int(latent_size) or latent_size < 1:
            raise ValueError(f"latent_size must be a positive int or None, got {latent_size!r}")
        if in_shape is None:
            raise ValueError("in_shape is required with a dense bottleneck (latent_size)")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if dropout is not None and not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be in [0, 1) or None, got {dropout!r}")
    if not _is_int(num_res_units) or num_res_units < 0:
        raise ValueError(f"num_res_units must be an int >= 0, got {num_res_units!r}")
    if out_activation not in (None, "sigmoid"):
        raise ValueError(f"out_activation must be None or 'sigmoid', got {out_activation!r}")
    if norm == "instance":
        norm_spec: Any = ("instance", {"affine": True})
    elif norm == "group":
        norm_spec = ("group", {"num_groups": math.gcd(8, *channels)})
    else:
        norm_spec = norm
    return {
        "spatial_dims": spatial_dims, "in_channels": in_channels, "channels": channels,
        "strides": strides, "in_shape": in_shape, "norm": norm_spec,
        # a bias before instance/batch norm is removed by the normalisation (zero gradient)
        "bias": norm not in ("instance", "batch"),
        "dropout": dropout or None, "num_res_units": num_res_units,
        "act": tuple(act) if isinstance(act, list) else act,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _common(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"act": cfg["act"], "norm": cfg["norm"], "dropout": cfg["dropout"],
            "bias": cfg["bias"], "kernel_size": 3}


def encoder(cfg: dict[str, Any]) -> nn.Sequential:
    """One strided block per level: in_channels -> channels[0] -> ... -> channels[-1]."""
    layers, c_in = [], cfg["in_channels"]
    for c_out, stride in zip(cfg["channels"], cfg["strides"], strict=True):
        if cfg["num_res_units"] > 0:
            layers.append(ResidualUnit(cfg["spatial_dims"], c_in, c_out, strides=stride,
                                       subunits=cfg["num_res_units"], **_common(cfg)))
        else:
            layers.append(Convolution(cfg["spatial_dims"], c_in, c_out, strides=stride,
                                      **_common(cfg)))
        c_in = c_out
    return nn.Sequential(*layers)


def decoder(cfg: dict[str, Any]) -> nn.Sequential:
    """Mirror of :func:`encoder` with transposed convolutions, ending at channels[0]."""
    channels, dims, layers = cfg["channels"], cfg["spatial_dims"], []
    for i in reversed(range(len(channels))):
        c_in, c_out = channels[i], channels[max(i - 1, 0)]
        layers.append(Convolution(dims, c_in, c_out, strides=cfg["strides"][i],
                                  is_transposed=True, **_common(cfg)))
        if cfg["num_res_units"] > 0:
            layers.append(ResidualUnit(dims, c_out, c_out, strides=1, subunits=1,
                                       **_common(cfg)))
    return nn.Sequential(*layers)


def out_head(cfg: dict[str, Any]) -> nn.Module:
    """Linear output layer (3×3 convolution, no norm/activation) back to ``in_channels``."""
    return Convolution(cfg["spatial_dims"], cfg["channels"][0], cfg["in_channels"],
                       kernel_size=3, conv_only=True)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the spatial axes of ``x`` (B, C, *spatial) at their ends to a multiple of
    ``multiple`` (the network's total stride); :func:`crop_to` undoes it."""
    pad = [(-n) % multiple for n in x.shape[2:]]
    if not any(pad):
        return x
    return F.pad(x, [p for n in reversed(pad) for p in (0, n)])


def crop_to(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Crop the spatial axes of ``x`` to ``shape`` (from the start)."""
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    return x[(slice(None), slice(None), *(slice(0, n) for n in shape))]
