"""Scans in, scans out: NIfTI and DICOM loading with correct geometry, discovery, writing."""

from medae.io.discover import ScanSource, discover, load_scan, read_manifest
from medae.io.nifti import write_on_grid
from medae.io.scan import Grid, Scan

__all__ = ["Grid", "Scan", "ScanSource", "discover", "load_scan", "read_manifest",
           "write_on_grid"]
