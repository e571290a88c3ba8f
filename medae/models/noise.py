"""Coarse (low-frequency) Gaussian noise for denoising autoencoders.

Kascenas et al. 2022, "Denoising autoencoders for unsupervised anomaly detection in brain MRI":
Gaussian noise drawn on a coarse grid (e.g. 16×16) is upsampled to the image size and added inside
the brain.  As in TorchIO, drawing the parameters (:func:`draw_coarse_noise_params`, which uses the
caller's generator) is separate from applying them (:func:`apply_coarse_noise`, deterministic).

The upsampled noise is rescaled voxel-wise by the exact standard deviation of the interpolation
(linear interpolation averages neighbouring grid values and so shrinks the variance), so the added
noise has standard deviation ``std`` at every voxel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@dataclass(frozen=True)
class CoarseNoise:
    """Serialisable coarse-noise settings (plain float/int, see :meth:`to_dict`).

    Attributes:
        std: Standard deviation of the added noise (in image intensity units).
        resolution: Size ``r`` of the coarse grid along every spatial axis.
    """

    std: float = 0.2
    resolution: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.std, bool) or not isinstance(self.std, (int, float)) or self.std < 0:
            raise ValueError(f"noise_std must be a number >= 0, got {self.std!r}")
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) \
                or self.resolution < 1:
            raise ValueError(f"noise_resolution must be a positive int, got {self.resolution!r}")
        object.__setattr__(self, "std", float(self.std))

    def to_dict(self) -> dict[str, Any]:
        """``{"std": float, "resolution": int}`` for a JSON bundle."""
        return asdict(self)

    def draw(self, generator: torch.Generator) -> dict[str, Any]:
        """Draw parameters with these settings (see :func:`draw_coarse_noise_params`)."""
        return draw_coarse_noise_params(generator, std=self.std, resolution=self.resolution)


def draw_coarse_noise_params(generator: torch.Generator, *, std: float = 0.2,
                             resolution: int = 16) -> dict[str, Any]:
    """Draw the parameters of one coarse-noise corruption.

    Args:
        generator: Source of randomness (only a seed is drawn from it).
        std: Standard deviation of the noise.
        resolution: Coarse grid size per spatial axis.

    Returns:
        ``{"seed": int, "std": float, "resolution": int}`` (JSON-serialisable).
    """
    settings = CoarseNoise(std=std, resolution=resolution)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return {"seed": seed, **settings.to_dict()}


def coarse_noise(shape: tuple[int, ...], params: dict[str, Any]) -> Tensor:
    """The float32 CPU noise field of ``shape`` (B, C, *spatial) for ``params``."""
    r, spatial = int(params["resolution"]), tuple(shape[2:])
    if len(spatial) not in _MODES:
        raise ValueError(f"coarse noise needs 1 to 3 spatial axes, got shape {tuple(shape)}")
    generator = torch.Generator().manual_seed(int(params["seed"]))
    low = torch.randn((*shape[:2], *(r,) * len(spatial)), generator=generator)
    up = F.interpolate(low, size=spatial, mode=_MODES[len(spatial)], align_corners=False)
    return up * (float(params["std"]) / _interpolation_std(r, spatial))


def _interpolation_std(r: int, spatial: tuple[int, ...]) -> Tensor:
    """Voxel-wise std of unit white noise on an r-grid after (multi)linear upsampling."""
    eye = torch.eye(r).unsqueeze(1)  # (r, 1, r): one unit impulse per grid point
    std = torch.ones(())
    for axis, n in enumerate(spatial):
        weights = F.interpolate(eye, size=n, mode="linear", align_corners=False)[:, 0]  # (r, n)
        axis_std = weights.square().sum(0).sqrt()
        view = [1] * len(spatial)
        view[axis] = n
        std = std * axis_std.view(view)
    return std


def apply_coarse_noise(x: Tensor, mask: Tensor | None, params: dict[str, Any]) -> Tensor:
    """Add the coarse noise described by ``params`` to ``x`` inside ``mask``.

    Args:
        x: Images (B, C, H, W) or (B, C, D, H, W).
        mask: Foreground (1) / background (0), broadcastable to ``x`` (e.g. (B, 1, ...)), bool or
            float; None adds noise everywhere.
        params: From :func:`draw_coarse_noise_params`; the same params give the same output.

    Returns:
        ``x + noise * mask`` with the dtype and device of ``x``.
    """
    noise = coarse_noise(tuple(x.shape), params).to(device=x.device, dtype=x.dtype)
    if mask is not None:
        noise = noise * mask.to(device=x.device, dtype=x.dtype)
    return x + noise


__all__ = ["CoarseNoise", "apply_coarse_noise", "coarse_noise", "draw_coarse_noise_params"]
