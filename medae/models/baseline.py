"""The intensity-thresholding baseline as a model (``intensity``).

Its "reconstruction" is zero everywhere, so the residual is the normalised input itself: the
anomaly map of the baseline every published method must beat on FLAIR (Meissen et al. 2021).
It goes through the same preprocessing, mask, post-processing and threshold calibration as the
autoencoders, by ``medae train`` (calibration only: nothing to optimise) and ``medae score``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from medae.models.ae import AEOutput
from medae.models.registry import register_model


class IntensityBaseline(nn.Module):
    family = "intensity"

    def __init__(self, spatial_dims: int):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims

    def forward(self, x: Tensor) -> AEOutput:
        zeros = torch.zeros_like(x)
        code = x.flatten(1).mean(1, keepdim=True)  # the mean intensity as a 1-d "code"
        return AEOutput(recon=zeros, z=code, logits=zeros)


@register_model("intensity")
def intensity(*, spatial_dims: int = 2, in_shape=None, in_channels: int = 1,
              channels=None) -> IntensityBaseline:
    """Intensity baseline; the other arguments are accepted so recipes can share a model block."""
    return IntensityBaseline(spatial_dims)
