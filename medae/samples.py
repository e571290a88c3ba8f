"""Healthy training samples: cached preprocessed volumes, 2D slices or 3D patches, splits.

Each scan is read and preprocessed once (MONAI ``CacheDataset``); slices and patches are views of
the cached volumes, and random augmentation happens after the cache.  Splits are by subject,
never by slice.  When a lesion label is given, every slice or patch that touches it is dropped
(``data.lesion_samples: drop``) or kept with the lesion left out of the noise and the loss
(``mask``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Transform
from scipy import ndimage
from torch.utils.data import Dataset

from medae.errors import MedaeError, failure_reason
from medae.io.discover import ScanSource
from medae.masks import grow_mm
from medae.preprocess import Prepared, PreprocessConfig, prepare_source


def load_prepared(source: ScanSource, config: PreprocessConfig) -> Prepared:
    """Read a source (the sequences the model reads, its mask and label files) and preprocess
    it; only model-space arrays are kept."""
    return prepare_source(source, config, keep_native=False, with_label=True)[1]


class _Prepare(Transform):
    def __init__(self, config: PreprocessConfig):
        self.config = config

    def __call__(self, item: dict) -> dict:
        try:
            prep = load_prepared(item["source"], self.config)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a bad scan never stops the others
            return {"case_id": item["source"].case_id, "prepared": None,
                    "error": failure_reason(item["source"].path, exc)}
        return {"case_id": item["source"].case_id, "prepared": prep}


def cache_cases(sources: Sequence[ScanSource], config: PreprocessConfig,
                num_workers: int = 0) -> tuple[list[dict], list[dict]]:
    """Read and preprocess every source once.

    Returns the ``{"case_id", "prepared"}`` items of the scans that loaded, and
    ``{"case_id", "error"}`` for those that did not (one-line reasons).
    """
    ds = CacheDataset([{"source": s} for s in sources], transform=_Prepare(config),
                      cache_rate=1.0, num_workers=num_workers or None, progress=False,
                      copy_cache=False)
    items = [ds[i] for i in range(len(ds))]
    good = [it for it in items if it["prepared"] is not None]
    bad = [{"case_id": it["case_id"], "error": it["error"]} for it in items
           if it["prepared"] is None]
    return good, bad


def split_subjects(case_ids: Sequence[str], val_fraction: float, seed: int
                   ) -> tuple[list[str], list[str]]:
    """Subject-level split; deterministic for a seed.  One subject: no validation set."""
    ids = sorted(set(case_ids))
    if len(ids) < 2 or val_fraction <= 0:
        return ids, []
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
    val = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in val], val


#: with one subject, cross-fitting holds out interleaved axial slabs this thick
SLAB_MM = 20.0


@dataclass(frozen=True)
class Fold:
    """One cross-fitting fold: the subjects it holds out, or (one subject) the axial slabs
    ``slab = (k, n)``: those whose index along z (``SLAB_MM`` thick, from the volume's first
    slice) is ``k`` modulo ``n``."""

    held_cases: frozenset
    slab: tuple[int, int] | None = None

    def _held(self, n: int, spacing_mm: float, first: float) -> np.ndarray:
        centres = (np.arange(n) + first + 0.5) * spacing_mm
        k, count = self.slab
        return (np.floor(centres / SLAB_MM).astype(int) % count) == k

    def scan_slices(self, scan_shape, scan_spacing) -> np.ndarray | None:
        """Bool per axial slice of the scan: held out by this fold (None: every slice)."""
        if self.slab is None:
            return None
        return self._held(int(scan_shape[2]), float(scan_spacing[2]), 0.0)

    def model_slices(self, prep: Prepared, held: bool = True) -> np.ndarray:
        """Bool per model-space axial slice: held out (``held``) or trained on."""
        if getattr(prep, "template", None) is not None:  # template space: not the scan's slices
            raise MedaeError("data.calibration crossfit with one subject holds out axial slabs "
                             "of its scan, which the model's slices in preprocess.space "
                             "template do not follow: train on two subjects or more, or in "
                             "native space")
        out = self._held(prep.image.shape[3], prep.spacing[2], float(prep.offset[2]))
        return out if held else ~out


def crossfit_folds(case_ids: Sequence[str], spatial_dims: int, seed: int, max_folds: int = 5
                   ) -> list[Fold] | None:
    """Cross-fitting folds over subjects (``min(n, max_folds)`` folds), or, with a single
    subject and a 2D model, two folds of interleaved ``SLAB_MM`` axial slabs (a 2D model sees
    one slice at a time, so a slab it did not train on is new to it).  None when neither
    applies (one subject, 3D model)."""
    ids = sorted(set(case_ids))
    if len(ids) >= 2:
        order = np.random.default_rng(seed).permutation(len(ids))
        n = min(len(ids), max_folds)
        return [Fold(frozenset(ids[i] for j, i in enumerate(order) if j % n == k))
                for k in range(n)]
    if spatial_dims == 2:
        return [Fold(frozenset(ids), (k, 2)) for k in range(2)]
    return None


def sample_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from parts (seed, epoch, index), independent of worker layout."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Augment:
    """Random augmentation applied after the cache.  Parameters are drawn per sample from
    :func:`sample_seed` (seed, epoch, index), so a run (and a resumed run) replays exactly.

    ``rotate_deg`` and ``zoom`` transform the sample in the axial plane (spatial axes 0 and 1:
    a 2D slice, or every slice of a 3D patch alike) about its centre: a rotation by
    U(-rotate_deg, rotate_deg) degrees and a scaling by 1 + U(-zoom, zoom), linear for the image
    and nearest for the mask, zeros brought in from outside.  The patients a model learns from
    are few; this shows it the same anatomy at other angles and head sizes.
    """

    flip_lr: bool = False
    intensity_scale: float = 0.0  # multiply by 1 + U(-s, s)
    intensity_shift: float = 0.0  # add U(-s, s)
    rotate_deg: float = 0.0  # in-plane rotation by U(-r, r) degrees
    zoom: float = 0.0  # in-plane scaling by 1 + U(-z, z)

    @classmethod
    def from_dict(cls, values: dict | None) -> Augment:
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedaeError(f"data.augment: unknown key(s) {', '.join(unknown)}")
        if not isinstance(values.get("flip_lr", False), bool):  # "no" would be truthy
            raise MedaeError(f"data.augment.flip_lr: true or false, got {values['flip_lr']!r}")
        limits = {"intensity_scale": 1.0, "intensity_shift": 10.0, "rotate_deg": 180.0,
                  "zoom": 0.5}
        for key, top in limits.items():
            v = values.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= top:
                raise MedaeError(f"data.augment.{key}: a number from 0 to {top:g}, got {v!r}")
        return cls(**values)

    def draw(self, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        params = {"flip_lr": bool(self.flip_lr and rng.random() < 0.5),
                  "scale": float(1 + rng.uniform(-1, 1) * self.intensity_scale),
                  "shift": float(rng.uniform(-1, 1) * self.intensity_shift)}
        # drawn after the others, and only when asked for: older recipes replay unchanged
        if self.rotate_deg or self.zoom:
            params["angle"] = float(rng.uniform(-1, 1) * self.rotate_deg)
            params["zoom"] = float(1 + rng.uniform(-1, 1) * self.zoom)
        return params

    @staticmethod
    def apply(image: np.ndarray, mask: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
        """``image`` (C, x, ...) and ``mask`` (x, ...): the same draw for every channel."""
        if params["flip_lr"]:  # spatial axis 0 is left-right in the RAS array
            image, mask = image[:, ::-1], mask[::-1]
        if params.get("angle", 0.0) or params.get("zoom", 1.0) != 1.0:
            image, mask = _rotate_zoom(image, mask, params["angle"], params["zoom"])
        image = image * params["scale"] + params["shift"] * mask
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask)


def _rotate_zoom(image: np.ndarray, mask: np.ndarray, angle_deg: float, zoom: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle_deg`` and scale by ``zoom`` in the plane of spatial axes 0 and 1, about
    the array's centre (output voxel -> input voxel: the inverse rotation, divided by zoom)."""
    t = np.deg2rad(angle_deg)
    inv = np.eye(mask.ndim)
    inv[:2, :2] = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) / zoom
    centre = (np.asarray(mask.shape, float) - 1) / 2
    offset = centre - inv @ centre
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[0]):
        ndimage.affine_transform(np.asarray(image[c], np.float32), inv, offset, output=out[c],
                                 order=1, mode="constant", cval=0.0)
    kept = ndimage.affine_transform(np.asarray(mask, np.float32), inv, offset, order=0,
                                    mode="constant", cval=0.0) > 0.5
    return out, kept.astype(mask.dtype)


