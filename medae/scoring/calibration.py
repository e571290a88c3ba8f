"""Calibrating a model's thresholds on healthy scans, with the scoring pipeline itself.

Each healthy calibration scan is scored exactly as a new scan would be (heat map on its own grid),
so the thresholds apply to what ``medae score`` produces.  With a lesion label beside a scan (the
protocol for modalities without healthy scans), the lesion is left out as training leaves it out:
every axial slice that touches the label (``data.lesion_samples: drop``), or only the label grown
by ``data.lesion_margin_mm`` (``mask``), so the rest of those slices calibrates too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medae.io.discover import ScanSource
from medae.masks import grow_mm
from medae.scoring.heatmap import scan_score
from medae.scoring.scorer import AnomalyModel
from medae.scoring.threshold import HealthyMap, calibrate


def lesion_rule(lesion_margin_mm: float | None) -> str:
    """How calibration leaves labelled lesions out (for the bundle's description)."""
    if lesion_margin_mm is None:
        return "lesion-labelled slices excluded"
    return f"lesion labels grown by {lesion_margin_mm:g} mm excluded"


def healthy_map(model: AnomalyModel, source: ScanSource, parts: Sequence | None = None,
                lesion_margin_mm: float | None = None) -> tuple[HealthyMap, float]:
    """Score one healthy calibration scan; returns its map and its healthy-tissue scan score.

    ``parts`` (cross-fitting): ``(model, fold)`` pairs whose models each did not see this scan,
    or the fold's slabs of it (``fold.scan_slices``); each slice's map comes from the model that
    did not see it.  Without ``parts`` the whole map comes from ``model``.  A lesion label
    beside the scan removes the slices it touches, or with ``lesion_margin_mm`` only the label
    grown by that margin.
    """
    parts = list(parts) if parts else [(model, None)]
    scan, prep = parts[0][0].load(source)  # every fold model shares the preprocessing
    label = source.load_companion("label", scan)
    heat, analysed, covered = None, None, np.zeros(scan.shape[2], bool)
    for scorer, fold in parts:
        m = scorer.scan_map(scan, prep)
        zs = fold.scan_slices(scan.shape, scan.spacing) if fold is not None else None
        zs = np.ones(scan.shape[2], bool) if zs is None else zs
        if heat is None:
            heat, analysed = np.zeros_like(m.heatmap), m.analysed
        heat[:, :, zs] = m.heatmap[:, :, zs]
        covered |= zs
    healthy = analysed.copy()
    healthy[:, :, ~covered] = False
    if label is not None:
        lesion = np.asarray(label) > 0
        if lesion_margin_mm is None:
            healthy[:, :, lesion.any(axis=(0, 1))] = False
        else:
            healthy &= ~grow_mm(lesion, lesion_margin_mm, scan.spacing)
    voxel_mm3 = float(abs(np.linalg.det(scan.affine[:3, :3])))
    score = scan_score(heat, healthy, parts[0][0].map_config.scan_percentile)
    return HealthyMap.crop(heat, healthy, voxel_mm3), score


def calibrate_model(model: AnomalyModel, sources: Sequence[ScanSource], source: str,
                    lesion_margin_mm: float | None = None) -> dict:
    """Thresholds for ``model`` from the healthy scans ``sources`` (see :func:`calibrate`).

    Each scan is read again here (training caches only model-space arrays, to keep memory
    per training scan small); only the cropped healthy maps are kept.
    """
    maps, scores = [], []
    for src in sources:
        hm, score = healthy_map(model, src, lesion_margin_mm=lesion_margin_mm)
        if hm.healthy.any():
            maps.append(hm)
            scores.append(score)
    return calibrate(maps, scores, source, model.map_config.min_volume_mm3,
                     lesion_rule(lesion_margin_mm))


def calibrate_crossfit(scans: Sequence[tuple[ScanSource, list]], source: str,
                       lesion_margin_mm: float | None = None) -> dict:
    """Thresholds from cross-fitted maps: per scan, the ``(model, fold)`` pairs that did not
    see it (see :func:`healthy_map`)."""
    maps, scores = [], []
    for src, parts in scans:
        hm, score = healthy_map(parts[0][0], src, parts, lesion_margin_mm)
        if hm.healthy.any():
            maps.append(hm)
            scores.append(score)
    return calibrate(maps, scores, source, scans[0][1][0][0].map_config.min_volume_mm3,
                     lesion_rule(lesion_margin_mm))
