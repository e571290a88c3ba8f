"""The shipped template: MNI ICBM152 2009a nonlinear symmetric at 2 mm (T1, brain, white matter).

Redistributed with its copyright notice (``medae/data/NOTICE_MNI_ICBM152.txt``);
``scripts/make_template_data.py`` rebuilds the shipped files.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy import ndimage

from medae.io.packaged import packaged_nifti

TEMPLATE_NAME = "mni_icbm152_2009a_sym_2mm"
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_2mm.nii.gz",
    "brain": "mni_icbm152_brain_2mm.nii.gz",
    "wm": "mni_icbm152_wm_2mm.nii.gz",
}
NOTICE_FILE = "NOTICE_MNI_ICBM152.txt"


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


@functools.lru_cache(maxsize=1)
def shipped_template() -> Template:
    """The shipped template, read once (read-only arrays)."""
    imgs = {k: packaged_nifti(v) for k, v in TEMPLATE_FILES.items()}
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
    t = shipped_template()
    return t.t1.copy(), t.brain.copy(), t.wm.copy(), t.affine.copy()


def template_notice() -> str:
    """The copyright notice of the MNI ICBM152 template (ship it with any copy of the data)."""
    return resources.files("medae").joinpath("data", NOTICE_FILE).read_text(encoding="utf-8")

