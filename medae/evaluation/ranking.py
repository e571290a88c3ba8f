"""Sample-level (scan or slice) ranking metrics: healthy versus abnormal."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import medae.curves as curves
from medae.errors import MedaeError


def ranking_metrics(scores: Sequence[float], abnormal: Sequence[bool]) -> dict:
    """Exact AUROC and AP of one score per sample against abnormal (True) / healthy (False).

    Returns ``{"auroc", "ap", "n", "n_abnormal", "reason"}``; when only one class is present
    both metrics are None and ``reason`` says why (otherwise ``reason`` is None).

    Raises:
        MedaeError: lengths differ, or a score is None, NaN or infinite.
    """
    if len(scores) != len(abnormal):
        raise MedaeError(f"ranking_metrics: {len(scores)} scores but {len(abnormal)} labels")
    if any(s is None for s in scores):
        raise MedaeError("ranking_metrics: a sample score is None")
    s = np.asarray(scores, np.float64).ravel()
    lab = curves.check_pair(s, np.asarray(abnormal).ravel(), "ranking_metrics scores")
    n_abn = int(lab.sum())
    out = {"auroc": None, "ap": None, "n": int(s.size), "n_abnormal": n_abn, "reason": None}
    if n_abn == 0 or n_abn == s.size:
        out["reason"] = (f"only {'abnormal' if n_abn else 'healthy'} samples ({s.size}): "
                         "AUROC and AP need both classes")
        return out
    _, tp, fp = curves.exact_groups(s, lab)
    out["auroc"] = curves.roc_auc(tp, fp)
    out["ap"] = curves.average_precision(tp, fp)
    return out
