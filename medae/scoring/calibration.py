"""Calibrating a model's thresholds on healthy scans, with the scoring pipeline itself.

Each healthy calibration scan is scored exactly as a new scan would be (heat map on its own grid),
so the thresholds apply to what ``medae score`` produces.  With a lesion label beside a scan (the
protocol for modalities without healthy scans), every axial slice that touches the label is left
out, as training leaves out those slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medae.io.discover import ScanSource
from medae.scoring.heatmap import scan_score
from medae.scoring.model import AnomalyModel
from medae.scoring.threshold import HealthyMap, calibrate


def healthy_map(model: AnomalyModel, source: ScanSource) -> tuple[HealthyMap, float]:
    """Score one healthy calibration scan; returns its map and its healthy-tissue scan score."""
    scan, prep = model.load(source)
    label = source.load_companion("label", scan)
    m = model.scan_map(scan, prep)
    healthy = m.analysed.copy()
    if label is not None:
        healthy[:, :, (np.asarray(label) > 0).any(axis=(0, 1))] = False
    voxel_mm3 = float(abs(np.linalg.det(scan.affine[:3, :3])))
    score = scan_score(m.heatmap, healthy, model.map_config.scan_percentile)
    return HealthyMap.crop(m.heatmap, healthy, voxel_mm3), score


def calibrate_model(model: AnomalyModel, sources: Sequence[ScanSource], source: str) -> dict:
    """Thresholds for ``model`` from the healthy scans ``sources`` (see :func:`calibrate`).

    Each scan is read again here (training caches only model-space arrays, to keep memory
    per training scan small); only the cropped healthy maps are kept.
    """
    maps, scores = [], []
    for src in sources:
        hm, score = healthy_map(model, src)
        if hm.healthy.any():
            maps.append(hm)
            scores.append(score)
    return calibrate(maps, scores, source, model.map_config.min_volume_mm3)
