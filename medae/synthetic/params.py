"""Drawing a subject's parameters: every random value, from a seed, into a JSON-ready dict.

:func:`draw_params` is the only place randomness enters (TorchIO style); rendering them
(:func:`medae.synthetic.render.regenerate`) is deterministic, so a case is rebuilt exactly from
its recorded parameters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medae.synthetic.bias import bias_terms
from medae.synthetic.lesions import lesion_alpha
from medae.synthetic.template import TEMPLATE_NAME, Template, shipped_template

PARAMS_VERSION = 1

# ranges of the random draws (uniform unless said otherwise)
ROTATION_DEG = 3.0               # per axis, +-
SCALE = (0.95, 1.05)             # global size; each axis further x(0.98..1.02)
TRANSLATION_MM = 3.0             # per axis, +-
CONTROL_GRID = (6, 7, 6)         # control points of the displacement (about 30 mm apart)
DISPLACEMENT_SD_MM = (1.0, 2.5)  # sd of the control-point displacements
GAMMA_LOG = 0.25                 # gamma = exp(U(-0.25, 0.25)): 0.78..1.28
RESOLUTION_MM = (2.0, 2.8)       # effective voxel size per axis (the grid stays at 2 mm)
BIAS_ORDER = 3
BIAS_COEF = 0.12                 # polynomial coefficients U(-c, c) / degree
WM_VALUE = (300.0, 1200.0)       # white matter in scanner units (log-uniform)
NOISE_SD = (0.01, 0.035)         # relative to white matter
LESION_VOLUME_MM3 = (300.0, 8000.0)   # log-uniform target volume per lesion
HYPER_FACTOR = (0.30, 0.60)      # lesion = WM * (1 + f)
HYPO_FACTOR = (0.45, 0.60)       # lesion = WM * (1 - f)
HYPO_PROBABILITY = 0.25
LESION_EDGE_MM = (0.5, 1.2)      # width of the soft edge (logistic scale)
LESION_TEXTURE_SD = (0.03, 0.07)  # relative sd of the smooth texture inside a lesion
LESION_ROUGHNESS = (0.10, 0.25)  # sd of the boundary perturbation, relative to the radius


def rounded(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def rounded_list(a, nd: int = 4) -> list:
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_params(seed: int, *, lesions: int = 0, kinds: list[str] | None = None) -> dict[str, Any]:
    """Draw every random value of a subject from ``seed`` (``lesions`` lesions; ``kinds`` forces
    ``"hyper"``/``"hypo"`` per lesion, else drawn with probability 0.25 for hypo)."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if lesions < 0:
        raise ValueError(f"lesions must be >= 0, got {lesions}")
    if kinds is not None and (len(kinds) != lesions or set(kinds) - {"hyper", "hypo"}):
        raise ValueError(f"kinds must list 'hyper' or 'hypo' for each of the {lesions} lesions")
    tpl = shipped_template()
    rng = np.random.default_rng(seed)
    iso = rng.uniform(*SCALE)
    params: dict[str, Any] = {
        "generator": "medae.synthetic",
        "version": PARAMS_VERSION,
        "template": TEMPLATE_NAME,
        "seed": seed,
        "shape": list(tpl.shape),
        "transform": {
            "rotation_deg": rounded_list(rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3), 3),
            "scale": rounded_list(iso * rng.uniform(0.98, 1.02, 3)),
            "translation_mm": rounded_list(rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, 3), 3),
            "centre_mm": rounded_list(tpl.centre_mm, 3),
        },
    }
    sd = rng.uniform(*DISPLACEMENT_SD_MM)
    params["displacement"] = {
        "control_grid": list(CONTROL_GRID),
        "sd_mm": rounded(sd, 3),
        # (cx, cy, cz, 3) displacements in mm, x/y/z world components
        "control_points_mm": rounded_list(rng.normal(0.0, sd, (*CONTROL_GRID, 3)), 3),
    }
    params["gamma"] = rounded(math.exp(rng.uniform(-GAMMA_LOG, GAMMA_LOG)))
    params["resolution_mm"] = rounded_list(rng.uniform(*RESOLUTION_MM, 3), 3)
    n_terms = len(bias_terms(BIAS_ORDER))
    degrees = np.array([sum(t) for t in bias_terms(BIAS_ORDER)])
    params["bias_field"] = {
        "order": BIAS_ORDER,
        "coefficients": rounded_list(rng.uniform(-BIAS_COEF, BIAS_COEF, n_terms) / degrees),
    }
    params["wm_value"] = rounded(_log_uniform(rng, *WM_VALUE), 2)
    params["noise"] = {"sd_rel": rounded(rng.uniform(*NOISE_SD)),
                       "seed": int(rng.integers(2**31 - 1))}
    params["lesions"] = _draw_lesions(rng, tpl, lesions, kinds)
    return params


