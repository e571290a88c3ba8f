"""Thresholds that need no lesion labels: quantiles of healthy validation scores."""

from __future__ import annotations

import numpy as np

from medae.errors import MedaeError

FPRS = (0.01, 0.05, 0.1)
SCAN_PERCENTILE = 95.0
_CURVE = np.geomspace(1e-4, 0.5, 61)


def calibrate(healthy_values: list[np.ndarray], scan_scores: list[float], source: str) -> dict:
    """Voxel thresholds for target false-positive rates and a scan-level threshold.

    Args:
        healthy_values: per scan, the map's values at healthy brain voxels (model space).
        scan_scores: per scan, its scan-level score computed on healthy tissue.
        source: where the healthy data came from (``"validation"`` or ``"training"``).
    """
    if not healthy_values or sum(v.size for v in healthy_values) == 0:
        raise MedaeError("calibration: no healthy voxels to calibrate thresholds on")
    pooled = np.concatenate([np.asarray(v, np.float64).ravel() for v in healthy_values])
    voxel = {f"{f:g}": float(np.quantile(pooled, 1 - f)) for f in FPRS}
    curve = np.quantile(pooled, 1 - _CURVE)
    scan_thr = float(np.percentile(scan_scores, SCAN_PERCENTILE)) if scan_scores else None
    return {
        "voxel_thresholds": voxel,
        "voxel_rule": f"(1 - fpr) quantile of {pooled.size} healthy brain voxels' scores from "
                      f"{len(healthy_values)} {source} scan(s) (lesion-labelled slices excluded)",
        "fpr_curve": {"fpr": [float(f) for f in _CURVE], "threshold": [float(t) for t in curve]},
        "scan_threshold": scan_thr,
        "scan_rule": f"{SCAN_PERCENTILE:g}th percentile of {len(scan_scores)} healthy {source} "
                     "scan scores",
        "source": source,
        "n_scans": len(healthy_values),
        "n_voxels": int(pooled.size),
    }


def calibrate_on(model, items: list[dict], config, source: str, *,
                 device="cpu", batch_size: int = 32, precision: str = "32") -> dict:
    """Calibrate on cached preprocessed scans (``{"prepared": Prepared}`` items).

    Healthy voxels are the eroded brain mask minus every axial slice that touches a lesion
    label (the same protocol that chose the training slices).
    """
    from medae.scoring.heatmap import scan_score
    from medae.scoring.model import model_space_map

    values, scores = [], []
    for it in items:
        prep = it["prepared"]
        heat, inside, _, _ = model_space_map(model, prep, config, device=device,
                                             batch_size=batch_size, precision=precision)
        healthy = inside.copy()
        if prep.label is not None:
            healthy[:, :, prep.label.any(axis=(0, 1))] = False
        if healthy.any():
            values.append(heat[healthy])
            scores.append(scan_score(np.where(healthy, heat, 0), healthy,
                                     config.scan_percentile))
    return calibrate(values, scores, source)


def pick_threshold(calibration: dict | None, fpr: float | None = None,
                   threshold: float | None = None) -> tuple[float, str]:
    """The voxel threshold to use: a hand-set value, or the calibrated one for ``fpr``."""
    if threshold is not None:
        return float(threshold), "set by hand (--threshold)"
    if not calibration:
        raise MedaeError("this model has no calibrated threshold: pass --threshold")
    fpr = 0.01 if fpr is None else float(fpr)
    key = f"{fpr:g}"
    if key in calibration["voxel_thresholds"]:
        value = calibration["voxel_thresholds"][key]
    else:
        curve = calibration["fpr_curve"]
        lo, hi = curve["fpr"][0], curve["fpr"][-1]
        if not lo <= fpr <= hi:
            raise MedaeError(f"--fpr {fpr:g}: outside the calibrated range [{lo:g}, {hi:g}]")
        value = float(np.interp(np.log(fpr), np.log(curve["fpr"]), curve["threshold"]))
    return value, f"calibrated for {fpr:.3g} false-positive rate on healthy voxels"
