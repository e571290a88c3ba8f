"""Brain extraction of raw heads by deepbet's networks (``medae[brain]``).

deepbet 1.0.2 (Fisch et al., Computers in Biology and Medicine 2024; MIT licence, Copyright (c)
2023 Medical Machine Learning Lab - University of Münster) ships its two TorchScript networks
inside its wheel (``data/models/bbox_model.pt`` and ``model.pt``, 17 MB): nothing is downloaded
at run time.  medae loads those files itself and runs deepbet's steps (``BrainExtraction.
run_model`` and ``postprocess``, ported below) on a scan's array, with SciPy in place of
deepbet's helpers (connected-components-3d and fill_voids, both LGPL-3.0, and pandas, tqdm
and a GUI toolkit it imports at module level): so deepbet is installed without its
dependencies (``pip install --no-deps deepbet==1.0.2``, which ``make install`` does) and
nothing but torch, NumPy and SciPy runs.  The networks' files are checked against the SHA-256
of deepbet 1.0.2's wheel before they are loaded.

The steps: the scan's array (oriented closest to RAS+, as ``nibabel.as_closest_canonical``
gives deepbet) resized to 128³ by nearest neighbour, normalised by its 0.5th/99.5th
percentiles; the first network finds the brain's bounding box (largest 26-connected component
of its mask, grown by 10% on each side); that box resized to 256³ goes through the second
network, whose probability is brought back to the box by nearest neighbour and thresholded at
0.5; the largest 26-connected component is kept and its holes filled.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medae.errors import MedaeError
from medae.masks import fill_holes_3d, label, label_sizes, lookup

VERSION = "1.0.2"
#: SHA-256 of the networks inside the deepbet 1.0.2 wheel (its RECORD file says the same)
WEIGHTS = {
    "bbox_model.pt": "39a7b2b5f799faa1391ea97bfcdc0b9299f20d84f2316a4ff8918dc4685e40aa",
    "model.pt": "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd",
}
INSTALL = (f"install medae's brain extra: `make install`, or `pip install --no-deps "
           f"deepbet=={VERSION}` into medae's environment")
METHOD = f"deepbet {VERSION}"
SMALL, FULL, MARGIN, THRESHOLD = (128, 128, 128), (256, 256, 256), 0.1, 0.5

_lock = threading.Lock()  # one extraction at a time (memory), the networks loaded once
_networks: dict[str, tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]] = {}
_CUBE3 = np.ones((3, 3, 3), bool)


class ExtractorMissing(MedaeError):
    """deepbet (``medae[brain]``) is not installed, or its networks are not deepbet 1.0.2's."""


def _weights() -> dict[str, Path]:
    try:
        dist = metadata.distribution("deepbet")
    except metadata.PackageNotFoundError:
        raise ExtractorMissing(f"brain extraction needs deepbet {VERSION}, which is not "
                               f"installed: {INSTALL}") from None
    paths = {name: Path(str(dist.locate_file(f"data/models/{name}"))) for name in WEIGHTS}
    for name, path in paths.items():
        if not path.is_file():
            raise ExtractorMissing(f"deepbet {dist.version} is installed without its network "
                                   f"{name}: {INSTALL}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != WEIGHTS[name]:
            raise ExtractorMissing(f"{path}: not deepbet {VERSION}'s network (installed: "
                                   f"deepbet {dist.version}): {INSTALL}")
    return paths


def available() -> bool:
    """deepbet 1.0.2's networks are installed (checked by their SHA-256)."""
    try:
        _weights()
    except ExtractorMissing:
        return False
    return True


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(device: torch.device):
    key = str(device)
    if key not in _networks:
        paths = _weights()
        nets = []
        for name in ("bbox_model.pt", "model.pt"):
            with warnings.catch_warnings():  # deepbet ships TorchScript, which torch 2.13
                warnings.simplefilter("ignore", DeprecationWarning)  # calls deprecated
                net = torch.jit.load(str(paths[name]), map_location=device)
            net.eval()
            nets.append(net)
        _networks[key] = (nets[0], nets[1])
    return _networks[key]


def _normalise(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    x = ((x - low) / (high - low)).clamp(min=0, max=1)
    x = (x - x.mean()) / x.std()
    return 0.226 * x + 0.449


def _largest(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask`` (empty when ``mask`` is)."""
    labels, n = label(mask, _CUBE3)
    if n <= 1:
        return labels > 0
    sizes = label_sizes(labels, n)
    sizes[0] = 0
    keep = np.zeros(n + 1, bool)
    keep[int(sizes.argmax())] = True
    return lookup(keep, labels)


def _box(mask_small: torch.Tensor, shape, margin: float) -> tuple[slice, ...] | None:
    """deepbet's bounding box (``get_bbox_with_margin``, the same arithmetic), or None when the
    first network found too little brain."""
    rs = [torch.where(mask_small.mean(dims) > 0.02)[0] for dims in [(1, 2), (0, 2), (0, 1)]]
    if not all(r.numel() > 0 for r in rs):
        return None
    center = torch.tensor([(r.max() + 1 + r.min()) / 2 for r in rs])
    size = torch.tensor([(r.max() + 1) - r.min() for r in rs])
    scale = torch.tensor(shape) / torch.tensor(mask_small.shape)
    center, size = scale * center, scale * size
    size = (1 + 2 * margin * torch.ones(3)) * size
    center, size = center.round(), size.round()
    box = [[int(c - s / 2), int(c + s / 2)] for c, s in zip(center, size, strict=True)]
    return tuple(slice(max(0, b[0]), min(n, b[1])) for b, n in zip(box, shape, strict=True))


def extract_brain(image: np.ndarray) -> np.ndarray:
    """The brain mask (bool, on ``image``'s grid) of a head (an array oriented closest to RAS+,
    in its own units), by deepbet 1.0.2's networks; a :class:`MedaeError` when they find none
    and an :class:`ExtractorMissing` when deepbet is not installed."""
    if image.ndim != 3 or min(image.shape) < 2:
        raise MedaeError(f"brain extraction needs a 3D volume, got shape {image.shape}")
    with _lock, torch.no_grad():
        device = _device()
        bbox_net, net = _load(device)
        x = torch.nan_to_num(torch.from_numpy(np.asarray(image, np.float32)).to(device))
        small = F.interpolate(x[None, None], SMALL, mode="nearest-exact")[0, 0]
        low, high = small.quantile(0.005), small.quantile(0.995)
        if not bool(high > low):
            raise MedaeError("brain extraction: the scan is constant")
        found = bbox_net(_normalise(small, low, high)[None, None])[0, 1]
        found = _largest((found > 0.5).cpu().numpy())
        if not found.any():
            raise MedaeError("brain extraction found no brain")
        box = _box(torch.from_numpy(found.astype(np.float32)), x.shape, MARGIN)
        if box is None:
            raise MedaeError("brain extraction found too little brain to place its box")
        crop = F.interpolate(x[box][None, None], FULL, mode="nearest-exact")[0, 0]
        prob = net(_normalise(crop, low, high)[None, None])[0, 1]
        size = tuple(s.stop - s.start for s in box)
        prob = F.interpolate(prob[None, None], size, mode="nearest-exact")[0, 0]
        inside = (prob > THRESHOLD).cpu().numpy()
        del x, crop, prob
    inside = _largest(inside)
    if not inside.any():
        raise MedaeError("brain extraction found no brain")
    mask = np.zeros(image.shape, bool)
    mask[box] = fill_holes_3d(inside)
    return mask
