#!/usr/bin/env python
"""Where a model's map puts each patient's healthy tissue and lesions.

    python scripts/explore_levels.py RUN [RUN ...]      # benchmark run folders

For each RUN (a model of ``scripts/benchmark_brain.py``) and each patient of its fold (its
``train.csv`` and ``test.csv``: the patients it was trained on, its held-out calibration
patient and its test patient), the map's median, 90th and 99th percentile over the analysed
lesion-free voxels and its median over the lesion voxels, in the map's units.  A patient whose
healthy percentiles sit far below the others' (a model that reconstructs him brighter than he
is) cannot share their threshold, whatever the units (issue 26: MS patient19).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medae import load_scan  # noqa: E402
from medae.io.discover import read_manifest  # noqa: E402
from medae.scoring.scorer import load_model  # noqa: E402


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]]
    if not runs or any(a.startswith("-") for a in sys.argv[1:]):
        raise SystemExit(__doc__)
    for run in runs:
        model = load_model(run, device="cpu")
        sources = {s.case_id: s for name in ("train.csv", "test.csv")
                   for s in read_manifest(run.parent / name)}
        print(f"{run.parent.name}/{run.name}", flush=True)
        for case, src in sources.items():
            scan, prep = model.load(src)
            m = model.scan_map(scan, prep)
            lesion = load_scan(src.label).array > 0
            healthy = m.heatmap[m.analysed & ~lesion]
            q50, q90, q99 = np.percentile(healthy, (50, 90, 99))
            les = m.heatmap[m.analysed & lesion]
            print(f"  {case}: healthy median {q50:.3f}, 90th {q90:.3f}, 99th {q99:.3f}; lesion "
                  f"median {np.median(les) if les.size else float('nan'):.3f}", flush=True)


if __name__ == "__main__":
    main()
