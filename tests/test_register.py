"""Rigid registration of a case's further sequences to its first (issue 27,
``preprocess.registration``): RAS/LPS conversions, a known rotation and shift recovered across
contrasts, refusals in one line, co-registered shared scans unchanged, and ``medae score`` end
to end with the transform in result.json."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, shared

import medae
from medae.cli import REGISTRATION_CHOICES, build_parser, train_overrides
from medae.errors import MedaeError, ScanReadError
from medae.io.scan import Grid, Scan
from medae.io.sequences import on_grid
from medae.preprocess import REGISTRATION_MODES, PreprocessConfig, prepare_source
from medae.register import (
    FLIP,
    euler_xyz_deg,
    register_rigid,
    rotation_angle_deg,
    sitk_affine,
    to_sitk,
    transform_matrix,
)
from medae.synthetic.template import shipped_template

sitk = pytest.importorskip("SimpleITK")


def _rotation(axis, degrees: float) -> np.ndarray:
    """Rodrigues: the rotation by ``degrees`` about ``axis``."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(degrees)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def _rigid(axis, degrees: float, shift_mm, centre) -> np.ndarray:
    """A 4x4 world map: rotation about ``centre``, then ``shift_mm``."""
    m = np.eye(4)
    m[:3, :3] = _rotation(axis, degrees)
    m[:3, 3] = np.asarray(centre) - m[:3, :3] @ centre + np.asarray(shift_mm, float)
    return m


def _scan(array, affine, name) -> Scan:
    affine = np.asarray(affine, float)
    return Scan(array=np.asarray(array, np.float32), affine=affine, grid=Grid(array.shape, affine),
                source=name, kind="nifti")


@pytest.fixture(scope="module")
def template():
    t = shipped_template()
    inverted = np.where(t.brain, t.t1.max() - t.t1, 0).astype(np.float32)  # another contrast
    centre = (t.affine @ np.append((np.array(t.shape) - 1) / 2, 1))[:3]
    return t, inverted, centre


def _errors(found: np.ndarray, truth: np.ndarray, brain: np.ndarray, affine) -> tuple:
    """Largest displacement (mm) between two world maps over the corners of the brain's
    bounding box, and the residual rotation's angle (degrees)."""
    idx = np.argwhere(brain)
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[x, y, z, 1] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                        for z in (lo[2], hi[2])], float).T
    points = np.asarray(affine) @ corners
    mm = float(np.linalg.norm((found @ points - truth @ points)[:3], axis=0).max())
    return mm, rotation_angle_deg(found[:3, :3] @ truth[:3, :3].T)


# ---- RAS (nibabel) <-> LPS (SimpleITK) ----------------------------------------------------

def test_affines_round_trip_through_simpleitk_with_the_lps_flips():
    rng = np.random.default_rng(3)
    affine = np.eye(4)
    affine[:3, :3] = _rotation([1, -2, 0.5], 17) @ np.diag([0.9, 1.1, 2.4])
    affine[:3, 3] = [-80.5, 112.0, -30.25]
    array = rng.normal(size=(5, 6, 7)).astype(np.float32)
    img = to_sitk(array, affine)
    np.testing.assert_allclose(sitk_affine(img), affine, atol=1e-9)
    assert img.GetSize() == (5, 6, 7)
    for ijk in ((0, 0, 0), (4, 0, 0), (1, 5, 6), (4, 5, 6)):  # index -> world, both ways
        lps = np.array(img.TransformIndexToPhysicalPoint(ijk))
        ras = (affine @ np.append(ijk, 1.0))[:3]
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)
        assert img[ijk] == pytest.approx(float(array[ijk]))  # the same voxel
    # a transform: LPS in SimpleITK, RAS in medae's records
    t = sitk.Euler3DTransform([10.0, -5.0, 3.0], 0.1, -0.2, 0.3, [1.0, 2.0, 3.0])
    m = transform_matrix(t)
    p = np.array([12.0, -7.0, 40.0])  # RAS
    q = np.array(t.TransformPoint([float(v) for v in FLIP[:3, :3] @ p]))
    np.testing.assert_allclose((m @ np.append(p, 1))[:3], FLIP[:3, :3] @ q, atol=1e-9)
    assert rotation_angle_deg(m[:3, :3]) == pytest.approx(
        rotation_angle_deg(np.array(t.GetMatrix()).reshape(3, 3)), abs=1e-9)
    rx, ry, rz = (np.radians(a) for a in euler_xyz_deg(_rotation([0, 0, 1], 20)))
    assert (rx, ry) == pytest.approx((0, 0), abs=1e-12) and np.degrees(rz) == pytest.approx(20)


