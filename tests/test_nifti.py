"""NIfTI reading, geometry and writing back on the source grid."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import shared

from medae import MedaeError, load_scan, write_on_grid
from medae.io.nifti import read_nifti, write_nifti


def _oblique_affine() -> np.ndarray:
    """A rotated, anisotropic affine with a flipped first axis (like a LAS oblique acquisition)."""
    a = np.deg2rad(17.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    zoom = np.diag([-0.9, 1.1, 2.5])
    aff = np.eye(4)
    aff[:3, :3] = rot @ zoom
    aff[:3, 3] = [91.0, -120.5, -70.25]
    return aff


def _world(affine, ijk):
    return (affine @ np.r_[ijk, 1.0])[:3]


def _write(path, data, affine, slope=None, inter=None, sform_code=2, qform_code=1):
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_qform(affine, code=qform_code)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, path)
    return img


def test_round_trip_oblique_flipped(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(-100, 1000, size=(12, 9, 7)).astype(np.int16)
    affine = _oblique_affine()
    src = tmp_path / "oblique scan.nii.gz"
    img = nib.Nifti1Image(data, affine)
    img.header.set_sform(affine, code=2)
    img.header.set_qform(affine, code=1)
    img.header["scl_slope"], img.header["scl_inter"] = 0.5, -3.0
    nib.save(img, src)
    img = nib.load(src)  # the affine as stored (float32 in the header)

    scan = load_scan(src)
    assert scan.array.dtype == np.float32
    assert scan.kind == "nifti"
    # canonical orientation: the flipped first axis is reversed, shape follows the axes
    assert scan.orientation == "RAS"
    assert scan.grid_orientation == "LAS"
    assert scan.shape == (12, 9, 7)
    np.testing.assert_allclose(scan.spacing, (0.9, 1.1, 2.5), atol=1e-6)
    # every voxel keeps its value and its world position
    phys = data.astype(np.float64) * 0.5 - 3.0
    for ijk in [(0, 0, 0), (11, 8, 6), (3, 4, 5)]:
        ci = np.linalg.solve(scan.affine, np.r_[_world(affine, ijk), 1.0])[:3]
        ci = tuple(round(float(v)) for v in ci)
        assert scan.array[ci] == pytest.approx(phys[ijk])
    np.testing.assert_array_equal(scan.array, phys[::-1].astype(np.float32))

    # write a float map on the source grid: same shape, affine, codes; float32
    heat = scan.array * 0.25 + 1.0
    out = tmp_path / "out" / "map.nii.gz"
    write_on_grid(heat, scan, out)
    back = nib.load(out)
    assert back.shape == data.shape
    assert back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(back.affine, img.affine)
    np.testing.assert_array_equal(back.header.get_sform(), img.header.get_sform())
    np.testing.assert_allclose(back.header.get_qform(), img.header.get_qform(), atol=1e-5)
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 1
    np.testing.assert_allclose(back.get_fdata(), phys * 0.25 + 1.0, rtol=1e-6)

    again = load_scan(out)
    np.testing.assert_array_equal(again.affine, scan.affine)
    np.testing.assert_allclose(again.array, heat, rtol=1e-6)
    assert not list(out.parent.glob(".*tmp"))  # no temporary left behind


def test_uncompressed_and_uint8_label_write(tmp_path):
    data = np.zeros((8, 8, 8), np.uint8)
    data[2:4, 3:5, 1:6] = 3
    affine = np.diag([1.0, -1.0, 1.0, 1.0])
    _write(tmp_path / "lab.nii", data, affine)
    scan = read_nifti(tmp_path / "lab.nii")
    assert scan.grid_orientation == "RPS"
    out = write_on_grid(scan.array > 0, scan, tmp_path / "mask.nii.gz", dtype=np.uint8)
    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), (data > 0).astype(np.uint8))


def test_write_nifti_new_grid_scaled_and_reproducible(tmp_path):
    """The one NIfTI writer on a new grid: sform and qform code 1 in mm, float data kept
    through int16 scaling, the same bytes twice (a zero gzip time stamp)."""
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1000, (6, 7, 8)).astype(np.float32)
    affine = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 1.5, 0, -30], [0, 0, 0, 1]])
    a = write_nifti(data, tmp_path / "a.nii.gz", affine=affine, dtype=np.int16, descrip="t")
    b = write_nifti(data, tmp_path / "b.nii.gz", affine=affine, dtype=np.int16, descrip="t")
    assert a.read_bytes() == b.read_bytes()
    img = nib.load(a)
    assert img.get_data_dtype() == np.int16
    assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 1
    assert img.header.get_xyzt_units()[0] == "mm" and img.header["descrip"] == b"t"
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    assert np.abs(img.get_fdata() - data).max() < 0.02
    with pytest.raises(ValueError, match="exactly one"):
        write_nifti(data, tmp_path / "c.nii.gz")


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8, np.uint16])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_streamed_write_equals_nibabels_bytes(tmp_path, monkeypatch, dtype, suffix):
    """write_on_grid streams the voxels a block of slices at a time, cast block by block: the
    file is byte for byte what nibabel writes for the whole cast array (compressed too), and
    does not depend on the block size."""
    import medae.io.nifti as nifti

    rng = np.random.default_rng(1)
    values = rng.integers(0, 200, (9, 7, 11)).astype(np.float32)
    src = nib.Nifti2Header()
    src.set_data_shape(values.shape)
    src.set_sform(np.diag([0.7, 0.8, 0.9, 1.0]), code=2)
    nib.save(nib.Nifti2Image(values, None, header=src), tmp_path / "src.nii")
    scan = read_nifti(tmp_path / "src.nii")
    array = scan.array[::-1]  # a strided view, as the scorer's outputs can be
    ours = write_on_grid(array, scan, tmp_path / f"ours{suffix}", dtype=dtype)
    monkeypatch.setattr(nifti, "_WRITE_BLOCK", 1)  # one slice per block
    small = write_on_grid(array, scan, tmp_path / f"small{suffix}", dtype=dtype)
    assert ours.read_bytes() == small.read_bytes()
    cast = np.asarray(scan.to_grid(array)).astype(dtype)
    img = nib.Nifti2Image(cast, None, header=nib.load(ours).header)
    ref = tmp_path / f"ref{suffix}"
    with open(ref, "wb") as f:
        if suffix == ".nii.gz":
            with nifti._open_gz(f) as z:
                img.to_file_map({"image": nib.FileHolder(fileobj=z)})
        else:
            img.to_file_map({"image": nib.FileHolder(fileobj=f)})
    assert ours.read_bytes() == ref.read_bytes()
    np.testing.assert_array_equal(np.asanyarray(nib.load(ours).dataobj), cast)


def test_written_files_carry_no_source_free_text(tmp_path):
    """Names and IDs a converter left in the source header never reach medae's outputs."""
    img = nib.Nifti1Image(np.ones((6, 7, 8), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    img.header["aux_file"], img.header["intent_name"] = b"Doe^Jane", b"PID-12345"
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b'{"PatientName": "Doe^Jane"}'))
    nib.save(img, tmp_path / "src.nii.gz")
    scan = read_nifti(tmp_path / "src.nii.gz")
    write_on_grid(scan.array, scan, tmp_path / "out.nii")
    raw = (tmp_path / "out.nii").read_bytes()
    assert b"Doe^Jane" not in raw and b"PID-12345" not in raw
    assert len(nib.load(tmp_path / "out.nii").header.extensions) == 0