def _draw_lesions(rng: np.random.Generator, tpl: Template, n: int,
                  kinds: list[str] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    placed: list[tuple[np.ndarray, float]] = []   # (centre, reach)
    for i in range(n):
        kind = kinds[i] if kinds is not None else (
            "hypo" if rng.uniform() < HYPO_PROBABILITY else "hyper")
        volume = _log_uniform(rng, *LESION_VOLUME_MM3)
        r_eq = (3 * volume / (4 * math.pi)) ** (1 / 3)
        lobes = [{"offset_mm": [0.0, 0.0, 0.0], "radii": _aspect(rng),
                  "angles_deg": rng.uniform(-180, 180, 3)}]
        for _ in range(int(rng.integers(0, 4))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            lobes.append({"offset_mm": direction * rng.uniform(0.6, 1.1),
                          "radii": _aspect(rng) * rng.uniform(0.35, 0.65),
                          "angles_deg": rng.uniform(-180, 180, 3)})
        # scale so that the lobes' volumes add up to the target
        units = sum(float(np.prod(lb["radii"])) for lb in lobes)
        k = r_eq / units ** (1 / 3)
        lesion_lobes = [{"offset_mm": rounded_list(np.asarray(lb["offset_mm"]) * k, 3),
                         "radii_mm": rounded_list(np.asarray(lb["radii"]) * k, 3),
                         "angles_deg": rounded_list(lb["angles_deg"], 2)} for lb in lobes]
        reach = max(float(np.linalg.norm(lb["offset_mm"])) + max(lb["radii_mm"])
                    for lb in lesion_lobes)
        factor = rng.uniform(*(HYPER_FACTOR if kind == "hyper" else HYPO_FACTOR))
        centre = _place(rng, tpl, r_eq, reach, placed, strict=kind == "hypo")
        lesion = {
            "kind": kind,
            # template (MNI) space; the subject's warp moves it
            "centre_mm": rounded_list(centre, 3),
            "volume_mm3_target": rounded(volume, 1),
            "intensity": rounded(factor if kind == "hyper" else -factor),
            "edge_mm": rounded(rng.uniform(*LESION_EDGE_MM), 3),
            "texture_sd": rounded(rng.uniform(*LESION_TEXTURE_SD)),
            "roughness": rounded(rng.uniform(*LESION_ROUGHNESS)),
            "lobes": lesion_lobes,
            "seed": int(rng.integers(2**31 - 1)),
        }
        # one size correction (overlapping lobes, roughness, brain edge), recorded in the lobes
        _, alpha, _ = lesion_alpha(lesion, tpl)
        got = float(np.count_nonzero(alpha > 0.5)) * tpl.voxel_volume_mm3
        f = float(np.clip((volume / max(got, 1.0)) ** (1 / 3), 0.7, 1.4))
        lesion["lobes"] = [{"offset_mm": rounded_list(np.asarray(lb["offset_mm"]) * f, 3),
                            "radii_mm": rounded_list(np.asarray(lb["radii_mm"]) * f, 3),
                            "angles_deg": lb["angles_deg"]} for lb in lesion_lobes]
        placed.append((centre, reach * f))
        out.append(lesion)
    return out


def _aspect(rng: np.random.Generator) -> np.ndarray:
    a = np.exp(rng.normal(0.0, 0.2, 3))
    return a / np.prod(a) ** (1 / 3)


def _place(rng: np.random.Generator, tpl: Template, r_eq: float, reach: float,
           placed: list[tuple[np.ndarray, float]], strict: bool) -> np.ndarray:
    """A lesion centre (world mm) in deep white matter, away from the lesions already placed."""
    depth = tpl.brain_depth_mm
    wm_min = 0.95 if strict else 0.9
    for relax in (1.0, 0.75, 0.5, 0.25, 0.0):
        ok = (tpl.wm >= wm_min * relax) & (depth >= max(0.8 * r_eq * relax, 4.0 * relax) + 2.0)
        candidates = np.flatnonzero(ok)
        if candidates.size == 0:
            continue
        for _ in range(50):
            vox = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], tpl.shape))
            centre = (tpl.affine @ np.append(vox + rng.uniform(-0.5, 0.5, 3), 1.0))[:3]
            if all(np.linalg.norm(centre - c) >= (1.2 * (reach + r) + 4.0) * relax
                   for c, r in placed):
                return centre
    raise RuntimeError("could not place a lesion in the template's brain")
