"""Rigid registration of a case's further sequences to its first (``preprocess.registration``).

Sequences of one exam share the scanner's frame of reference, but the head moves between them
(a few millimetres and degrees), and a sequence written on its own grid has not been aligned by
anyone.  :func:`register_rigid` finds the rigid transform (rotation and shift, six parameters)
that best aligns a further sequence with the first by Mattes mutual information (which works
across contrasts: T1 against PD or FLAIR), with SimpleITK's ``ImageRegistrationMethod``:

- an ``Euler3DTransform`` about the centre of the first sequence's brain mask (or field of view)
  starting at the identity: the scanner's world coordinates are the best first guess for two
  sequences of one exam (``CenteredTransformInitializer``'s GEOMETRY or MOMENTS would move a
  thin PD slab's centre onto a whole-head T1's and undo that);
- three resolutions (shrink factors 4, 2, 1, Gaussian smoothing 2, 1, 0 mm), regular-step
  gradient descent with scales from physical shifts, at most :data:`SAMPLES` metric samples per
  level on a regular lattice with a fixed seed, on one ITK thread (the same result to the last
  bit on every run: :mod:`medae.itk`); image gradients at the samples only (no gradient image
  of the whole volume per level: 7 s instead of 24 s for IXI's T1 onto its T2);
- the brain mask given with the first sequence (a manifest's ``mask``) as the metric's mask,
  when there is one; else the whole field of view.  A computed mask is not used: inside the
  head that the Otsu rule found on niivue_register's raw T2w, its T1 did not converge (200
  iterations, 0.067 nats, 3.3° where the whole field of view gives 8.1° and 0.495 nats and
  aligns the two by eye), and deepbet's masks could not be tried here.

The moving sequence is then resampled once, linearly, from its own voxels onto the first
sequence's grid: maps stay on that grid.  The result is checked: a mutual information under
:data:`MIN_MI` nats, a field of view (or brain mask) of the first sequence covered less than
:data:`~medae.io.sequences.MIN_OVERLAP` by the moved sequence, or a rotation or shift beyond
what a head does between two sequences (:data:`MAX_ROTATION_DEG`, :data:`MAX_SHIFT_MM`) refuses
the case in one line naming the file.  Affines are RAS+ (nibabel); SimpleITK's physical space
is LPS: :func:`to_sitk` and :func:`sitk_affine` convert, flipping the first two world axes.

Template space (``preprocess.space: template``): :func:`register_template` registers a case's
first sequence, inside its brain mask, to the shipped 2 mm MNI template by an affine transform
with the same method (:func:`_method`), checks it (mutual information, the Dice of the two brain
masks, the scale), and :class:`TemplateFit` resamples once into the template's grid and once
back onto the scan's (:func:`resample`).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from medae.errors import MedaeError, ScanReadError
from medae.io.scan import Scan
from medae.io.sequences import MIN_OVERLAP, covered
from medae.itk import exclusive, simpleitk

#: world RAS <-> LPS: the first two axes change sign
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
#: metric samples per resolution level (at most: every voxel of a small level)
SAMPLES = 40_000
#: the metric's sampling seed (SimpleITK reads 0 as "the wall clock": any other value is fixed)
SEED = 27
#: shrink factors and Gaussian sigmas (mm) of the three levels, coarse to fine
SHRINK, SIGMAS = (4, 2, 1), (2.0, 1.0, 0.0)
#: what needs SimpleITK, in the message when it is missing
WHAT = "preprocess.registration"
#: the optimizer's iterations per level at most
ITERATIONS = 200
#: below this mutual information (nats) two images share no structure: refused (measured:
#: noise against the MNI template 0.003-0.004, smoothed noise 0.030; the shared raw and IXI
#: pairs 0.50-0.72 once registered, the template against its inverted contrast 1.19)
MIN_MI = 0.1
#: a head does not turn more than this, nor move more than this, between sequences of one exam
MAX_ROTATION_DEG, MAX_SHIFT_MM = 30.0, 60.0


@dataclass
class Registration:
    """A further sequence registered to the first: its voxels on the first's grid and the
    transform that was found.

    ``matrix`` maps a point of the first sequence's world (RAS mm) to the point of the further
    sequence's world (RAS mm) that shows the same anatomy (identity: aligned in world space).
    """

    array: np.ndarray  # float32, on the first sequence's array grid
    matrix: np.ndarray  # 4x4, first sequence's world -> this sequence's world (RAS mm)
    centre: np.ndarray  # the rotation's centre (RAS mm): the brain's or field of view's
    metric: float  # Mattes mutual information (nats) after registration
    metric_before: float  # ... at the start (world coordinates as the scanner wrote them)
    overlap: float  # share of the first's brain mask / field of view inside the moved sequence
    region: str  # what ``overlap`` measures: "brain mask" or "field of view"
    iterations: int  # the optimizer's iterations at the finest level
    seconds: float

    @property
    def rotation_deg(self) -> float:
        """The rotation's angle (degrees, about its own axis)."""
        return rotation_angle_deg(self.matrix[:3, :3])

    @property
    def euler_deg(self) -> tuple[float, float, float]:
        """The rotation as angles about the world's R, A, S axes (x-y-z order, degrees)."""
        return euler_xyz_deg(self.matrix[:3, :3])

    @property
    def shift_mm(self) -> tuple[float, float, float]:
        """How far the rotation's centre moves (RAS mm)."""
        c = np.append(self.centre, 1.0)
        return tuple(float(v) for v in (self.matrix @ c - c)[:3])

    def record(self) -> dict:
        """What ``result.json`` says of this registration."""
        return {"rotation_deg": round(self.rotation_deg, 3),
                "euler_deg": [round(v, 3) for v in self.euler_deg],
                "shift_mm": [round(v, 3) for v in self.shift_mm],
                "centre_mm": [round(float(v), 2) for v in self.centre],
                "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
                "mutual_information": round(self.metric, 4),
                "mutual_information_before": round(self.metric_before, 4),
                "overlap": round(self.overlap, 4), "region": self.region,
                "iterations": self.iterations,
                "seconds": round(self.seconds, 3)}


