"""A trained model ready to score scans: ``medae.load_model(RUN_DIR).score(scan)``.

The network runs on the preprocessed (model-space) volume; its reconstruction is brought back to
the scan's own grid, where the residual is taken against the scan's own normalised voxels, inside
the brain mask found at the scan's resolution (see :mod:`medae.scoring.heatmap`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from medae.bundle import Bundle, load_bundle
from medae.device import LARGE_VOXELS, check_precision, resolve_device, trim_heap
from medae.errors import MedaeError
from medae.io.discover import ScanSource
from medae.io.scan import Scan
from medae.masks import outer_erosion
from medae.models.ensemble import NAME as ENSEMBLE
from medae.models.registry import model_config
from medae.preprocess import (
    Prepared,
    PreprocessConfig,
    apply_normalisation,
    denormalise,
    normalised_iqr,
    prepare_source,
    preprocess,
    to_scan_space,
)
from medae.scoring.candidates import Candidate, find_candidates
from medae.scoring.heatmap import MapConfig, anomaly_map_slabs, scan_score
from medae.scoring.reconstruct import reconstruct
from medae.scoring.threshold import pick_threshold


@dataclass
class ScanMap:
    """The heat map of one scan on its own grid, before any threshold."""

    heatmap: np.ndarray  # float32, 0 outside ``analysed``
    analysed: np.ndarray  # bool: the brain mask, outer rim eroded, within the model's view
    brain_mask: np.ndarray  # bool: the whole brain mask
    mask_rule: str
    # float32, the first input's reconstruction (normalised) on the scan's grid, when asked for
    recon: np.ndarray | None
    latent: np.ndarray
    score: float
    # per input channel (multi-sequence models, when asked for): that channel's own map
    channel_maps: dict[str, np.ndarray] | None = None
    # seconds per stage: "reconstruct" (the network), "heat map" (back to the scan's grid,
    # residual, erosion, median filter, scan score)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class ScoreResult:
    """Everything scoring gives for one scan; arrays are on the scan's (RAS) array grid.

    Attributes:
        heatmap: anomaly score per voxel (float32), zero outside ``analysed``.
        labels: candidate label image (uint16, int32 beyond 65,535 components; 1 = strongest).
        candidates: the lesion candidates, strongest first.
        score: scan-level anomaly score; ``flagged``: score above the calibrated scan
            threshold (None when the bundle has none).
        threshold: the voxel threshold used, and ``threshold_rule`` how it was chosen;
            ``operating_point``: at the calibrated default, its rule and its figures on the
            calibration scans (Dice, lesion voxels caught, false candidates per scan), else None.
        latent: the scan's latent code (mean over slices or windows).
        analysed: the region the map covers (brain mask, outer rim eroded); brain_mask: the
            whole brain mask, and ``mask_rule`` the rule that made it.
        min_volume_mm3: the smallest candidate kept.
        reconstruction: the first input's reconstruction in its units (only when asked for).
        channel_maps: per input sequence, its own map (multi-sequence models, when asked for).
        timings: seconds per stage ("reconstruct", "heat map", "candidates").
        map_units: the map's units (``scoring.map_units``): ``normalised`` (the normalised
            image's) or ``iqr`` (interquartile ranges of the scan's brain intensities).
        normalisation: per input, how the scan was normalised (``preprocess.normalise``) and
            the statistics measured in its brain (percentiles, interquartile range; with
            ``histogram``, its deciles and the standard they were mapped onto).
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
    channel_maps: dict[str, np.ndarray] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    operating_point: dict | None = None
    map_units: str = "normalised"
    normalisation: list[dict] | None = None


def scored_channels(preprocess: PreprocessConfig, map_config: MapConfig) -> list[int]:
    """The input channels whose residuals make the map (``scoring.channels``)."""
    if map_config.channels is None:
        return list(range(preprocess.channels))
    inputs = [n.lower() for n in (preprocess.inputs or ())]
    missing = [c for c in map_config.channels if c.lower() not in inputs]
    if missing:
        raise MedaeError(f"scoring.channels: {', '.join(missing)} not among the model's inputs "
                         f"(preprocess.inputs: {', '.join(preprocess.inputs or ['one sequence'])})")
    return sorted({inputs.index(c.lower()) for c in map_config.channels})


