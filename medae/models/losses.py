"""Training losses shared by all model families (computed in float32, also under autocast).

Conventions:

* :func:`reconstruction_loss` is a mean over voxels (over the masked voxels when a mask is given).
* ``kind="bce"`` expects targets in [0, 1] and a model built with ``out_activation="sigmoid"``;
  ``recon`` is then a probability.  :func:`autoencoder_loss` uses the model's pre-sigmoid
  ``output.logits`` with ``binary_cross_entropy_with_logits`` (numerically stable);
  :func:`reconstruction_loss` accepts either, via ``logits``.
* :func:`kl_divergence` is KL(N(mu, exp(logvar)) || N(0, I)) summed over the latent dimensions and
  averaged over the batch (the usual ELBO term).  As the reconstruction term is a per-voxel mean,
  β effectively sets the KL weight relative to one voxel's error: pick it accordingly (β ≪ 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medae.errors import MedaeError
from medae.models.ae import AEOutput

KINDS = ("mse", "l1", "bce")


def reconstruction_loss(recon: Tensor, target: Tensor, kind: str = "mse",
                        mask: Tensor | None = None, *, logits: bool = False) -> Tensor:
    """Per-voxel reconstruction error, averaged.

    Args:
        recon: Reconstruction (B, C, *spatial) (probabilities for "bce" unless ``logits``).
        target: Target of the same shape ("bce": values in [0, 1]).
        kind: "mse", "l1" or "bce".
        mask: 0/1 weights broadcastable to ``recon`` (e.g. the brain mask); the loss is the mean
            over the voxels where it is 1 (0 when the mask is empty).  None: all voxels.
        logits: For "bce", ``recon`` holds logits instead of probabilities.

    Returns:
        A float32 scalar.
    """
    if kind not in KINDS:
        raise MedaeError(f"unknown reconstruction loss kind {kind!r} (expected one of {KINDS})")
    with torch.autocast(recon.device.type, enabled=False):
        recon, target = recon.float(), target.float()
        if kind == "mse":
            err = (recon - target).square()
        elif kind == "l1":
            err = (recon - target).abs()
        elif logits:
            err = F.binary_cross_entropy_with_logits(recon, target, reduction="none")
        else:
            eps = torch.finfo(torch.float32).eps
            p = recon.clamp(eps, 1 - eps)
            err = -(target * p.log() + (1 - target) * (1 - p).log())
        if mask is None:
            return err.mean()
        weights = mask.float().expand_as(err)
        return (err * weights).sum() / weights.sum().clamp_min(1.0)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)): sum over latent dims, mean over the batch.

    Args:
        mu: Posterior means (B, ...).
        logvar: Posterior log-variances, same shape.

    Returns:
        A float32 scalar ``mean_b sum_i -0.5 * (1 + logvar - mu^2 - exp(logvar))``.
    """
    with torch.autocast(mu.device.type, enabled=False):
        mu, logvar = mu.float(), logvar.float()
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp())
        return kl.flatten(1).sum(1).mean()


def autoencoder_loss(model: nn.Module, output: AEOutput, target: Tensor, *, kind: str = "mse",
                     mask: Tensor | None = None, beta: float = 1.0,
                     sparsity: float = 1e-3) -> tuple[Tensor, dict[str, float]]:
    """Training loss for any family: reconstruction + β·KL ("vae") + sparsity·mean|z| ("sae").

    Args:
        model: The model (its ``family`` and ``out_activation`` select the terms).
        output: ``model(x)`` for the (possibly corrupted) input ``x``.
        target: Clean image to reconstruct, same shape as ``output.recon``.
        kind: Reconstruction loss kind, see :func:`reconstruction_loss`.
        mask: Optional 0/1 foreground mask broadcastable to ``target``.
        beta: KL weight (VAE).
        sparsity: L1 weight on the code (SAE).

    Returns:
        ``(total, parts)``; ``parts`` holds the weighted terms as floats: "recon", "kl" (β·KL),
        "l1" (sparsity·mean|z|) and "total" (their sum); unused terms are 0.0.
    """
    family = getattr(model, "family", "ae")
    use_logits = kind == "bce" and output.logits is not None
    if kind == "bce" and getattr(model, "out_activation", None) != "sigmoid":
        raise MedaeError(f"{family}: kind='bce' needs a model built with out_activation='sigmoid'")
    recon = output.logits if use_logits else output.recon
    rec = reconstruction_loss(recon, target, kind, mask, logits=use_logits)
    zero = rec.new_zeros(())
    kl = l1 = zero
    if family == "vae":
        if output.mu is None or output.logvar is None:
            raise MedaeError("vae: output has no mu/logvar")
        kl = kl_divergence(output.mu, output.logvar)
    if family == "sae":
        l1 = output.z.float().abs().mean()
    kl, l1 = beta * kl, sparsity * l1
    total = rec + kl + l1
    values = torch.stack([rec, kl, l1, total]).detach().tolist()  # one device sync
    return total, dict(zip(("recon", "kl", "l1", "total"), values, strict=True))
