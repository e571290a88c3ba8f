"""Datasets as researchers keep them (issue 28): BIDS, BraTS (2021 and 2023 naming), the
Decathlon and nnU-Net v2 give the same cases, sequences, labels and maps as a manifest."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, shared
from layouts_data import (
    AFFINE,
    SEQS,
    make_cases,
    save,
    write_bids,
    write_brats,
    write_decathlon,
    write_manifest,
    write_nnunet,
)

from medae import MedaeError
from medae.cli import main
from medae.io.discover import discover_dataset, read_manifest
from medae.io.layouts import LayoutOptions, parse_bids_filters
from medae.io.nifti import read_nifti

LESIONS = LayoutOptions(derivatives="lesions")
WRITERS = {
    "BIDS": write_bids,
    "BraTS2021": lambda root, cases: write_brats(root, cases, 2021),
    "BraTS2023": lambda root, cases: write_brats(root, cases, 2023),
    "Decathlon": write_decathlon,
    "nnU-Net": write_nnunet,
}
LAYOUT_NAMES = {"BIDS": "BIDS", "BraTS2021": "BraTS", "BraTS2023": "BraTS",
                "Decathlon": "Decathlon", "nnU-Net": "nnU-Net v2"}


def _ids(layout: str, case: str) -> str:
    return f"sub-{case}" if layout == "BIDS" else case


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The same five cases as a manifest (with and without brain masks) and in every layout."""
    root = tmp_path_factory.mktemp("layouts")
    cases = make_cases()
    out = {"cases": cases, "manifest": write_manifest(root / "manifest", cases),
           "nomask": write_manifest(root / "nomask", cases, with_mask=False)}
    for name, write in WRITERS.items():
        out[name] = write(root / name, cases)
    return out


def _read(source, what):
    return np.asarray(nib.load(getattr(source, what)).dataobj)


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_layout_finds_the_manifest_cases(layout, datasets):
    found = discover_dataset(datasets[layout], LESIONS if layout == "BIDS" else None)
    assert found.layout.name == LAYOUT_NAMES[layout] and found.notes == []
    manifest = {s.case_id: s for s in read_manifest(datasets["manifest"])}
    by_id = {s.case_id: s for s in found.sources}
    assert sorted(by_id) == sorted(_ids(layout, c) for c in manifest)
    for case, want in manifest.items():
        got = by_id[_ids(layout, case)]
        # the recipes' names, in the manifest's column order (the first fixes the grid)
        assert got.sequence_names == want.sequence_names == SEQS
        assert got.layout == LAYOUT_NAMES[layout] and got.problem is None
        scan, ref = got.load(), want.load()
        assert scan.shape == ref.shape and np.array_equal(scan.affine, ref.affine)
        for name, arr in got.load_sequences(scan).items():
            np.testing.assert_array_equal(arr, want.load_sequences(ref)[name])
        np.testing.assert_array_equal(_read(got, "label"), _read(want, "label"))
        assert (got.mask is not None) == (layout == "BIDS")  # masks: BIDS derivatives only
        if got.mask is not None:
            np.testing.assert_array_equal(_read(got, "mask"), _read(want, "mask"))
    assert by_id[_ids(layout, "c02")].load_companion(
        "label", by_id[_ids(layout, "c02")].load()).sum() > 0


def test_decathlon_channels_are_volumes_on_the_same_grid(datasets, tmp_path):
    """A 4D image's channels read one at a time, each on the file's grid (its header 3D)."""
    path = datasets["Decathlon"] / "imagesTr" / "c00.nii.gz"
    for k, seq in enumerate(SEQS):
        scan = read_nifti(path, volume=k)
        assert scan.shape == (14, 16, 12) and np.array_equal(scan.affine, AFFINE)
        assert scan.grid.header.get_data_shape() == (14, 16, 12) and scan.meta["volume"] == k
        np.testing.assert_array_equal(scan.array, datasets["cases"]["c00"][seq])
    with pytest.raises(MedaeError, match=r"c00.nii.gz: has no volume 4 \(shape 14x16x12x4\)"):
        read_nifti(path, volume=4)
    raw = tmp_path / "c00.nii"  # uncompressed: the same values
    nib.save(nib.load(path), raw)
    np.testing.assert_array_equal(read_nifti(raw, volume=3).array,
                                  datasets["cases"]["c00"]["t2"])


