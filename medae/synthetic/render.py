"""Rendering a subject from its parameters (deterministic): lesions, warp, contrast, resolution,
bias field, scanner units, Rician noise."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from medae.synthetic.bias import bias_field
from medae.synthetic.case import SyntheticCase
from medae.synthetic.lesions import paint_lesion
from medae.synthetic.params import PARAMS_VERSION, draw_params
from medae.synthetic.template import TEMPLATE_NAME, shipped_template
from medae.synthetic.transform import sampling_coords


def make_subject(seed: int, *, lesions: int = 0, kinds: list[str] | None = None
                 ) -> SyntheticCase:
    """A synthetic subject from ``seed``: healthy with ``lesions=0``, else a patient.

    Equivalent to ``regenerate(draw_params(seed, lesions=lesions, kinds=kinds))``.
    """
    return regenerate(draw_params(seed, lesions=lesions, kinds=kinds))


def regenerate(params: dict[str, Any]) -> SyntheticCase:
    """Build the arrays of a case from its recorded ``params`` (deterministic)."""
    if params.get("generator") != "medae.synthetic" or params.get("version") != PARAMS_VERSION:
        raise ValueError("params were not written by this version of medae.synthetic "
                         f"(generator {params.get('generator')!r}, version "
                         f"{params.get('version')!r}; expected {PARAMS_VERSION})")
    if params.get("template") != TEMPLATE_NAME:
        raise ValueError(f"params use template {params.get('template')!r}, not {TEMPLATE_NAME}")
    tpl = shipped_template()
    wm_value = tpl.wm_value

    # 1. lesions in template space
    t1 = tpl.t1
    labels_tpl = np.zeros(tpl.shape, np.uint8)
    if params["lesions"]:
        t1 = t1.copy()
        for i, lesion in enumerate(params["lesions"]):
            paint_lesion(t1, labels_tpl, i + 1, lesion, tpl, wm_value)

    # 2. spatial transform: for each subject voxel, where to sample the template
    coords = sampling_coords(params, tpl)
    image = ndimage.map_coordinates(t1, coords, order=1, mode="constant", cval=0.0,
                                    prefilter=False)
    brain = ndimage.map_coordinates(tpl.brain.astype(np.float32), coords, order=1,
                                    mode="constant", cval=0.0, prefilter=False) > 0.5
    if params["lesions"]:
        labels = ndimage.map_coordinates(labels_tpl, coords, order=0, mode="constant", cval=0,
                                         prefilter=False)
        labels[~brain] = 0
    else:
        labels = labels_tpl
    del coords

    # 3. contrast (on white-matter-normalised intensities)
    x = np.maximum(image / np.float32(wm_value), 0.0)
    x = np.power(x, np.float32(params["gamma"]), dtype=np.float32)
    # 4. resolution
    base = np.array(tpl.spacing)
    res = np.maximum(np.asarray(params["resolution_mm"], dtype=float), base)
    sigma = np.sqrt(res**2 - base**2) / (2 * math.sqrt(2 * math.log(2))) / base
    if np.any(sigma > 0.05):
        x = ndimage.gaussian_filter(x, sigma, mode="constant", truncate=3.0)
    # 5. bias field
    x *= bias_field(params["bias_field"], tpl.shape)
    # 6. scanner units, 7. Rician noise, brain mask
    x *= np.float32(params["wm_value"])
    sd = np.float32(params["noise"]["sd_rel"] * params["wm_value"])
    noise_rng = np.random.default_rng(params["noise"]["seed"])
    n1 = noise_rng.standard_normal(tpl.shape, dtype=np.float32)
    n2 = noise_rng.standard_normal(tpl.shape, dtype=np.float32)
    x += sd * n1
    n2 *= sd
    x = np.sqrt(x * x + n2 * n2)
    x[~brain] = 0.0
    return SyntheticCase(image=x.astype(np.float32, copy=False), brain=brain, lesion=labels > 0,
                         lesion_labels=labels.astype(np.uint8, copy=False),
                         affine=tpl.affine.copy(), params=params)
