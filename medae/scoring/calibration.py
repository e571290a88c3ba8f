"""Calibrating a model's thresholds on its calibration scans, with the scoring pipeline itself.

Each calibration scan is scored exactly as a new scan would be (heat map on its own grid), so the
thresholds apply to what ``medae score`` produces.  With a lesion label beside a scan (the
protocol for modalities without healthy scans), the voxel rules leave the lesion out as training
leaves it out: every axial slice that touches the label (``data.lesion_samples: drop``), or only
the label grown by ``data.lesion_margin_mm`` (``mask``); and the default operating point uses
the labels themselves (see :mod:`medae.scoring.threshold`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from medae.io.discover import ScanSource
from medae.masks import grow_mm
from medae.scoring.heatmap import scan_score
from medae.scoring.scorer import AnomalyModel
from medae.scoring.threshold import HealthyMap, LabelledMap, calibrate

log = logging.getLogger("medae")


def lesion_rule(lesion_margin_mm: float | None) -> str:
    """How calibration leaves labelled lesions out (for the bundle's description)."""
    if lesion_margin_mm is None:
        return "lesion-labelled slices excluded"
    return f"lesion labels grown by {lesion_margin_mm:g} mm excluded"


def healthy_map(model: AnomalyModel, source: ScanSource, parts: Sequence | None = None,
                lesion_margin_mm: float | None = None
                ) -> tuple[HealthyMap, float, LabelledMap | None]:
    """Score one calibration scan; returns its healthy map, its healthy-tissue scan score and,
    when the scan has a lesion label, its whole map with the label (else None).

    ``parts`` (cross-fitting): ``(model, fold)`` pairs whose models each did not see this scan,
    or the fold's slabs of it (``fold.scan_slices``); each slice's map comes from the model that
    did not see it.  Without ``parts`` the whole map comes from ``model``.  A lesion label
    beside the scan removes the slices it touches, or with ``lesion_margin_mm`` only the label
    grown by that margin.
    """
    parts = list(parts) if parts else [(model, None)]
    scan, prep = parts[0][0].load(source)  # every fold model shares the preprocessing
    label = source.load_companion("label", scan)
    heat, analysed, brain = None, None, None
    covered = np.zeros(scan.shape[2], bool)
    for scorer, fold in parts:
        m = scorer.scan_map(scan, prep)
        zs = fold.scan_slices(scan.shape, scan.spacing) if fold is not None else None
        zs = np.ones(scan.shape[2], bool) if zs is None else zs
        if heat is None:
            heat, analysed, brain = np.zeros_like(m.heatmap), m.analysed, m.brain_mask
        heat[:, :, zs] = m.heatmap[:, :, zs]
        covered |= zs
    healthy = analysed.copy()
    healthy[:, :, ~covered] = False
    voxel_mm3 = float(abs(np.linalg.det(scan.affine[:3, :3])))
    labelled = None
    if label is not None:
        lesion = np.asarray(label) > 0
        inside = brain.copy()
        inside[:, :, ~covered] = False
        # ``healthy`` is still the whole analysed region the models saw (crop copies it)
        labelled = LabelledMap.crop(heat, healthy, inside, lesion, voxel_mm3)
        if lesion_margin_mm is None:
            healthy[:, :, lesion.any(axis=(0, 1))] = False
        else:
            healthy &= ~grow_mm(lesion, lesion_margin_mm, scan.spacing)
    score = scan_score(heat, healthy, parts[0][0].map_config.scan_percentile)
    return HealthyMap.crop(heat, healthy, voxel_mm3), score, labelled


def report_calibration(calibration: dict | None) -> None:
    """The operating point in the log, and every calibration warning as one line."""
    if not calibration:
        return
    if calibration.get("default_threshold") is not None:
        log.info("operating point %s: threshold %.4g, %s", calibration["default"],
                 calibration["default_threshold"], calibration.get("default_rule", ""))
    for warning in calibration.get("warnings", []):
        log.warning("calibration: %s", warning)


def _calibrate(model: AnomalyModel, scored: list, source: str,
               lesion_margin_mm: float | None) -> dict:
    """Thresholds from ``scored`` (per scan, :func:`healthy_map`'s result).  When any
    calibration scan has a lesion label, every scan enters the labelled rules (one without a
    label as lesion-free)."""
    maps, scores, labelled = [], [], []
    any_label = any(lm is not None for _, _, lm in scored)
    for hm, score, lm in scored:
        if hm.healthy.any():
            maps.append(hm)
            scores.append(score)
        if any_label:
            labelled.append(lm if lm is not None else
                            LabelledMap(hm.heat, np.zeros(hm.heat.shape, bool), hm.voxel_mm3))
    cfg = model.map_config
    return calibrate(maps, scores, source, cfg.min_volume_mm3, lesion_rule(lesion_margin_mm),
                     labelled=labelled or None, operating_point=cfg.operating_point,
                     froc_fp=cfg.froc_fp)


def calibrate_model(model: AnomalyModel, sources: Sequence[ScanSource], source: str,
                    lesion_margin_mm: float | None = None) -> dict:
    """Thresholds for ``model`` from the healthy scans ``sources`` (see :func:`calibrate`).

    Each scan is read again here (training caches only model-space arrays, to keep memory
    per training scan small); only the cropped healthy maps are kept.
    """
    scored = [healthy_map(model, src, lesion_margin_mm=lesion_margin_mm) for src in sources]
    return _calibrate(model, scored, source, lesion_margin_mm)


def calibrate_crossfit(scans: Sequence[tuple[ScanSource, list]], source: str,
                       lesion_margin_mm: float | None = None) -> dict:
    """Thresholds from cross-fitted maps: per scan, the ``(model, fold)`` pairs that did not
    see it (see :func:`healthy_map`)."""
    scored = [healthy_map(parts[0][0], src, parts, lesion_margin_mm) for src, parts in scans]
    return _calibrate(scans[0][1][0][0], scored, source, lesion_margin_mm)
