"""Issue 29 (Reliability III): shards sharing one output folder, the viewer's last ways out,
bundles and checkpoints as hostile input, and one-line errors where tracebacks were."""

from __future__ import annotations

import random
import shutil
import threading

import pytest
from conftest import PHANTOM_SHAPE, write_phantoms
from test_hostile import intensity_model  # noqa: F401  (a fixture)
from test_reliability import _rows

import medae
from medae.batch import score_sources
from medae.evaluation.evaluate import evaluate

N_CASES = 6
CASE_FILES = {"anomaly_map.nii.gz", "candidates.nii.gz", "brain_mask.nii.gz", "candidates.csv",
              "result.json", "image.nii.gz"}


@pytest.fixture(scope="module")
def lesion_cases(tmp_path_factory):
    """Six small phantoms with lesions (``in/``) and their labels named by case id
    (``labels/``)."""
    root = tmp_path_factory.mktemp("shards")
    write_phantoms(root / "in", N_CASES, shape=PHANTOM_SHAPE, seed=29, lesion=True)
    (root / "labels").mkdir()
    for label in sorted((root / "in").glob("*_label.nii.gz")):
        shutil.move(label, root / "labels" / label.name.replace("_label", ""))
    return root / "in", root / "labels"


# ------------------------------------------------------------------------------------------------
# 1. shards sharing one output folder

def test_concurrent_shards_on_one_output_folder(intensity_model, lesion_cases,  # noqa: F811
                                                tmp_path):
    """Two to four shards started at random offsets on one OUT, 20 times: every case folder
    whole, scores.csv complete, no failure, nothing left behind, evaluate reads it."""
    inp, labels = lesion_cases
    model = medae.load_model(intensity_model, device="cpu")
    sources = medae.discover(inp)
    assert len(sources) == N_CASES
    rng = random.Random(29)
    expected = sorted(s.case_id for s in sources)
    for trial in range(20):
        out = tmp_path / f"out{trial}"
        count = 2 + trial % 3
        results, errors = {}, []

        def shard(i, delay, out=out, count=count, results=results, errors=errors):
            threading.Event().wait(delay)
            try:
                results[i] = score_sources(model, sources, out, shard=(i, count),
                                           progress=False, overlays=False, workers=1)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=shard, args=(i, rng.uniform(0, 0.15)))
                   for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, (trial, errors)
        assert sum(r.scored for r in results.values()) == N_CASES, (trial, results)
        assert sum(r.failed for r in results.values()) == 0, (trial, results)
        rows = _rows(out / "scores.csv")
        assert [r["case_id"] for r in rows] == expected, trial
        assert {r["status"] for r in rows} == {"ok"}, (trial, rows)
        for case in expected:
            names = {p.name for p in (out / case).iterdir()}
            assert names >= CASE_FILES, (trial, case, names)
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".failed"]
        assert not list((out / ".failed").iterdir())
    metrics = evaluate(out, labels)
    assert metrics["n_scans"] == N_CASES
