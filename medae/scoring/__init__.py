"""Scoring: heat maps, calibrated thresholds and lesion candidates."""

from medae.scoring.candidates import Candidate, find_candidates
from medae.scoring.heatmap import MapConfig, anomaly_map, scan_score
from medae.scoring.model import AnomalyModel, ScoreResult, load_model
from medae.scoring.threshold import calibrate, pick_threshold

__all__ = ["AnomalyModel", "Candidate", "MapConfig", "ScoreResult", "anomaly_map", "calibrate",
           "find_candidates", "load_model", "pick_threshold", "scan_score"]
