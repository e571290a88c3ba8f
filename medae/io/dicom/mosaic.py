"""Siemens mosaics: detection, one series record per mosaic file, unpacking the tiles."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medae.errors import ScanReadError
from medae.io.dicom.geometry import _MIN_SLICES
from medae.io.dicom.pixels import _decode, _read_full
from medae.io.dicom.series import DicomSeries
from medae.io.dicom.values import _get, _hash, _int, _num, _short


def _is_mosaic(ds: Any) -> bool:
    image_type = [str(v).upper() for v in (_get(ds, "ImageType") or [])]
    return "MOSAIC" in image_type and (0x0029, 0x1010) in ds


def _mosaic_series(path: Path, ds: Any, uid: str, meta: dict[str, Any], number: int | None,
                   modality: str) -> DicomSeries:
    rows, cols = _int(_get(ds, "Rows")), _int(_get(ds, "Columns"))
    n_images = _int(_get(ds, (0x0019, 0x100A)).value if (0x0019, 0x100A) in ds else None) or 0
    tile = int(np.ceil(np.sqrt(n_images))) if n_images else 0
    sub_rows, sub_cols = (rows // tile, cols // tile) if tile else (rows, cols)
    meta = {**meta, "NumberOfSlices": n_images, "Mosaic": True}
    order = (_int(_get(ds, "AcquisitionNumber")), _int(_get(ds, "InstanceNumber")))
    return DicomSeries(
        key=_hash(uid, rows, cols, "mosaic", order, path.name), folder=path.parent,
        files=(path,), series_number=number, modality=modality, n_slices=n_images,
        volume=None, rows=sub_rows, cols=sub_cols, _mosaic=True,
        _meta=(*meta.items(), ("_order", order)))


def _label_mosaics(mosaics: list[DicomSeries]) -> list[DicomSeries]:
    """Several mosaics of one series (an fMRI run) are volumes vol1..volN in acquisition order."""
    by_folder: dict[tuple, list[DicomSeries]] = defaultdict(list)
    for s in mosaics:
        by_folder[(s.folder, s.series_number)].append(s)
    out = []
    for group in by_folder.values():
        if len(group) == 1:
            out.extend(group)
            continue
        group.sort(key=lambda s: (tuple(-1 if v is None else v for v in dict(s._meta)["_order"]),
                                  str(s.files[0])))
        for i, s in enumerate(group):
            out.append(DicomSeries(**{**s.__dict__, "volume": f"vol{i + 1}",
                                      "_meta": (*s._meta, ("Volume", f"vol{i + 1}"))}))
    return out


def _unmosaic(pixels: np.ndarray, n_images: int) -> np.ndarray:
    """Mosaic slab (rows, cols) → (sub_rows, sub_cols, n) exactly as nibabel's MosaicWrapper."""
    tile = int(np.ceil(np.sqrt(n_images)))
    rows, cols = pixels.shape
    v4 = pixels.reshape(tile, rows // tile, tile, cols // tile).transpose(1, 3, 0, 2)
    return v4.reshape(rows // tile, cols // tile, tile * tile)[..., :n_images]


def _read_mosaic(series: DicomSeries) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    path = series.files[0]
    ds = _read_full(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nibabel.nicom.dicomwrappers import wrapper_from_data

            wrapper = wrapper_from_data(ds)
        n_images = int(wrapper.n_mosaic)
        lps = np.asarray(wrapper.affine, dtype=float)
    except Exception as exc:
        raise ScanReadError(path, f"cannot read Siemens mosaic geometry ({_short(exc)})") from exc
    pixels = _decode(path, ds)
    if pixels.ndim != 2 or pixels.shape[0] % int(np.ceil(np.sqrt(n_images))) \
            or pixels.shape[1] % int(np.ceil(np.sqrt(n_images))):
        raise ScanReadError(path, "inconsistent rows/cols for a mosaic")
    if n_images < _MIN_SLICES:
        raise ScanReadError(path, f"only {n_images} slices (need at least {_MIN_SLICES})")
    slope = _num(_get(ds, "RescaleSlope"))
    intercept = _num(_get(ds, "RescaleIntercept"))
    series_meta = dict(series._meta)
    series_meta["RescaleSlope"] = 1.0 if slope is None else slope
    series_meta["RescaleIntercept"] = 0.0 if intercept is None else intercept
    data = _unmosaic(pixels, n_images).astype(np.float32)   # (row, col, slice)
    if slope not in (None, 1.0) or intercept not in (None, 0.0):
        with np.errstate(over="ignore", invalid="ignore"):
            data = (data * np.float64(1.0 if slope is None else slope)
                    + np.float64(intercept or 0.0)).astype(np.float32)
    data = data.transpose(1, 0, 2)                          # (col, row, slice)
    affine = lps[:, [1, 0, 2, 3]]
    affine[:2] *= -1
    return np.ascontiguousarray(data), affine, series_meta