def test_simpleitk_resampling_at_the_identity_agrees_with_world_space(template):
    """The moving sequence on an oblique grid of its own: SimpleITK's resampling (no
    transform) and medae's world-space resampling put the same voxels in the same places."""
    t, inverted, centre = template
    tilt = _rigid([0, 1, 1], 9, [3, 0, -2], centre)
    moving = _scan(inverted, tilt @ t.affine, "t2.nii.gz")  # the same head on a tilted grid
    fixed = _scan(t.t1, t.affine, "t1.nii.gz")
    world = on_grid(fixed, moving, "sequence t2")
    fixed_img, moving_img = to_sitk(fixed.array, fixed.affine), to_sitk(moving.array,
                                                                         moving.affine)
    ours = sitk.GetArrayFromImage(sitk.Resample(moving_img, fixed_img, sitk.Transform(),
                                                sitk.sitkLinear, 0.0)).T
    inside = t.brain & (world > 0)
    assert np.abs(ours[inside] - world[inside]).max() < 1e-2 * inverted.max()


# ---- a known transform recovered ----------------------------------------------------------

@pytest.mark.parametrize("axis, degrees, shift, spacing", [
    ([1, 2, 3], 12.0, [8.0, -12.0, 6.0], None),  # the moving sequence on a tilted copy of the grid
    ([-2, 1, 1], 6.0, [-4.0, 3.0, 14.0], (2.5, 2.5, 3.0)),  # ... resampled to another grid
])
def test_a_known_rotation_and_shift_is_recovered_within_1mm_and_1deg(template, axis, degrees,
                                                                     shift, spacing):
    """The inverted template (another contrast) moved by a known rigid transform (rotation
    about an oblique axis, shift of 15-17 mm): recovered within 1 mm over the brain's bounding
    box and 1 degree."""
    t, inverted, centre = template
    truth = _rigid(axis, degrees, shift, centre)  # first sequence's world -> moving's world
    fixed = _scan(t.t1, t.affine, "t1.nii.gz")
    if spacing is None:
        moving = _scan(inverted, truth @ t.affine, "t2.nii.gz")
    else:  # sample the moved head on a coarser grid of its own (as a scanner would)
        grid = np.diag([*spacing, 1.0])
        shape = tuple(int(n * 2 / s) for n, s in zip(t.shape, spacing, strict=True))
        grid[:3, 3] = t.affine[:3, 3]
        head = _scan(inverted, truth @ t.affine, "head")
        moving = _scan(np.zeros(shape, np.float32), grid, "t2.nii.gz")
        moving.array = on_grid(moving, head, "the head")
    found = register_rigid(fixed, moving, "sequence t2 of case x")
    mm, deg = _errors(found.matrix, truth, t.brain, t.affine)
    assert mm < 1.0 and deg < 1.0, (mm, deg)
    assert found.rotation_deg == pytest.approx(degrees, abs=1.0)
    assert found.metric > found.metric_before + 0.3 and found.overlap > 0.8  # moved FOV
    assert found.array.shape == t.shape and found.array.dtype == np.float32
    # the moved sequence lies on the first's anatomy: inverted contrast inside the brain
    core = t.brain & (t.t1 > 0.3 * t.t1.max())
    assert np.corrcoef(found.array[core], t.t1[core])[0, 1] < -0.85  # blurred by 3 mm
    rec = found.record()
    assert set(rec) >= {"rotation_deg", "shift_mm", "matrix", "mutual_information", "seconds"}
    assert json.loads(json.dumps(rec)) == rec
    # deterministic: the metric's samples come from a fixed seed
    again = register_rigid(fixed, moving, "sequence t2 of case x")
    np.testing.assert_array_equal(again.matrix, found.matrix)


