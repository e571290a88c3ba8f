"""Synthetic brain MRI from the shipped MNI ICBM152 template: 'healthy subjects' and 'patients'.

Everything is made from a seed, TorchIO style: :func:`draw_params` draws every random value into a
JSON-serialisable dict, and :func:`regenerate` applies a dict deterministically, so a case is
rebuilt exactly from its recorded parameters (``make_subject(seed) == regenerate(params)``).

A subject is the skull-stripped 2 mm T1 template (80x96x80 voxels, RAS) with, in this order:

1. *lesions* (patients only), drawn in template space inside the white matter: irregular blobs
   (an ellipsoid plus up to three smaller lobes, the boundary roughened by smooth noise) with soft
   edges and a smooth texture, hyperintense (+30..60 % of the white-matter intensity) or
   hypointense (-45..60 %), of 300..8000 mm³ in template space (the warp below changes that by
   up to about +-40 %);
2. a *spatial transform*: a small global affine (rotation, scaling, translation) and a smooth
   random displacement (cubic-spline upsampled control points, a few mm), applied with linear
   interpolation (lesion labels with nearest neighbour);
3. *contrast*: a gamma curve on the white-matter-normalised intensities;
4. a slight *resolution change*: Gaussian blur matching an effective voxel size of 2..2.8 mm;
5. a smooth multiplicative *bias field* (exp of a 3rd-order polynomial);
6. *scanner units*: white matter at 300..1200;
7. *Rician noise* (1..3.5 % of white matter), then the brain mask (the images are skull-stripped,
   background 0).

Every case stays on the template's grid (same shape and affine), so healthy subjects can be
stacked for training without resampling.  :func:`write_dataset` writes a ready-to-use folder with
NIfTI images, brain masks, lesion labels, parameter files, manifests in medae's CSV format, and
one or more patients also as an axial DICOM series.

The template: MNI ICBM152 2009a nonlinear symmetric (Fonov et al. 2011), redistributed with its
copyright notice (``medae/data/NOTICE_MNI_ICBM152.txt``); ``scripts/make_template_data.py``
rebuilds the shipped files.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from medae.io.atomic import atomic_write_csv
from medae.io.nifti import write_nifti

PARAMS_VERSION = 1
TEMPLATE_NAME = "mni_icbm152_2009a_sym_2mm"
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_2mm.nii.gz",
    "brain": "mni_icbm152_brain_2mm.nii.gz",
    "wm": "mni_icbm152_wm_2mm.nii.gz",
}
NOTICE_FILE = "NOTICE_MNI_ICBM152.txt"

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


# ------------------------------------------------------------------------------------------------
# template

@dataclass(frozen=True, eq=False)
class Template:
    """The shipped template: T1 (float32, 0..255, skull-stripped), brain mask, WM probability."""

    t1: np.ndarray
    brain: np.ndarray
    wm: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.t1.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @functools.cached_property
    def wm_value(self) -> float:
        """Median T1 of the template's white matter (probability > 0.9): the intensity unit."""
        return float(np.median(self.t1[self.wm > 0.9]))

    @functools.cached_property
    def brain_depth_mm(self) -> np.ndarray:
        """Distance (mm) from each brain voxel to the outside of the brain."""
        return ndimage.distance_transform_edt(self.brain, sampling=self.spacing).astype(np.float32)

    @functools.cached_property
    def centre_mm(self) -> np.ndarray:
        """Centre of mass of the brain mask in world mm (the centre of the global affine)."""
        com = np.array(ndimage.center_of_mass(self.brain))
        return (self.affine @ np.append(com, 1.0))[:3]


def _read_packaged(name: str) -> nib.Nifti1Image:
    data = resources.files("medae").joinpath("data", name).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)


@functools.lru_cache(maxsize=1)
def _template() -> Template:
    imgs = {k: _read_packaged(v) for k, v in TEMPLATE_FILES.items()}
    affine = imgs["t1"].affine.copy()
    for k, img in imgs.items():
        if img.shape != imgs["t1"].shape or not np.allclose(img.affine, affine):
            raise RuntimeError(f"packaged template file {TEMPLATE_FILES[k]} is not on the T1 grid")
    t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
    brain = np.asarray(imgs["brain"].dataobj) > 0
    wm = np.asarray(imgs["wm"].dataobj, dtype=np.float32) / 255.0
    for a in (t1, brain, wm, affine):
        a.setflags(write=False)
    return Template(t1=t1, brain=brain, wm=wm, affine=affine)


