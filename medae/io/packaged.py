"""Data files shipped inside the package (``medae/data/``: the MNI template)."""

from __future__ import annotations

import gzip
from importlib import resources

import nibabel as nib


def packaged_nifti(name: str) -> nib.Nifti1Image:
    """A NIfTI file of ``medae/data/``, read whole (gzip or not)."""
    data = resources.files("medae").joinpath("data", name).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)