# ---- refusals ------------------------------------------------------------------------------

def test_unrelated_or_disjoint_sequences_are_refused_in_one_line(template):
    t, _, _ = template
    fixed = _scan(t.t1, t.affine, "t1.nii.gz")
    noise = _scan(np.random.default_rng(0).normal(100, 20, t.shape), t.affine, "noise.nii.gz")
    with pytest.raises(ScanReadError) as err:
        register_rigid(fixed, noise, "sequence t2 of case x")
    msg = str(err.value)
    assert msg.startswith("noise.nii.gz: rigid registration of sequence t2 of case x to the "
                          "first sequence failed: the images share no structure, under 0.1 "
                          "nats of mutual information (mutual information 0.0") and "\n" not in msg
    assert msg.endswith("% of the first sequence's field of view covered)")
    far = t.affine.copy()
    far[0, 3] += 500  # half a metre away: nothing in common
    with pytest.raises(ScanReadError, match=r"^far\.nii\.gz: rigid registration of sequence t2 "
                                            r"of case x to the first sequence failed") as err:
        register_rigid(fixed, _scan(t.t1, far, "far.nii.gz"), "sequence t2 of case x")
    assert "\n" not in str(err.value)


def test_the_setting_is_checked_and_old_bundles_keep_their_meaning():
    assert PreprocessConfig().registration == "none"  # recipes and bundles without the key
    assert "registration" not in PreprocessConfig().to_dict()  # their model.json as it was
    assert PreprocessConfig.from_dict({"registration": "rigid"}).to_dict()["registration"] == \
        "rigid"
    with pytest.raises(MedaeError, match=r"preprocess\.registration: unknown value 'affine' "
                                         r"\(known: auto, rigid, none\)"):
        PreprocessConfig(registration="affine")
    assert REGISTRATION_CHOICES == REGISTRATION_MODES  # the CLI's (it starts without torch)
    args = build_parser().parse_args(["train", "--config", "c.yaml", "--data", "d", "--output",
                                      "o", "--registration", "rigid"])
    assert train_overrides(args)[-1] == "preprocess.registration=rigid"


# ---- co-registered shared scans: unchanged -------------------------------------------------

def _brats_case(tmp_path):
    d = shared("brain", "brats2013", "pat0001")
    man = tmp_path / "m.csv"
    man.write_text(f"case_id,flair,t1,mask\npat0001,{d / 'Flair_subtrMeanDivStd.nii.gz'},"
                   f"{d / 'T1c_subtrMeanDivStd.nii.gz'},{d / 'brainmask.nii.gz'}\n")
    return medae.read_manifest(man)[0]


def test_brats_is_byte_identical_by_default_and_with_auto(tmp_path):
    """BraTS sequences share one grid (co-registered by their makers): ``none`` (the default)
    and ``auto`` give the very same model input; ``rigid`` finds them aligned."""
    source = _brats_case(tmp_path)
    base = dict(spacing=(1.875, 1.875, 1.0), size=(96, 112, None), inputs=("flair", "t1"))
    _, before = prepare_source(source, PreprocessConfig(**base))
    _, auto = prepare_source(source, PreprocessConfig(**base, registration="auto"))
    assert np.array_equal(before.image, auto.image) and before.stats == auto.stats
    for a, b in zip(before.native_inputs, auto.native_inputs, strict=True):
        assert a.tobytes() == b.tobytes()
    assert auto.registration == {} and "registration" not in auto.seconds
    _, rigid = prepare_source(source, PreprocessConfig(**base, registration="rigid"))
    rec = rigid.registration["t1"]
    assert rec["rotation_deg"] < 0.5 and np.linalg.norm(rec["shift_mm"]) < 0.5, rec
    assert rigid.seconds["registration"] == rec["seconds"]


