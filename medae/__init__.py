"""medae: unsupervised anomaly detection in medical images with autoencoders."""

__version__ = "0.1.0"

from medae.errors import MedaeError, ScanReadError, SeriesSelectionError
from medae.io import (
    Scan,
    ScanSource,
    discover,
    load_scan,
    read_manifest,
    write_on_grid,
)

__all__ = [
    "MedaeError",
    "Scan",
    "ScanReadError",
    "ScanSource",
    "SeriesSelectionError",
    "__version__",
    "discover",
    "load_scan",
    "read_manifest",
    "write_on_grid",
]