def field_of_view(prep: Prepared) -> np.ndarray:
    """The scan voxels that the model's crop covers (bool, scan grid), built axis by axis with
    the same nearest-neighbour rule as :func:`to_scan_space` (no full-size float array; in
    template space, the model's view brought back by that very function)."""
    if prep.template is not None:
        return to_scan_space(np.ones(prep.image.shape[1:], np.float32), prep, nearest=True) > 0.5
    axes = []
    for off, size, rs, ss in zip(prep.offset, prep.image.shape[1:], prep.resampled_shape,
                                 prep.scan_shape, strict=True):
        seen = np.zeros(rs, np.float32)
        seen[max(0, off):max(0, min(rs, off + size))] = 1.0
        line = torch.nn.functional.interpolate(torch.from_numpy(seen)[None, None], size=ss,
                                               mode="nearest-exact")[0, 0].numpy() > 0.5
        axes.append(line)
    out = np.empty(tuple(len(a) for a in axes), bool)
    np.logical_and(axes[0][:, None, None], axes[1][None, :, None], out=out)
    out &= axes[2][None, None, :]
    return out


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
        self.scored = scored_channels(preprocess, map_config)
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
        """The architecture's name; an ensemble's says its size and members' (``dae_unet x3``)."""
        cfg = model_config(self.network)
        if cfg["name"] == ENSEMBLE:
            return f'{cfg["member"]["name"]} x{cfg["size"]}'
        return cfg["name"]

    @property
    def channels(self) -> int:
        return self.preprocess_config.channels

    def prepare(self, scan: Scan, mask: np.ndarray | None = None,
                channels: list[np.ndarray] | None = None) -> Prepared:
        """Preprocess a scan (``channels``: a multi-sequence model's inputs on its grid)."""
        return preprocess(scan, self.preprocess_config, mask=mask, channels=channels)

    def load(self, source: ScanSource) -> tuple[Scan, Prepared]:
        """Read a case (the sequences this model reads, its mask) and prepare it."""
        return prepare_source(source, self.preprocess_config, compact=True)

    def scan_map(self, scan: Scan, prepared: Prepared, channel_maps: bool = False,
                 with_reconstruction: bool = False, release_input: bool = False) -> ScanMap:
        """The heat map of ``scan`` (already prepared) on its own grid (``channel_maps``: also
        each input channel's own map, for multi-sequence models; ``with_reconstruction``: also
        the first input's reconstruction on the scan's grid, else ``recon`` is None;
        ``release_input``: drop ``prepared.image`` and ``prepared.mask``, the model-space input,
        once reconstructed, for a caller that scores it once and wants the memory back).

        The map is computed in slabs of axial slices (see :func:`anomaly_map_slabs`): the
        reconstruction is brought to the scan's grid and the scan normalised one slab at a time,
        so the full-size arrays are the map and the masks, whatever the volume's size.
        """
        prep = prepared
        if prep.native_mask is None or prep.native_inputs is None:
            raise ValueError("scan_map needs a scan prepared with keep_native=True")
        t0 = time.perf_counter()
        recon, code = reconstruct(self.network, prep.image, prep.mask,
                                  batch_size=self.batch_size, device=self.device,
                                  precision=self.precision)
        t1 = time.perf_counter()
        native, rule = prep.native_mask, prep.mask_rule
        clip = self.preprocess_config.clip
        cfg = self.map_config
        region = field_of_view(prep)
        if release_input:
            prep.image = prep.mask = None
        np.logical_and(region, native, out=region)
        analysed = outer_erosion(region, cfg.erode_mm, scan.spacing)
        del region

        held = [recon]  # (C, x, y, z) model space; let go before the score's copy below
        del recon

        # scoring.map_units iqr: each sequence's residual in interquartile ranges of its brain
        # (only the sequences a map is made of: a context sequence's spread is never needed)
        iqr = cfg.map_units == "iqr"
        per_iqr = {c: np.float32(1.0 / normalised_iqr(prep.stats[c])) for c in self.scored
                   } if iqr else {}

        def channels(z: slice, which=None):
            picked = self.scored if which is None else (which,)
            pairs = [(apply_normalisation(prep.native_inputs[c][:, :, z], prep.stats[c], clip),
                      to_scan_space(held[0][c], prep, z=z)) for c in picked]
            if not iqr:
                return pairs
            for c in picked:  # a channel's own map (channel_maps) of a context sequence
                if c not in per_iqr:
                    per_iqr[c] = np.float32(1.0 / normalised_iqr(prep.stats[c]))
            return [(im * per_iqr[c], rc * per_iqr[c])
                    for c, (im, rc) in zip(picked, pairs, strict=True)]

        heat, _ = anomaly_map_slabs(channels, analysed, cfg, scan.spacing, eroded=True)
        per_channel = None
        if channel_maps and len(held[0]) > 1:
            names = prep.inputs or tuple(str(c) for c in range(len(held[0])))
            per_channel = {name: anomaly_map_slabs(lambda z, c=c: channels(z, c), analysed, cfg,
                                                   scan.spacing, eroded=True)[0]
                           for c, name in enumerate(names)}
        first = to_scan_space(held[0][0], prep) if with_reconstruction else None
        held.clear()
        score = scan_score(heat, analysed, cfg.scan_percentile)
        return ScanMap(heatmap=heat, analysed=analysed, brain_mask=native, mask_rule=rule,
                       recon=first, latent=code, score=score, channel_maps=per_channel,
                       timings={"reconstruct": t1 - t0, "heat map": time.perf_counter() - t1})

    def resolve_threshold(self, fpr: float | None = None, threshold: float | None = None
                          ) -> tuple[float, str]:
        return pick_threshold(self.calibration, fpr, threshold)

    def operating_point(self, fpr: float | None = None, threshold: float | None = None
                        ) -> dict | None:
        """The calibrated default operating point's rule and figures, when it is the one used
        (no ``fpr``, no ``threshold``) and the bundle records them."""
        if fpr is not None or threshold is not None:
            return None
        return (self.calibration or {}).get("operating_point")

    def score(self, scan: Scan, *, mask: np.ndarray | None = None, fpr: float | None = None,
              threshold: float | None = None, prepared: Prepared | None = None,
              with_reconstruction: bool = False, channel_maps: bool = False,
              release_input: bool = False) -> ScoreResult:
        """Score one scan (``mask``: optional brain mask on the scan's array grid; a
        multi-sequence model needs ``prepared``, e.g. from :meth:`load`; ``release_input``: see
        :meth:`scan_map`)."""
        thr, rule = self.resolve_threshold(fpr, threshold)
        if prepared is None and self.channels > 1:
            raise ValueError(f"this model reads {self.channels} sequences: prepare the scan with "
                             "AnomalyModel.load(source) or prepare(scan, channels=...)")
        prep = prepared if prepared is not None else self.prepare(scan, mask)
        m = self.scan_map(scan, prep, channel_maps=channel_maps,
                          with_reconstruction=with_reconstruction, release_input=release_input)
        if m.heatmap.size > LARGE_VOXELS:
            trim_heap()  # what reconstruction freed, before the labels are allocated
        t0 = time.perf_counter()
        labels, cands = find_candidates(m.heatmap, scan.affine, thr,
                                        self.map_config.min_volume_mm3)
        timings = {**m.timings, "candidates": time.perf_counter() - t0}
        scan_thr = (self.calibration or {}).get("scan_threshold")
        recon_scan = None
        if with_reconstruction:
            recon_scan = denormalise(m.recon, prep.stats[0]).astype(np.float32)
            recon_scan = np.where(m.brain_mask, recon_scan, prep.native_inputs[0])
        return ScoreResult(heatmap=m.heatmap, labels=labels, candidates=cands, score=m.score,
                           flagged=None if scan_thr is None else bool(m.score > scan_thr),
                           threshold=thr, threshold_rule=rule, latent=m.latent,
                           analysed=m.analysed, brain_mask=m.brain_mask, mask_rule=m.mask_rule,
                           min_volume_mm3=self.map_config.min_volume_mm3,
                           reconstruction=recon_scan, channel_maps=m.channel_maps,
                           timings=timings, operating_point=self.operating_point(fpr, threshold),
                           map_units=self.map_config.map_units,
                           normalisation=[{"rule": self.preprocess_config.normalise, **st}
                                          for st in prep.stats])


def load_model(run_dir: str | os.PathLike, device: str = "auto", batch_size: int = 32,
               precision: str = "32", brain: str | None = None,
               registration: str | None = None) -> AnomalyModel:
    """Load a trained bundle for scoring (``device``: auto, cpu or cuda; ``brain``: a
    ``preprocess.brain`` mode that replaces the bundle's, e.g. ``"given"``; ``registration``:
    a ``preprocess.registration`` mode that replaces the bundle's, e.g. ``"rigid"``)."""
    dev = resolve_device(device)
    model = AnomalyModel.from_bundle(load_bundle(run_dir, dev), dev, batch_size, precision)
    if brain is not None:
        model.preprocess_config = replace(model.preprocess_config, brain=brain)
    if registration is not None:
        model.preprocess_config = replace(model.preprocess_config, registration=registration)
    return model