def rotation_angle_deg(r: np.ndarray) -> float:
    """The angle (degrees) of the rotation matrix ``r``."""
    c = (float(np.trace(r)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def euler_xyz_deg(r: np.ndarray) -> tuple[float, float, float]:
    """Angles (degrees) about x, then y, then z whose product ``Rz @ Ry @ Rx`` is ``r``."""
    ay = math.asin(max(-1.0, min(1.0, -float(r[2, 0]))))
    ax = math.atan2(float(r[2, 1]), float(r[2, 2]))
    az = math.atan2(float(r[1, 0]), float(r[0, 0]))
    return math.degrees(ax), math.degrees(ay), math.degrees(az)


def to_sitk(array: np.ndarray, affine: np.ndarray):
    """A SimpleITK image (float32) of ``array`` (x, y, z) on the grid of the RAS ``affine``."""
    sitk = simpleitk(WHAT)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, np.float32).T))
    lps = FLIP @ np.asarray(affine, np.float64)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    return img


def sitk_affine(image) -> np.ndarray:
    """The RAS voxel-index -> world affine of a SimpleITK image (the inverse of :func:`to_sitk`)."""
    lps = np.eye(4)
    direction = np.array(image.GetDirection(), np.float64).reshape(3, 3)
    lps[:3, :3] = direction * np.array(image.GetSpacing(), np.float64)
    lps[:3, 3] = image.GetOrigin()
    return FLIP @ lps


def transform_matrix(transform) -> np.ndarray:
    """A SimpleITK rigid transform (LPS, fixed -> moving) as a 4x4 RAS matrix."""
    m = np.eye(4)
    r = np.array(transform.GetMatrix(), np.float64).reshape(3, 3)
    c = np.array(transform.GetCenter(), np.float64)
    m[:3, :3] = r
    m[:3, 3] = np.array(transform.GetTranslation(), np.float64) + c - r @ c
    return FLIP @ m @ FLIP


