"""Regenerate the template files shipped under ``medae/data/`` (used by :mod:`medae.synthetic`).

Source: the MNI ICBM152 2009a nonlinear symmetric template (1 mm, 197x233x189, RAS), whose
NOTICE allows redistribution with its copyright notice::

    python scripts/make_template_data.py [--src /work/shared/data/brain/templates/mni_icbm152_2009a]

Steps:

1. brain mask at 1 mm: ``gm + wm > 0.5`` (the probability maps), largest connected component,
   closing (3 iterations, 6-connected), hole filling in 3D and then per axial slice (this takes
   in the ventricles and the deep CSF);
2. crop a box of 160x192x160 mm around the brain (80x96x80 voxels at 2 mm; the box is clamped
   to the template's field of view, so the lower brainstem stays cut as in the template);
3. 2 mm voxels by 2x2x2 block averaging (the new voxel centres are the old 2x2x2 block centres,
   so the affine stays exact); brain = block mean of the 1 mm mask > 0.5;
4. the T1 and the WM map are skull-stripped (multiplied by the 2 mm brain mask) and stored as
   uint8 (0..255, like the source; the WM probability rounded to steps of 4/255, which is
   plenty for placing lesions and keeps the file small), the mask as uint8 0/1, in NIfTI-1
   files gzip-compressed at level 9.

Outputs (about 0.35 MB together):

- ``mni_icbm152_t1_2mm.nii.gz``     skull-stripped T1 (0..255)
- ``mni_icbm152_brain_2mm.nii.gz``  brain mask (0/1)
- ``mni_icbm152_wm_2mm.nii.gz``     white-matter probability (0..252 = 0..1, steps of 4)
- ``NOTICE_MNI_ICBM152.txt``        the template's NOTICE.txt, verbatim
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

SRC = Path("/work/shared/data/brain/templates/mni_icbm152_2009a")
DST = Path(__file__).resolve().parents[1] / "medae" / "data"
NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
SHAPE_2MM = (80, 96, 80)
FACTOR = 2


def brain_mask_1mm(gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    brain = (gm + wm) > 0.5
    labels, n = ndimage.label(brain)
    if n > 1:
        brain = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    brain = ndimage.binary_closing(brain, ndimage.generate_binary_structure(3, 1), iterations=3)
    brain = ndimage.binary_fill_holes(brain)
    for k in range(brain.shape[2]):
        brain[:, :, k] = ndimage.binary_fill_holes(brain[:, :, k])
    return brain


def crop_start(brain: np.ndarray) -> list[int]:
    """Start of the 1 mm crop box (clamped to the field of view) centred on the brain."""
    start = []
    for ax in range(3):
        idx = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))
        width = SHAPE_2MM[ax] * FACTOR
        centre = (idx[0] + idx[-1] + 1) / 2
        s = round(centre - width / 2)
        start.append(min(max(s, 0), brain.shape[ax] - width))
    return start


def block_mean(a: np.ndarray, start: list[int]) -> np.ndarray:
    sl = tuple(slice(s, s + n * FACTOR) for s, n in zip(start, SHAPE_2MM, strict=True))
    a = a[sl].astype(np.float64)
    x, y, z = SHAPE_2MM
    return a.reshape(x, FACTOR, y, FACTOR, z, FACTOR).mean(axis=(1, 3, 5))


def save(data: np.ndarray, affine: np.ndarray, path: Path, descrip: str) -> None:
    nib.openers.Opener.default_compresslevel = 9
    img = nib.Nifti1Image(data.astype(np.uint8), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_sform(affine, code=4)   # MNI152 space
    img.header.set_qform(affine, code=4)
    img.header["descrip"] = descrip.encode()[:79]
    nib.save(img, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=SRC)
    parser.add_argument("--dst", type=Path, default=DST)
    args = parser.parse_args()
    src = {k: nib.load(args.src / NAME.format(k)) for k in ("t1", "gm", "wm")}
    affine_1mm = src["t1"].affine
    t1, gm, wm = (np.asarray(src[k].dataobj, dtype=np.float32) for k in ("t1", "gm", "wm"))
    brain = brain_mask_1mm(gm / 255, wm / 255)
    start = crop_start(brain)
    scale = np.diag([FACTOR, FACTOR, FACTOR, 1.0])
    scale[:3, 3] = np.array(start) + (FACTOR - 1) / 2
    affine = affine_1mm @ scale
    brain2 = block_mean(brain, start) > 0.5
    t1_2 = np.round(block_mean(t1, start)) * brain2
    wm_2 = np.floor(block_mean(wm, start) / 4 + 0.5).clip(0, 63) * 4 * brain2
    args.dst.mkdir(parents=True, exist_ok=True)
    what = "MNI ICBM152 2009a sym, 2 mm"
    save(t1_2, affine, args.dst / "mni_icbm152_t1_2mm.nii.gz", f"{what}, T1 skull-stripped")
    save(brain2, affine, args.dst / "mni_icbm152_brain_2mm.nii.gz", f"{what}, brain mask")
    save(wm_2, affine, args.dst / "mni_icbm152_wm_2mm.nii.gz", f"{what}, WM probability x255")
    shutil.copyfile(args.src / "NOTICE.txt", args.dst / "NOTICE_MNI_ICBM152.txt")
    total = sum(p.stat().st_size for p in args.dst.glob("mni_icbm152_*"))
    print(f"wrote {args.dst}: shape {SHAPE_2MM}, crop start {start} (1 mm voxels), "
          f"brain {int(brain2.sum())} voxels, {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
