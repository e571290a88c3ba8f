"""N4 bias-field correction inside the brain mask (``preprocess.bias_correction: n4``).

SimpleITK's ``N4BiasFieldCorrectionImageFilter`` (Tustison et al., IEEE TMI 2010) fits a smooth
multiplicative field to the voxels inside the mask on a copy of the scan shrunk by
``preprocess.n4_shrink`` per axis (its cost falls with the cube of the factor); the field is
then evaluated at the scan's own resolution and divided out everywhere.  SimpleITK comes with
``make install`` (and ``pip install "medae[brain]"``); without it a recipe that asks for N4
refuses the scan in one line.
"""

from __future__ import annotations

import numpy as np

from medae.errors import MedaeError
from medae.itk import exclusive, simpleitk

#: what needs SimpleITK, in the message when it is missing
WHAT = "preprocess.bias_correction n4"
#: N4's fitting levels and iterations per level (SimpleITK's default: 4 levels of 50)
ITERATIONS = (50, 50, 50, 50)
#: at most this share of the mask may be <= 0 (left out of the fit; a raw head has a few such
#: voxels: chris_PD two of 1.8 M); more means a normalised scan, where N4 does not apply
MAX_NONPOSITIVE = 0.05


def n4_correct(image: np.ndarray, mask: np.ndarray, spacing, shrink: int = 4) -> np.ndarray:
    """``image`` (float32, on its own grid) divided by the N4 bias field fitted inside ``mask``.

    Voxels <= 0 inside the mask are left out of the fit (N4 works on logarithms).  Raises a
    one-line :class:`MedaeError` when SimpleITK is missing or when more than
    :data:`MAX_NONPOSITIVE` of the mask is <= 0 (a scan normalised to zero mean is already past
    the point where N4 applies)."""
    simpleitk(WHAT)  # refused before any work when it is missing
    mask = np.asarray(mask, bool)
    n = int(np.count_nonzero(mask))
    if n == 0:
        raise MedaeError("N4 bias correction: the brain mask is empty")
    fit = mask & (np.asarray(image) > 0)  # N4 fits logarithms: voxels <= 0 stay out of the fit
    share = 1.0 - int(np.count_nonzero(fit)) / n
    if share > MAX_NONPOSITIVE:
        raise MedaeError(f"N4 bias correction needs positive intensities: {100 * share:.0f}% of "
                         f"the brain mask's voxels are <= 0 (a normalised scan?); set "
                         "preprocess.bias_correction none")
    with exclusive(WHAT) as sitk:  # never beside a registration (which sets one thread)
        # SimpleITK indexes (x, y, z) from a (z, y, x) array
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(image, np.float32).T))
        img.SetSpacing([float(s) for s in spacing])
        msk = sitk.GetImageFromArray(np.ascontiguousarray(fit.T).astype(np.uint8))
        msk.CopyInformation(img)
        factors = [int(min(shrink, max(1, n // 8))) for n in image.shape]  # >= 8 voxels an axis
        small, small_mask = sitk.Shrink(img, factors), sitk.Shrink(msk, factors)
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations(list(ITERATIONS))
        n4.Execute(small, small_mask)
        log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img)).T
    out = np.asarray(image, np.float32) / np.exp(log_field).astype(np.float32)
    return out.astype(np.float32, copy=False)
