"""Run an autoencoder over a preprocessed volume: 2D slice batches or 3D sliding windows."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medae.device import PRECISIONS
from medae.models.ensemble import input_config


def autocast_context(device: torch.device, precision: str):
    dtype = PRECISIONS.get(str(precision))
    if dtype is not None:
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def _code(z: torch.Tensor) -> torch.Tensor:
    """One vector per sample: a dense code as is, a spatial code averaged over space."""
    return z.float().flatten(2).mean(-1) if z.ndim > 2 else z.float()


@torch.no_grad()
def reconstruct(model: torch.nn.Module, image: np.ndarray, mask: np.ndarray, *,
                batch_size: int = 32, device: torch.device | str = "cpu",
                precision: str = "32", overlap: float = 0.5
                ) -> tuple[np.ndarray, np.ndarray]:
    """Reconstruct a model-space volume (C, X, Y, Z).

    2D models see every axial slice (batched); 3D models use MONAI sliding-window inference
    with Gaussian blending when the volume is larger than the network's input.  VAEs give the
    mean reconstruction (the model is in eval mode).

    Returns:
        The reconstruction (C, X, Y, Z) float32 and the scan's latent code: the mean code over
        slices (2D, slices with brain only) or windows (3D).
    """
    device = torch.device(device)
    model.eval()
    dims = int(model.spatial_dims)
    vol = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if vol.ndim != 4:
        raise ValueError(f"reconstruct needs a (C, X, Y, Z) volume, got shape {tuple(vol.shape)}")
    if dims == 2:
        slices = vol.permute(3, 0, 1, 2)  # (Z, C, X, Y)
        recon = torch.empty_like(slices)
        codes = []
        for a in range(0, slices.shape[0], batch_size):
            x = slices[a:a + batch_size].to(device, non_blocking=True)
            with autocast_context(device, precision):
                out = model(x)
            recon[a:a + batch_size] = out.recon.float().cpu()
            codes.append(_code(out.z).cpu())
        code = torch.cat(codes)
        has_brain = torch.from_numpy(mask.reshape(-1, mask.shape[2]).any(0))
        code = code[has_brain] if has_brain.any() else code
        return recon.permute(1, 2, 3, 0).numpy(), code.mean(0).numpy()
    roi = tuple(int(s) for s in input_config(model).get("in_shape") or image.shape[1:])
    codes: list[torch.Tensor] = []

    def predict(x: torch.Tensor) -> torch.Tensor:
        with autocast_context(device, precision):
            out = model(x)
        codes.append(_code(out.z).cpu())
        return out.recon.float()

    x = vol[None].to(device)
    if roi == tuple(image.shape[1:]):
        out = predict(x)
    else:
        out = sliding_window_inference(x, roi_size=roi, sw_batch_size=batch_size,
                                       predictor=predict, overlap=overlap, mode="gaussian",
                                       padding_mode="constant", cval=0.0)
    return out[0].cpu().numpy(), torch.cat(codes).mean(0).numpy()