def test_a_raw_pair_of_one_exam_is_registered(tmp_path):
    """The raw PD of one adult onto his T1 through ``prepare_source``: the PD lies tilted by
    9° across the T1 in world space (by eye: its corpus callosum crosses the T1's); registered
    over the whole field of view, as ``bench_brain.py`` measures it."""
    d = shared("brain", "raw_heads", "mccausland_chris")
    man = tmp_path / "m.csv"
    man.write_text(f"case_id,t1,pd\nchris,{d / 'chris_t1.nii.gz'},{d / 'chris_PD.nii.gz'}\n")
    scan, prep = prepare_source(medae.read_manifest(man)[0], PreprocessConfig(
        registration="auto", inputs=("t1", "pd"), spacing=(2.0, 2.0, 2.0)))
    rec = prep.registration["pd"]
    assert rec["region"] == "field of view" and rec["overlap"] > 0.6
    assert 8.0 < rec["rotation_deg"] < 10.0 and rec["mutual_information"] > 0.6
    assert rec["mutual_information"] > rec["mutual_information_before"] + 0.2
    assert prep.seconds["registration"] == rec["seconds"]
    assert prep.native_inputs[1].shape == scan.shape  # on the T1's grid


# ---- medae score end to end ----------------------------------------------------------------

@pytest.fixture(scope="module")
def scored(template, tmp_path_factory):
    """A two-sequence intensity model trained with ``--registration auto`` (two training cases
    on one grid, two whose second sequence moved), and two cases scored by ``medae score``: one
    whose second sequence moved, one whose second sequence is noise on a grid of its own."""
    t, inverted, centre = template
    tmp_path = tmp_path_factory.mktemp("registered")
    data = tmp_path / "data"
    data.mkdir()
    rows = ["case_id,t1,t2"]
    moved_in_training = {"h2": _rigid([0, 1, 0], 5, [3.0, 0.0, 2.0], centre),
                         "h3": _rigid([1, 0, 1], 4, [-2.0, 4.0, 0.0], centre)}
    for i in range(4):
        gain = 1.0 + 0.05 * i
        nib.save(nib.Nifti1Image(t.t1 * gain, t.affine), data / f"h{i}_t1.nii.gz")
        aff = moved_in_training.get(f"h{i}", np.eye(4)) @ t.affine
        nib.save(nib.Nifti1Image(inverted * gain, aff), data / f"h{i}_t2.nii.gz")
        rows.append(f"h{i},{data / f'h{i}_t1.nii.gz'},{data / f'h{i}_t2.nii.gz'}")
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    truth = _rigid([1, 1, -1], 10, [6.0, 9.0, -5.0], centre)
    nib.save(nib.Nifti1Image(inverted, truth @ t.affine), data / "moved_t2.nii.gz")
    noise = np.random.default_rng(1).normal(100, 20, t.shape).astype(np.float32)
    shifted = t.affine.copy()
    shifted[:3, 3] += [3.0, 0.0, 0.0]  # a grid of its own: registered, and refused
    nib.save(nib.Nifti1Image(noise, shifted), data / "noise_t2.nii.gz")
    (data / "score.csv").write_text(
        f"case_id,t1,t2\nmoved,{data / 'h0_t1.nii.gz'},{data / 'moved_t2.nii.gz'}\n"
        f"noise,{data / 'h0_t1.nii.gz'},{data / 'noise_t2.nii.gz'}\n")
    cli = [sys.executable, "-m", "medae"]
    run, out = tmp_path / "run", tmp_path / "out"
    trained = subprocess.run([*cli, "train", "--config", str(ROOT / "configs" / "intensity.yaml"),
                              "--data", str(data / "train.csv"), "--output", str(run), "-q",
                              "--registration", "auto", "--set", "preprocess.inputs=[t1, t2]"],
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    res = subprocess.run([*cli, "score", "--model", str(run), "--input", str(data / "score.csv"),
                          "--output", str(out), "-q", "--no-overlays"],
                         capture_output=True, text=True, timeout=600)
    return dict(data=data, run=run, out=out, res=res, truth=truth, moved=moved_in_training)


@pytest.mark.slow
def test_score_registers_a_moved_sequence_and_records_its_transform(template, scored):
    """Training: a case whose sequences share a grid is taken as it is, one whose second
    sequence moved is registered (model.json records its transform).  Scoring: the moved
    sequence is registered (result.json holds the transform); the noise case fails in one line
    while the other is scored."""
    t = template[0]
    data, run, out, res = scored["data"], scored["run"], scored["out"], scored["res"]
    meta = json.loads((run / "model.json").read_text())
    assert meta["preprocess"]["registration"] == "auto"
    for entry in meta["intensity"]:  # the training cases: registered where t2 moved
        if entry["case_id"] in scored["moved"]:
            mm, deg = _errors(np.array(entry["registered"]["t2"]["matrix"]),
                              scored["moved"][entry["case_id"]], t.brain, t.affine)
            assert mm < 1.0 and deg < 1.0, (mm, deg)
        else:
            assert "registered" not in entry  # one grid: taken as it is
    assert {e["case_id"] for e in meta["intensity"]} & set(scored["moved"])
    assert res.returncode == 1, res.stderr[-2000:]  # the noise case failed, the other scored
    rec = json.loads((out / "moved" / "result.json").read_text())
    assert rec["registration"] == "auto" and set(rec["registered"]) == {"t2"}
    found = np.array(rec["registered"]["t2"]["matrix"])
    mm, deg = _errors(found, scored["truth"], t.brain, t.affine)
    assert mm < 1.0 and deg < 1.0, (mm, deg)
    assert rec["stages"]["registration"] == rec["registered"]["t2"]["seconds"] > 0
    failures = list(csv.DictReader((out / "failures.csv").open()))
    assert [f["case_id"] for f in failures] == ["noise"]
    reason = failures[0]["reason"]
    assert reason.startswith(f"{data / 'noise_t2.nii.gz'}: rigid registration of sequence t2 "
                             "of case noise to the first sequence failed: the images share no "
                             "structure")
    assert "\n" not in reason
    assert not (out / "noise").exists()


@pytest.mark.slow
def test_the_case_page_shows_the_registration(scored):
    """The case page (served as ``medae view`` serves it) lists the registered sequence."""
    import shutil
    import threading

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no Chromium here (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from medae.report.server import make_server, url_of

    srv = make_server(scored["out"], "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    rec = json.loads((scored["out"] / "moved" / "result.json").read_text())["registered"]["t2"]
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
            page = browser.new_page()
            page.goto(f"{url_of(srv)}view.html?case=moved")
            page.wait_for_function("() => document.querySelector('#facts') && "
                                   "document.querySelector('#facts').textContent"
                                   ".includes('registered')", timeout=60_000)
            facts = page.text_content("#facts")
            browser.close()
    finally:
        srv.shutdown()
        srv.server_close()
    shift = float(np.linalg.norm(rec["shift_mm"]))
    assert (f"t2 registeredrotated {rec['rotation_deg']:.1f}°, moved {shift:.1f} mm (mutual "
            f"information {rec['mutual_information_before']} → {rec['mutual_information']})"
            in facts), facts


def test_simpleitk_steps_run_one_at_a_time_on_the_threads_they_chose():
    """A registration runs on one SimpleITK thread and gives the process's setting back; N4 in
    another thread meanwhile waits for it, so it never runs on a count it did not choose."""
    import threading

    from medae.itk import exclusive

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    seen = []
    with exclusive("test", threads=1) as s:
        assert s.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        other = threading.Thread(target=lambda: seen.append(
            _threads_inside(exclusive)))
        other.start()
        other.join(timeout=0.5)
        assert other.is_alive() and not seen  # waiting for the registration
    other.join(timeout=10)
    assert seen == [before] and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


def _threads_inside(exclusive) -> int:
    with exclusive("test") as s:
        return s.ProcessObject.GetGlobalDefaultNumberOfThreads()
