"""Variational autoencoder (``vae``) in 2D and 3D.

Same encoder/decoder as :mod:`medae.models.ae`, with a Gaussian posterior
q(z|x) = N(mu, exp(logvar)):

* dense bottleneck (``latent_size`` an int, ``in_shape`` required): ``mu``/``logvar`` are linear
  maps of the flattened features, shape (B, latent_size);
* spatial bottleneck (``latent_size=None``): ``mu``/``logvar`` are 1×1 convolutions of the feature
  map, shape (B, channels[-1], h, w[, d]) — a fully convolutional VAE.

In training mode ``z`` is a reparameterised sample ``mu + exp(logvar / 2) * eps``; in eval mode
``z = mu`` (deterministic).  ``encode(x)`` returns ``mu``, the code to export per scan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from medae.models.ae import AEOutput, ConvAutoencoder, _options
from medae.models.blocks import crop_to
from medae.models.registry import register_model

# logvar is clamped to this range when sampling (exp overflow / vanishing std guard)
LOGVAR_RANGE = (-30.0, 20.0)


class VarAutoencoder(ConvAutoencoder):
    """Convolutional VAE; options as :class:`~medae.models.ae.ConvAutoencoder`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(family="vae", **kwargs)

    def _make_code_layers(self, cfg: dict) -> None:
        if self.latent_size is not None:
            n_features = math.prod(self.feature_shape)
            self.fc_mu = nn.Linear(n_features, self.latent_size)
            self.fc_logvar = nn.Linear(n_features, self.latent_size)
        else:
            c, dims = cfg["channels"][-1], cfg["spatial_dims"]
            self.conv_mu = Convolution(dims, c, c, kernel_size=1, conv_only=True)
            self.conv_logvar = Convolution(dims, c, c, kernel_size=1, conv_only=True)

    def encode_dist(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)`` of ``x``."""
        h = self.features(x)
        if self.latent_size is not None:
            h = h.flatten(1)
            return self.fc_mu(h), self.fc_logvar(h)
        return self.conv_mu(h), self.conv_logvar(h)

    def encode(self, x: Tensor) -> Tensor:
        """Posterior mean ``mu`` (the deterministic code)."""
        return self.encode_dist(x)[0]

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
        """Sample ``mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``."""
        std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
        return mu + std * torch.randn_like(std)

    def forward(self, x: Tensor) -> AEOutput:
        """Reconstruct ``x``; from a posterior sample in training mode, from ``mu`` in eval."""
        mu, logvar = self.encode_dist(x)
        z = self.reparameterize(mu, logvar) if self.training else mu
        logits = crop_to(self.decode_logits(z), x.shape[2:])
        return AEOutput(recon=self.activate(logits), z=z, mu=mu, logvar=logvar, logits=logits)


@register_model("vae")
def vae(*, spatial_dims: int = 2, in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256), strides: int | Sequence[int] = 2,
        latent_size: int | None = None, in_shape: Sequence[int] | None = None,
        norm: str | None = "instance", dropout: float | None = None, num_res_units: int = 0,
        act: str | Sequence = "PRELU", out_activation: str | None = None) -> VarAutoencoder:
    """Variational autoencoder (dense or spatial bottleneck, see the module docstring)."""
    return VarAutoencoder(**_options(locals()))
