"""Scoring: heat maps, calibrated thresholds and lesion candidates.

The heat-map, threshold and candidate modules are NumPy only; the scorer (``AnomalyModel``,
``ScoreResult``, ``load_model``) runs a network and loads torch, so it is imported on first use:
``import medae.scoring.heatmap`` never loads torch.
"""

from medae.scoring.candidates import Candidate, find_candidates
from medae.scoring.heatmap import MapConfig, anomaly_map, scan_score
from medae.scoring.threshold import calibrate, pick_threshold

_SCORER = ("AnomalyModel", "ScoreResult", "load_model")


def __getattr__(name: str):
    if name in _SCORER:
        from medae.scoring import scorer

        return getattr(scorer, name)
    raise AttributeError(f"module 'medae.scoring' has no attribute {name!r}")


__all__ = ["AnomalyModel", "Candidate", "MapConfig", "ScoreResult", "anomaly_map", "calibrate",
           "find_candidates", "load_model", "pick_threshold", "scan_score"]
