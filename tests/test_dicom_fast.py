"""DICOM loading fast paths (issue 16): raw pixel reads of every bit depth, fast header values,
pruned enhanced headers and the per-process header cache give exactly what the plain pydicom
path gives."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import shared
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

import medae
import medae.io.dicom.cache as cache
import medae.io.dicom.find as find
import medae.io.dicom.frames as frames
import medae.io.dicom.headers as headers
import medae.io.dicom.values as values
from medae.errors import ScanReadError
from medae.io.dicom import clear_header_cache, find_dicom_series, read_dicom_series
from medae.io.dicom.prune import pruned_header

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_header_cache()
    yield
    clear_header_cache()


def _plain_pydicom(monkeypatch) -> None:
    """The loader as it was: every value and every pixel through pydicom, nothing pruned."""
    monkeypatch.setattr(frames, "_raw_pixels", lambda *a: None)
    monkeypatch.setattr(headers, "pruned_header", lambda *a: None)
    monkeypatch.setattr(values, "_fast_tag", lambda name: None)
    monkeypatch.setattr(headers, "_file_meta", lambda data: None)


def _volumes(units: list[list[Path]]) -> dict[str, tuple]:
    clear_header_cache()
    out = {}
    for files in units:
        found, notes = find_dicom_series(files)
        for s in found:
            scan = read_dicom_series(s)
            out[f"{s.source}#{s.key}"] = (scan.array, scan.affine, scan.meta, s.describe(),
                                         notes)
    return out


def _shared_units() -> list[list[Path]]:
    root = shared("dicom")
    units = [sorted((root / "ge_mprage_t1" / "In" / "05_3D_Ax_T1_MP_RAGE_R22").iterdir()),
             sorted((root / "ct_17_slices" / "tests" / "image_data" / "dicom").iterdir()),
             [root / "enhanced_multiframe" / "In" / "Philips" / "IM_0027_fMAP.dcm"],
             sorted((root / "enhanced_multiframe" / "In" / "Siemens" / "XA10").glob("*.dcm"))]
    units += [[root / "transfer_syntaxes" / "In" / f"{n}.dcm"] for n in range(1, 10)]
    return units


def test_every_shared_series_is_byte_identical_to_the_pydicom_path(monkeypatch):
    units = _shared_units()
    fast = _volumes(units)
    assert len(fast) == 1 + 1 + 2 + 4 + 9
    with monkeypatch.context() as m:
        _plain_pydicom(m)
        plain = _volumes(units)
    assert fast.keys() == plain.keys()
    for name, (array, affine, meta, text, notes) in fast.items():
        ref = plain[name]
        assert array.dtype == ref[0].dtype == np.float32
        assert array.tobytes() == ref[0].tobytes(), name
        np.testing.assert_array_equal(affine, ref[1])
        assert (meta, text, notes) == ref[2:], name


def test_raw_reads_cover_the_shared_uncompressed_series():
    """The fast path is taken where it should be: every uncompressed classic and enhanced
    file (12-bit Philips and Siemens included) is read raw; compressed mosaics are not."""
    for files in _shared_units():
        found, _ = find_dicom_series(files)
        for s in found:
            raw = [f.pixels is not None for f in s._frames]
            if not s._mosaic:
                assert all(raw), s.source
            for f in s._frames:
                if f.pixels is not None and "enhanced" in str(f.file):
                    assert f.pixels[2] == "<u2" and f.pixels[3] == 4   # 12 bits stored


# ------------------------------------------------------------------------------------------------
# bit depths, against pydicom's pixel_array

def _write(path: Path, k: int, raw: np.ndarray, *, bits: int, stored: int, signed: bool,
           syntax=ExplicitVRLittleEndian, uid: str, **extra) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MR_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = uid, "MR", 3, k + 1
    ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.7]
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    for key, value in extra.items():
        setattr(ds, key, value)
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    data = raw.astype(f"{order}u{bits // 8}").tobytes()
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    ds.set_original_encoding(False, order == "<")
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("bits, stored, signed, syntax, shape", [
    (16, 12, False, ExplicitVRLittleEndian, (6, 5)),
    (16, 12, True, ExplicitVRLittleEndian, (6, 5)),
    (16, 12, False, ExplicitVRBigEndian, (6, 5)),
    (16, 12, True, ExplicitVRBigEndian, (6, 5)),
    (16, 16, True, ExplicitVRLittleEndian, (6, 5)),
    (16, 15, False, ExplicitVRLittleEndian, (6, 5)),
    (8, 8, False, ExplicitVRLittleEndian, (5, 5)),    # odd length: one padding byte
    (8, 6, True, ExplicitVRLittleEndian, (6, 5)),
    (32, 32, True, ExplicitVRLittleEndian, (6, 5)),
    (32, 20, False, ExplicitVRLittleEndian, (6, 5)),
    (32, 24, True, ExplicitVRLittleEndian, (6, 5)),
])
def test_bit_depths_match_pydicom(tmp_path, monkeypatch, bits, stored, signed, syntax, shape):
    """Random words, unused high bits set: the raw reader masks (unsigned) or sign-extends
    (signed) them exactly as pydicom does, and rescales as before."""
    rng = np.random.default_rng(bits * 100 + stored)
    uid = generate_uid()
    for k in range(3):
        raw = rng.integers(0, 2 ** bits, size=shape, dtype=np.uint64)
        _write(tmp_path / f"s{k}.dcm", k, raw, bits=bits, stored=stored, signed=signed,
               syntax=syntax, uid=uid, RescaleSlope=1.5, RescaleIntercept=-3.25)
    found, _ = find_dicom_series(sorted(tmp_path.iterdir()))
    fast = read_dicom_series(found[0])
    raw_read = bits in (16, 32, 8) and (syntax == ExplicitVRLittleEndian or bits == 16)
    assert all((f.pixels is not None) == raw_read for f in found[0]._frames)
    grid = fast.to_grid(fast.array)
    for k in range(3):
        ds = pydicom.dcmread(tmp_path / f"s{k}.dcm")
        expected = ds.pixel_array.astype(np.float32) * np.float32(1.5) + np.float32(-3.25)
        np.testing.assert_array_equal(grid[:, :, k], expected.T)
    with monkeypatch.context() as m:
        _plain_pydicom(m)
        clear_header_cache()
        found, _ = find_dicom_series(sorted(tmp_path.iterdir()))
        plain = read_dicom_series(found[0])
    assert fast.array.tobytes() == plain.array.tobytes()


def test_truncated_12_bit_pixel_data(tmp_path):
    uid = generate_uid()
    for k in range(3):
        _write(tmp_path / f"s{k}.dcm", k, np.full((6, 5), 4000), bits=16, stored=12,
               signed=False, uid=uid)
    path = tmp_path / "s1.dcm"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ScanReadError) as err:
        medae.load_scan(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "truncated pixel data" in message
    assert "\n" not in message


# ------------------------------------------------------------------------------------------------
# header values and pruned enhanced headers

@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("implicit", [False, True])
def test_fast_values_agree_with_pydicom(tmp_path, implicit):
    ds = pydicom.Dataset()
    ds.ImagePositionPatient = ["-1.5", " 2", "3e2 "]
    ds.SeriesNumber = "007"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Modality = "MR"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4\\5.6"      # two UIDs: left to pydicom
    ds.Rows = 17
    ds.DiffusionBValue = 1000.0
    ds.EchoTime = "1.5\\2.5"
    ds.RepetitionTime = "inf"                 # not a well-formed DS: left to pydicom
    ds.AcquisitionNumber = ""
    path = tmp_path / "values.dcm"
    ds.save_as(path, implicit_vr=implicit, little_endian=True)
    view = values.HeaderView(pydicom.dcmread(path, force=True))
    plain = pydicom.dcmread(path, force=True)
    for name in ("ImagePositionPatient", "SeriesNumber", "ImageType", "Modality",
                 "SeriesInstanceUID", "SOPInstanceUID", "Rows", "DiffusionBValue", "EchoTime",
                 "RepetitionTime", "AcquisitionNumber", "SliceThickness"):
        got, want = view.get(name, "absent"), plain.get(name, "absent")
        if isinstance(want, pydicom.multival.MultiValue):
            assert list(got) == list(want), name     # (a tuple here)
        else:   # the same value; IS/DS as plain int/float (the loader never formats them)
            assert got == want and type(got) in (type(want), *type(want).__mro__), name
        assert values._num(got) == values._num(want) and \
            values._int(got) == values._int(want), name
        assert values._floats(got, 3) == values._floats(want, 3), name


def test_pruned_enhanced_headers_give_the_same_records(monkeypatch):
    root = shared("dicom", "enhanced_multiframe", "In")
    paths = [root / "Philips" / "IM_0027_fMAP.dcm", *sorted((root / "Siemens" / "XA10").iterdir())]
    calls = []
    real = headers.pruned_header
    monkeypatch.setattr(headers, "pruned_header",
                        lambda *a: calls.append(real(*a)) or calls[-1])
    fast = [find._examine(p) for p in paths]
    done = [c for c in calls if c is not None and c[1] is not None]
    assert len(calls) == len(done) == len(paths)    # the Philips header, longer than the first
                                                    # read, is pruned once, from the whole file
    assert all(len(c[0]) < c[1] for c in done)      # smaller than the header it replaces
    monkeypatch.setattr(headers, "pruned_header", lambda *a: None)
    assert [find._examine(p) for p in paths] == fast
    assert [len(r.frames) for r in fast] == [64, 6, 6, 6, 6]


def test_pruning_gives_up_on_what_it_does_not_expect():
    path = shared("dicom", "enhanced_multiframe", "In", "Philips", "IM_0027_fMAP.dcm")
    data = path.read_bytes()
    keep = headers._KEEP_TAGS
    _, pixel = pruned_header(data, keep)
    assert data[pixel:pixel + 4] == b"\xe0\x7f\x10\x00"
    assert pruned_header(data[:pixel - 100], keep) is None      # ends inside the header
    assert pruned_header(data[128:], keep) is None              # no preamble
    broken = bytearray(data)
    at = data.index(b"\x30\x92SQ")                              # per-frame sequence: bad VR
    broken[at + 2:at + 4] = b"s?"
    assert pruned_header(bytes(broken), keep) is None


def _elements(ds) -> list[tuple]:
    return [(int(t), ds[t].VR, repr(ds[t].value)) for t in sorted(ds.keys())]


def test_file_meta_read_here_gives_what_pydicom_gives():
    """Every shared DICOM file with a preamble: the data set after the file meta group read
    here equals pydicom's own read, element by element, with the same encoding,
    file meta and stopping point; the files it leaves to pydicom are the ones it should."""
    import io
    root = shared("dicom")
    paths = [p for p in sorted(root.rglob("*")) if p.is_file() and headers.is_dicom_file(p)]
    taken = 0
    for path in paths:
        data = path.read_bytes()
        if data[128:132] != b"DICM":
            continue
        stream = io.BytesIO(data)
        try:
            want = headers._parse(stream, True, headers._stop_at_frames)
        except Exception:
            continue
        meta = headers._file_meta(data)
        syntax = want.file_meta.get("TransferSyntaxUID")
        plain = (syntax is not None and syntax.is_transfer_syntax and not syntax.is_deflated
                 and syntax.is_little_endian)
        assert (meta is not None) == plain, path
        if meta is None:
            continue
        got, tell = headers._parse_data(data, True, headers._stop_at_frames)
        assert tell == stream.tell(), path
        assert _elements(got) == _elements(want), path
        assert got.original_encoding == want.original_encoding, path
        assert got.file_meta == want.file_meta, path   # values compared converted
        taken += 1
    assert taken >= 150


def test_file_meta_is_left_to_pydicom_when_unusual(tmp_path):
    data = shared("dicom", "ct_17_slices", "tests", "image_data", "dicom").iterdir()
    data = sorted(data)[0].read_bytes()
    assert headers._file_meta(data) is not None
    assert headers._file_meta(data[128:]) is None                    # no preamble
    assert headers._file_meta(data[:140]) is None                    # ends in the meta group
    bad_vr = bytearray(data)
    bad_vr[136:138] = b"u?"
    assert headers._file_meta(bytes(bad_vr)) is None
    at = data.index(b"1.2.840.10008.1.2\0")                          # implicit VR LE

    def with_syntax(uid: bytes) -> bytes:
        uid += b"\0" * (len(uid) & 1)
        return data[:at - 2] + struct.pack("<H", len(uid)) + uid + data[at + 18:]

    assert headers._file_meta(with_syntax(b"1.2.840.10008.1.2.1"))[2] is False   # explicit
    assert headers._file_meta(with_syntax(b"1.2.840.10008.1.2.2")) is None       # big endian
    assert headers._file_meta(with_syntax(b"1.2.840.10008.1.2.1.99")) is None    # deflated
    assert headers._file_meta(with_syntax(b"1.2.3.4")) is None                   # unknown


# ------------------------------------------------------------------------------------------------
# the header cache

def _age(folder: Path, seconds: float = 60.0) -> None:
    """Date the files back: only files modified a while ago are cached (see RACY_SECONDS)."""
    past = time.time() - seconds
    for p in folder.rglob("*"):
        os.utime(p, (past, past))


@pytest.fixture
def counted(monkeypatch):
    """The paths whose headers were parsed, in order."""
    seen: list[Path] = []
    real = find._examine
    monkeypatch.setattr(find, "_examine", lambda p: seen.append(p) or real(p))
    return seen


def _multi_volume(folder: Path, volumes=3, slices=4) -> None:
    uid = generate_uid()
    for v in range(volumes):
        for k in range(slices):
            _write(folder / f"v{v}_{k}.dcm", k, np.full((6, 5), 100 * v + k), bits=16,
                   stored=16, signed=True, uid=uid, DiffusionBValue=float(500 * v),
                   InstanceNumber=v * slices + k + 1)
    _age(folder)


def test_discover_then_load_parses_each_header_once(tmp_path, counted):
    _multi_volume(tmp_path)
    sources = medae.discover(tmp_path)
    assert len(sources) == 3 and len(counted) == 12
    for s in sources:
        scan = medae.load_scan(tmp_path, series=s.series.key)
        assert scan.shape == (5, 6, 4)
        np.testing.assert_array_equal(scan.array, s.load().array)
    assert len(counted) == 12                       # no header read again
    assert len(medae.discover(tmp_path)) == 3 and len(counted) == 12


def test_changed_added_and_removed_files_are_seen(tmp_path, counted):
    _multi_volume(tmp_path, volumes=1)
    first = medae.load_scan(tmp_path).array.copy()
    assert len(counted) == 4
    uid = str(pydicom.dcmread(tmp_path / "v0_0.dcm").SeriesInstanceUID)
    _write(tmp_path / "v0_2.dcm", 2, np.full((6, 5), 999), bits=16, stored=16, signed=True,
           uid=uid, DiffusionBValue=0.0, InstanceNumber=3)
    second = medae.load_scan(tmp_path).array
    assert counted[4:] == [tmp_path / "v0_2.dcm"]  # only the changed file
    assert second[:, :, 2].max() == 999 and first[:, :, 2].max() == 2
    medae.load_scan(tmp_path)
    assert len(counted) == 6                        # modified just now: read every time
    _age(tmp_path)                                  # new times (and change times) for all
    medae.load_scan(tmp_path)
    medae.load_scan(tmp_path)
    assert len(counted) == 10                       # read once more, then kept
    (tmp_path / "v0_3.dcm").unlink()
    assert medae.load_scan(tmp_path).shape == (5, 6, 3) and len(counted) == 10
    _write(tmp_path / "v0_4.dcm", 3, np.full((6, 5), 7), bits=16, stored=16, signed=True,
           uid=uid, DiffusionBValue=0.0, InstanceNumber=5)
    assert medae.load_scan(tmp_path).shape == (5, 6, 4)
    assert counted[10:] == [tmp_path / "v0_4.dcm"]


def test_recently_modified_files_are_not_cached(tmp_path, counted):
    _multi_volume(tmp_path, volumes=1)
    os.utime(tmp_path / "v0_1.dcm")                 # modified just now
    medae.load_scan(tmp_path)
    medae.load_scan(tmp_path)
    assert counted.count(tmp_path / "v0_1.dcm") == 2 and len(counted) == 5


def test_cache_is_bounded():
    c = cache.HeaderCache(max_frames=10, max_listings=2)
    sig = (1, 2, 3, 4, 5)
    for i in range(8):
        c.store(Path(f"f{i}"), sig, f"record{i}", 3)
    assert c.record(Path("f0"), sig) is None and c.record(Path("f7"), sig) == "record7"
    assert c.record(Path("f7"), (1, 2, 3, 4, 6)) is None   # another version of the file
    for i in range(3):
        c.store_listing((i,), f"listing{i}", 1)
    assert c.listing((0,)) is None and c.listing((2,)) == "listing2"
