"""Multi-sequence cases: co-registered volumes of one subject (FLAIR, T1, T2, ...).

A case's first sequence fixes the grid; every other sequence is resampled onto it through the
world (scanner) coordinates of both (trilinear).  Sequences whose fields of view barely overlap in
world space are refused rather than silently padded.  (Sequences that moved between
acquisitions are registered to the first instead with ``preprocess.registration``:
``medae.preprocess.sequences_on_grid`` and ``medae.register``, above this layer.)

Folders follow nnU-Net's naming: ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... (DICOM series:
sub-folders ``CASE_0000/``, ``CASE_0001/``) are the sequences of case ``CASE``, in suffix order;
manifests name the sequences in their columns (``case_id,flair,t1,t2,mask,label``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medae.errors import ScanReadError
from medae.io.scan import Scan

#: ``CASE_0000`` -> ("CASE", 0)
NNUNET_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")
#: a sequence must cover at least this share of the first sequence's field of view
MIN_OVERLAP = 0.5


@dataclass(frozen=True)
class SequenceRef:
    """One more sequence of a case: a NIfTI file or a DICOM series (folder + series)."""

    name: str
    kind: str  # "nifti" | "dicom"
    path: Path
    series: object | None = None  # medae.io.dicom.DicomSeries
    volume: int | None = None  # the volume of a 4D NIfTI file (a Decathlon channel)


def nnunet_parts(stem: str) -> tuple[str, int] | None:
    """``("CASE", k)`` for a name ``CASE_000k``, else None."""
    m = NNUNET_SUFFIX.match(stem)
    return (m["case"], int(m["index"])) if m else None


def same_grid(reference: Scan, other: Scan) -> bool:
    """Whether ``other`` lies on ``reference``'s grid (shape, and affine within 0.001 mm)."""
    return other.shape == reference.shape and np.allclose(other.affine, reference.affine,
                                                          atol=1e-3)


def covered(reference: Scan, other: Scan, world: np.ndarray | None = None,
            region: np.ndarray | None = None) -> float:
    """The share of ``reference``'s field of view (or of ``region``, a mask on its grid) that
    lies inside ``other``'s, sampled on a coarse lattice (about 24 points an axis).

    ``world``: a 4x4 map from ``reference``'s world to ``other``'s (RAS mm; default: the same
    world, as the scanner wrote both)."""
    step = [max(1, n // 24) for n in reference.shape]
    lattice = np.stack(np.meshgrid(*[np.arange(0, n, s) for n, s in
                                     zip(reference.shape, step, strict=True)],
                                   indexing="ij")).reshape(3, -1)
    if region is not None:
        lattice = lattice[:, np.asarray(region, bool)[tuple(lattice)]]
        if lattice.shape[1] == 0:  # a region smaller than the lattice: every voxel of it
            lattice = np.argwhere(np.asarray(region, bool)).T
    m = np.linalg.inv(other.affine) @ (np.eye(4) if world is None else world) @ reference.affine
    mapped = m[:3, :3] @ lattice + m[:3, 3:4]
    hi = np.array(other.shape)[:, None] - 0.5
    if lattice.shape[1] == 0:
        return 0.0
    return float(np.all((mapped >= -0.5) & (mapped <= hi), axis=0).mean())


def on_grid(reference: Scan, other: Scan, what: str) -> np.ndarray:
    """``other``'s voxels resampled onto ``reference``'s array grid (float32), by world mm.

    Raises a one-line error when less than half of ``reference``'s field of view lies inside
    ``other``'s.
    """
    if same_grid(reference, other):
        return np.array(other.array, dtype=np.float32, copy=True)
    # reference voxel -> world -> other voxel
    m = np.linalg.inv(other.affine) @ reference.affine
    inside = covered(reference, other)
    if inside < MIN_OVERLAP:
        raise ScanReadError(
            other.source, f"{what} covers {100 * inside:.0f}% of the first sequence's field of "
                          f"view in world space (need {100 * MIN_OVERLAP:.0f}%): not "
                          "co-registered with it")
    fill = float(other.array.min())
    return ndimage.affine_transform(other.array.astype(np.float32, copy=False), m[:3, :3],
                                    offset=m[:3, 3], output_shape=reference.shape, order=1,
                                    mode="constant", cval=fill).astype(np.float32, copy=False)