def register_rigid(fixed: Scan, moving: Scan, what: str,
                   mask: np.ndarray | None = None) -> Registration:
    """Register ``moving`` (a further sequence) rigidly to ``fixed`` (the case's first) and
    resample it onto ``fixed``'s array grid (see the module's docstring).  ``mask``: the brain
    mask on ``fixed``'s grid, used as the metric's mask and for the overlap check.  ``what``
    names the sequence in messages (``sequence t2 of case x``); a failure is a one-line
    :class:`ScanReadError` naming ``moving``'s file."""
    with exclusive(WHAT, threads=1) as sitk:  # one thread: the same result to the last bit
        return _register(sitk, fixed, moving, what, mask)


def _register(sitk, fixed: Scan, moving: Scan, what: str, mask) -> Registration:
    t0 = time.perf_counter()
    fixed_img = to_sitk(fixed.array, fixed.affine)
    moving_img = to_sitk(moving.array, moving.affine)
    region = None if mask is None or not np.any(mask) else np.asarray(mask, bool)
    where = np.argwhere(region) if region is not None else None
    lo_hi = ((where.min(0), where.max(0)) if where is not None
             else (np.zeros(3), np.array(fixed.shape) - 1.0))
    centre_ijk = (np.asarray(lo_hi[0], float) + np.asarray(lo_hi[1], float)) / 2
    centre = (fixed.affine @ np.append(centre_ijk, 1.0))[:3]
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in (FLIP[:3, :3] @ centre)])

    reg = _method(sitk, fixed_img, fixed.shape, region)
    reg.SetInitialTransform(transform, inPlace=True)
    try:
        before = -float(reg.MetricEvaluate(fixed_img, moving_img))
    except RuntimeError:
        before = 0.0  # the sequences do not overlap at all where the scanner put them
    try:
        reg.Execute(fixed_img, moving_img)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "error"
        raise ScanReadError(moving.source, f"rigid registration of {what} to the first sequence "
                                           f"failed (SimpleITK: {reason[:200]})") from None
    metric = -float(reg.GetMetricValue())
    iterations = int(reg.GetOptimizerIteration())
    matrix = transform_matrix(transform)
    found = Registration(array=np.empty(0, np.float32), matrix=matrix, centre=centre,
                         metric=metric, metric_before=before,
                         overlap=covered(fixed, moving, matrix, region),
                         region="field of view" if region is None else "brain mask",
                         iterations=iterations, seconds=0.0)
    problem = _implausible(found)
    if problem:
        raise ScanReadError(moving.source, f"rigid registration of {what} to the first sequence "
                                           f"failed: {problem} (mutual information "
                                           f"{found.metric:.3f} nats after {iterations} "
                                           f"iterations, {found.metric_before:.3f} before; "
                                           f"{100 * found.overlap:.0f}% of the first sequence's "
                                           f"{found.region} covered)")
    fill = float(np.min(moving.array))
    out = sitk.Resample(moving_img, fixed_img, transform, sitk.sitkLinear, fill,
                        sitk.sitkFloat32)
    found.array = np.ascontiguousarray(sitk.GetArrayFromImage(out).T)
    found.seconds = time.perf_counter() - t0
    return found


def _method(sitk, fixed_img, shape, region, shrink=SHRINK, sigmas=SIGMAS):
    """The registration method that rigid and template registration share: Mattes mutual
    information on at most :data:`SAMPLES` regular samples a level (fixed seed), ``region`` (a
    mask on the fixed grid, or None) as the metric's mask, regular-step gradient descent with
    scales from physical shifts, ``shrink`` and ``sigmas`` (mm) per level."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    voxels = [float(np.prod([max(1, n // f) for n in shape])) for f in shrink]
    reg.SetMetricSamplingPercentagePerLevel([min(1.0, SAMPLES / v) for v in voxels], SEED)
    if region is not None:
        mask_img = sitk.GetImageFromArray(np.ascontiguousarray(region.T).astype(np.uint8))
        mask_img.CopyInformation(fixed_img)
        reg.SetMetricFixedMask(mask_img)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetMetricUseFixedImageGradientFilter(False)
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=ITERATIONS,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return reg


def _implausible(r: Registration) -> str | None:
    """Why a registration's result cannot be right, or None."""
    if r.overlap < MIN_OVERLAP:
        return (f"the moved sequence covers under {100 * MIN_OVERLAP:.0f}% of the first "
                f"sequence's {r.region}")
    if not r.metric >= MIN_MI:
        return f"the images share no structure, under {MIN_MI} nats of mutual information"
    if r.rotation_deg > MAX_ROTATION_DEG:
        return f"a rotation of {r.rotation_deg:.0f}° (a head turns at most {MAX_ROTATION_DEG:.0f}°)"
    shift = float(np.linalg.norm(r.shift_mm))
    if shift > MAX_SHIFT_MM:
        return f"a shift of {shift:.0f} mm (a head moves at most {MAX_SHIFT_MM:.0f} mm)"
    return None


