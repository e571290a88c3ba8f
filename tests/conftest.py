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


def _deepbet_missing() -> str | None:
    from medae import brain

    if brain.available():
        return None
    return f"deepbet {brain.VERSION} not installed ({brain.INSTALL})"


#: tests that run brain extraction (medae[brain]) skip, saying why, without deepbet
needs_deepbet = pytest.mark.skipif(_deepbet_missing() is not None,
                                   reason=_deepbet_missing() or "")


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


def write_manifest(path: Path, images: list[Path], labels: bool = True) -> Path:
    """A manifest of ``images`` (case ids p0, p1, ...), with the ``*_label.nii.gz`` beside each
    (as :func:`write_phantoms` writes them) in a ``label`` column unless ``labels`` is False."""
    rows = ["case_id,image" + (",label" if labels else "")]
    for i, p in enumerate(images):
        label = p.with_name(p.name.replace(".nii.gz", "_label.nii.gz"))
        rows.append(f"p{i},{p}" + (f",{label}" if labels else ""))
    path.write_text("\n".join(rows) + "\n")
    return path


def write_dicom_volume(folder: Path, volume, spacing=(2.0, 2.0, 2.0), *, series_number=3,
                       patient_name="Doe^Jane", patient_id="PID-12345",
                       series_description="T2 FLAIR") -> list[Path]:
    """Write a (X, Y, Z) int16 volume as an axial MR DICOM series (one file per slice,
    IM0000.dcm ...), axes along LPS, first voxel at the origin, random UIDs, with identifiers
    (name, ID, birth date, accession number) that must never reach an output."""
    import numpy as np

    from medae.synthetic import write_dicom_series

    positions = [(0.0, 0.0, float(k * spacing[2])) for k in range(volume.shape[2])]
    attributes = {"PatientName": patient_name, "PatientID": patient_id,
                  "PatientBirthDate": "19700101", "AccessionNumber": "ACC-998877",
                  "SeriesDescription": series_description, "SeriesNumber": series_number}
    return write_dicom_series(folder, np.asarray(volume), positions=positions,
                              orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), spacing=spacing,
                              attributes=attributes, first_file=0)


def write_scan_dicom(folder: Path, scan) -> list[Path]:
    """Write a loaded :class:`~medae.io.Scan` (whole-number values) as a DICOM series with the
    project's writer, on the very grid of its RAS affine (oblique or not): pixel (column i, row
    j) of slice k is the scan's voxel (i, j, k); identifiers that must never reach an output."""
    import numpy as np

    from medae.synthetic import write_dicom_series

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ scan.affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    positions = [lps[:3, 3] + k * lps[:3, 2] for k in range(scan.shape[2])]
    volume = np.round(np.asarray(scan.array, np.float32))
    assert np.array_equal(volume, scan.array) and np.abs(volume).max() < 32768
    return write_dicom_series(folder, volume.astype(np.int16), positions=positions,
                              orientation=[*(lps[:3, 0] / spacing[0]), *(lps[:3, 1] / spacing[1])],
                              spacing=spacing, attributes={
                                  "PatientName": "Doe^Jane", "PatientID": "PID-12345",
                                  "PatientBirthDate": "19700101",
                                  "AccessionNumber": "ACC-998877"})


TINY_2D = ["model.channels=[8, 16, 32]", "preprocess.spacing=[2, 2, 2]",
           "preprocess.size=[24, 28, 20]", "train.batch_size=8", "train.warmup_steps=2",
           "train.lr=0.003", "data.augment={}", "train.epochs=12"]
PHANTOM_SHAPE = (24, 28, 20)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small 2D autoencoder trained (seconds) on healthy phantoms; returns its run folder."""
    from medae import discover
    from medae.config import load_config
    from medae.train import train

    root = tmp_path_factory.mktemp("tiny_model")
    write_phantoms(root / "healthy", 6, shape=PHANTOM_SHAPE)
    cfg = load_config(ROOT / "configs" / "ae2d.yaml", TINY_2D)
    return train(cfg, discover(root / "healthy"), root / "run", device="cpu", progress=False)


@pytest.fixture
def bundle_copy(tiny_model, tmp_path) -> Path:
    """A copy of the tiny model's bundle that a test may edit or break."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.safetensors", "model.json", "config.yaml"):
        shutil.copy(tiny_model / name, run / name)
    return run


def lesion_phantom(seed: int = 11, radius: float = 2.5, value: float = 200.0):
    """A healthy phantom (not seen in training) with a small bright sphere; returns
    (volume, lesion mask, affine)."""
    import numpy as np

    shape = PHANTOM_SHAPE
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    radii = np.array(shape) * 0.4
    r = np.sqrt((((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    img = np.where(r < 1, 100 + 40 * (r < 0.5), 0).astype(np.float32)
    img += (r < 1) * rng.normal(0, 3, shape).astype(np.float32)
    c = centre + np.array([4.0, 3.0, 2.0])
    lesion = np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(0)) <= radius
    img[lesion] = value
    return img, lesion, np.diag([2.0, 2.0, 2.0, 1.0])


#: the demo on a smaller, faster configuration (tests/test_demo.py, the browser tests)
DEMO_TEST_SIZE = {"n_healthy": 9, "n_patients": 3, "steps": 400}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One `medae demo` run per session: (output folder, summary).  MEDAE_TEST_DEMO names an
    existing demo output to use instead (quicker while working on the pages)."""
    import json

    from medae.demo import DemoSize, run_demo

    if os.environ.get("MEDAE_TEST_DEMO"):
        out = Path(os.environ["MEDAE_TEST_DEMO"])
        return out, json.loads((out / "summary.json").read_text())
    out = tmp_path_factory.mktemp("demo") / "demo"
    summary = run_demo(out, size=DemoSize(**DEMO_TEST_SIZE), device="cpu", progress=False)
    return out, summary
