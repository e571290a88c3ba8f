"""Preprocessing shared by training and scoring, stored with the model, invertible to the scan.

Steps, on a :class:`~medae.io.Scan` (already oriented closest to RAS+) and, for multi-sequence
models, its other co-registered sequences on the same grid: resample to a target spacing, find
the foreground (brain) mask (given, or computed from the first input), normalise each input's
intensities inside the mask (percentile scaling by default), crop/pad to the model's size around
the mask's centre.  :func:`to_scan_space` undoes the geometric steps so maps land on the scan's
voxels.  :func:`prepare_source` is the one path from a case on disk to model input.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from medae.device import LARGE_VOXELS
from medae.errors import MedaeError, ScanReadError
from medae.io.discover import ScanSource
from medae.io.nifti import MAX_VOXELS as _MAX_RESAMPLED
from medae.io.scan import Scan
from medae.io.sequences import nnunet_parts, on_grid, same_grid
from medae.masks import (
    BRAIN_VOLUME_CM3,
    FILLED,
    compute_mask,
    implausible_brain,
    mask_volume_cm3,
)
from medae.register import TemplateFit, register_template

Size3 = tuple[int | None, int | None, int | None]
#: the values of ``preprocess.brain`` (and ``--brain``)
BRAIN_MODES = ("auto", "extract", "given", "none")
#: the values of ``preprocess.registration`` (and ``--registration``)
REGISTRATION_MODES = ("auto", "rigid", "none")
#: the values of ``preprocess.space``
SPACES = ("native", "template")
#: the values of ``preprocess.bias_correction``
BIAS_CORRECTIONS = ("n4", "none")


NORMALISATIONS = ("percentile", "robust", "zscore", "histogram", "none")
#: ``normalise: histogram``: the brain percentiles between the ``percentiles`` pair that are
#: mapped piecewise-linearly onto the standard learned from the training scans (Nyul & Udupa
#: 1999, as TorchIO's HistogramStandardization: its deciles)
HISTOGRAM_LANDMARKS = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
#: ``normalise: robust``: 0 and 1 are the median minus 3.5 and plus 2 interquartile ranges, where
#: the 0.5th and 99.5th percentiles of lesion-free brain voxels lie in the shared FLAIR scans
#: (BraTS 2013 and Lesjak MS, lesions left out: -2.5 to -5.3 and +1.2 to +2.2 IQR), so healthy
#: tissue spans about what ``percentile`` gives it on a scan without lesions
ROBUST_RANGE = (3.5, 2.0)


def _finite_increasing(values) -> bool:
    """Whether ``values`` are real, finite numbers (no booleans), strictly increasing."""
    return (all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in values) and all(b > a for a, b in itertools.pairwise(values)))


@dataclass(frozen=True)
class PreprocessConfig:
    """How scans become model input.  Every field is stored in the model bundle.

    Attributes:
        spacing: target voxel size in mm (x, y, z of the RAS array); ``None`` keeps the scan's.
        size: crop/pad target in voxels per axis; ``None`` on an axis keeps that axis.
        mask: ``"auto"`` (the given mask, else a constant background, else Otsu), ``"given"``
            (a mask must be supplied), ``"computed"``, or ``"none"`` (everything is foreground).
        normalise: ``"percentile"`` (map the ``percentiles`` inside the mask to 0 and 1),
            ``"robust"`` (the median inside the mask minus :data:`ROBUST_RANGE` [0] and plus
            [1] interquartile ranges to 0 and 1: set by the healthy-looking bulk of the brain,
            so a large bright lesion does not rescale the scan as it moves a high percentile),
            ``"zscore"`` (mean 0, sd 1 inside the mask), ``"histogram"`` (histogram
            standardisation, Nyul & Udupa: ``percentile``'s 0 and 1, and between them the
            brain's ``landmarks`` (its deciles by default) mapped piecewise-linearly onto
            ``standard``, so that every scan's tissues land where the training scans' did) or
            ``"none"``.
        percentiles: low and high percentiles for ``"percentile"`` and ``"histogram"``.
        landmarks: ``normalise: histogram``'s landmarks, brain percentiles strictly between
            the ``percentiles`` pair (default :data:`HISTOGRAM_LANDMARKS`, the deciles).  Fewer
            high ones (e.g. up to the 70th) leave the bright tail, where a large lesion sits,
            out of the mapping's knots.
        standard: ``normalise: histogram``'s standard: per input, the mean of the training
            scans' landmarks in ``percentile`` units (learned by ``medae train`` when not
            given, and stored in the bundle); ``None`` before it is learned (``percentile``
            then).
        clip: clip normalised values to [0, 1] (needed for BCE); off by default so bright
            lesions keep their contrast.
        inputs: the sequences the model reads, in channel order (e.g. ``[flair, t1]``), matched
            by name against a case's sequences (manifest columns), or by position when the
            case names them by nnU-Net index (``CASE_0000``, ``CASE_0001``, ...); ``None``: one
            channel, the case's first sequence.  The first input sets the brain mask.
        brain: how a brain recipe gets its brain mask, checked for plausibility (see
            :func:`brain_mask`): ``"auto"`` (the mask given with the scan; else a
            skull-stripped scan's background rule, when its mask is a plausible brain; else
            brain extraction), ``"extract"`` (always brain extraction), ``"given"`` (the
            scan's mask must be supplied), or ``"none"`` (not a brain recipe: ``mask`` alone
            decides, nothing is checked; the default, and what bundles without the key did).
        brain_volume_cm3: the plausible volumes of a brain mask, low and high, in cm³ (an
            adult's by default; set it for children or neonates).
        bias_correction: ``"n4"`` (each input divided by its N4 bias field, fitted inside the
            brain mask: :mod:`medae.bias`) or ``"none"``.
        n4_shrink: N4 fits its field on the scan shrunk by this factor per axis.
        registration: how a case's further sequences come onto the first sequence's grid:
            ``"none"`` (through world coordinates as the scanner wrote them, refused when they
            cover less than half of the first's field of view: the default, and what bundles
            without the key did), ``"rigid"`` (each further sequence registered rigidly to the
            first by mutual information, checked, and resampled once: :mod:`medae.register`)
            or ``"auto"`` (rigid for a sequence stored on a grid of its own; a sequence on the
            first's very grid, shape and affine, was written there by whoever co-registered
            them, as BraTS and the MS scans are, and is taken as it is, byte for byte).
        space: where the model sees the scan: ``"native"`` (resampled to ``spacing`` on the
            scan's own axes: the default, and what bundles without the key did) or
            ``"template"`` (the first input, inside its brain mask, registered by an affine
            transform to the shipped 2 mm MNI template, and every input resampled once onto the
            template's grid: :func:`medae.register.register_template`; needs ``spacing`` [2, 2,
            2]).  Maps are on the scan's own grid either way.
    """

    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    size: Size3 = (None, None, None)
    mask: str = "auto"
    normalise: str = "percentile"
    percentiles: tuple[float, float] = (0.5, 99.5)
    clip: bool = False
    inputs: tuple[str, ...] | None = None
    brain: str = "none"
    brain_volume_cm3: tuple[float, float] = BRAIN_VOLUME_CM3
    bias_correction: str = "none"
    n4_shrink: int = 4
    registration: str = "none"
    space: str = "native"
    standard: tuple[tuple[float, ...], ...] | None = None
    landmarks: tuple[float, ...] = HISTOGRAM_LANDMARKS

    def __post_init__(self) -> None:
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise MedaeError(f"preprocess.percentiles: need 0 <= low < high <= 100, got {lo}, {hi}")
        lm = self.landmarks
        if (not isinstance(lm, tuple) or not 1 <= len(lm) <= 32
                or not _finite_increasing(lm)
                or (self.normalise == "histogram" and not lo < lm[0] <= lm[-1] < hi)):
            raise MedaeError(f"preprocess.landmarks: 1 to 32 increasing percentiles strictly "
                             f"between preprocess.percentiles {list(self.percentiles)}, "
                             f"got {lm!r}")
        if tuple(map(float, lm)) != HISTOGRAM_LANDMARKS and self.normalise != "histogram":
            raise MedaeError("preprocess.landmarks: only with preprocess.normalise histogram")
        if self.standard is not None:
            if self.normalise != "histogram":
                raise MedaeError("preprocess.standard: only with preprocess.normalise histogram")
            ok = (isinstance(self.standard, tuple) and len(self.standard) == self.channels
                  and all(len(row) == len(self.landmarks) and _finite_increasing(row)
                          and row[0] >= -1e-3 and row[-1] <= 1 + 1e-3
                          for row in self.standard))
            if not ok:  # landmarks lie between the scan's 0.5th and 99.5th percentiles: [0, 1]
                raise MedaeError(f"preprocess.standard: per input, {len(self.landmarks)} "
                                 f"increasing numbers between 0 and 1 (the places of "
                                 f"preprocess.landmarks), got {self.standard!r}")
        if self.space not in SPACES:
            raise MedaeError(f"preprocess.space: unknown value {self.space!r} "
                             f"(known: {', '.join(SPACES)})")
        if self.space == "template" and (self.spacing is None
                                         or tuple(map(float, self.spacing)) != (2.0, 2.0, 2.0)):
            raise MedaeError("preprocess.space template: the model sees the shipped template's "
                             f"2 mm grid: set preprocess.spacing [2, 2, 2], not {self.spacing}")
        if self.registration not in REGISTRATION_MODES:
            raise MedaeError(f"preprocess.registration: unknown value {self.registration!r} "
                             f"(known: {', '.join(REGISTRATION_MODES)})")
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise MedaeError(f"preprocess.bias_correction: unknown value "
                             f"{self.bias_correction!r} (known: {', '.join(BIAS_CORRECTIONS)})")
        if (isinstance(self.n4_shrink, bool) or not isinstance(self.n4_shrink, int)
                or not 1 <= self.n4_shrink <= 16):
            raise MedaeError(f"preprocess.n4_shrink: an integer from 1 to 16, got "
                             f"{self.n4_shrink!r}")
        if self.brain not in BRAIN_MODES:
            raise MedaeError(f"preprocess.brain: unknown value {self.brain!r} "
                             f"(known: {', '.join(BRAIN_MODES)})")
        if self.brain != "none" and self.mask == "none":
            raise MedaeError(f"preprocess.brain {self.brain} needs a brain mask: not with "
                             "preprocess.mask none")
        vol = self.brain_volume_cm3
        if (not isinstance(vol, tuple) or len(vol) != 2
                or not _finite_increasing(vol) or vol[0] < 0):
            raise MedaeError("preprocess.brain_volume_cm3: need [low, high] cm³ with "
                             f"0 <= low < high, got {self.brain_volume_cm3!r}")
        if self.inputs is not None and (
                not isinstance(self.inputs, tuple) or not 1 <= len(self.inputs) <= 16
                or not all(isinstance(n, str) and n.strip() for n in self.inputs)
                or len({n.lower() for n in self.inputs}) != len(self.inputs)):
            raise MedaeError("preprocess.inputs: null or a list of 1 to 16 distinct sequence "
                             f"names, got {self.inputs!r}")
        if self.mask not in ("auto", "given", "computed", "none"):
            raise MedaeError(f"preprocess.mask: unknown value {self.mask!r}")
        if self.normalise not in NORMALISATIONS:
            raise MedaeError(f"preprocess.normalise: unknown value {self.normalise!r}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise MedaeError(
                f"preprocess.spacing: need three positive mm values, got {self.spacing}")
        if len(self.size) != 3 or any(s is not None and int(s) < 1 for s in self.size):
            raise MedaeError(f"preprocess.size: need three sizes (or null), got {self.size}")

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedaeError(f"preprocess: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        v = dict(values)
        for key in ("spacing", "size", "percentiles", "inputs", "brain_volume_cm3", "landmarks"):
            if isinstance(v.get(key), list):
                v[key] = tuple(v[key])
        if isinstance(v.get("standard"), list):
            v["standard"] = tuple(tuple(r) if isinstance(r, list) else r for r in v["standard"])
        return cls(**v)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["inputs"] is None:  # bundles of one-sequence models stay as they were
            del d["inputs"]
        if d["brain"] == "none":  # and those of recipes that are not brain recipes
            del d["brain"]
            if tuple(d["brain_volume_cm3"]) == BRAIN_VOLUME_CM3:
                del d["brain_volume_cm3"]
        if d["bias_correction"] == "none" and d["n4_shrink"] == 4:  # nor those without N4
            del d["bias_correction"], d["n4_shrink"]
        if d["registration"] == "none":  # nor those that take sequences in world space
            del d["registration"]
        if d["space"] == "native":  # nor those whose models see the scan on its own axes
            del d["space"]
        if tuple(map(float, d["landmarks"])) == HISTOGRAM_LANDMARKS:  # nor those of the deciles
            del d["landmarks"]
        if d["standard"] is None:  # nor those without a learned histogram standard
            del d["standard"]
        else:
            d["standard"] = [list(r) for r in d["standard"]]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @property
    def channels(self) -> int:
        """How many input channels the model takes."""
        return 1 if self.inputs is None else len(self.inputs)


@dataclass
class Prepared:
    """A preprocessed scan: model-space ``image`` (C, x, y, z) and ``mask`` (x, y, z), and how
    to go back to the scan's grid."""

    image: np.ndarray  # float32 (C, X, Y, Z)
    mask: np.ndarray  # bool (X, Y, Z)
    scan_shape: tuple[int, int, int]  # the Scan's array shape
    resampled_shape: tuple[int, int, int]
    offset: tuple[int, int, int]  # model-space origin inside the resampled volume (may be < 0)
    stats: list[dict] = field(default_factory=list)  # per channel: the normalisation's statistics
    label: np.ndarray | None = None  # bool (X, Y, Z), when a lesion label was given
    native_mask: np.ndarray | None = None  # bool, the brain mask on the scan's own grid
    mask_rule: str = ""  # how the brain mask was made (recorded in bundles and results)
    # per channel, the input on the scan's own grid in its own units (scoring compares the
    # reconstruction with these); dropped with keep_native=False
    native_inputs: list[np.ndarray] | None = None
    inputs: tuple[str, ...] = ()  # the case's sequence read into each channel
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm per model-space voxel
    brain: str = "none"  # the preprocess.brain mode that made the mask
    brain_volume_cm3: float | None = None  # the brain mask's volume (brain recipes)
    seconds: dict[str, float] = field(default_factory=dict)  # e.g. {"brain extraction": 5.2}
    # per further sequence registered to the first (preprocess.registration): the transform
    # found, its mutual information and seconds (medae.register.Registration.record)
    registration: dict[str, dict] = field(default_factory=dict)
    # preprocess.space template: the scan's affine fit to the template (model space is the
    # template's grid; medae.register.TemplateFit), else None
    template: TemplateFit | None = None


#: scans of more voxels than this are held in 16 bits when scored, where that loses nothing
COMPACT_ABOVE = LARGE_VOXELS


def _resize(array: np.ndarray, shape: tuple[int, int, int], nearest: bool) -> np.ndarray:
    if tuple(array.shape) == tuple(shape):
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if nearest:
        out = F.interpolate(t, size=shape, mode="nearest-exact")
    else:
        out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()


def resize_mask(mask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A boolean mask resized by nearest neighbour (PyTorch's ``nearest-exact`` rule, as
    :func:`_resize` does), by indexing: no float32 copy of the mask (600 MiB on a CT)."""
    if tuple(mask.shape) == tuple(shape):
        return np.asarray(mask, bool)
    index = [_axis_sources(n_in, n_out, np.arange(n_out), nearest=True)[0]
             for n_in, n_out in zip(mask.shape, shape, strict=True)]
    return np.asarray(mask, bool)[np.ix_(*index)]


def intensity_stats(image: np.ndarray, mask: np.ndarray, config: PreprocessConfig,
                    channel: int = 0) -> dict:
    """The statistics that :func:`apply_normalisation` uses, from the voxels inside ``mask``
    (``channel``: which input, for ``normalise: histogram``'s standard)."""
    inside = image[mask]  # a copy: the percentiles may reorder it (no second copy)
    if config.normalise in ("percentile", "robust", "histogram") and inside.dtype != np.float32:
        inside = inside.astype(np.float32)  # a compacted scan: the float32 scan's percentiles
    if inside.size == 0:
        raise MedaeError("the foreground mask is empty: nothing to normalise")
    # every normalisation also records the interquartile range of the voxels (in the scan's
    # units): scoring.map_units iqr measures the residual in it (see normalised_iqr)
    if config.normalise in ("percentile", "histogram"):
        hist = config.normalise == "histogram"
        values = [float(v) for v in np.percentile(
            inside, (*config.percentiles, 25, 75, *(config.landmarks if hist else ())),
            overwrite_input=True)]
        lo, hi, q1, q3 = values[:4]
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            raise MedaeError("constant intensity inside the mask: cannot normalise")
        out = {"low": lo, "high": hi, "iqr": q3 - q1}
        if hist:  # the quartiles and landmarks, and the standard they go to once learned
            out.update(q1=q1, q3=q3, landmarks=values[4:])
            if config.standard is not None:
                out["standard"] = [float(v) for v in config.standard[channel]]
        return out
    if config.normalise == "robust":
        q1, median, q3 = (float(v) for v in np.percentile(inside, (25, 50, 75),
                                                           overwrite_input=True))
        iqr = q3 - q1
        if iqr <= 1e-12 * max(1.0, abs(median)):
            raise MedaeError("the intensities inside the mask have no spread (interquartile "
                             "range 0): cannot normalise robustly (use normalise: percentile)")
        return {"low": median - ROBUST_RANGE[0] * iqr, "high": median + ROBUST_RANGE[1] * iqr,
                "iqr": iqr}
    if config.normalise == "zscore":
        mean, sd = float(inside.mean(dtype=np.float64)), float(inside.std(dtype=np.float64))
        if sd <= 1e-12 * max(1.0, abs(mean)):
            raise MedaeError("constant intensity inside the mask: cannot normalise")
        q1, q3 = (float(v) for v in np.percentile(inside, (25, 75), overwrite_input=True))
        return {"mean": mean, "sd": sd, "iqr": q3 - q1}
    q1, q3 = (float(v) for v in np.percentile(inside, (25, 75), overwrite_input=True))
    return {"iqr": q3 - q1}


def normalised_iqr(stats: dict) -> float:
    """The interquartile range of a scan's brain intensities in the units of its normalised
    image (:func:`intensity_stats` recorded it in the scan's units): dividing a residual of the
    normalised image by it gives the residual in interquartile ranges of that scan."""
    iqr = stats.get("iqr")
    if iqr is None:
        raise MedaeError("no interquartile range recorded for this scan's intensities")
    if "standard" in stats:  # histogram standardisation: the quartiles' distance once mapped
        q = apply_normalisation(np.array([stats["q1"], stats["q3"]], np.float64), stats)
        out = float(q[1] - q[0])
    elif "low" in stats:
        out = iqr / (stats["high"] - stats["low"])
    elif "mean" in stats:
        out = iqr / stats["sd"]
    else:
        out = iqr
    if not out > 1e-12:
        raise MedaeError("the brain intensities have no spread (interquartile range 0): the map "
                         "cannot be measured in interquartile ranges (scoring.map_units: "
                         "normalised)")
    return float(out)


def apply_normalisation(image: np.ndarray, stats: dict, clip: bool = False) -> np.ndarray:
    """Normalised intensities (float32) everywhere (no masking): the same rule on any grid."""
    if "low" in stats:
        out = (image - np.float32(stats["low"])) / np.float32(stats["high"] - stats["low"])
        if "standard" in stats:
            out = _piecewise(out, *_knots(stats))
    elif "mean" in stats:
        out = (image - np.float32(stats["mean"])) / np.float32(stats["sd"])
    else:
        out = np.array(image, dtype=np.float32, copy=True)
    out = out.astype(np.float32, copy=False)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def denormalise(image: np.ndarray, stats: dict) -> np.ndarray:
    """Back to the scan's units (the inverse of :func:`apply_normalisation` without clipping)."""
    if "low" in stats:
        if "standard" in stats:
            source, standard = _knots(stats)
            image = _piecewise(image, standard, source)
        return image * (stats["high"] - stats["low"]) + stats["low"]
    if "mean" in stats:
        return image * stats["sd"] + stats["mean"]
    return image


def _knots(stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """``normalise: histogram``: a scan's landmarks in ``percentile`` units (0 and 1 at its ends,
    kept strictly increasing) and the standard's places for them."""
    source = increasing(np.concatenate(([0.0], normalised_landmarks(stats), [1.0])))
    standard = np.concatenate(([0.0], np.asarray(stats["standard"], np.float64), [1.0]))
    return source, standard


def increasing(values: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``values`` made strictly increasing by a hair where they tie (a scan of few distinct
    intensities), so that a piecewise-linear map through them is defined."""
    out = np.array(values, np.float64)
    for i in range(1, out.size):
        out[i] = max(out[i], out[i - 1] + eps)
    return out


def normalised_landmarks(stats: dict) -> np.ndarray:
    """``normalise: histogram``: a scan's landmarks (``preprocess.landmarks``, the deciles by
    default) in ``percentile`` units, what the standard is learned from."""
    return (np.asarray(stats["landmarks"], np.float64) - stats["low"]) / (stats["high"]
                                                                          - stats["low"])


def standardise_prepared(prepared: Prepared, standard) -> None:
    """Map a scan prepared before its histogram standard was known (its model-space image as
    ``percentile`` gives it) onto ``standard`` (per input), in place: the image and statistics
    preparing it with the standard gives."""
    for c, st in enumerate(prepared.stats):
        st["standard"] = [float(v) for v in standard[c]]
        image = prepared.image[c]
        inside = image != 0  # the background stays 0 (0 is a knot of the map)
        image[inside] = _piecewise(image[inside], *_knots(st))


def _piecewise(values: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """The piecewise-linear map through the knots ``xp -> fp``, continued beyond the ends with
    the end segments' slopes (a lesion brighter than the 99.5th percentile keeps its contrast);
    float32, the input's shape."""
    x = np.asarray(values, np.float32)
    out = np.interp(x, xp, fp).astype(np.float32)
    lo, hi = x < xp[0], x > xp[-1]
    if lo.any():
        out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    if hi.any():
        out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return out


def _crop_pad(array: np.ndarray, offset, size, fill=0) -> np.ndarray:
    out = np.full(size, fill, dtype=array.dtype)
    src, dst = [], []
    for o, s, n in zip(offset, size, array.shape, strict=True):
        a, b = max(o, 0), min(o + s, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - o, a - o + max(0, b - a)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def brain_mask(image: np.ndarray, config: PreprocessConfig, mask: np.ndarray | None = None,
               spacing=(1.0, 1.0, 1.0), seconds: dict | None = None) -> tuple[np.ndarray, str]:
    """The foreground mask of ``image`` (a scan's array: the first input) on its own grid, and
    the rule that made it (``spacing``: the scan's, mm; ``seconds`` receives the time spent in
    brain extraction).

    With ``config.brain`` other than ``"none"`` the mask must look like a brain (a volume within
    ``brain_volume_cm3``, one large piece, not filling the field of view's edge), or the scan is
    refused with a :class:`MedaeError` that says why; a head that is not skull-stripped is
    brain-extracted (:mod:`medae.brain`), and refused when the extractor is not installed.
    """
    mode = config.brain
    if mode == "none":
        if config.mask == "none":
            return np.ones(image.shape, bool), "none: every voxel"
        if mask is not None and config.mask != "computed":
            return np.asarray(mask) > 0, "given (the mask supplied with the scan)"
        return compute_mask(image)
    bounds = config.brain_volume_cm3
    one_piece = False
    if mode == "given" or (mode == "auto" and mask is not None and config.mask != "computed"):
        if mask is None:
            raise MedaeError("preprocess.brain given: no brain mask was supplied with the scan "
                             "(manifest column mask)")
        out, rule = np.asarray(mask) > 0, f"{mode}: the mask supplied with the scan"
    else:
        why = ""
        if mode == "auto":
            found = compute_mask(image, otsu=False)
            if found is None:
                why = "no constant background"
            else:
                problem = implausible_brain(found[0], spacing, bounds, one_piece=True,
                                            image=image)
                if problem is None:
                    return found[0], f"auto, skull-stripped: {found[1]}"
                why = f"{found[1].removesuffix(FILLED)}: {problem}"
        from medae.brain import METHOD, ExtractorMissing, extract_brain

        t0 = time.perf_counter()
        try:
            out = extract_brain(image)
        except ExtractorMissing as exc:
            if mode == "auto":
                raise MedaeError(f"not skull-stripped ({why}), and {exc}") from None
            raise
        if seconds is not None:
            seconds["brain extraction"] = time.perf_counter() - t0
        one_piece = True  # the extraction keeps its largest component
        rule = (f"{mode}: brain extracted by {METHOD}"
                + (f" (not skull-stripped: {why})" if why else ""))
    problem = implausible_brain(out, spacing, bounds, one_piece=one_piece, image=image)
    if problem is not None:
        raise MedaeError(f"{problem}: not a brain, not scored (mask by preprocess.brain {rule})")
    return out, rule


def input_names(source: ScanSource, config: PreprocessConfig) -> list[str]:
    """The case's sequence read into each of the model's channels (see
    ``PreprocessConfig.inputs``); a one-line error naming the case when one is missing."""
    have = source.sequence_names
    if config.inputs is None:
        return [have[0]]
    by_name = {n.lower(): n for n in have}
    positional = all(n == "image" or nnunet_parts(f"x_{n}") for n in have)
    out = []
    for i, want in enumerate(config.inputs):
        if want.lower() in by_name:
            out.append(by_name[want.lower()])
        elif positional and i < len(have):
            out.append(have[i])  # CASE_000i is the model's i-th input
        else:
            raise ScanReadError(source.path, f"case {source.case_id} has no sequence {want!r} "
                                             f"(it has {', '.join(have)}); the model reads "
                                             f"{', '.join(config.inputs)}")
    return out


def prepare_source(source: ScanSource, config: PreprocessConfig, *, keep_native: bool = True,
                   with_label: bool = False, compact: bool = False) -> tuple[Scan, Prepared]:
    """Read a case (the sequences the model reads, the mask, and with ``with_label`` the
    label) and preprocess it: the one path from disk to model input, for training, calibration
    and scoring alike.  Returns the case's first sequence (its grid) and the prepared input.

    ``compact``: a first sequence of more than :data:`COMPACT_ABOVE` voxels whose values are
    whole numbers in int16's (or uint16's) range is held in 16 bits (:meth:`Scan.compact`: the
    same values in half the memory; scoring does this for CT-size volumes)."""
    names = input_names(source, config)
    scan = source.load()
    if compact and scan.array.size > COMPACT_ABOVE:
        scan.compact()
    mask = source.load_companion("mask", scan)
    arrays, registered = sequences_on_grid(source, scan, names, config.registration, mask)
    label = source.load_companion("label", scan) if with_label else None
    files = {source.name: source.path, **{seq.name: seq.path for seq in source.sequences}}
    prep = preprocess(scan, config, mask=mask, label=label,
                      keep_native=keep_native, channels=[arrays[n] for n in names],
                      channel_sources=[str(files.get(n, scan.source)) for n in names])
    prep.inputs = tuple(names)
    if registered:
        prep.registration = registered
        prep.seconds["registration"] = sum(r["seconds"] for r in registered.values())
    return scan, prep


def sequences_on_grid(source: ScanSource, scan: Scan, names: list[str], registration: str = "none",
                      mask: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The case's sequences ``names`` on ``scan``'s (its first sequence's) array grid, and for
    each further sequence registered to the first the record of its transform (see
    ``PreprocessConfig.registration``; ``mask``: the brain mask supplied with the scan, the
    registration metric's region)."""
    if registration == "none":
        return source.load_sequences(scan, names), {}
    from medae.register import register_rigid

    arrays, records = {source.name: scan.array}, {}
    for seq in source.sequences:
        if seq.name not in names:
            continue
        other = source.load_sequence(seq)
        if registration == "auto" and same_grid(scan, other):
            arrays[seq.name] = on_grid(scan, other, source.what(seq))  # as it is
            continue
        found = register_rigid(scan, other, source.what(seq), mask)
        arrays[seq.name], records[seq.name] = found.array, found.record()
    return arrays, records


def preprocess(scan: Scan, config: PreprocessConfig, mask: np.ndarray | None = None,
               label: np.ndarray | None = None, keep_native: bool = True,
               channels: list[np.ndarray] | None = None,
               channel_sources: list[str] | None = None) -> Prepared:
    """Turn a scan into model input.  ``mask``/``label`` are arrays on the scan's array grid;
    ``channels`` the model's inputs on that grid (default: the scan's own array, one channel).

    The brain mask (from the first channel) and each channel's intensity statistics come from
    the scan at its own resolution, so scoring can compare the reconstruction with the scan's own
    normalised voxels (``keep_native=False`` drops the scan-grid arrays from the result, e.g.
    for training caches).  ``channel_sources`` names each channel's file in messages (default:
    the scan's).
    """
    channels = [scan.array] if channels is None else list(channels)
    if len(channels) != config.channels:
        raise MedaeError(f"{scan.source}: {len(channels)} input(s) for a model that reads "
                         f"{config.channels}")
    for arr in channels:
        if arr.shape != scan.shape:
            raise MedaeError(f"{scan.source}: an input of shape {arr.shape} is not on the "
                             f"scan's grid {scan.shape}")
    if mask is not None and mask.shape != scan.shape:
        raise MedaeError(f"{scan.source}: mask shape {mask.shape} differs from scan {scan.shape}")
    if label is not None and label.shape != scan.shape:
        raise MedaeError(f"{scan.source}: label shape {label.shape} differs from scan {scan.shape}")
    if config.mask == "given" and mask is None:
        raise MedaeError(f"{scan.source}: this model needs a brain mask (manifest column mask)")
    if config.spacing is None:
        shape = scan.shape
    else:
        shape = tuple(max(1, round(n * s / t)) for n, s, t in
                      zip(scan.shape, scan.spacing, config.spacing, strict=True))
    if float(np.prod(shape, dtype=np.float64)) > _MAX_RESAMPLED:  # checked before allocating
        raise MedaeError(f"{scan.source}: resampling {scan.describe()} to {config.spacing} mm "
                         f"gives {'x'.join(map(str, shape))} voxels, more than "
                         f"{_MAX_RESAMPLED:.3g}")
    seconds: dict[str, float] = {}
    try:
        native, rule = brain_mask(channels[0], config, mask, scan.spacing, seconds)
    except MedaeError as exc:
        raise MedaeError(f"{scan.source}: {exc}") from None
    if not native.any():
        raise MedaeError(f"{scan.source}: the foreground mask is empty")
    if config.bias_correction == "n4":
        from medae.bias import n4_correct

        t0 = time.perf_counter()
        for c, arr in enumerate(channels):
            try:
                channels[c] = n4_correct(arr, native, scan.spacing, config.n4_shrink)
            except MedaeError as exc:
                what = f" (input {c + 1})" if len(channels) > 1 else ""
                raise MedaeError(f"{scan.source}: {exc}{what}") from None
        seconds["bias correction"] = time.perf_counter() - t0
    fit = None
    if config.space == "template":
        try:
            fit = register_template(channels[0], native, scan.affine)
        except MedaeError as exc:
            raise MedaeError(f"{scan.source}: {exc}") from None
        seconds["template registration"] = fit.seconds
        shape = fit.shape

    def to_model_grid(array: np.ndarray, nearest: bool) -> np.ndarray:
        if fit is None:
            return _resize(array, shape, nearest=nearest)
        return fit.to_template(array, order=0 if nearest else 1)

    stats = []
    for c, arr in enumerate(channels):
        try:
            stats.append(intensity_stats(arr, native, config, c))
        except MedaeError as exc:
            what = f" (input {c + 1})" if len(channels) > 1 else ""
            where = (channel_sources[c] if channel_sources and c < len(channel_sources)
                     else scan.source)
            raise MedaeError(f"{where}: {exc}{what}") from None
    fg = resize_mask(native, shape) if fit is None else to_model_grid(native, True) > 0.5
    if not fg.any():
        raise MedaeError(f"{scan.source}: the foreground mask vanishes at "
                         f"{config.spacing} mm")
    image = np.empty((len(channels), *shape), np.float32)
    for c, arr in enumerate(channels):
        image[c] = apply_normalisation(to_model_grid(arr, False), stats[c], config.clip)
    image[:, ~fg] = 0.0
    lab = None
    if label is not None:
        lab = to_model_grid(np.asarray(label, np.float32) > 0, True) > 0.5
    size = tuple(n if s is None else int(s) for n, s in zip(shape, config.size, strict=True))
    lo_hi = np.argwhere(fg)
    centre = (lo_hi.min(0) + lo_hi.max(0) + 1) / 2.0
    offset = tuple(round(c - s / 2.0) if s != n else 0
                   for c, s, n in zip(centre, size, shape, strict=True))
    return Prepared(image=_crop_pad(image, (0, *offset), (len(channels), *size)),
                    mask=_crop_pad(fg, offset, size, False),
                    scan_shape=scan.shape, resampled_shape=shape, offset=offset, stats=stats,
                    label=None if lab is None else _crop_pad(lab, offset, size, False),
                    native_mask=native if keep_native else None, mask_rule=rule,
                    native_inputs=channels if keep_native else None,
                    spacing=tuple(float(v) for v in (config.spacing or scan.spacing)),
                    brain=config.brain, seconds=seconds, template=fit,
                    brain_volume_cm3=None if config.brain == "none" else
                    round(mask_volume_cm3(native, scan.spacing), 1))


def _axis_sources(n_in: int, n_out: int, out: np.ndarray, nearest: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output indices ``out`` of a resize from ``n_in`` to ``n_out`` voxels, the two source
    indices and their weights, computed in float32 as PyTorch's ``interpolate`` does
    (``nearest-exact``, or linear with ``align_corners=False``)."""
    if n_in == n_out:
        return out, out, np.ones(out.shape, np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    k = out.astype(np.float32)
    if nearest:
        i0 = np.minimum(np.floor((k + np.float32(0.5)) * scale).astype(np.int64), n_in - 1)
        return i0, i0, np.ones(out.shape, np.float32)
    src = np.maximum(scale * (k + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, i0 + (i0 < n_in - 1), (np.float32(1) - w1).astype(np.float32)


def to_scan_space(array: np.ndarray, prepared: Prepared, nearest: bool = False,
                  fill: float = 0.0, z: slice | None = None) -> np.ndarray:
    """Map a model-space array (x, y, z) back onto the scan's array grid (undo crop/pad, resize).

    ``z``: only these axial slices of the scan's grid (a slab, ``step`` 1), with exactly the
    values the whole-volume call gives them: the slab reads only the resampled slices it needs,
    so memory follows the slab, not the volume.  The resize runs along z first (in NumPy, with
    PyTorch's ``align_corners=False`` weights), then in plane (PyTorch): it matches a single 3D
    ``interpolate`` to float32 rounding (a few units in the last place), not bit for bit.
    """
    shape = prepared.resampled_shape
    # the inverse crop/pad: model voxel v sits at v + offset in the resampled volume
    inv = tuple(-o for o in prepared.offset)
    if prepared.template is not None:  # the template's grid, then once onto the scan's
        back = _crop_pad(np.asarray(array, np.float32), inv, shape, fill)
        return prepared.template.to_scan(back, prepared.scan_shape, order=0 if nearest else 1,
                                         fill=fill, z=z)
    z0, z1, _ = (z or slice(None)).indices(prepared.scan_shape[2])
    ks = np.arange(z0, max(z0, z1))
    if ks.size == 0:
        return np.zeros((*prepared.scan_shape[:2], 0), np.float32)
    i0, i1, w0 = _axis_sources(shape[2], prepared.scan_shape[2], ks, nearest)
    r0, r1 = int(i0.min()), int(i1.max()) + 1  # the resampled slices these scan slices read
    back = _crop_pad(np.asarray(array, np.float32), (inv[0], inv[1], inv[2] + r0),
                     (*shape[:2], r1 - r0), fill)
    # along z first, with PyTorch's weights (the innermost axis of its 3D resize), then in
    # plane with the z size unchanged (PyTorch then keeps each slice's value)
    if not nearest and shape[2] != prepared.scan_shape[2]:
        lo, hi = back[:, :, i0 - r0], back[:, :, i1 - r0]
        lo *= w0
        hi *= np.float32(1) - w0
        lo += hi
        back = lo
    else:
        back = back[:, :, i0 - r0]
    return np.ascontiguousarray(_resize(back, (*prepared.scan_shape[:2], ks.size), nearest))
