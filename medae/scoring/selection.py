"""Model selection on detection (``train.select: ap``): the pooled voxel AP of labelled scans.

Where the calibration scans are patients with lesion labels (every brain dataset here has only
patients), the validation loss measures how well the model restores healthy tissue, which is
not what it is used for: on the brain benchmark a lower loss came with a lower voxel AP.
nnU-Net keeps the epoch with the best validation Dice and anomalib monitors a validation AUROC;
this monitor does the same for an anomaly model: each labelled scan is mapped exactly as
``medae score`` maps it (preprocessing, residual, rim, median, map units) by the weights being
trained, and the AP of its brain voxels against the lesion label, pooled over the scans, is the
score that the training loop keeps the best epoch of.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

import medae.curves as curves
from medae.errors import MedaeError
from medae.io.discover import ScanSource
from medae.scoring.scorer import AnomalyModel


class DetectionMonitor:
    """The pooled voxel AP of ``sources``' maps under the weights being trained.

    ``make_scorer(network)`` wraps the live network in an :class:`AnomalyModel` (the recipe's
    preprocessing and map settings).  Each scan is read, prepared and its label checked once,
    at construction (a scan without a label counts as lesion-free, as calibration counts it;
    scans none of which has a label, or labels that mark no voxel, fail there in one line); they
    stay in memory for the run (about three copies of each volume: plan for it when selecting
    on many large scans)."""

    def __init__(self, sources: Sequence[ScanSource],
                 make_scorer: Callable[[torch.nn.Module], AnomalyModel],
                 network: torch.nn.Module):
        if not sources:
            raise MedaeError("train.select ap: no scans to select on")
        self.make_scorer = make_scorer
        scorer = make_scorer(network)
        self.cases, labelled = [], []
        for src in sources:
            scan, prep = scorer.load(src)
            label = src.load_companion("label", scan)
            labelled.append(label is not None)
            # a scan without a label counts as lesion-free, as calibration counts it
            self.cases.append((src, scan, prep, np.zeros(scan.shape, bool) if label is None
                               else np.asarray(label, bool)))
        self.names = [src.case_id for src, *_ in self.cases]
        if not any(labelled):
            raise MedaeError(f"train.select ap needs lesion labels (a manifest label column), "
                             f"and none of the {len(self.names)} scan(s) it would select on "
                             f"({', '.join(self.names)}) has one")
        if not any(label.any() for *_, label in self.cases):
            raise MedaeError(f"train.select ap: the lesion labels of {', '.join(self.names)} "
                             "mark no voxel: nothing to select on (train.select: loss)")

    def __call__(self, network: torch.nn.Module) -> float:
        """The pooled voxel AP of the scans' brain voxels.  The RNG state is left as it was, so
        selecting never changes what the model trains on."""
        where = network_device(network)
        devices = [where] if where.type == "cuda" else []
        scores, labels = [], []
        with torch.random.fork_rng(devices=devices):
            scorer = self.make_scorer(network)
            for _src, scan, prep, label in self.cases:
                m = scorer.scan_map(scan, prep)
                brain = m.brain_mask
                scores.append(m.heatmap[brain].astype(np.float32, copy=False))
                labels.append(label[brain])
        s, y = np.concatenate(scores), np.concatenate(labels)
        if not y.any():
            raise MedaeError(f"train.select ap: the lesion labels of {', '.join(self.names)} "
                             "mark no voxel inside the brain mask: nothing to select on "
                             "(train.select: loss)")
        _, tp, fp = curves.exact_groups(s, y)
        return float(curves.average_precision(tp, fp))


def network_device(network: torch.nn.Module) -> torch.device:
    """Where the network's weights are (the CPU for one without parameters)."""
    for p in network.parameters():
        return p.device
    return torch.device("cpu")
