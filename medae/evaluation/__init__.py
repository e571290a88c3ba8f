"""Evaluation: pooled voxel AP/AUROC/Dice, lesion-wise detection, scan-level ranking."""

from medae.curves import dice
from medae.evaluation.lesions import SIZE_BINS_MM3, lesion_detection, summarise_detection
from medae.evaluation.pooled import PooledVoxels
from medae.evaluation.ranking import ranking_metrics

__all__ = ["SIZE_BINS_MM3", "PooledVoxels", "dice", "lesion_detection", "ranking_metrics",
           "summarise_detection"]
