"""NIfTI reading and writing.

Reading takes the whole file in one go and inflates ``.nii.gz`` with ISA-L when available (about
3× faster than Python's zlib), a block of slices at a time, while a second thread turns the block
before into float32 in canonical orientation; nibabel parses the header and gives the affine.
The header is checked before any large allocation: a header that claims absurd dimensions, a
truncated stream or a file that is not NIfTI each give one ``ScanReadError`` line naming the file.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import inv_ornt_aff

from medae.errors import MedaeError, ScanReadError
from medae.io.atomic import atomic_open
from medae.io.files import open_regular
from medae.io.scan import Grid, Scan, check_affine, count_nonfinite

try:  # ISA-L: same format as zlib, several times faster inflate
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - platforms without isal wheels
    import gzip as _gzip
    _zlib = zlib

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: refuse headers that claim more voxels than this (override with MEDAE_MAX_VOXELS)
MAX_VOXELS = int(os.environ.get("MEDAE_MAX_VOXELS", 2**31))
#: about this many voxel bytes (whole slices) are inflated per block while the previous block is
#: converted (blocks of 1-4 MB measured fastest on the MS FLAIR: they stay in cache)
BLOCK_BYTES = 2 << 20
#: deflate expands at most 1032-fold (a 258-byte match in two bits), so a gzip file whose header
#: declares more than this many times the file's size is truncated: said before any allocation
MAX_INFLATE_RATIO = 1032


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _header_class(head: bytes) -> type[nib.Nifti1Header] | None:
    if len(head) >= 348:
        for order in ("<", ">"):
            size = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
            if size == 348 and head[344:347] in (b"n+1", b"ni1"):
                return nib.Nifti1Header
            if size == 540 and len(head) >= 540 and head[4:7] in (b"n+2", b"ni2"):
                return nib.Nifti2Header
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        with open_regular(path) as f:
            return f.read()
    except MedaeError:
        raise
    except IsADirectoryError as exc:
        raise ScanReadError(path, "is a folder, not a NIfTI file") from exc
    except FileNotFoundError as exc:
        raise ScanReadError(path, "no such file") from exc
    except OSError as exc:
        raise ScanReadError(path, f"cannot read: {exc.strerror or exc}") from exc


def read_nifti_header(path: str | os.PathLike, raw: bytes | None = None) -> nib.Nifti1Header:
    """Parse and sanity-check the header (no voxel data is inflated or allocated)."""
    path = Path(path)
    raw = _read_bytes(path) if raw is None else raw
    if not raw:
        raise ScanReadError(path, "empty file (0 bytes)")
    if raw[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(31)
        try:
            head = inflater.decompress(raw, 540)
        except zlib.error as exc:
            raise ScanReadError(path, f"corrupt gzip stream ({exc})") from exc
        if len(head) < 540 and not inflater.eof and not inflater.unconsumed_tail:
            raise ScanReadError(path, "truncated gzip stream")
    elif path.name.lower().endswith(".gz"):
        raise ScanReadError(path, "named .gz but is not gzip-compressed")
    else:
        head = raw[:540]
    cls = _header_class(head)
    if cls is None:
        raise ScanReadError(path, "not a NIfTI file (no NIfTI-1/2 header)")
    try:
        header = cls.from_fileobj(io.BytesIO(head), check=False)  # checked below, never "fixed"
    except Exception as exc:  # nibabel raises several types for bad headers
        raise ScanReadError(path, f"invalid NIfTI header ({exc})") from exc
    if header.get_data_offset() == 0 and head[344:347] != b"n+1" and head[4:7] != b"n+2":
        raise ScanReadError(path, "a header-only NIfTI pair (.hdr/.img) is not supported")
    shape = header.get_data_shape()
    if any(int(d) <= 0 for d in shape):
        raise ScanReadError(path, f"header claims invalid dimensions {shape}")
    n_vox = int(np.prod(shape, dtype=np.float64))
    if n_vox > MAX_VOXELS:
        raise ScanReadError(path, f"header claims {'x'.join(map(str, shape))} voxels "
                                  f"({n_vox:.3g}), more than the limit of {MAX_VOXELS:.3g}")
    try:
        dtype = header.get_data_dtype()
    except Exception as exc:
        raise ScanReadError(path, f"unsupported NIfTI data type ({exc})") from exc
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise ScanReadError(path, f"unsupported voxel type {dtype} (RGB/complex images)")
    return header


def _inflate_blocks(path: Path, raw: bytes, needed: int, first: int,
                    block: int) -> Iterator[bytes]:
    """Inflate at most ``needed`` bytes (what the header declares), ``first`` bytes and then
    ``block`` bytes at a time (a block may be shorter where a gzip member ends): a stream that
    would inflate further is never expanded beyond that, so memory is bounded by the header."""
    try:
        have, data = 0, raw
        inflater = _zlib.decompressobj(31)
        while have < needed:
            chunk = inflater.decompress(data, min(first if have == 0 else block, needed - have))
            if chunk:
                have += len(chunk)
                data = inflater.unconsumed_tail
                yield chunk
            elif inflater.eof:  # several gzip members: go on with the next one
                data = inflater.unused_data
                if not data.strip(b"\0"):
                    break
                inflater = _zlib.decompressobj(31)
            else:
                break
        if have < needed:
            raise ScanReadError(path, f"truncated gzip stream: header needs {needed} bytes, "
                                      f"the stream inflates to {have}")
    except EOFError as exc:
        raise ScanReadError(path, "truncated gzip stream") from exc
    except ScanReadError:
        raise
    except Exception as exc:  # zlib.error / isal_zlib.error / BadGzipFile
        raise ScanReadError(path, f"corrupt gzip stream ({exc})") from exc


def _convert_blocks(blocks: Iterator[bytes], offset: int, dtype: np.dtype, out: np.ndarray,
                    slope: float, inter: float) -> int:
    """Fill ``out`` (float32, laid out as the file's grid) from ``blocks`` (the file's bytes from
    its first one), whole slices at a time: scaling and the cast run in a second thread while the
    next block inflates (both release the GIL), so a ``.nii.gz`` costs about its inflate time.
    Returns the number of voxels that are not finite after scaling."""
    nx, ny, nz = out.shape
    plane = nx * ny * dtype.itemsize

    def convert(z0: int, data, n: int) -> int:
        src = np.frombuffer(data, dtype=dtype, count=n * nx * ny).reshape((nx, ny, n), order="F")
        dst = out[:, :, z0:z0 + n]
        if slope == 1 and inter == 0:
            dst[...] = src
            return count_nonfinite(src if src.dtype == np.float32 else dst)
        tmp = src.astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            if slope != 1:
                tmp *= np.float32(slope)
            if inter != 0:
                tmp += np.float32(inter)
        dst[...] = tmp
        return count_nonfinite(tmp)

    skip, carry, z, jobs = offset, b"", 0, []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for chunk in blocks:
            view = memoryview(chunk)
            if skip:
                view, skip = view[skip:], max(0, skip - len(view))
            data = carry + view if carry else view  # a copy only where a block ends mid-slice
            n = min(len(data) // plane, nz - z)
            if n:
                jobs.append(pool.submit(convert, z, data, n))
                z += n
            carry = bytes(data[n * plane:]) if z < nz else b""
        return sum(job.result() for job in jobs)


def _gib(shape: tuple[int, ...]) -> float:
    return float(np.prod(shape, dtype=np.float64)) * 4 / 2**30


def read_nifti(path: str | os.PathLike, volume: int | None = None) -> Scan:
    """Read a 3D NIfTI volume as a :class:`Scan` (scl_slope / scl_inter applied, float32).

    ``volume`` reads the volume of that index (from 0) of a 4D file (the channels of a
    Decathlon image) on the file's grid; only the bytes up to its end are inflated."""
    path = Path(path)
    raw = _read_bytes(path)
    header = read_nifti_header(path, raw)
    shape = tuple(int(d) for d in header.get_data_shape())
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    if volume is None:
        spatial = _spatial_shape(path, shape)
        needed = offset + int(np.prod(shape)) * dtype.itemsize
        start = offset
    else:
        spatial = _volume_shape(path, shape, volume)
        start = offset + volume * int(np.prod(spatial)) * dtype.itemsize
        needed = start + int(np.prod(spatial)) * dtype.itemsize
        header = header.copy()
        header.set_data_shape(spatial)  # the grid of one volume (outputs are 3D)
    slope, inter = _scaling(path, header)
    affine = _affine(path, header)
    if raw[:2] == b"\x1f\x8b":
        if needed > MAX_INFLATE_RATIO * len(raw):
            raise ScanReadError(path, f"truncated gzip stream: header needs {needed} bytes, "
                                      f"{len(raw)} compressed bytes cannot hold them")
        plane = spatial[0] * spatial[1] * dtype.itemsize
        step = max(1, BLOCK_BYTES // plane) * plane
        blocks = _inflate_blocks(path, raw, needed, offset + step, step)
    elif len(raw) < needed:
        raise ScanReadError(path, f"truncated: header needs {needed} bytes, file holds {len(raw)}")
    else:
        blocks = iter((raw,))
    grid = Grid(shape=spatial, affine=affine, header=header)
    try:
        array = grid.buffer()
    except MemoryError:
        raise ScanReadError(path, f"not enough memory for {'x'.join(map(str, spatial))} voxels "
                                  f"({_gib(spatial):.1f} GiB as float32)") from None
    n_bad = _convert_blocks(blocks, start, dtype, array, slope, inter)
    if n_bad:
        raise ScanReadError(path, f"{n_bad} voxels are NaN or infinite")
    meta = {"format": "NIfTI-2" if isinstance(header, nib.Nifti2Header) else "NIfTI-1",
            "stored_dtype": str(dtype.newbyteorder("=")),
            "sform_code": int(header["sform_code"]), "qform_code": int(header["qform_code"])}
    if volume is not None:
        meta["volume"] = volume
    return Scan.from_grid(array, grid, source=str(path), kind="nifti", meta=meta)  # no copy


def read_nifti_geometry(path: str | os.PathLike) -> tuple[tuple[int, int, int],
                                                         tuple[float, float, float], str]:
    """(shape, spacing in mm, orientation codes of the source grid) of the scan
    :func:`read_nifti` would return, from the header alone: the first 64 KiB are read, no voxel
    is inflated or allocated (``medae info`` on a large volume).  An uncompressed file too short
    for its voxels is refused here too."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            head = f.read(1 << 16)
            size = os.fstat(f.fileno()).st_size
    except MedaeError:
        raise
    except FileNotFoundError as exc:
        raise ScanReadError(path, "no such file") from exc
    except OSError as exc:
        raise ScanReadError(path, f"cannot read: {exc.strerror or exc}") from exc
    header = read_nifti_header(path, head)
    spatial = _spatial_shape(path, tuple(int(d) for d in header.get_data_shape()))
    needed = (int(header.get_data_offset()) + int(np.prod(header.get_data_shape()))
              * header.get_data_dtype().itemsize)
    if head[:2] == b"\x1f\x8b":  # the check read_nifti makes before inflating
        if needed > MAX_INFLATE_RATIO * size:
            raise ScanReadError(path, f"truncated gzip stream: header needs {needed} bytes, "
                                      f"{size} compressed bytes cannot hold them")
    elif size < needed:
        raise ScanReadError(path, f"truncated: header needs {needed} bytes, file holds {size}")
    _scaling(path, header)
    grid = Grid(shape=spatial, affine=_affine(path, header), header=header)
    ornt = grid.ornt
    shape = [0, 0, 0]
    for axis, (new, _flip) in enumerate(ornt):
        shape[int(new)] = spatial[axis]
    affine = grid.affine @ inv_ornt_aff(ornt, grid.shape)
    spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return tuple(shape), spacing, "".join(nib.aff2axcodes(grid.affine))


def _scaling(path: Path, header: nib.Nifti1Header) -> tuple[float, float]:
    """(slope, intercept) to apply; 0 or NaN scl_slope means unscaled, as the standard says."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if np.isnan(slope) or slope == 0:
        return 1.0, 0.0
    if not np.isfinite(slope) or abs(slope) > np.finfo(np.float32).max:
        raise ScanReadError(path, f"scl_slope is {slope:g}: not a usable scale factor")
    if np.isnan(inter):
        inter = 0.0
    if not np.isfinite(inter) or abs(inter) > np.finfo(np.float32).max:
        raise ScanReadError(path, f"scl_inter is {inter:g}: not a usable offset")
    return slope, inter


def _affine(path: Path, header: nib.Nifti1Header) -> np.ndarray:
    """The header's best affine, checked: finite, not singular, voxel sizes and positions in a
    physical range (so that resampling stays bounded)."""
    with np.errstate(all="ignore"):
        try:
            affine = header.get_best_affine()
        except Exception as exc:  # nibabel raises several types for bad quaternions
            raise ScanReadError(path, f"unusable orientation in the header "
                                      f"({type(exc).__name__})") from None
    return check_affine(path, affine)


def _spatial_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Keep 3D, squeeze trailing singleton dimensions, refuse 2D and multi-volume images."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise ScanReadError(path, f"{len(dims)}D image with shape {'x'.join(map(str, shape))}; "
                                  "medae needs one 3D volume (split the series first)")
    if len(dims) < 3 or min(dims) == 1:
        raise ScanReadError(path, f"2D image (shape {'x'.join(map(str, shape))}); "
                                  "medae needs a 3D volume")
    return tuple(dims)