def test_info_names_the_layout_and_each_case(datasets, capsys):
    assert main(["info", str(datasets["BIDS"]), "--derivatives", "lesions"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "layout: BIDS (dataset_description.json), 5 cases"
    assert lines[1].split("\t") == [
        "sub-c00", "nifti", "14x16x12", "2x2x2 mm", "RAS", "sequences flair,t1,t1c,t2",
        "mask derivatives/lesions/sub-c00/anat/sub-c00_space-orig_desc-brain_mask.nii.gz",
        "label derivatives/lesions/sub-c00/anat/sub-c00_space-orig_desc-lesion_mask.nii.gz"]
    assert main(["info", str(datasets["BraTS2023"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("layout: BraTS (case folders of <case>-t2f/-t1n/-t1c/-t2w/-seg files), "
                        "5 cases")
    assert lines[3].split("\t")[5:] == ["sequences flair,t1,t1c,t2", "mask -",
                                        "label c02/c02-seg.nii.gz"]
    assert main(["info", str(datasets["Decathlon"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "layout: Decathlon (dataset.json with modality), 5 cases"
    assert lines[1].endswith("sequences flair,t1,t1c,t2\tmask -\tlabel labelsTr/c00.nii.gz")


# --- BIDS ---------------------------------------------------------------------------------

@pytest.fixture
def bids(tmp_path):
    """Sessions, runs, a missing sequence, a label without a scan, a scan without a label, an
    unknown suffix, a functional run, and derivatives that must not be scanned as scans."""
    cases = make_cases(3)
    root = tmp_path / "bids"
    (root / "derivatives" / "lesions").mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    (root / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t34\tF\n")
    a, b, c = cases["c00"], cases["c01"], cases["c02"]
    d = root / "derivatives" / "lesions"
    for ses in ("01", "02"):  # sub-01: two sessions
        anat = root / "sub-01" / f"ses-{ses}" / "anat"
        save(anat / f"sub-01_ses-{ses}_FLAIR.nii.gz", a["flair"])
        save(anat / f"sub-01_ses-{ses}_T1w.nii.gz", a["t1"])
        save(d / "sub-01" / f"ses-{ses}" / "anat" / f"sub-01_ses-{ses}_desc-lesion_mask.nii.gz",
             a["label"])
    anat = root / "sub-02" / "anat"  # two runs of T1w, a contrast T1w, an unknown suffix
    save(anat / "sub-02_FLAIR.nii.gz", b["flair"])
    save(anat / "sub-02_run-1_T1w.nii.gz", b["t2"])
    save(anat / "sub-02_run-2_T1w.nii.gz", b["t1"])
    save(anat / "sub-02_ce-gd_T1w.nii.gz", b["t1c"])
    save(anat / "sub-02_T1map.nii.gz", b["t1"])
    (anat / "sub-02_FLAIR.json").write_text("{}")
    save(root / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz", b["t2"])
    save(root / "sub-03" / "anat" / "sub-03_T2w.nii.gz", c["t2"])  # no FLAIR, no label
    save(d / "sub-02" / "anat" / "sub-02_desc-lesion_mask.nii.gz", b["label"])
    save(d / "sub-02" / "anat" / "sub-02_desc-brain_mask.nii.gz", b["mask"])
    save(d / "sub-04" / "anat" / "sub-04_desc-lesion_mask.nii.gz", c["label"])  # no scan
    save(root / "sourcedata" / "sub-01_FLAIR.nii.gz", a["flair"])
    save(root / "code" / "x.nii.gz", a["flair"])
    return root


def test_bids_sessions_runs_and_derivatives(bids):
    found = discover_dataset(bids, LESIONS)
    by_id = {s.case_id: s for s in found.sources}
    assert sorted(by_id) == ["sub-01_ses-01", "sub-01_ses-02", "sub-02", "sub-03"]
    ses = by_id["sub-01_ses-02"]
    assert ses.sequence_names == ("flair", "t1") and ses.mask is None
    assert ses.label == (bids / "derivatives/lesions/sub-01/ses-02/anat/"
                         "sub-01_ses-02_desc-lesion_mask.nii.gz")
    assert ses.path == bids / "sub-01/ses-02/anat/sub-01_ses-02_FLAIR.nii.gz"
    # a missing sequence and a missing label: the case has what it has
    assert by_id["sub-03"].sequence_names == ("t2",) and by_id["sub-03"].label is None
    # two runs of T1w: the case fails in one line naming both, the others go on
    two = by_id["sub-02"]
    assert two.sequence_names == ("flair", "t1", "t1c")
    assert two.mask == bids / "derivatives/lesions/sub-02/anat/sub-02_desc-brain_mask.nii.gz"
    assert two.problem == ("case sub-02: several scans for sequence t1 "
                           "(sub-02/anat/sub-02_run-1_T1w.nii.gz, sub-02/anat/"
                           "sub-02_run-2_T1w.nii.gz): pick one with --bids, e.g. "
                           "--bids \"run=2\"")
    with pytest.raises(MedaeError, match="several scans for sequence t1"):
        two.load()
    notes = "\n".join(found.notes)
    assert "sub-02_T1map.nii.gz: skipped, BIDS suffix T1map is not a sequence medae knows" in notes
    assert "sub-02/func: skipped, BIDS datatype func (medae reads anat)" in notes
    assert "sub-04_desc-lesion_mask.nii.gz: skipped, a label or mask without a scan" in notes
    # nothing from derivatives, sourcedata or code is a scan; participants.tsv is not read
    everything = [str(p) for s in found.sources for p in (s.path, *[q.path for q in s.sequences])]
    assert not any(part in p for p in everything for part in ("derivatives", "sourcedata",
                                                              "code"))
    assert "participants" not in notes and len(found.notes) == 3


def test_info_lists_a_failing_case_and_the_notes(bids, capsys):
    assert main(["info", str(bids), "--derivatives", "lesions"]) == 1  # sub-02 has two runs
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == "layout: BIDS (dataset_description.json), 4 cases"
    failed = [line.split("\t") for line in out if "\tFAILED\t" in line]
    assert [f[0] for f in failed] == ["sub-02"]
    assert failed[0][3].endswith("several scans for sequence t1 (sub-02/anat/sub-02_run-1_T1w"
                                 ".nii.gz, sub-02/anat/sub-02_run-2_T1w.nii.gz): pick one with "
                                 "--bids, e.g. --bids \"run=2\"")
    assert failed[0][4:] == ["mask derivatives/lesions/sub-02/anat/sub-02_desc-brain_mask.nii.gz",
                             "label derivatives/lesions/sub-02/anat/sub-02_desc-lesion_mask.nii.gz"]
    assert "note: skipped " in captured.err and "BIDS suffix T1map" in captured.err
    assert main(["info", str(bids), "--derivatives", "lesions", "--bids", "run=2"]) == 0
    assert "FAILED" not in capsys.readouterr().out


def test_bids_filters_pick_a_run(bids):
    found = discover_dataset(bids, LayoutOptions(parse_bids_filters("run=2"), "lesions"))
    two = {s.case_id: s for s in found.sources}["sub-02"]
    assert two.problem is None and two.sequence_names == ("flair", "t1", "t1c")
    t1 = dict((q.name, q.path) for q in two.sequences)["t1"]
    assert t1.name == "sub-02_run-2_T1w.nii.gz"  # FLAIR, scanned once, stays
    scan = two.load()
    np.testing.assert_array_equal(two.load_sequences(scan)["t1"], make_cases(3)["c01"]["t1"])
    # suffix keeps sequences; ses picks sessions; none picks the scans without the entity
    only = discover_dataset(bids, LayoutOptions(parse_bids_filters("suffix=FLAIR ses=02")))
    assert [(s.case_id, s.sequence_names) for s in only.sources] == [
        ("sub-01_ses-02", ("flair",)), ("sub-02", ("flair",))]
    plain = discover_dataset(bids, LayoutOptions(parse_bids_filters("run=none")))
    assert {s.case_id: s for s in plain.sources}["sub-02"].sequence_names == ("flair", "t1c")


@pytest.mark.parametrize("text, reason", [
    ("run", r"'run' is not entity=value"),
    ("run=1 run=2", "run is given twice"),
    ("acq=a b", r"'b' is not entity=value"),
    ("run=1;rm", "is not entity=value"),
])
def test_bids_filter_errors(text, reason):
    with pytest.raises(MedaeError, match=reason):
        parse_bids_filters(text)


def test_bad_dataset_files_are_one_line(tmp_path, capsys):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text("{not json")
    assert main(["info", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medae: error: ") and "dataset_description.json: not valid JSON" in err
    assert "\n" not in err
    (root / "dataset_description.json").write_text("[]")
    assert main(["info", str(root)]) == 1
    assert "dataset_description.json: not a JSON object" in capsys.readouterr().err
    (root / "dataset_description.json").write_text("{}")
    assert main(["info", str(root), "--derivatives", "nope"]) == 1
    assert "nope: --derivatives: no folder derivatives/nope" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["info", str(tmp_path / "plain"), "--bids", "run=2"]) == 1
    assert "plain: --bids and --derivatives apply to a BIDS dataset" in capsys.readouterr().err
    nn = tmp_path / "nn"
    (nn / "imagesTr").mkdir(parents=True)
    for body, reason in [
        ('{"channel_names": {"0": "FLAIR"}, "file_ending": ".png"}',
         "dataset.json: file_ending '.png': medae reads NIfTI"),
        ('{"channel_names": ["FLAIR"], "file_ending": ".nii.gz"}',
         "dataset.json: channel_names must be an object"),
        ('{"channel_names": {"0": "T1", "1": "T1w"}, "file_ending": ".nii.gz"}',
         "dataset.json: channel_names: two channels are t1"),
        ('{"name": "x"}', "dataset.json: neither channel_names"),
        ('{"modality": {"0": "FLAIR"', "dataset.json: not valid JSON"),
    ]:
        (nn / "dataset.json").write_text(body)
        assert main(["info", str(nn)]) == 1
        err = capsys.readouterr().err
        assert reason in err and err.count("\n") == 1, err


# --- BraTS --------------------------------------------------------------------------------

def test_brats_segmentation_is_the_label_never_a_scan(tmp_path):
    cases = make_cases(3)
    root = write_brats(tmp_path / "brats", {"BraTS2021_00001": cases["c00"]})
    a = root / "BraTS2021_00001"
    save(a / "BraTS2021_00001_t1ce_reg.nii.gz", cases["c00"]["t1"])  # unknown suffix
    b = root / "BraTS2021_00002"  # missing t2 and no label
    for suffix, seq in (("flair", "flair"), ("t1", "t1"), ("t1ce", "t1c")):
        save(b / f"BraTS2021_00002_{suffix}.nii.gz", cases["c01"][seq])
    save(root / "BraTS2021_00003" / "BraTS2021_00003_seg.nii.gz", cases["c02"]["label"])
    (root / "name_mapping.csv").write_text("a,b\n")
    save(root / "extra" / "scan.nii.gz", cases["c00"]["t1"])  # not BraTS: found as before
    found = discover_dataset(root)
    assert found.layout.name == "BraTS"
    by_id = {s.case_id: s for s in found.sources}
    # ids: the folder names; a scan outside the case folders is found as in any folder
    assert sorted(by_id) == ["BraTS2021_00001", "BraTS2021_00002", "extra_scan"]
    assert by_id["extra_scan"].layout is None and by_id["extra_scan"].name == "image"
    one = by_id["BraTS2021_00001"]
    assert one.sequence_names == ("flair", "t1", "t1c", "t2")
    assert one.label == a / "BraTS2021_00001_seg.nii.gz"
    assert all("seg" not in p.name for p in (one.path, *[q.path for q in one.sequences]))
    assert by_id["BraTS2021_00002"].sequence_names == ("flair", "t1", "t1c")
    assert by_id["BraTS2021_00002"].label is None
    notes = "\n".join(found.notes)
    assert ("BraTS2021_00001_t1ce_reg.nii.gz: skipped, BraTS suffix t1ce_reg is not a sequence "
            "medae knows") in notes
    assert "BraTS2021_00003_seg.nii.gz: skipped, a label without a scan" in notes
    assert "name_mapping.csv: skipped, not a DICOM file" in notes


def test_brats2023_names(datasets):
    found = discover_dataset(datasets["BraTS2023"])
    c = {s.case_id: s for s in found.sources}["c00"]
    assert [p.name for p in (c.path, *[q.path for q in c.sequences])] == [
        "c00-t2f.nii.gz", "c00-t1n.nii.gz", "c00-t1c.nii.gz", "c00-t2w.nii.gz"]
    assert c.label.name == "c00-seg.nii.gz"


def test_plain_and_nnunet_folders_are_unchanged(tmp_path):
    """Without a marker file or BraTS-named case folders, discovery is what it was."""
    cases = make_cases(1)
    save(tmp_path / "p1" / "scan_flair.nii.gz", cases["c00"]["flair"])  # not named after p1
    save(tmp_path / "caseA_0000.nii.gz", cases["c00"]["flair"])
    save(tmp_path / "caseA_0001.nii.gz", cases["c00"]["t1"])
    found = discover_dataset(tmp_path)
    assert found.layout is None
    assert [(s.case_id, s.sequence_names) for s in found.sources] == [
        ("caseA", ("0000", "0001")), ("p1_scan_flair", ("image",))]


# --- the Decathlon and nnU-Net v2 ---------------------------------------------------------

def test_decathlon_and_nnunet_edge_cases(tmp_path):
    cases = make_cases(3)
    msd = write_decathlon(tmp_path / "msd", {"c00": cases["c00"], "c01": cases["c01"]})
    spec = json.loads((msd / "dataset.json").read_text())
    spec["modality"]["3"] = "DWI"  # unknown: skipped with a note, never guessed
    (msd / "dataset.json").write_text(json.dumps(spec))
    save(msd / "imagesTs" / "c02.nii.gz", np.stack([cases["c02"][s] for s in SEQS], -1))
    save(msd / "imagesTs" / "c03.nii.gz", np.stack([cases["c02"][s] for s in SEQS[:2]], -1))
    save(msd / "labelsTr" / "c09.nii.gz", cases["c02"]["label"])
    (msd / "imagesTr" / "._c00.nii.gz").write_bytes(b"\0" * 10)  # macOS debris: hidden
    found = discover_dataset(msd)
    by_id = {s.case_id: s for s in found.sources}
    assert sorted(by_id) == ["c00", "c01", "c02", "c03"]
    assert by_id["c00"].sequence_names == ("flair", "t1", "t1c")
    assert [by_id["c00"].volume, *[q.volume for q in by_id["c00"].sequences]] == [0, 1, 2]
    assert by_id["c02"].label is None and by_id["c02"].problem is None  # a test scan
    assert by_id["c03"].problem == ("imagesTs/c03.nii.gz holds 2 volume(s), dataset.json names "
                                    "4 channel(s)")
    notes = "\n".join(found.notes)
    assert "channel 3 ('DWI') skipped, not a sequence medae knows" in notes
    assert "labelsTr/c09.nii.gz: skipped, a label without a scan" in notes
    nn = write_nnunet(tmp_path / "nn", {"c00": cases["c00"]})
    (nn / "imagesTr" / "c01_0000.nii.gz").write_bytes(
        (nn / "imagesTr" / "c00_0000.nii.gz").read_bytes())  # a case with one channel only
    save(nn / "imagesTr" / "c00_0004.nii.gz", cases["c00"]["t1"])
    save(nn / "imagesTr" / "stray.nii.gz", cases["c00"]["t1"])
    found = discover_dataset(nn)
    by_id = {s.case_id: s for s in found.sources}
    assert by_id["c00"].sequence_names == SEQS and by_id["c01"].sequence_names == ("flair",)
    assert by_id["c01"].label is None
    notes = "\n".join(found.notes)
    assert "c00_0004.nii.gz: skipped, dataset.json names no channel 4" in notes
    assert "stray.nii.gz: skipped, not named CASE_XXXX.nii.gz (nnU-Net v2)" in notes


# --- end to end: the same maps and metrics as with a manifest -----------------------------

TINY = ["preprocess.spacing=[2, 2, 2]", "preprocess.size=[16, 16, 16]", "train.batch_size=8",
        "train.epochs=1", "data.augment={}", "scoring.median_mm=0", "scoring.erode_mm=0",
        "preprocess.inputs=[flair, t1c]", "preprocess.percentiles=[0.5, 95]"]


def test_train_score_evaluate_without_a_manifest(datasets, tmp_path, capsys):
    sets = [a for s in TINY for a in ("--set", s)]
    recipe = str(ROOT / "configs" / "intensity.yaml")
    assert main(["train", "--config", recipe, "--data", str(datasets["nnU-Net"]), "--output",
                 str(tmp_path / "run"), "-q", *sets]) == 0
    assert main(["train", "--config", recipe, "--data", str(datasets["nomask"]), "--output",
                 str(tmp_path / "run_m"), "-q", *sets]) == 0
    a = json.loads((tmp_path / "run" / "model.json").read_text())
    b = json.loads((tmp_path / "run_m" / "model.json").read_text())
    assert a["intensity"] == b["intensity"] and a["calibration"] == b["calibration"]

    def score(data, out, *extra):
        assert main(["score", "--model", str(tmp_path / "run"), "--input", str(data),
                     "--output", str(tmp_path / out), "--no-overlays", "--no-image", "-q",
                     "--threshold", "1.0", *extra]) == 0
        return tmp_path / out

    runs = {"manifest": score(datasets["manifest"], "m"),
            "nomask": score(datasets["nomask"], "n")}
    for layout in WRITERS:
        extra = ["--derivatives", "lesions"] if layout == "BIDS" else []
        runs[layout] = score(datasets[layout], layout, *extra)
    capsys.readouterr()
    for layout in WRITERS:
        ref = runs["manifest" if layout == "BIDS" else "nomask"]  # BIDS brings brain masks
        for case in datasets["cases"]:
            got = runs[layout] / _ids(layout, case) / "anomaly_map.nii.gz"
            want = ref / case / "anomaly_map.nii.gz"
            np.testing.assert_array_equal(np.asarray(nib.load(got).dataobj),
                                          np.asarray(nib.load(want).dataobj))
            assert np.array_equal(nib.load(got).affine, nib.load(want).affine)
    heat = np.asarray(nib.load(runs["BraTS2021"] / "c02" / "anomaly_map.nii.gz").dataobj)
    lesion = datasets["cases"]["c02"]["label"] > 0
    assert heat[lesion].min() > 1.0 > np.median(heat[~lesion])  # the lesion is what is found

    def evaluate(pred, labels, *extra):
        assert main(["evaluate", "--predictions", str(pred), "--labels", str(labels),
                     "--output", str(tmp_path / f"ev_{pred.name}"), *extra]) == 0
        return json.loads((tmp_path / f"ev_{pred.name}" / "metrics.json").read_text())

    want = evaluate(runs["nomask"], datasets["nomask"])
    assert want["voxel"]["average_precision"] > 0.5
    for layout in ("BraTS2021", "BraTS2023", "Decathlon", "nnU-Net"):
        got = evaluate(runs[layout], datasets[layout])  # labels found without a manifest
        assert got["voxel"] == want["voxel"] and got["lesions"] == want["lesions"]
    got = evaluate(runs["BIDS"], datasets["BIDS"], "--derivatives", "lesions")
    assert got["voxel"] == evaluate(runs["manifest"], datasets["manifest"])["voxel"]


# --- the shared BraTS scans, arranged as BraTS and BIDS by symbolic links -----------------

def test_shared_brats_scans_as_brats_and_bids(tmp_path, capsys):
    src = shared("brain", "brats2013")
    patients = ["pat0001", "pat0002"]
    brats, bids = tmp_path / "brats", tmp_path / "bids"
    lines = ["case_id,flair,t1c,mask,label"]
    for p in patients:
        files = {k: src / p / f for k, f in (
            ("flair", "Flair_subtrMeanDivStd.nii.gz"), ("t1c", "T1c_subtrMeanDivStd.nii.gz"),
            ("mask", "brainmask.nii.gz"), ("label", "OTMultiClass.nii.gz"))}
        lines.append(",".join([p, *(str(files[k]) for k in ("flair", "t1c", "mask", "label"))]))
        (brats / p).mkdir(parents=True)
        for k, suffix in (("flair", "flair"), ("t1c", "t1ce"), ("label", "seg")):
            os.symlink(files[k], brats / p / f"{p}_{suffix}.nii.gz")
        anat = bids / f"sub-{p}" / "anat"
        deriv = bids / "derivatives" / "expert" / f"sub-{p}" / "anat"
        anat.mkdir(parents=True)
        deriv.mkdir(parents=True)
        os.symlink(files["flair"], anat / f"sub-{p}_FLAIR.nii.gz")
        os.symlink(files["t1c"], anat / f"sub-{p}_ce-gd_T1w.nii.gz")
        os.symlink(files["label"], deriv / f"sub-{p}_desc-lesion_mask.nii.gz")
        os.symlink(files["mask"], deriv / f"sub-{p}_desc-brain_mask.nii.gz")
    (bids / "dataset_description.json").write_text('{"Name": "brats", "BIDSVersion": "1.9.0"}')
    (tmp_path / "cases.csv").write_text("\n".join(lines) + "\n")
    manifest = read_manifest(tmp_path / "cases.csv")
    for root, options, prefix in ((brats, None, ""), (bids, LayoutOptions(derivatives="expert"),
                                                       "sub-")):
        found = discover_dataset(root, options)
        assert [s.case_id for s in found.sources] == [prefix + p for p in patients]
        for got, want in zip(found.sources, manifest, strict=True):
            assert got.sequence_names == want.sequence_names == ("flair", "t1c")
            paths = [got.path, *[q.path for q in got.sequences], got.label]
            assert [p.resolve() for p in paths] == [
                want.path, *[q.path for q in want.sequences], want.label]
            assert (got.mask is None) == (root == brats)
    assert main(["info", str(bids), "--derivatives", "expert"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "layout: BIDS (dataset_description.json), 2 cases"
    assert out[1].split("\t")[:6] == ["sub-pat0001", "nifti", "240x240x155", "1x1x1 mm",
                                      "LPS", "sequences flair,t1c"]
