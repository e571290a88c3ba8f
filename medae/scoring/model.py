"""A trained model ready to score scans: ``medae.load_model(RUN_DIR).score(scan)``.

The network runs on the preprocessed (model-space) volume; its reconstruction is brought back to
the scan's own grid, where the residual is taken against the scan's own normalised voxels, inside
the brain mask found at the scan's resolution (see :mod:`medae.scoring.heatmap`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from medae.bundle import Bundle, load_bundle
from medae.device import check_precision, resolve_device
from medae.io.scan import Scan
from medae.models.registry import model_config
from medae.preprocess import (
    Prepared,
    PreprocessConfig,
    apply_normalisation,
    denormalise,
    preprocess,
    to_scan_space,
)
from medae.scoring.candidates import Candidate, find_candidates
from medae.scoring.heatmap import MapConfig, anomaly_map, scan_score
from medae.scoring.reconstruct import reconstruct
from medae.scoring.threshold import pick_threshold


@dataclass
class ScanMap:
    """The heat map of one scan on its own grid, before any threshold."""

    heatmap: np.ndarray  # float32, 0 outside ``analysed``
    analysed: np.ndarray  # bool: the brain mask, outer rim eroded, within the model's view
    brain_mask: np.ndarray  # bool: the whole brain mask
    mask_rule: str
    recon: np.ndarray  # float32, the reconstruction (normalised units) on the scan's grid
    latent: np.ndarray
    score: float


@dataclass
class ScoreResult:
    """Everything scoring gives for one scan; arrays are on the scan's (RAS) array grid.

    Attributes:
        heatmap: anomaly score per voxel (float32), zero outside ``analysed``.
        labels: candidate label image (int32, 1 = strongest candidate).
        candidates: the lesion candidates, strongest first.
        score: scan-level anomaly score; ``flagged``: score above the calibrated scan
            threshold (None when the bundle has none).
        threshold: the voxel threshold used, and ``threshold_rule`` how it was chosen.
        latent: the scan's latent code (mean over slices or windows).
        analysed: the region the map covers (brain mask, outer rim eroded); brain_mask: the
            whole brain mask, and ``mask_rule`` the rule that made it.
        min_volume_mm3: the smallest candidate kept.
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
    analysed: np.ndarray
    brain_mask: np.ndarray
    mask_rule: str = ""
    min_volume_mm3: float = 0.0
    reconstruction: np.ndarray | None = None


def field_of_view(prep: Prepared) -> np.ndarray:
    """The scan voxels that the model's crop covers (bool, scan grid), built axis by axis with
    the same nearest-neighbour rule as :func:`to_scan_space` (no full-size float array)."""
    axes = []
    for off, size, rs, ss in zip(prep.offset, prep.image.shape, prep.resampled_shape,
                                 prep.scan_shape, strict=True):
        seen = np.zeros(rs, np.float32)
        seen[max(0, off):max(0, min(rs, off + size))] = 1.0
        line = torch.nn.functional.interpolate(torch.from_numpy(seen)[None, None], size=ss,
                                               mode="nearest-exact")[0, 0].numpy() > 0.5
        axes.append(line)
    return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]


class AnomalyModel:
    """A network with its preprocessing, post-processing and calibration, ready to score.

    Built from a bundle by :func:`load_model`, or from the parts (training calibrates with it
    before a bundle exists).
    """

    def __init__(self, network: torch.nn.Module, preprocess: PreprocessConfig,
                 map_config: MapConfig, calibration: dict | None = None, *,
                 device: torch.device | str = "cpu", batch_size: int = 32,
                 precision: str = "32", bundle: Bundle | None = None):
        self.network = network
        self.preprocess_config = preprocess
        self.map_config = map_config
        self.calibration = calibration
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.precision = check_precision(precision, "--precision")
        self.bundle = bundle

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: torch.device | str = "cpu",
                    batch_size: int = 32, precision: str = "32") -> AnomalyModel:
        map_config = MapConfig.from_dict(bundle.config.get("scoring"),
                                         bundle.preprocess.spacing)
        return cls(bundle.model, bundle.preprocess, map_config, bundle.meta.get("calibration"),
                   device=device, batch_size=batch_size, precision=precision, bundle=bundle)

    @property
    def name(self) -> str:
        return model_config(self.network)["name"]

    def prepare(self, scan: Scan, mask: np.ndarray | None = None) -> Prepared:
        return preprocess(scan, self.preprocess_config, mask=mask)

    def scan_map(self, scan: Scan, prepared: Prepared) -> ScanMap:
        """The heat map of ``scan`` (already prepared) on its own grid."""
        prep = prepared
        recon, code = reconstruct(self.network, prep.image, prep.mask,
                                  batch_size=self.batch_size, device=self.device,
                                  precision=self.precision)
        if prep.native_mask is None:
            raise ValueError("scan_map needs a scan prepared with keep_native=True")
        native, rule = prep.native_mask, prep.mask_rule
        recon_scan = to_scan_space(recon, prep)
        image = apply_normalisation(scan.array, prep.stats, self.preprocess_config.clip)
        cfg = self.map_config
        heat, analysed = anomaly_map(image, recon_scan, native & field_of_view(prep), cfg,
                                     scan.spacing)
        return ScanMap(heatmap=heat, analysed=analysed, brain_mask=native, mask_rule=rule,
                       recon=recon_scan, latent=code,
                       score=scan_score(heat, analysed, cfg.scan_percentile))

    def resolve_threshold(self, fpr: float | None = None, threshold: float | None = None
                          ) -> tuple[float, str]:
        return pick_threshold(self.calibration, fpr, threshold)

    def score(self, scan: Scan, *, mask: np.ndarray | None = None, fpr: float | None = None,
              threshold: float | None = None, prepared: Prepared | None = None,
              with_reconstruction: bool = False) -> ScoreResult:
        """Score one scan (``mask``: optional brain mask on the scan's array grid)."""
        thr, rule = self.resolve_threshold(fpr, threshold)
        prep = prepared if prepared is not None else self.prepare(scan, mask)
        m = self.scan_map(scan, prep)
        labels, cands = find_candidates(m.heatmap, scan.affine, thr,
                                        self.map_config.min_volume_mm3)
        scan_thr = (self.calibration or {}).get("scan_threshold")
        recon_scan = None
        if with_reconstruction:
            recon_scan = denormalise(m.recon, prep.stats).astype(np.float32)
            recon_scan = np.where(m.brain_mask, recon_scan, scan.array)
        return ScoreResult(heatmap=m.heatmap, labels=labels, candidates=cands, score=m.score,
                           flagged=None if scan_thr is None else bool(m.score > scan_thr),
                           threshold=thr, threshold_rule=rule, latent=m.latent,
                           analysed=m.analysed, brain_mask=m.brain_mask, mask_rule=m.mask_rule,
                           min_volume_mm3=self.map_config.min_volume_mm3,
                           reconstruction=recon_scan)


def load_model(run_dir: str | os.PathLike, device: str = "auto", batch_size: int = 32,
               precision: str = "32") -> AnomalyModel:
    """Load a trained bundle for scoring (``device``: auto, cpu or cuda)."""
    dev = resolve_device(device)
    return AnomalyModel.from_bundle(load_bundle(run_dir, dev), dev, batch_size, precision)
