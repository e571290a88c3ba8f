"""Denoising U-Net (``dae_unet``): the learned baseline of Kascenas et al. (2022).

A MONAI ``UNet`` (skip connections) trained to remove coarse noise from healthy images.  Skip
connections would let a plain autoencoder copy its input; trained as a denoiser the network
instead learns to restore healthy appearance, which is what makes it a strong anomaly detector.
Inputs whose size is not a multiple of the total stride are padded and the output cropped back.
The code ``z`` is the bottleneck feature map (captured with a forward hook).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.layers import SkipConnection
from monai.networks.nets import UNet
from torch import Tensor, nn

from medae.models.ae import AEOutput
from medae.models.blocks import crop_to, pad_to_multiple
from medae.models.noise import CoarseNoise
from medae.models.registry import register_model

_NORMS = {"instance": ("instance", {"affine": True}), "batch": "batch", None: None}


class DenoisingUNet(nn.Module):
    """MONAI U-Net with the :class:`AEOutput` interface; ``family == "dae"``."""

    family = "dae"

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int],
                 num_res_units: int, norm: str | None, dropout: float):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {tuple(_NORMS)}, got {norm!r}")
        if len(channels) < 2:
            raise ValueError("channels needs at least two levels")
        self.spatial_dims = spatial_dims
        self.net = UNet(spatial_dims, in_channels, in_channels, channels=tuple(channels),
                        strides=(2,) * (len(channels) - 1), num_res_units=num_res_units,
                        norm=_NORMS[norm], dropout=dropout)
        self.multiple = 2 ** (len(channels) - 1)
        self._z: Tensor | None = None
        # the code is the output of the innermost skip connection's submodule (the bottleneck);
        # skips nest, so it is the last one in depth-first order (with num_res_units=0 MONAI's
        # blocks are plain Sequentials too, so the tree is searched, not walked by type)
        bottom = [m for m in self.net.modules() if isinstance(m, SkipConnection)][-1]
        bottom.submodule.register_forward_hook(self._keep_code)

    def _keep_code(self, module, args, output) -> None:
        self._z = output

    def forward(self, x: Tensor) -> AEOutput:
        out = crop_to(self.net(pad_to_multiple(x, self.multiple)), x.shape[2:])
        z, self._z = self._z, None
        return AEOutput(recon=out, z=z, logits=out)


@register_model("dae_unet")
def dae_unet(*, spatial_dims: int = 2, in_channels: int = 1,
             channels: Sequence[int] = (32, 64, 128, 256), num_res_units: int = 2,
             norm: str | None = "instance", dropout: float = 0.0, noise_std: float = 0.2,
             noise_resolution: int = 16, in_shape: Sequence[int] | None = None) -> DenoisingUNet:
    """Denoising U-Net; ``noise_std``/``noise_resolution`` are kept as ``model.noise``.

    ``in_shape`` is accepted (and recorded) for interface compatibility; the network is fully
    convolutional.
    """
    model = DenoisingUNet(spatial_dims, in_channels, channels, num_res_units, norm, dropout)
    model.noise = CoarseNoise(std=noise_std, resolution=noise_resolution)
    return model
