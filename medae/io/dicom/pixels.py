"""Pixel pass: full file reads, decoding through pydicom, raw uncompressed frame reads."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from medae.errors import ScanReadError
from medae.io.dicom.frames import _Frame
from medae.io.dicom.values import _short, _uid_name
from medae.io.files import open_regular


def _read_full(path: Path) -> Any:
    try:
        with open_regular(path) as f:
            has_preamble = f.read(132)[128:132] == b"DICM"
            f.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pydicom.dcmread(f, force=not has_preamble)
    except ScanReadError:
        raise
    except Exception as exc:
        raise ScanReadError(path, f"cannot read DICOM file ({_short(exc)})") from exc


def _decode(path: Path, ds: Any) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        try:
            syntax = _uid_name(ds.file_meta.TransferSyntaxUID, "unknown transfer syntax")
        except Exception:
            syntax = "unknown transfer syntax"
        raise ScanReadError(path, f"cannot decode pixel data, {syntax} ({_short(exc)})") from exc


def _file_pixels(path: Path, first: _Frame) -> np.ndarray:
    """All frames of one file as (frames, rows, cols)."""
    if first.pixels is not None:
        offset, nbytes, dtype = first.pixels
        try:
            with open_regular(path) as f:
                f.seek(offset)
                raw = f.read(nbytes)
        except OSError as exc:
            raise ScanReadError(path, f"cannot read: {exc.strerror or exc}") from exc
        if len(raw) != nbytes:
            raise ScanReadError(path, f"truncated pixel data ({len(raw)} of {nbytes} bytes)")
        return np.frombuffer(raw, dtype=dtype).reshape(first.n_file_frames, first.rows,
                                                       first.cols)
    ds = _read_full(path)
    pixels = _decode(path, ds)
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim != 3:
        raise ScanReadError(path, "colour or multi-sample images are not supported")
    if pixels.shape != (first.n_file_frames, first.rows, first.cols):
        raise ScanReadError(path, f"inconsistent rows/cols: pixel data is {pixels.shape}, "
                                  f"header says {first.n_file_frames}x{first.rows}x{first.cols}")
    return pixels