def _lesion_free(prep: Prepared, margin_mm: float, spacing) -> np.ndarray:
    """The brain mask minus the lesion label grown by ``margin_mm`` (model space)."""
    if margin_mm <= 0:
        return prep.mask & ~prep.label
    return prep.mask & ~grow_mm(prep.label, margin_mm, spacing)


class SampleDataset(Dataset):
    """2D slices (axial, along the RAS z axis) or 3D patches of cached volumes.

    Items are ``{"image": (C, *size), "mask": (1, *size)}`` float32 tensors.  ``keep_z``: per
    volume, a bool per model-space axial slice that samples may use (cross-fitting folds).
    """

    def __init__(self, items: Sequence[dict], spatial_dims: int, *, patch_size=None,
                 min_foreground: float = 0.05, augment: Augment | None = None, seed: int = 0,
                 lesion_samples: str = "drop", lesion_margin_mm: float = 4.0,
                 spacing=(1.0, 1.0, 1.0), keep_z: Sequence[np.ndarray | None] | None = None):
        self.volumes = [it["prepared"] for it in items]
        self.case_ids = [it["case_id"] for it in items]
        self.spatial_dims = spatial_dims
        self.augment = augment or Augment()
        self.seed, self.epoch = seed, 0
        self.index: list[tuple[int, tuple[slice, ...]]] = []
        self.dropped_label = 0
        self.masked_label = 0
        # "mask": samples touching a lesion stay, with the lesion (grown by the margin) left
        # out of the mask that places the noise and weights the loss
        self.masks = [_lesion_free(prep, lesion_margin_mm, spacing)
                      if lesion_samples == "mask" and prep.label is not None else prep.mask
                      for prep in self.volumes]
        for v, prep in enumerate(self.volumes):
            allowed = None if keep_z is None else keep_z[v]
            for window in self._windows(prep.image.shape[1:], patch_size):
                if allowed is not None and not allowed[window[2]].all():
                    continue
                fg = prep.mask[window]
                if fg.mean() < min_foreground:
                    continue
                if prep.label is not None and prep.label[window].any():
                    if lesion_samples != "mask":
                        self.dropped_label += 1
                        continue
                    self.masked_label += 1
                self.index.append((v, window))

    def _windows(self, shape, patch_size):
        if self.spatial_dims == 2:
            return [(slice(None), slice(None), z) for z in range(shape[2])]
        size = tuple(shape if patch_size is None else patch_size)
        if any(p > n for p, n in zip(size, shape, strict=True)):
            raise MedaeError(f"patch size {size} is larger than the preprocessed volume {shape}")
        starts = [sorted({*range(0, n - p + 1, max(1, p // 2)), n - p})
                  for p, n in zip(size, shape, strict=True)]
        return [tuple(slice(a, a + p) for a, p in zip(corner, size, strict=True))
                for corner in np.array(np.meshgrid(*starts, indexing="ij")).reshape(3, -1).T]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        v, window = self.index[i]
        prep = self.volumes[v]
        image, mask = prep.image[(slice(None), *window)], self.masks[v][window]
        params = self.augment.draw(sample_seed(self.seed, self.epoch, i))
        image, mask = Augment.apply(image, mask, params)
        return {"image": torch.from_numpy(image),
                "mask": torch.from_numpy(mask.astype(np.float32))[None]}