# ---- template space (preprocess.space: template) ---------------------------------------------

#: the shipped template that ``preprocess.space: template`` registers to (T1, its brain mask)
TEMPLATE_NAME = "mni_icbm152_2009a_sym_2mm"
TEMPLATE_FILES = ("mni_icbm152_t1_2mm.nii.gz", "mni_icbm152_brain_2mm.nii.gz")
#: template registration's levels: the template is already 2 mm (80x96x80)
TEMPLATE_SHRINK, TEMPLATE_SIGMAS = (2, 1), (2.0, 0.0)
#: a template fit is refused under this mutual information inside the template's brain (nats;
#: measured: the shared brains 0.094 (BraTS FLAIR, normalised) to 0.28 (IXI T1), noise in a box
#: 0.034, noise inside a brain's mask 0.10-0.12: the mask's outline carries the fit), when the
#: brain mask brought into template space overlaps the template's brain less than this (Dice;
#: measured: the shared brains 0.90-0.96, a box or an ellipsoid 0.78-0.81, half a brain 0.58),
#: or when it scales the brain beyond this (linear, either way; measured 0.87-0.93)
MIN_TEMPLATE_MI, MIN_TEMPLATE_DICE, MAX_TEMPLATE_SCALE = 0.05, 0.85, 1.5


@functools.lru_cache(maxsize=1)
def template_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped template's T1 (float32), brain mask (bool) and RAS affine (read once)."""
    from medae.io.packaged import packaged_nifti

    t1_img, brain_img = (packaged_nifti(name) for name in TEMPLATE_FILES)
    t1 = np.asarray(t1_img.dataobj, np.float32)
    brain = np.asarray(brain_img.dataobj) > 0
    for a in (t1, brain):
        a.setflags(write=False)
    return t1, brain, t1_img.affine.copy()


def resample(array: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
             dst_shape: tuple[int, int, int], world: np.ndarray, order: int = 1,
             fill: float = 0.0, z: slice | None = None) -> np.ndarray:
    """``array`` (on the grid of ``src_affine``) resampled once onto the grid ``dst_affine``,
    ``dst_shape`` (float32; ``order`` 1: linear, 0: nearest; ``fill`` outside): ``world`` maps
    a point of the destination's world to the source's (RAS mm).  ``z``: only these axial
    slices of the destination (the same values as the whole call gives them)."""
    from scipy import ndimage

    m = np.linalg.inv(src_affine) @ world @ dst_affine
    z0, z1, _ = (z or slice(None)).indices(dst_shape[2])
    offset = m[:3, 3] + m[:3, 2] * z0
    src = np.asarray(array, np.float32)
    return ndimage.affine_transform(src, m[:3, :3], offset, output_shape=(
        *dst_shape[:2], max(0, z1 - z0)), order=order, mode="constant", cval=fill)