def load_template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The shipped template as ``(t1, brain, wm, affine)``.

    ``t1`` is float32 (X, Y, Z) in RAS+ order, skull-stripped, 0..255 (white matter about 220);
    ``brain`` a bool mask; ``wm`` the white-matter probability (float32, 0..1); ``affine`` the
    voxel → RAS+ mm matrix (2 mm voxels).  The arrays are fresh copies.
    """
    t = _template()
    return t.t1.copy(), t.brain.copy(), t.wm.copy(), t.affine.copy()


def template_notice() -> str:
    """The copyright notice of the MNI ICBM152 template (ship it with any copy of the data)."""
    return resources.files("medae").joinpath("data", NOTICE_FILE).read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# cases

@dataclass(eq=False)
class SyntheticCase:
    """One generated subject on the template grid.

    ``image`` float32 (X, Y, Z) RAS+ in scanner units (0 outside the brain); ``brain`` bool;
    ``lesion`` bool (all False for healthy subjects); ``lesion_labels`` uint8 with lesion ``i``
    (index in ``params["lesions"]``) as value ``i + 1``; ``affine`` voxel → RAS+ mm; ``params``
    every drawn value (JSON-serialisable; :func:`regenerate` rebuilds the arrays from it).
    """

    image: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray
    lesion_labels: np.ndarray
    affine: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def lesion_volumes_mm3(self) -> list[float]:
        """Volume of each lesion of ``params["lesions"]`` as it ended up in ``lesion``."""
        n = len(self.params.get("lesions", []))
        counts = np.bincount(self.lesion_labels.ravel(), minlength=n + 1)[1:n + 1]
        return [float(c) * self.voxel_volume_mm3 for c in counts]

    @property
    def lesion_centres_mm(self) -> list[list[float] | None]:
        """Centre of mass (world RAS+ mm) of each lesion as it ended up in ``lesion``."""
        n = len(self.params.get("lesions", []))
        if n == 0:
            return []
        coms = ndimage.center_of_mass(self.lesion, self.lesion_labels, range(1, n + 1))
        out = []
        for com in coms:
            if not np.all(np.isfinite(com)):
                out.append(None)
            else:
                out.append(_rl((self.affine @ np.append(com, 1.0))[:3], 2))
        return out


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def _rl(a, nd: int = 4) -> list:
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
    tpl = _template()
    rng = np.random.default_rng(seed)
    iso = rng.uniform(*SCALE)
    params: dict[str, Any] = {
        "generator": "medae.synthetic",
        "version": PARAMS_VERSION,
        "template": TEMPLATE_NAME,
        "seed": seed,
        "shape": list(tpl.shape),
        "transform": {
            "rotation_deg": _rl(rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3), 3),
            "scale": _rl(iso * rng.uniform(0.98, 1.02, 3)),
            "translation_mm": _rl(rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, 3), 3),
            "centre_mm": _rl(tpl.centre_mm, 3),
        },
    }
    sd = rng.uniform(*DISPLACEMENT_SD_MM)
    params["displacement"] = {
        "control_grid": list(CONTROL_GRID),
        "sd_mm": _r(sd, 3),
        # (cx, cy, cz, 3) displacements in mm, x/y/z world components
        "control_points_mm": _rl(rng.normal(0.0, sd, (*CONTROL_GRID, 3)), 3),
    }
    params["gamma"] = _r(math.exp(rng.uniform(-GAMMA_LOG, GAMMA_LOG)))
    params["resolution_mm"] = _rl(rng.uniform(*RESOLUTION_MM, 3), 3)
    n_terms = len(_bias_terms(BIAS_ORDER))
    degrees = np.array([sum(t) for t in _bias_terms(BIAS_ORDER)])
    params["bias_field"] = {
        "order": BIAS_ORDER,
        "coefficients": _rl(rng.uniform(-BIAS_COEF, BIAS_COEF, n_terms) / degrees),
    }
    params["wm_value"] = _r(_log_uniform(rng, *WM_VALUE), 2)
    params["noise"] = {"sd_rel": _r(rng.uniform(*NOISE_SD)),
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
        lesion_lobes = [{"offset_mm": _rl(np.asarray(lb["offset_mm"]) * k, 3),
                         "radii_mm": _rl(np.asarray(lb["radii"]) * k, 3),
                         "angles_deg": _rl(lb["angles_deg"], 2)} for lb in lobes]
        reach = max(float(np.linalg.norm(lb["offset_mm"])) + max(lb["radii_mm"])
                    for lb in lesion_lobes)
        factor = rng.uniform(*(HYPER_FACTOR if kind == "hyper" else HYPO_FACTOR))
        centre = _place(rng, tpl, r_eq, reach, placed, strict=kind == "hypo")
        lesion = {
            "kind": kind,
            "centre_mm": _rl(centre, 3),     # template (MNI) space; the subject's warp moves it
            "volume_mm3_target": _r(volume, 1),
            "intensity": _r(factor if kind == "hyper" else -factor),
            "edge_mm": _r(rng.uniform(*LESION_EDGE_MM), 3),
            "texture_sd": _r(rng.uniform(*LESION_TEXTURE_SD)),
            "roughness": _r(rng.uniform(*LESION_ROUGHNESS)),
            "lobes": lesion_lobes,
            "seed": int(rng.integers(2**31 - 1)),
        }
        # one size correction (overlapping lobes, roughness, brain edge), recorded in the lobes
        _, alpha, _ = _lesion_alpha(lesion, tpl)
        got = float(np.count_nonzero(alpha > 0.5)) * tpl.voxel_volume_mm3
        f = float(np.clip((volume / max(got, 1.0)) ** (1 / 3), 0.7, 1.4))
        lesion["lobes"] = [{"offset_mm": _rl(np.asarray(lb["offset_mm"]) * f, 3),
                            "radii_mm": _rl(np.asarray(lb["radii_mm"]) * f, 3),
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
    tpl = _template()
    wm_value = tpl.wm_value

    # 1. lesions in template space
    t1 = tpl.t1
    labels_tpl = np.zeros(tpl.shape, np.uint8)
    if params["lesions"]:
        t1 = t1.copy()
        for i, lesion in enumerate(params["lesions"]):
            _paint_lesion(t1, labels_tpl, i + 1, lesion, tpl, wm_value)

    # 2. spatial transform: for each subject voxel, where to sample the template
    coords = _sampling_coords(params, tpl)
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
    x *= _bias_field(params["bias_field"], tpl.shape)
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


# ------------------------------------------------------------------------------------------------
# pieces

def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _spline_matrix(n: int, c: int) -> np.ndarray:
    """(n, c) matrix: cubic-spline interpolation of ``c`` control values spanning ``n`` samples."""
    pos = np.linspace(0.0, c - 1.0, n)
    eye = np.eye(c)
    return np.stack([ndimage.map_coordinates(eye[:, a], pos[None], order=3, mode="nearest")
                     for a in range(c)], axis=1)


def _sampling_coords(params: dict[str, Any], tpl: Template) -> np.ndarray:
    """Template voxel coordinates (3, X, Y, Z) sampled by each subject voxel."""
    shape = tpl.shape
    aff = params["transform"]
    centre = np.asarray(aff["centre_mm"], dtype=float)
    # subject world → template world: inverse of (scale, rotate about the centre, translate)
    fwd = _rotation(aff["rotation_deg"]) @ np.diag(aff["scale"])
    inv = np.linalg.inv(fwd)
    vox2world = tpl.affine
    world2vox = np.linalg.inv(tpl.affine)
    # combined linear map subject voxel → template voxel (before the displacement)
    lin = np.eye(4)
    lin[:3, :3] = inv
    lin[:3, 3] = centre - inv @ (centre + np.asarray(aff["translation_mm"], dtype=float))
    m = world2vox @ lin @ vox2world
    disp = params["displacement"]
    ctrl = np.asarray(disp["control_points_mm"], dtype=np.float64)
    mats = [_spline_matrix(n, c) for n, c in zip(shape, ctrl.shape[:3], strict=True)]
    # smooth displacement (X, Y, Z, 3) in world mm, then into template voxel units
    field_mm = np.einsum("ia,abcd->ibcd", mats[0], ctrl)
    field_mm = np.einsum("jb,ibcd->ijcd", mats[1], field_mm)
    field_mm = np.einsum("kc,ijcd->ijkd", mats[2], field_mm)
    field_vox = field_mm @ world2vox[:3, :3].T
    coords = np.empty((3, *shape), dtype=np.float32)
    idx = [np.arange(n, dtype=np.float64) for n in shape]
    for d in range(3):
        c = (m[d, 0] * idx[0][:, None, None] + m[d, 1] * idx[1][None, :, None]
             + m[d, 2] * idx[2][None, None, :] + m[d, 3])
        coords[d] = c + field_vox[..., d]
    return coords


@functools.lru_cache(maxsize=4)
def _bias_terms(order: int) -> tuple[tuple[int, int, int], ...]:
    return tuple((i, j, k) for i in range(order + 1) for j in range(order + 1 - i)
                 for k in range(order + 1 - i - j) if i + j + k > 0)


def _bias_field(bias: dict[str, Any], shape: tuple[int, int, int]) -> np.ndarray:
    terms = _bias_terms(int(bias["order"]))
    coefs = bias["coefficients"]
    if len(coefs) != len(terms):
        raise ValueError(f"bias_field: {len(terms)} coefficients expected, got {len(coefs)}")
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    log = np.zeros(shape, np.float32)
    for (i, j, k), c in zip(terms, coefs, strict=True):
        log += np.float32(c) * (axes[0][:, None, None] ** i * axes[1][None, :, None] ** j
                                * axes[2][None, None, :] ** k)
    return np.exp(log)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cell: float) -> np.ndarray:
    """Smooth noise (sd about 1) over ``shape`` with features about ``cell`` voxels wide."""
    low = tuple(max(2, math.ceil(n / cell) + 1) for n in shape)
    coarse = rng.standard_normal(low)
    pos = [np.linspace(0, m - 1, n) for n, m in zip(shape, low, strict=True)]
    grid = np.meshgrid(*pos, indexing="ij")
    out = ndimage.map_coordinates(coarse, grid, order=3, mode="nearest")
    return out / max(float(out.std()), 1e-6)


def _lesion_alpha(lesion: dict[str, Any], tpl: Template,
                  ) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray | None]:
    """The lesion's box in the template grid, its opacity there (0..1, soft edge, inside the
    brain) and its texture (smooth noise, sd about 1)."""
    centre = np.asarray(lesion["centre_mm"], dtype=float)
    lobes = lesion["lobes"]
    edge = float(lesion["edge_mm"])
    reach = max(float(np.linalg.norm(lb["offset_mm"])) + max(lb["radii_mm"]) for lb in lobes)
    reach = reach * (1 + 3 * float(lesion["roughness"])) + 4 * edge + 2.0
    world2vox = np.linalg.inv(tpl.affine)
    c_vox = world2vox[:3, :3] @ centre + world2vox[:3, 3]
    half = np.abs(world2vox[:3, :3]) @ np.full(3, reach)
    lo = np.maximum(np.floor(c_vox - half).astype(int), 0)
    hi = np.minimum(np.ceil(c_vox + half).astype(int) + 1, tpl.shape)
    if np.any(hi <= lo):
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0), np.float32), None
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    ii = np.meshgrid(*[np.arange(a, b, dtype=np.float64) for a, b in zip(lo, hi, strict=True)],
                     indexing="ij")
    world = [tpl.affine[d, 0] * ii[0] + tpl.affine[d, 1] * ii[1] + tpl.affine[d, 2] * ii[2]
             + tpl.affine[d, 3] - centre[d] for d in range(3)]
    rho = np.full(shape, np.inf)
    r_scale = 0.0
    for lb in lobes:
        rot = _rotation(lb["angles_deg"])
        radii = np.asarray(lb["radii_mm"], dtype=float)
        rel = [world[d] - lb["offset_mm"][d] for d in range(3)]
        # coordinates in the lobe's frame: R^T (x - c)
        q = [(rot[0, a] * rel[0] + rot[1, a] * rel[1] + rot[2, a] * rel[2]) / radii[a]
             for a in range(3)]
        rho = np.minimum(rho, np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2))
        r_scale = max(r_scale, float(np.prod(radii)) ** (1 / 3))
    rng = np.random.default_rng(int(lesion["seed"]))
    cell = max(2.0, r_scale / 2.0 / float(np.mean(tpl.spacing)))
    rough = _smooth_noise(rng, shape, cell)
    texture = _smooth_noise(rng, shape, 2.0)
    # signed distance to the boundary, roughly in mm (positive inside), with a rough boundary;
    # nothing beyond 1.5 radii, so the roughness makes no far-away specks
    inside_mm = (1.0 - rho + float(lesion["roughness"]) * np.clip(rough, -2.5, 2.5)) * r_scale
    inside_mm = np.minimum(inside_mm, (1.5 - rho) * r_scale)
    alpha = 1.0 / (1.0 + np.exp(-np.clip(inside_mm / edge, -40, 40)))
    alpha *= tpl.brain[box]
    # keep the main body: drop pieces under a tenth of the largest (with their soft edge)
    pieces, n = ndimage.label(alpha > 0.5)
    if n > 1:
        sizes = np.bincount(pieces.ravel())[1:]
        small = np.isin(pieces, 1 + np.flatnonzero(sizes < 0.1 * sizes.max()))
        if small.any():
            alpha[ndimage.binary_dilation(small, iterations=2)] = 0.0
    return box, alpha, texture


def _paint_lesion(t1: np.ndarray, labels: np.ndarray, value: int, lesion: dict[str, Any],
                  tpl: Template, wm_value: float) -> None:
    """Blend one lesion into ``t1`` (template space, in place) and mark its core in ``labels``."""
    box, alpha, texture = _lesion_alpha(lesion, tpl)
    if texture is None:
        return
    target = wm_value * (1.0 + float(lesion["intensity"])) * (
        1.0 + float(lesion["texture_sd"]) * np.clip(texture, -2.5, 2.5))
    sub = t1[box]
    sub[...] = (sub * (1.0 - alpha) + target * alpha).astype(np.float32)
    core = (alpha > 0.5) & (labels[box] == 0)
    labels[box][core] = value


# ------------------------------------------------------------------------------------------------
# writing

def write_case_nifti(case: SyntheticCase, stem: Path) -> dict[str, Path]:
    """Write ``<stem>.nii.gz`` (int16 with scaling), ``<stem>_brain.nii.gz`` and, for patients,
    ``<stem>_lesion.nii.gz`` (uint8, lesion i as value i + 1).  Returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = {"image": stem.with_name(stem.name + ".nii.gz"),
           "mask": stem.with_name(stem.name + "_brain.nii.gz")}
    write_nifti(case.image, out["image"], affine=case.affine, dtype=np.int16,
                descrip="medae synthetic T1")
    write_nifti(case.brain.astype(np.uint8), out["mask"], affine=case.affine, descrip="brain mask")
    if case.params.get("lesions"):
        out["label"] = stem.with_name(stem.name + "_lesion.nii.gz")
        write_nifti(case.lesion_labels, out["label"], affine=case.affine, descrip="lesion labels")
    return out


