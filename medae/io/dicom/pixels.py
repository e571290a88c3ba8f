"""Pixel pass: raw uncompressed reads straight into the array, else decoding through pydicom."""

from __future__ import annotations

import os
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


def _read_raw(path: Path, first: _Frame) -> np.ndarray:
    """Uncompressed pixel data read from its offset straight into the array it becomes,
    (frames, rows, cols), unused high bits cleared (or sign-extended) as pydicom does."""
    offset, nbytes, dtype, unused = first.pixels
    try:
        with open_regular(path) as f:
            held = os.fstat(f.fileno()).st_size - offset
            if held < nbytes:   # checked before allocating
                raise ScanReadError(path, f"truncated pixel data ({max(held, 0)} of {nbytes} "
                                          "bytes)")
            out = np.empty((first.n_file_frames, first.rows, first.cols), dtype=dtype)
            f.seek(offset)
            got = f.readinto(out.reshape(-1).view(np.uint8))
    except OSError as exc:
        raise ScanReadError(path, f"cannot read: {exc.strerror or exc}") from exc
    if got != nbytes:
        raise ScanReadError(path, f"truncated pixel data ({got} of {nbytes} bytes)")
    if unused:
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        # pydicom's correction: shift the unused bits out and back (arithmetic for signed)
        np.left_shift(out, unused, out=out)
        np.right_shift(out, unused, out=out)
    return out


def _file_pixels(path: Path, first: _Frame) -> np.ndarray:
    """All frames of one file as (frames, rows, cols)."""
    if first.pixels is not None:
        return _read_raw(path, first)
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