def test_four_d_singleton_squeezed_and_nifti2(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6, 1)
    nib.save(nib.Nifti2Image(data, np.eye(4)), tmp_path / "n2.nii")
    scan = load_scan(tmp_path / "n2.nii")
    assert scan.shape == (4, 5, 6)
    assert scan.meta["format"] == "NIfTI-2"
    np.testing.assert_array_equal(scan.array, data[..., 0])
    write_on_grid(scan.array, scan, tmp_path / "n2_out.nii")
    assert isinstance(nib.load(tmp_path / "n2_out.nii"), nib.Nifti2Image)


def _error(path) -> str:
    with pytest.raises(MedaeError) as info:
        load_scan(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert path.name in msg
    return msg


def _plain_read(img: nib.Nifti1Image, slope: float, inter: float) -> np.ndarray:
    """The reading rule written plainly: stored values to canonical orientation, float32, then
    scl_slope and scl_inter in float32."""
    from nibabel.orientations import apply_orientation, io_orientation
    raw = np.asarray(img.dataobj.get_unscaled())
    out = np.array(apply_orientation(raw, io_orientation(img.affine)), dtype=np.float32)
    out *= np.float32(slope)
    out += np.float32(inter)
    return out


_SAGITTAL = np.array([[0, 0, -1.2, 90], [-1.0, 0, 0, 100], [0, -1.1, 0, 80], [0, 0, 0, 1]])


@pytest.mark.parametrize("dtype,slope,inter,affine", [
    ("<i2", 0.5, -3.0, _oblique_affine()),     # LAS oblique, scaled integers
    (">f8", 1.0, 0.0, _SAGITTAL),             # big-endian doubles, axes permuted and flipped
    ("<f4", 2.0, 1.0, np.eye(4)),
    ("u1", 1.0, 0.0, _SAGITTAL)])
@pytest.mark.parametrize("block", [1, 700, 10**8])
def test_block_wise_read_equals_the_plain_rule(tmp_path, monkeypatch, dtype, slope, inter, affine,
                                               block):
    """Voxels are inflated and converted a block of slices at a time (one slice per block,
    several, or the whole file); the scan is the same whatever the block size, the orientation
    or the stored type, including a gzip stream of several members that split a slice."""
    monkeypatch.setattr("medae.io.nifti.BLOCK_BYTES", block)
    rng = np.random.default_rng(3)
    data = (rng.integers(0, 250, size=(13, 11, 9)) * 1.25).astype(dtype)
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.dtype(dtype))
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / "scan.nii.gz"
    nib.save(img, path)
    img = nib.load(path)
    want = _plain_read(img, slope, inter)
    scan = read_nifti(path)
    np.testing.assert_array_equal(scan.array, want)
    assert all(st > 0 for st in scan.array.strides) and scan.array.flags.writeable
    np.testing.assert_allclose(scan.affine, nib.as_closest_canonical(img).affine, atol=1e-6)
    # the same bytes as two gzip members, the boundary in the middle of a slice
    nii = gzip.decompress(path.read_bytes())
    cut = 352 + 13 * 11 * np.dtype(dtype).itemsize * 4 + 5
    two = tmp_path / "two members.nii.gz"
    two.write_bytes(gzip.compress(nii[:cut]) + gzip.compress(nii[cut:]))
    np.testing.assert_array_equal(read_nifti(two).array, want)
    plain = tmp_path / "plain.nii"
    plain.write_bytes(nii)
    np.testing.assert_array_equal(read_nifti(plain).array, want)


