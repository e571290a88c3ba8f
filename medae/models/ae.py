"""Convolutional autoencoders (``ae``, ``dae``, ``sae``) in 2D and 3D, built from MONAI blocks.

Shapes: images are (B, C, H, W) or (B, C, D, H, W).  The encoder has one strided block per entry of
``channels``; inputs whose size is not a multiple of the total stride are zero-padded at the end of
each axis and the reconstruction is cropped back.  With ``latent_size=None`` the code ``z`` is the
spatial feature map (B, channels[-1], H / stride, W / stride); with an int it is a dense vector
(B, latent_size) and ``in_shape`` must give the (single) spatial size the network accepts.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from medae.errors import MedaeError
from medae.models.blocks import (
    check_config,
    crop_to,
    decoder,
    encoder,
    out_head,
    pad_to_multiple,
)
from medae.models.noise import CoarseNoise
from medae.models.registry import register_model


@dataclass
class AEOutput:
    """What every model's ``forward`` returns.

    Attributes:
        recon: Reconstruction, same shape as the input (after ``out_activation``).
        z: Latent code: (B, latent_size) or (B, C', h, w[, d]); for a VAE in training mode a sample.
        mu: Posterior mean (VAE only, else None); the code to export for a VAE.
        logvar: Posterior log-variance (VAE only, else None).
        logits: Output before ``out_activation`` (the same tensor as ``recon`` when linear).
    """

    recon: Tensor
    z: Tensor
    mu: Tensor | None = None
    logvar: Tensor | None = None
    logits: Tensor | None = None


class ConvAutoencoder(nn.Module):
    """Deterministic convolutional autoencoder; ``family`` is "ae", "dae" or "sae"."""

    def __init__(self, *, family: str = "ae", spatial_dims: int = 2, in_channels: int = 1,
                 channels: Sequence[int] = (32, 64, 128, 256), strides: int | Sequence[int] = 2,
                 latent_size: int | None = None, in_shape: Sequence[int] | None = None,
                 norm: str | None = "instance", dropout: float | None = None,
                 num_res_units: int = 0, act: str | Sequence = "PRELU",
                 out_activation: str | None = None) -> None:
        super().__init__()
        cfg = check_config(spatial_dims, in_channels, channels, strides, latent_size, in_shape,
                           norm, dropout, num_res_units, act, out_activation)
        self.family = family
        self.spatial_dims = spatial_dims
        self.latent_size = latent_size
        self.in_shape = cfg["in_shape"]
        self.out_activation = out_activation
        self.factor = math.prod(cfg["strides"])
        self.encoder = encoder(cfg)
        self.decoder = decoder(cfg)
        self.head = out_head(cfg)
        self.feature_shape: tuple[int, ...] | None = None
        if latent_size is not None:
            self.feature_shape = (cfg["channels"][-1],
                                  *(math.ceil(n / self.factor) for n in self.in_shape))
            n_features = math.prod(self.feature_shape)
            self.fc_decode = nn.Linear(latent_size, n_features)
        self._make_code_layers(cfg)

    def _make_code_layers(self, cfg: dict) -> None:
        if self.latent_size is not None:
            self.fc_encode = nn.Linear(math.prod(self.feature_shape), self.latent_size)

    def features(self, x: Tensor) -> Tensor:
        """Encoder feature map of ``x`` (padded to a multiple of the total stride)."""
        if self.latent_size is not None and tuple(x.shape[2:]) != self.in_shape:
            raise MedaeError(f"{self.family}: input spatial shape {tuple(x.shape[2:])} differs "
                             f"from in_shape {self.in_shape} of the dense bottleneck")
        return self.encoder(pad_to_multiple(x, self.factor))

    def encode(self, x: Tensor) -> Tensor:
        """Latent code ``z`` of ``x``: (B, latent_size), or the spatial feature map."""
        h = self.features(x)
        return self.fc_encode(h.flatten(1)) if self.latent_size is not None else h

    def decode_logits(self, z: Tensor) -> Tensor:
        """Output before ``out_activation``; dense codes decode to ``in_shape``."""
        if self.latent_size is not None:
            h = self.decoder(self.fc_decode(z).view(z.shape[0], *self.feature_shape))
            return crop_to(self.head(h), self.in_shape)
        return self.head(self.decoder(z))

    def activate(self, logits: Tensor) -> Tensor:
        """Apply ``out_activation`` (identity when None)."""
        return torch.sigmoid(logits) if self.out_activation == "sigmoid" else logits

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction from a code (spatial codes: size = code size × total stride)."""
        return self.activate(self.decode_logits(z))

    def forward(self, x: Tensor) -> AEOutput:
        """Reconstruct ``x`` (B, C, *spatial); ``recon`` has the shape of ``x``."""
        z = self.encode(x)
        logits = crop_to(self.decode_logits(z), x.shape[2:])
        return AEOutput(recon=self.activate(logits), z=z, logits=logits)


@register_model("ae")
def ae(*, spatial_dims: int = 2, in_channels: int = 1,
       channels: Sequence[int] = (32, 64, 128, 256), strides: int | Sequence[int] = 2,
       latent_size: int | None = None, in_shape: Sequence[int] | None = None,
       norm: str | None = "instance", dropout: float | None = None, num_res_units: int = 0,
       act: str | Sequence = "PRELU", out_activation: str | None = None) -> ConvAutoencoder:
    """Convolutional autoencoder (options: see the module docstring)."""
    return ConvAutoencoder(family="ae", **_options(locals()))


@register_model("sae")
def sae(**kwargs) -> ConvAutoencoder:
    """Sparse autoencoder: the ``ae`` network; the loss adds ``sparsity * mean|z|``."""
    return ConvAutoencoder(family="sae", **kwargs)


@register_model("dae")
def dae(*, noise_std: float = 0.2, noise_resolution: int = 16, **kwargs) -> ConvAutoencoder:
    """Denoising autoencoder: the ``ae`` network, trained on inputs with coarse noise added.

    ``noise_std`` and ``noise_resolution`` are stored as ``model.noise`` (a :class:`CoarseNoise`)
    for the training loop; the network itself never adds noise.
    """
    model = ConvAutoencoder(family="dae", **kwargs)
    model.noise = CoarseNoise(std=noise_std, resolution=noise_resolution)
    return model


def _options(scope: dict) -> dict:
    return {k: v for k, v in scope.items() if k in inspect.signature(ae).parameters}


# sae/dae take exactly the ae options (dae: plus the noise ones); expose them for validation
sae.__signature__ = inspect.signature(ae)
dae.__signature__ = inspect.signature(dae).replace(parameters=[
    *(p for p in inspect.signature(dae).parameters.values() if p.kind is p.KEYWORD_ONLY),
    *inspect.signature(ae).parameters.values()])
