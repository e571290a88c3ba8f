"""Model zoo: autoencoder families for unsupervised anomaly detection, in 2D and 3D.

Registered models (``create_model(name, spatial_dims=2 | 3, ...)``):

* ``ae``: convolutional autoencoder;
* ``dae``: denoising autoencoder (the ``ae`` network, trained on inputs with coarse noise; see
  :mod:`medae.models.noise`; ``noise_std``/``noise_resolution`` are kept as ``model.noise``);
* ``sae``: sparse autoencoder (the ``ae`` network; the loss adds ``sparsity * mean|z|``);
* ``vae``: variational autoencoder (dense or spatial Gaussian posterior; the loss adds β·KL);
* ``dae_unet``: denoising U-Net with skip connections (Kascenas et al. 2022), 2D or 3D;
* ``intensity``: the intensity-thresholding baseline (zero reconstruction, no parameters);
* ``ensemble``: K members of one architecture, reconstruction averaged (built by training with
  ``train.ensemble: K``, not named in a recipe).

Every model is a plain ``nn.Module`` with ``family``, ``spatial_dims``, ``encode(x)``,
``decode(z)`` and ``forward(x) -> AEOutput(recon, z, mu, logvar, logits)``.
"""

from medae.models import ae as _ae  # noqa: F401  (registers ae, dae, sae)
from medae.models import baseline as _baseline  # noqa: F401  (registers intensity)
from medae.models import ensemble as _ensemble  # noqa: F401  (registers ensemble)
from medae.models import unet as _unet  # noqa: F401  (registers dae_unet)
from medae.models import vae as _vae  # noqa: F401  (registers vae)
from medae.models.ae import AEOutput, ConvAutoencoder
from medae.models.losses import autoencoder_loss, kl_divergence, reconstruction_loss
from medae.models.noise import CoarseNoise, apply_coarse_noise, draw_coarse_noise_params
from medae.models.registry import (
    create_model,
    is_registered,
    list_models,
    model_config,
    register_model,
)
from medae.models.vae import VarAutoencoder

__all__ = [
    "AEOutput",
    "CoarseNoise",
    "ConvAutoencoder",
    "VarAutoencoder",
    "apply_coarse_noise",
    "autoencoder_loss",
    "create_model",
    "draw_coarse_noise_params",
    "is_registered",
    "kl_divergence",
    "list_models",
    "model_config",
    "reconstruction_loss",
    "register_model",
]
