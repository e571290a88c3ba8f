"""A trained bundle ready to score scans: ``medae.load_model(RUN_DIR).score(scan)``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from medae.bundle import Bundle, load_bundle
from medae.io.scan import Scan
from medae.preprocess import Prepared, preprocess, to_scan_space
from medae.scoring.candidates import Candidate, find_candidates
from medae.scoring.heatmap import MapConfig, anomaly_map, scan_score
from medae.scoring.reconstruct import reconstruct
from medae.scoring.threshold import pick_threshold


@dataclass
class ScoreResult:
    """Everything scoring gives for one scan; arrays are on the scan's (RAS) array grid.

    Attributes:
        heatmap: anomaly score per voxel (float32), zero outside the eroded brain mask.
        labels: candidate label image (int32, 1 = strongest candidate).
        candidates: the lesion candidates, strongest first.
        score: scan-level anomaly score; ``flagged``: score above the calibrated scan
            threshold (None when the bundle has none).
        threshold: the voxel threshold used, and ``threshold_rule`` how it was chosen.
        latent: the scan's latent code (mean over slices or windows).
        brain: the analysed region (eroded brain mask); brain_mask: the whole brain mask.
        reconstruction: the reconstruction in the scan's units (only when asked for).
    """

    heatmap: np.ndarray
    labels: np.ndarray
    candidates: list[Candidate]
    score: float
    flagged: bool | None
    threshold: float
    threshold_rule: str
    latent: np.ndarray
    brain: np.ndarray  # the analysed region: the eroded brain mask (bool)
    brain_mask: np.ndarray  # the whole brain mask used by preprocessing (bool)
    reconstruction: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def model_space_map(model: torch.nn.Module, prep: Prepared, config: MapConfig, *,
                    device: torch.device | str = "cpu", batch_size: int = 32,
                    precision: str = "32") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heat map of a preprocessed volume in model space: (map, eroded mask, recon, code)."""
    recon, code = reconstruct(model, prep.image, prep.mask, batch_size=batch_size,
                              device=device, precision=precision)
    heat, inside = anomaly_map(prep.image, recon, prep.mask, config)
    return heat, inside, recon, code


def _denormalise(recon: np.ndarray, stats: dict) -> np.ndarray:
    if "low" in stats:
        return recon * (stats["high"] - stats["low"]) + stats["low"]
    if "mean" in stats:
        return recon * stats["sd"] + stats["mean"]
    return recon


class AnomalyModel:
    """A loaded bundle plus the device and batch size to score with."""

    def __init__(self, bundle: Bundle, device: torch.device | str = "cpu",
                 batch_size: int = 32, precision: str = "32"):
        self.bundle = bundle
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.precision = precision
        self.map_config = MapConfig.from_dict(bundle.config.get("scoring"))
        self.calibration = bundle.meta.get("calibration")

    @property
    def name(self) -> str:
        return self.bundle.meta["model"]["name"]

    def prepare(self, scan: Scan, mask: np.ndarray | None = None) -> Prepared:
        return preprocess(scan, self.bundle.preprocess, mask=mask)

    def score(self, scan: Scan, *, mask: np.ndarray | None = None, fpr: float | None = None,
              threshold: float | None = None, prepared: Prepared | None = None,
              with_reconstruction: bool = False) -> ScoreResult:
        """Score one scan (``mask``: optional brain mask on the scan's array grid)."""
        prep = prepared if prepared is not None else self.prepare(scan, mask)
        heat, inside, recon, code = model_space_map(
            self.bundle.model, prep, self.map_config, device=self.device,
            batch_size=self.batch_size, precision=self.precision)
        cfg = self.map_config
        score = scan_score(heat, inside, cfg.scan_percentile)
        brain = to_scan_space(inside.astype(np.float32), prep, nearest=True) > 0.5
        brain_mask = to_scan_space(prep.mask.astype(np.float32), prep, nearest=True) > 0.5
        heat_scan = np.maximum(to_scan_space(heat, prep), 0, dtype=np.float32)
        heat_scan[~brain] = 0
        thr, rule = pick_threshold(self.calibration, fpr, threshold)
        labels, cands = find_candidates(heat_scan, scan.affine, thr, cfg.min_volume_mm3)
        scan_thr = (self.calibration or {}).get("scan_threshold")
        recon_scan = None
        if with_reconstruction:
            recon_scan = _denormalise(to_scan_space(recon, prep), prep.stats).astype(np.float32)
            recon_scan = np.where(brain, recon_scan, scan.array)
        return ScoreResult(heatmap=heat_scan, labels=labels, candidates=cands, score=score,
                           flagged=None if scan_thr is None else bool(score > scan_thr),
                           threshold=thr, threshold_rule=rule, latent=code, brain=brain,
                           brain_mask=brain_mask, reconstruction=recon_scan)


def load_model(run_dir: str | os.PathLike, device: str = "auto", batch_size: int = 32,
               precision: str = "32") -> AnomalyModel:
    """Load a trained bundle for scoring (``device``: auto, cpu or cuda)."""
    from medae.train import resolve_device

    dev = resolve_device(device)
    return AnomalyModel(load_bundle(run_dir, dev), dev, batch_size, precision)
