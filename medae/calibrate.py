"""Calibrating a trained model again on other scans: ``medae calibrate``.

A model's operating point is set when it is trained, on its calibration scans.  A site with a
few patients of its own, labelled (or healthy scans of its own scanner), calibrates the model on
them instead, without training again: every threshold and the default operating point are
computed on those scans exactly as training computes them (the scan scored as ``medae score``
would, lesions left out of the healthy voxels as the recipe leaves them out), and a new bundle
is written beside the old one, which is never modified.  Bundles from before the operating
point followed the calibration data get the new rules this way.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

from medae.bundle import META, load_bundle, save_bundle
from medae.config import DataConfig, MapConfig, dump_config
from medae.device import resolve_device
from medae.errors import MedaeError
from medae.io.atomic import atomic_write_bytes
from medae.io.discover import ScanSource
from medae.scoring.calibration import calibrate_model, report_calibration
from medae.scoring.scorer import AnomalyModel


def recalibrate(model_dir: str | os.PathLike, sources: Sequence[ScanSource],
                output: str | os.PathLike, *, operating_point: str | None = None,
                froc_fp: float | None = None, map_units: str | None = None,
                device: str = "auto", batch_size: int = 32) -> tuple[Path, dict]:
    """Calibrate the bundle in ``model_dir`` on ``sources`` and write it into ``output``.

    ``operating_point`` / ``froc_fp`` / ``map_units`` replace the recipe's ``scoring`` settings
    of the same name (None: keep them; every threshold is calibrated in the new map's units).
    Returns the new bundle's folder and its calibration.
    """
    src, out = Path(model_dir), Path(output)
    if not sources:
        raise MedaeError("no calibration scans found")
    if os.path.lexists(out) and not out.is_dir():
        raise MedaeError(out, "--output exists and is not a folder")
    if (out / META).exists():
        if out.resolve() == src.resolve():
            raise MedaeError(out, "is the model being calibrated: write the calibrated model "
                                  "into a new folder (the original is kept as it is)")
        raise MedaeError(out, "already holds a model (choose a new folder)")
    dev = resolve_device(device)
    bundle = load_bundle(src, dev)
    config = copy.deepcopy(bundle.config)
    scoring = dict(config.get("scoring") or {})
    if operating_point is not None:
        scoring["operating_point"] = operating_point
    if froc_fp is not None:
        scoring["froc_fp"] = froc_fp
    if map_units is not None:
        scoring["map_units"] = map_units
    config["scoring"] = scoring
    map_cfg = MapConfig.from_dict(scoring, bundle.preprocess.spacing)  # checked before work
    data = DataConfig.from_dict(config["data"])
    margin = data.lesion_margin_mm if data.lesion_samples == "mask" else None
    scorer = AnomalyModel(bundle.model, bundle.preprocess, map_cfg, device=dev,
                          batch_size=batch_size)
    calibration = calibrate_model(scorer, list(sources), "recalibration", margin)
    report_calibration(calibration)
    training = dict(bundle.meta.get("training") or {})
    training["recalibrated_from"] = {"model": str(src), "scans": len(sources),
                                     "cases": sorted(s.case_id for s in sources)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "config.yaml", dump_config(config).encode())
    save_bundle(out, bundle.model, config, training=training,
                intensity=list(bundle.meta.get("intensity") or []),
                val_cases=list(bundle.meta.get("validation_cases") or []),
                calibration=calibration)
    return out, calibration
