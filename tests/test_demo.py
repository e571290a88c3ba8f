"""`medae demo` on a smaller, faster configuration: lesions found, healthy subject quiet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_finds_the_synthetic_lesions(demo_run):
    out, summary = demo_run
    assert summary["voxel_ap"] > 0.5
    assert summary["lesions_over_500mm3"] > 0
    assert summary["lesions_over_500mm3_found"] == summary["lesions_over_500mm3"]
    assert summary["healthy_candidates"] <= 3
    assert json.loads((out / "summary.json").read_text()) == summary
    page = (out / "index.html").read_text()
    # the batch report of results/: 3 patients + the held-out healthy subject
    assert page.count('loading="lazy"') == 4 and "Voxel AP" in page
    assert 'href="results/view.html?case=pat-00"' in page
    assert (out / "results" / "view.html").is_file()
    assert (out / "results" / "pat-00" / "anomaly_map.nii.gz").is_file()  # the DICOM patient
    assert (out / "report" / "report.md").is_file()
    again = subprocess.run([sys.executable, "-m", "medae", "demo", "--output", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "already holds a demo run" in again.stderr