def _volume_shape(path: Path, shape: tuple[int, ...], volume: int) -> tuple[int, int, int]:
    """The 3D grid of volume ``volume`` of a 4D file (trailing singleton dimensions dropped)."""
    dims = list(shape)
    while len(dims) > 4 and dims[-1] == 1:
        dims.pop()
    count = dims[3] if len(dims) == 4 else 1
    if len(dims) > 4 or not 0 <= volume < count:
        raise ScanReadError(path, f"has no volume {volume} (shape {'x'.join(map(str, shape))})")
    return _spatial_shape(path, tuple(dims[:3]))


def write_on_grid(array: np.ndarray, scan: Scan, path: str | os.PathLike,
                  dtype: np.dtype | type = np.float32) -> Path:
    """Write ``array`` (in ``scan``'s canonical orientation) as NIfTI on the scan's source grid.

    The output has exactly the source grid's affine: a NIfTI source keeps its sform/qform
    matrices and codes; a DICOM source gets both set to the scanner affine (code 1).  The data
    type is set to ``dtype`` (float32 by default) with no scaling.  The source header's free-text
    fields and extensions are not copied (they can hold identifiers).  Written atomically.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: output must be named .nii or .nii.gz")
    data = np.asarray(scan.to_grid(array))  # a view: write_nifti casts a block at a time
    grid = scan.grid
    if grid.header is not None:
        return write_nifti(data, path, header=grid.header, dtype=dtype, scale=False)
    return write_nifti(data, path, affine=grid.affine, dtype=dtype, scale=False)


def write_nifti(data: np.ndarray, path: str | os.PathLike, *, affine: np.ndarray | None = None,
                header: nib.Nifti1Header | None = None, dtype: np.dtype | type | None = None,
                descrip: str = "medae", scale: bool = True) -> Path:
    """Write the 3D array ``data`` as NIfTI: the one NIfTI writer (atomic, reproducible bytes).

    The grid is either ``affine`` (voxel index -> RAS+ mm; a new NIfTI-1 header with sform and
    qform set to it, code 1, units mm) or a source ``header`` whose geometry (sform/qform
    matrices and codes, NIfTI-1 or -2) is kept while its free-text fields and extensions are
    dropped (they can hold identifiers).  Voxels are stored as ``dtype`` (default: the array's
    own); nibabel picks scl_slope/scl_inter when an integer type has to hold float data, unless
    ``scale`` is False (the values are cast as they are: the caller knows they fit).
    ``descrip`` fills the description field.  ``.nii.gz`` is deflated at level 1 with a zero
    time stamp, so the same array gives the same bytes.

    Without scaling the voxels are streamed: the header, then a block of axial slices at a time
    (in Fortran order a block of z is one contiguous run of the file), each block cast to the
    stored type on its own, so no full-size copy, cast or serialised, of the volume is held.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: output must be named .nii or .nii.gz")
    if (affine is None) == (header is None):
        raise ValueError("write_nifti: give exactly one of affine and header")
    if header is not None:
        header = header.copy()
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        header.set_data_shape(data.shape)
    else:
        cls = nib.Nifti1Image
        header = nib.Nifti1Header()
        header.set_data_shape(data.shape)
        header.set_sform(affine, code=1)
        header.set_qform(affine, code=1)
        header.set_xyzt_units("mm", "sec")
    header.set_data_dtype(data.dtype if dtype is None else dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    header["intent_code"] = 0
    header["descrip"] = descrip.encode()[:79]
    for text_field in ("aux_file", "intent_name", "db_name"):  # free text from the source
        if text_field in header:  # (dcm2niix puts names, IDs, dates in extensions: dropped)
            header[text_field] = b""
    if getattr(header, "extensions", None) is not None:
        header.extensions.clear()
    out_dtype = np.dtype(data.dtype if dtype is None else dtype)
    gz = path.name.lower().endswith(".gz")
    if scale and out_dtype.kind in "iu" and data.dtype.kind in "fc":  # nibabel scales
        img = cls(data, None, header=header)
        with atomic_open(path) as f:
            if gz:
                with _open_gz(f) as z:
                    img.to_file_map({"image": nib.FileHolder(fileobj=z)})
            else:
                img.to_file_map({"image": nib.FileHolder(fileobj=f)})
        return path
    head = _header_bytes(cls, header, data.shape, out_dtype)
    step = max(1, _WRITE_BLOCK // max(1, data.shape[0] * data.shape[1] * out_dtype.itemsize))
    with atomic_open(path) as f:
        if gz:
            with _open_gz(f) as z:
                _write_voxels(z, head, data, out_dtype, step)
        else:
            _write_voxels(f, head, data, out_dtype, step)
    return path


def _open_gz(f):
    """Deflate level 1, mtime 0 and no file name in the gzip header: reproducible bytes."""
    return _gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=f, mtime=0)


#: bytes of voxel data cast and written at a time
_WRITE_BLOCK = 8 << 20


class _Sink(io.RawIOBase):
    """Keeps the first ``keep`` bytes written to it and counts the rest (seekable forwards)."""

    def __init__(self, keep: int):
        self.keep, self.head, self.pos, self.writes = keep, bytearray(), 0, []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.pos
        return self.pos

    def write(self, b) -> int:
        n = len(memoryview(b).cast("B"))
        self.writes.append((self.pos, n))
        if self.pos < self.keep:
            end = min(self.keep, self.pos + n)
            self.head[self.pos:end] = bytes(memoryview(b).cast("B")[:end - self.pos])
        self.pos += n
        return n


def _header_bytes(cls, header, shape: tuple[int, ...], dtype: np.dtype) -> list[bytes]:
    """The bytes before the voxel data exactly as nibabel writes them for an array of
    ``shape`` and ``dtype`` (header, extension flag, padding to the data offset), in the pieces
    nibabel writes them (a compressor's output depends on how its input is split, so keeping
    the pieces keeps the file's bytes).  nibabel writes the image into a sink from a
    zero-strided stand-in array, so nothing full-size is allocated; the sink keeps only what
    precedes the voxels."""
    stand_in = np.broadcast_to(np.zeros((), dtype), shape)
    sink = _Sink(keep=1 << 16)
    cls(stand_in, None, header=header).to_file_map({"image": nib.FileHolder(fileobj=sink)})
    offset = sink.pos - int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not 0 < offset <= len(sink.head):
        raise RuntimeError(f"unexpected NIfTI layout from nibabel (data offset {offset})")
    pieces, end = [], 0
    for pos, n in sink.writes:
        if pos >= offset:
            break
        if pos != end:  # a forward seek: nibabel's zero padding up to the data offset
            pieces.append(bytes(pos - end))
        pieces.append(bytes(sink.head[pos:min(pos + n, offset)]))
        end = min(pos + n, offset)
    if end < offset:
        pieces.append(bytes(offset - end))
    return pieces


def _write_voxels(f, head: list[bytes], data: np.ndarray, dtype: np.dtype, step: int) -> None:
    """The header pieces, then the voxels one axial slice per write (as nibabel writes them),
    cast to ``dtype`` a block of ``step`` slices at a time."""
    for piece in head:
        f.write(piece)
    for z in range(0, data.shape[2], step):
        block = np.asarray(data[:, :, z:z + step]).astype(dtype, copy=False)
        for k in range(block.shape[2]):
            f.write(block[:, :, k].tobytes(order="F"))
