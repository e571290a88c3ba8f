"""DICOM loading: classic single-frame series, enhanced multi-frame files and Siemens mosaics.

Two passes.  :func:`find_dicom_series` reads headers only (pixel data is deferred, never read),
turns every frame of every file into one frame record (position, orientation, spacing, rescale,
grouping keys), groups records into series and splits multi-volume series into volumes.  Geometry
(slice order along the normal, gaps, spacing, tilt) is checked there too, so a listing already says
which series are unusable.  What it parses is kept for the life of the process, per file and per
listing, keyed by each file's status (:mod:`medae.io.dicom.cache`): listing a folder again, or
loading one volume after another from it, reads no header twice.  :func:`read_dicom_series` then
decodes each file's pixels once (uncompressed data of 8, 16 or 32 bits, 12-bit values in 16-bit
words included, read from the file straight into the array; everything else through pydicom and
its pylibjpeg plugins) and builds a :class:`~medae.io.scan.Scan` on the DICOM grid.

Nothing that identifies a patient leaves this module: series keys are hashes, labels and
descriptions are built from sanitized coded values and numbers only.
"""

from medae.io.dicom.cache import clear_header_cache
from medae.io.dicom.find import find_dicom_series
from medae.io.dicom.headers import is_dicom_file
from medae.io.dicom.read import load_dicom_folder, read_dicom_series
from medae.io.dicom.series import DicomSeries

__all__ = ["DicomSeries", "clear_header_cache", "find_dicom_series", "is_dicom_file",
           "load_dicom_folder", "read_dicom_series"]