@pytest.mark.parametrize("affine", [np.eye(4), _oblique_affine(), _SAGITTAL])
def test_grid_buffer_becomes_the_scan_without_a_copy(affine):
    from medae.io.scan import Grid, Scan
    grid = Grid(shape=(5, 4, 3), affine=affine)
    buf = grid.buffer()
    buf[...] = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    scan = Scan.from_grid(buf, grid, source="x", kind="nifti")
    assert np.shares_memory(scan.array, buf)
    from nibabel.orientations import apply_orientation
    np.testing.assert_array_equal(scan.array, apply_orientation(np.asarray(buf), grid.ornt))


def test_bad_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.nii.gz"
    _write(good, np.ones((20, 20, 20), np.int16), np.eye(4))
    raw = good.read_bytes()

    (tmp_path / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    assert "truncated gzip stream" in _error(tmp_path / "truncated.nii.gz")
    noisy = tmp_path / "noisy.nii.gz"
    _write(noisy, np.random.default_rng(1).normal(size=(30, 30, 30)).astype(np.float32), np.eye(4))
    (tmp_path / "cut.nii.gz").write_bytes(noisy.read_bytes()[:-5000])
    assert "truncated gzip stream" in _error(tmp_path / "cut.nii.gz")

    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert "empty file" in _error(tmp_path / "empty.nii.gz")

    (tmp_path / "notes.nii").write_text("this is a text file, not an image\n" * 20)
    assert "not a NIfTI file" in _error(tmp_path / "notes.nii")

    (tmp_path / "plain.nii.gz").write_bytes(gzip.decompress(raw))
    assert "not gzip-compressed" in _error(tmp_path / "plain.nii.gz")

    nii = gzip.decompress(raw)
    (tmp_path / "short.nii").write_bytes(nii[: len(nii) - 100])
    assert "truncated" in _error(tmp_path / "short.nii")

    assert "no such file" in _error(tmp_path / "missing.nii.gz")


def _header_only(path, shape, dtype, pad: int):
    """A .nii.gz of a header declaring ``shape`` of ``dtype`` and ``pad`` zero bytes after it."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * pad))
    return path


def test_a_header_the_file_cannot_hold_or_memory_cannot_take(tmp_path, monkeypatch):
    """A .nii.gz whose header declares more than deflate can expand its bytes to is truncated,
    said before any allocation; a volume that memory cannot take is one line, not a traceback."""
    path = _header_only(tmp_path / "claims.nii.gz", (400, 400, 400), np.uint8, 4100)
    msg = _error(path)
    assert "truncated gzip stream" in msg and "cannot hold them" in msg

    good = tmp_path / "good.nii.gz"
    _write(good, np.ones((20, 30, 40), np.int16), np.eye(4))

    def no_memory(self):
        raise MemoryError
    monkeypatch.setattr("medae.io.scan.Grid.buffer", no_memory)
    assert "not enough memory for 20x30x40 voxels (0.0 GiB as float32)" in _error(good)


def test_absurd_dimensions_refused_before_allocation(tmp_path):
    # header only, no voxel data: reading must stop at the header
    path = _header_only(tmp_path / "huge.nii.gz", (30000, 30000, 30000), np.float32, 4)
    msg = _error(path)
    assert "30000x30000x30000" in msg and "limit" in msg


@pytest.mark.parametrize("shape,reason", [((16, 16), "2D image"), ((16, 16, 1), "2D image"),
                                          ((8, 8, 8, 3), "4D image")])
def test_wrong_dimensionality_refused(tmp_path, shape, reason):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    assert reason in _error(path)


def test_non_finite_refused(tmp_path):
    data = np.zeros((6, 6, 6), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    assert "2 voxels are NaN or infinite" in _error(tmp_path / "nan.nii.gz")


def test_real_brats_flair_matches_nibabel():
    path = shared("brain", "brats2013", "pat0001", "Flair_subtrMeanDivStd.nii.gz")
    scan = load_scan(path)
    ref = nib.as_closest_canonical(nib.load(path))
    assert scan.shape == ref.shape == (240, 240, 155)
    np.testing.assert_allclose(scan.affine, ref.affine, atol=1e-6)
    np.testing.assert_array_equal(scan.array, ref.get_fdata(dtype=np.float32))


def test_real_ms_las_written_back_on_its_grid(tmp_path):
    path = shared("brain", "ms_lesjak", "patient07")
    flair = sorted(path.glob("*FLAIR*.nii*"))[0]
    scan = load_scan(flair)
    src = nib.load(flair)
    assert "".join(nib.aff2axcodes(src.affine)) == scan.grid_orientation
    out = write_on_grid(scan.array, scan, tmp_path / "flair_copy.nii.gz")
    back = nib.load(out)
    np.testing.assert_array_equal(back.affine, src.affine)
    np.testing.assert_allclose(back.get_fdata(dtype=np.float32), src.get_fdata(dtype=np.float32),
                               rtol=1e-6)


def test_count_nonfinite_exact_with_a_fast_clean_path():
    from medae.io.scan import count_nonfinite

    big = np.full((50, 40, 30), 3e38, np.float32)  # finite voxels whose float32 sum overflows
    assert count_nonfinite(big) == 0
    assert count_nonfinite(-big) == 0
    bad = np.zeros((50, 40, 30), np.float32)
    bad[1, 2, 3], bad[4, 5, 6], bad[7, 8, 9] = np.nan, np.inf, -np.inf
    assert count_nonfinite(bad) == 3
    both = np.ones((10, 10, 10), np.float32)
    both[0, 0, :2] = [np.inf, -np.inf]  # inf + -inf: NaN, still counted one by one
    assert count_nonfinite(both) == 2
    assert count_nonfinite(np.arange(24, dtype=np.int16).reshape(2, 3, 4)) == 0