@dataclass
class TemplateFit:
    """A scan's first sequence registered (affine, 12 parameters) to the shipped template:
    ``matrix`` maps a point of the template's world to the scan's (RAS mm)."""

    matrix: np.ndarray
    scan_affine: np.ndarray
    affine: np.ndarray  # the template's grid
    shape: tuple[int, int, int]
    metric: float  # Mattes mutual information (nats) at the end, inside the template's brain
    dice: float  # of the scan's brain mask brought into template space and the template's
    iterations: int
    seconds: float

    @property
    def scale(self) -> float:
        """The linear size of the template's brain in the scan's (the cube root of the
        determinant)."""
        return float(abs(np.linalg.det(self.matrix[:3, :3])) ** (1 / 3))

    def to_template(self, array: np.ndarray, order: int = 1, fill: float = 0.0) -> np.ndarray:
        """An array on the scan's grid resampled once onto the template's."""
        return resample(array, self.scan_affine, self.affine, self.shape, self.matrix,
                        order, fill)

    def to_scan(self, array: np.ndarray, scan_shape: tuple[int, int, int], order: int = 1,
                fill: float = 0.0, z: slice | None = None) -> np.ndarray:
        """An array on the template's grid resampled once onto the scan's (``z``: a slab)."""
        return resample(array, self.affine, self.scan_affine, scan_shape,
                        np.linalg.inv(self.matrix), order, fill, z)

    def record(self) -> dict:
        """What ``result.json`` and a bundle say of this fit."""
        return {"template": TEMPLATE_NAME,
                "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
                "scale": round(self.scale, 4), "mutual_information": round(self.metric, 4),
                "dice": round(self.dice, 4), "iterations": self.iterations,
                "seconds": round(self.seconds, 3)}


def register_template(image: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> TemplateFit:
    """Register a scan's first sequence (``image`` on the RAS grid ``affine``, inside its brain
    ``mask``) to the shipped template's T1 inside the template's brain: the brain masks'
    centres of mass first (whatever the contrast and the sign of the values), then an affine
    transform (12 parameters) by Mattes mutual information with the method of
    :func:`register_rigid` (two levels, one thread: the same result to the last bit).  A fit
    that fails or cannot be right is refused with a one-line :class:`MedaeError` (the caller
    names the file)."""
    with exclusive("preprocess.space template", threads=1) as sitk:
        return _fit_template(sitk, image, np.asarray(mask, bool), affine)


def _fit_template(sitk, image, mask, affine) -> TemplateFit:
    t0 = time.perf_counter()
    t1, brain, t_affine = template_grid()
    fixed_img = to_sitk(np.where(brain, t1, 0), t_affine)
    moving_img = to_sitk(np.where(mask, image, 0), affine)
    try:
        transform = sitk.CenteredTransformInitializer(  # the brains' centres: any contrast
            to_sitk(brain, t_affine), to_sitk(mask, affine), sitk.AffineTransform(3),
            sitk.CenteredTransformInitializerFilter.MOMENTS)
        transform = sitk.AffineTransform(transform)
        reg = _method(sitk, fixed_img, t1.shape, np.asarray(brain), TEMPLATE_SHRINK,
                      TEMPLATE_SIGMAS)
        reg.SetInitialTransform(transform, inPlace=True)
        reg.Execute(fixed_img, moving_img)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "error"
        raise MedaeError(f"registration to the MNI template failed (SimpleITK: "
                         f"{reason[:200]})") from None
    matrix = transform_matrix(transform)
    fit = TemplateFit(matrix=matrix, scan_affine=np.asarray(affine, np.float64),
                      affine=t_affine, shape=tuple(int(n) for n in t1.shape),
                      metric=-float(reg.GetMetricValue()), dice=0.0,
                      iterations=int(reg.GetOptimizerIteration()), seconds=0.0)
    moved = fit.to_template(mask.astype(np.float32), order=0) > 0.5
    fit.dice = float(2 * (moved & brain).sum() / max(1, moved.sum() + brain.sum()))
    problem = None
    if not fit.metric >= MIN_TEMPLATE_MI:
        problem = (f"the images share no structure, under {MIN_TEMPLATE_MI} nats of mutual "
                   "information")
    elif not fit.dice >= MIN_TEMPLATE_DICE:
        problem = (f"the brain mask overlaps the template's brain by a Dice of {fit.dice:.2f} "
                   f"(at least {MIN_TEMPLATE_DICE})")
    elif not 1 / MAX_TEMPLATE_SCALE <= fit.scale <= MAX_TEMPLATE_SCALE:
        problem = f"the brain would be scaled by {fit.scale:.2f} (at most {MAX_TEMPLATE_SCALE}x)"
    if problem:
        raise MedaeError(f"registration to the MNI template failed: {problem} (mutual "
                         f"information {fit.metric:.3f} nats after {fit.iterations} iterations, "
                         f"Dice {fit.dice:.2f}, scale {fit.scale:.2f})")
    fit.seconds = time.perf_counter() - t0
    return fit