def _ds(value: float) -> str:
    """A DICOM decimal string (16 characters at most) for ``value``."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(value)


def _series_grid(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Affine of the DICOM series' own grid: (column, row, slice) with x and y reversed."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
    return affine @ flip


def write_case_dicom(case: SyntheticCase, folder: Path, *, case_id: str,
                     series_number: int = 1) -> dict[str, Path]:
    """Write ``case`` as an axial MR DICOM series in ``folder`` (one file per slice) and its brain
    mask / lesion labels as NIfTI on the series' grid next to it (``<folder>_brain.nii.gz``,
    ``<folder>_lesion.nii.gz``).

    Pixels are int16 with RescaleSlope/Intercept mapping them to the float values; the geometry
    (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, LPS) reproduces the NIfTI
    affine (RAS).  UIDs derive from the case's seed, so rewriting gives the same files.  No real
    patient data: PatientName ``Synthetic^Demo``, PatientID ``SYNTH-<case number>``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = case.image.shape
    a = case.affine
    lps = np.diag([-1.0, -1.0, 1.0])
    # pixel (row r, column c) of slice k is RAS voxel (nx-1-c, ny-1-r, k)
    row_dir = lps @ (-a[:3, 0]) / np.linalg.norm(a[:3, 0])   # along a row: increasing column
    col_dir = lps @ (-a[:3, 1]) / np.linalg.norm(a[:3, 1])   # down a column: increasing row
    dx, dy = float(np.linalg.norm(a[:3, 0])), float(np.linalg.norm(a[:3, 1]))
    dz = float(np.linalg.norm(a[:3, 2]))
    vmax = float(np.abs(case.image).max())
    slope = float(_ds(max(vmax, 1.0) / 32000.0))
    stored = np.round(case.image / slope).astype(np.int16)
    seed = str(case.params.get("seed"))
    uid = generate_uid   # pydicom's root + a hash of the sources: deterministic
    study_uid = uid(entropy_srcs=["medae.synthetic", seed, case_id, "study"])
    series_uid = uid(entropy_srcs=["medae.synthetic", seed, case_id, "series"])
    frame_uid = uid(entropy_srcs=["medae.synthetic", seed, case_id, "frame"])
    number = "".join(ch for ch in case_id if ch.isdigit()) or "0"
    for k in range(nz):
        sop_uid = uid(entropy_srcs=["medae.synthetic", seed, case_id, "slice", str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k + 1:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName, ds.PatientID = "Synthetic^Demo", f"SYNTH-{number}"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "", "", "", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.Manufacturer = "MR", "medae synthetic"
        ds.SeriesDescription = "synthetic T1 (MNI ICBM152 2009a)"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        pos_ras = a @ np.array([nx - 1, ny - 1, k, 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in lps @ pos_ras[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.SliceThickness = _ds(dz)
        ds.SpacingBetweenSlices = _ds(dz)
        ds.SliceLocation = _ds(float(pos_ras[2]))
        pixels = np.ascontiguousarray(stored[::-1, ::-1, k].T).astype("<i2")
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), "0"
        ds.PixelData = pixels.tobytes()
        ds.save_as(path, enforce_file_format=True)
    grid = _series_grid(a, case.image.shape)
    out = {"image": folder, "mask": folder.with_name(folder.name + "_brain.nii.gz")}
    write_nifti(case.brain[::-1, ::-1, :].astype(np.uint8), out["mask"], affine=grid,
                descrip="brain mask (DICOM series grid)")
    if case.params.get("lesions"):
        out["label"] = folder.with_name(folder.name + "_lesion.nii.gz")
        write_nifti(np.ascontiguousarray(case.lesion_labels[::-1, ::-1, :]), out["label"],
                    affine=grid, descrip="lesion labels (DICOM series grid)")
    return out


def _case_seed(seed: int, group: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), group, index]).generate_state(1)[0] >> 1)


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def write_dataset(out_dir: str | os.PathLike, *, n_healthy: int, n_patients: int, seed: int = 0,
                  dicom_patients: int = 1, lesions: tuple[int, int] = (2, 4)) -> dict[str, Any]:
    """Write a demo dataset under ``out_dir`` and return a summary.

    Layout::

        healthy/sub-XX.nii.gz, sub-XX_brain.nii.gz
        patients/pat-XX.nii.gz, pat-XX_brain.nii.gz, pat-XX_lesion.nii.gz
        patients_dicom/pat-XX/IM0001.dcm ...        (the first ``dicom_patients`` patients)
        patients_dicom/pat-XX_brain.nii.gz, pat-XX_lesion.nii.gz   (on the series' grid)
        params/<case>.json                           (regenerate(json.load(...)) rebuilds a case)
        healthy.csv                  case_id,image,mask
        patients.csv                 case_id,image,mask,label (DICOM patients by their series)
        patients_nifti.csv           the same with every patient as NIfTI
        lesions.csv                  one row per lesion (label value): kind, centre of mass in
                                     the image (RAS mm), volume (mm³), intensity change
        dataset.json                 seed, counts and this summary

    Patients get ``lesions`` (min, max) lesions each; every fourth lesion of the dataset is
    hypointense, the others hyperintense.  Lesion labels hold lesion ``i`` as value ``i + 1``.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    if n_healthy < 0 or n_patients < 0 or not 0 <= dicom_patients <= n_patients:
        raise ValueError("need n_healthy >= 0 and 0 <= dicom_patients <= n_patients")
    for sub in ("healthy", "patients", "params"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(max(n_healthy, n_patients, 1) - 1)))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    healthy_rows, patient_rows, nifti_rows, lesion_rows, cases = [], [], [], [], []

    def save_params(case_id: str, params: dict[str, Any]) -> Path:
        path = out / "params" / f"{case_id}.json"
        path.write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
        return path

    for i in range(n_healthy):
        case_id = f"sub-{i:0{width}d}"
        case = make_subject(_case_seed(seed, 0, i))
        paths = write_case_nifti(case, out / "healthy" / case_id)
        save_params(case_id, case.params)
        healthy_rows.append([case_id, _rel(paths["image"], out), _rel(paths["mask"], out)])
        cases.append({"case_id": case_id, "group": "healthy", "seed": case.params["seed"]})
    n_lesions_total = 0
    for i in range(n_patients):
        case_id = f"pat-{i:0{width}d}"
        n = int(rng.integers(lesions[0], lesions[1] + 1))
        kinds = ["hypo" if (n_lesions_total + j) % 4 == 3 else "hyper" for j in range(n)]
        n_lesions_total += n
        case = make_subject(_case_seed(seed, 1, i), lesions=n, kinds=kinds)
        paths = write_case_nifti(case, out / "patients" / case_id)
        save_params(case_id, case.params)
        row = [case_id, *(_rel(paths[k], out) for k in ("image", "mask", "label"))]
        nifti_rows.append(row)
        if i < dicom_patients:
            dpaths = write_case_dicom(case, out / "patients_dicom" / case_id, case_id=case_id)
            row = [case_id, *(_rel(dpaths[k], out) for k in ("image", "mask", "label"))]
        patient_rows.append(row)
        for j, (lesion, volume, centre) in enumerate(zip(
                case.params["lesions"], case.lesion_volumes_mm3, case.lesion_centres_mm,
                strict=True)):
            lesion_rows.append([case_id, j + 1, lesion["kind"], *(centre or ["", "", ""]),
                                round(volume, 1), lesion["intensity"]])
        cases.append({"case_id": case_id, "group": "patients", "seed": case.params["seed"],
                      "dicom": i < dicom_patients,
                      "lesion_volumes_mm3": [round(v, 1) for v in case.lesion_volumes_mm3]})

    def write_csv(name: str, header: list[str], rows: list[list]) -> Path:
        return atomic_write_csv(out / name, header, rows)

    summary: dict[str, Any] = {
        "generator": "medae.synthetic", "version": PARAMS_VERSION, "template": TEMPLATE_NAME,
        "seed": int(seed), "n_healthy": n_healthy, "n_patients": n_patients,
        "dicom_patients": dicom_patients, "shape": list(_template().shape),
        "spacing_mm": list(_template().spacing), "cases": cases,
    }
    if healthy_rows:
        summary["healthy_csv"] = str(write_csv("healthy.csv", ["case_id", "image", "mask"],
                                               healthy_rows))
    if patient_rows:
        header = ["case_id", "image", "mask", "label"]
        summary["patients_csv"] = str(write_csv("patients.csv", header, patient_rows))
        summary["patients_nifti_csv"] = str(write_csv("patients_nifti.csv", header, nifti_rows))
        summary["lesions_csv"] = str(write_csv(
            "lesions.csv", ["case_id", "lesion", "kind", "x_mm", "y_mm", "z_mm", "volume_mm3",
                            "intensity"], lesion_rows))
    (out / "NOTICE_MNI_ICBM152.txt").write_text(template_notice(), encoding="utf-8")
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    with open(out / "dataset.json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
        fh.write("\n")
    return summary
