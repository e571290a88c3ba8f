"""medae: unsupervised anomaly detection in medical images with autoencoders."""

from medae.errors import MedaeError, ScanReadError, SeriesSelectionError
from medae.io import (
    Scan,
    ScanSource,
    discover,
    load_scan,
    read_manifest,
    write_on_grid,
)
from medae.version import __version__


def __getattr__(name: str):
    # torch and MONAI load only when a model is needed (keeps `medae info` and imports fast)
    if name == "load_model":
        from medae.scoring import load_model

        return load_model
    raise AttributeError(f"module 'medae' has no attribute {name!r}")


__all__ = [
    "MedaeError",
    "Scan",
    "ScanReadError",
    "ScanSource",
    "SeriesSelectionError",
    "__version__",
    "discover",
    "load_model",
    "load_scan",
    "read_manifest",
    "write_on_grid",
]
