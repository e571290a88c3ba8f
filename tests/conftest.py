"""Shared fixtures: where the real scans are (MEDAE_DATA, default ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDAE_DATA", ROOT.parent / "shared" / "data")).resolve()

# pydicom must never try to download test files (no internet on CI machines).
os.environ.setdefault("PYDICOM_DATA_DISABLE_DOWNLOAD", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-scan folder; tests that need it skip, saying why, when it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"real scans not found at {DATA} (set MEDAE_DATA to the shared data folder)")
    return DATA


def shared(*parts: str) -> Path:
    """Path inside the shared data folder, skipping the test when it is missing."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (set MEDAE_DATA to the shared data folder)")
    return path


def write_phantoms(folder: Path, n: int, shape=(24, 28, 20), seed: int = 0,
                   lesion: bool = False) -> list[Path]:
    """Small 'healthy' head phantoms (ellipsoid brain with a brighter core, noise) as NIfTI.

    With ``lesion=True`` each gets a bright sphere and a ``*_label.nii.gz`` mask beside it.
    """
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    paths = []
    for i in range(n):
        radii = np.array(shape) * rng.uniform(0.36, 0.42, 3)
        r = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2)
                    .sum(0))
        img = np.where(r < 1, 100 + 40 * (r < 0.5), 0).astype(np.float32)
        img += (r < 1) * rng.normal(0, 3, shape).astype(np.float32)
        aff = np.diag([2.0, 2.0, 2.0, 1.0])
        path = folder / f"sub{i:02d}.nii.gz"
        if lesion:
            c = centre + rng.uniform(-2, 2, 3)
            les = np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(0)) < 3
            img[les] = 220
            nib.save(nib.Nifti1Image(les.astype(np.uint8), aff),
                     folder / f"sub{i:02d}_label.nii.gz")
        nib.save(nib.Nifti1Image(img, aff), path)
        paths.append(path)
    return paths
