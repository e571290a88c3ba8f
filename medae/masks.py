"""Brain (foreground) masks on a scan's own grid: finding them, filling them, eroding them.

NumPy/SciPy only, shared by preprocessing (the mask a model sees) and scoring (the region a heat
map covers).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_CROSS3 = ndimage.generate_binary_structure(3, 1)
_CROSS2 = ndimage.generate_binary_structure(2, 1)

#: a background value holding more than this share of the voxels means a skull-stripped scan
BACKGROUND_SHARE = 0.1
#: voxels within this fraction of the foreground's intensity range of the background value are
#: background (interpolation after skull stripping leaves values near, not at, the background)
BACKGROUND_TOL = 1e-3


#: voxels per chunk of the element-wise passes over label images (bounded temporaries)
CHUNK = 1 << 22


def label(mask: np.ndarray, structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``ndimage.label`` into uint16 when the labels fit (half the memory of int32 on CT-size
    volumes), else int32.

    Not uint8 first: when a type is too small, scipy labels the whole volume again into a
    pointer-size temporary to check (1.2 GiB on a 512x512x600 CT), so a failed uint8 attempt
    cost more than it could save (bench_memory: 2799 MiB against 2194)."""
    try:
        return ndimage.label(mask, structure, output=np.uint16)
    except RuntimeError:  # more components than uint16 holds
        return ndimage.label(mask, structure, output=np.int32)


def label_above(values: np.ndarray, threshold: float,
                structure: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``label(values > threshold)`` without the full-size boolean image: the comparison is
    written a slab at a time straight into the uint16 image that scipy then labels in place
    (scipy checks every label before it overwrites a voxel, so a foreground voxel never turns 0
    and in-place labelling is exact; on a 512x512x600 CT this saves 150 MiB at the scoring peak).
    More components than uint16 holds: labelled again from ``values`` into int32."""
    out = np.empty(values.shape, np.uint16)
    step = max(1, CHUNK // max(1, int(np.prod(values.shape[1:]))))
    for a in range(0, values.shape[0], step):
        np.greater(values[a:a + step], threshold, out=out[a:a + step])
    try:
        return out, int(ndimage.label(out, structure, output=out))
    except RuntimeError:  # more components than uint16 holds
        del out
        return ndimage.label(values > threshold, structure, output=np.int32)


def _chunks(n: int):
    for a in range(0, n, CHUNK):
        yield slice(a, min(n, a + CHUNK))


def lookup(table: np.ndarray, labels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``table[labels]`` chunk by chunk: NumPy's fancy indexing would first copy the whole label
    image as 64-bit integers.  ``out`` may be ``labels`` itself (relabelling in place)."""
    flat = labels.reshape(-1)
    if out is None:
        out = np.empty(labels.shape, table.dtype)
    dst = out.reshape(-1)
    for sl in _chunks(flat.size):
        dst[sl] = table[flat[sl]]
    return out


def label_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxels per label 0..n (``np.bincount`` chunk by chunk, no 64-bit copy of the image)."""
    flat = labels.reshape(-1)
    sizes = np.zeros(n + 1, np.int64)
    for sl in _chunks(flat.size):
        sizes += np.bincount(flat[sl], minlength=n + 1)
    return sizes


def _largest_component(fg: np.ndarray) -> np.ndarray:
    labels, n = label(fg)
    if n <= 1:
        return fg
    sizes = label_sizes(labels, n)
    sizes[0] = 0
    keep = np.zeros(n + 1, bool)
    keep[int(sizes.argmax())] = True
    return lookup(keep, labels)


def _fill(mask: np.ndarray, structure: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Fill the background components (``structure`` connectivity) that touch no face of
    ``axes``: one labelling pass instead of scipy's iterative ``binary_fill_holes``."""
    labels, n = label(~mask, structure)
    if n == 0:
        return mask
    outside = np.zeros(n + 1, bool)
    for ax in axes:
        for end in (0, -1):
            outside[np.unique(np.take(labels, end, axis=ax))] = True
    outside[0] = True  # label 0 is the mask itself
    filled = lookup(~outside, labels)
    del labels
    return np.logical_or(mask, filled, out=filled)


def fill_holes_3d(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its 3D holes filled (background not 6-connected to the volume's faces),
    as ``scipy.ndimage.binary_fill_holes`` gives it."""
    return _fill(np.asarray(mask, bool), _CROSS3, (0, 1, 2))


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill, in place, the holes of every axial slice (4-connected background components that
    do not reach the slice's border).  Slice by slice: one labelling of the whole volume with
    in-plane connectivity has a component per slice and more, so its label image needed int32
    (600 MiB on a 512x512x600 CT) where a slice's needs a few hundred kB."""
    for z in range(mask.shape[2]):
        sl = mask[:, :, z]
        if sl.any():
            sl |= _fill(sl, _CROSS2, (0, 1))
    return mask


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes in 3D and then within every axial slice (sulci and ventricles that open to
    the outside in 3D are closed in a slice)."""
    given = np.asarray(mask, bool)
    mask = _fill(given, _CROSS3, (0, 1, 2))
    return _fill_slices(mask.copy() if mask is given else mask)


def _faces(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[[0, -1]].ravel(), image[:, [0, -1]].ravel(),
                           image[:, :, [0, -1]].ravel()])


#: volumes of more voxels than this are smoothed for the Otsu rule slab by slab (the same mask
#: without a full-size float32 smoothed copy; on a 512x512x600 CT that copy is 600 MiB)
SLAB_ABOVE = 1 << 25
#: the Otsu rule's Gaussian smoothing (sigma, voxels) and the histogram it thresholds
SMOOTH_SIGMA, OTSU_BINS = 1.0, 256


def _smoothed_slabs(image: np.ndarray, slab: int = 32):
    """``gaussian_filter(image as float32, SMOOTH_SIGMA)`` slab by slab of axial slices, each
    read with scipy's kernel radius of neighbours (truncate 4): exactly the whole volume's
    values.  Yields (slice of axial slices, smoothed float32 slab)."""
    halo = int(4.0 * SMOOTH_SIGMA + 0.5)
    nz = image.shape[2]
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        a, b = max(0, z0 - halo), min(nz, z1 + halo)
        smooth = ndimage.gaussian_filter(np.asarray(image[:, :, a:b], np.float32), SMOOTH_SIGMA)
        yield slice(z0, z1), smooth[:, :, z0 - a:z1 - a]


def _otsu_foreground(image: np.ndarray, slab_above: int | None = None
                     ) -> tuple[np.ndarray, float]:
    """The voxels of the smoothed image above its Otsu threshold, and the threshold.

    Above ``slab_above`` voxels (default :data:`SLAB_ABOVE`) the smoothed image is never held
    whole: three passes of slabs (its range, its histogram, the comparison), with the histogram
    skimage's ``threshold_otsu`` builds (``OTSU_BINS`` bins over the smoothed range)."""
    from skimage.filters import threshold_otsu

    if image.size <= (SLAB_ABOVE if slab_above is None else slab_above):
        smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), SMOOTH_SIGMA)
        level = float(threshold_otsu(smooth, nbins=OTSU_BINS))
        return smooth > level, level
    lo = hi = None
    for _, smooth in _smoothed_slabs(image):
        a, b = smooth.min(), smooth.max()
        lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
    if lo == hi:  # threshold_otsu's answer for a constant image: nothing above it
        return np.zeros(image.shape, bool), float(lo)
    counts, edges = None, None
    for _, smooth in _smoothed_slabs(image):
        c, edges = np.histogram(smooth, bins=OTSU_BINS, range=(lo, hi))
        counts = c if counts is None else counts + c
    level = float(threshold_otsu(hist=(counts, (edges[:-1] + edges[1:]) / 2.0)))
    fg = np.empty(image.shape, bool)
    for z, smooth in _smoothed_slabs(image):
        np.greater(smooth, level, out=fg[:, :, z])
    return fg, level


def stripped_foreground(image: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The voxels above a skull-stripped scan's near-constant background and the rule's
    words, or None when ``image`` does not look skull-stripped (see :func:`compute_mask`)."""
    faces = _faces(image)
    values, counts = np.unique(faces, return_counts=True)
    bg = float(values[counts.argmax()])
    high = float(np.percentile(image, 99.5))
    tol = BACKGROUND_TOL * max(high - bg, 0.0)
    if np.mean(np.abs(faces - bg) <= tol) > 0.5 and bg < high:
        near = image <= bg + tol
        share = sum(int(np.count_nonzero(np.abs(image[i:i + 8] - bg) <= tol))  # in slabs
                    for i in range(0, len(image), 8)) / image.size
        if share > BACKGROUND_SHARE and near.mean() < 0.999:
            fg = np.logical_not(near, out=near)
            return fg, (f"skull-stripped background: values <= {bg:.4g} + {tol:.3g} "
                        f"({100 * share:.1f}% of voxels)")
    return None


FILLED = "; largest component, holes filled (3D and axial slices)"


def compute_mask(image: np.ndarray, *, otsu: bool = True) -> tuple[np.ndarray, str] | None:
    """The foreground (brain) of a scan and the rule that found it.

    Skull-stripped scans have a near-constant background: the most frequent value on the
    volume's faces, held (within a small tolerance) by most face voxels and by more than 10% of
    the volume; voxels above it are the brain (interpolation after skull stripping also rings
    below it: background too).  Otherwise an Otsu threshold of the smoothed image (with
    ``otsu=False``: None instead).  The largest connected component is kept and its holes are
    filled in 3D and slice by slice.
    """
    found = stripped_foreground(image)
    if found is None:
        if not otsu:
            return None
        fg, level = _otsu_foreground(image)
        found = fg, f"Otsu threshold {level:.4g} of the smoothed image"
    fg, rule = found
    fg = fill_holes(_largest_component(fg))
    return fg, rule + FILLED


#: plausible volumes of an adult brain mask, cm³ (``preprocess.brain_volume_cm3``)
BRAIN_VOLUME_CM3 = (800.0, 2000.0)
#: a piece of a brain mask other than its largest is "large" above this share of the mask
LARGE_PIECE = 0.05
#: a brain mask may cover at most this share of the voxels on the volume's six faces
MAX_FACE_SHARE = 0.5
#: a brain mask's median intensity lies at least this far from the background (the median of
#: the volume's faces) towards the scan's 99.5th percentile: 0.29-0.79 on the shared brains
#: (raw heads, BraTS, MS, IXI; any contrast), -0.01 on the grid phantom's air
MIN_CONTRAST = 0.1
_CUBE3 = np.ones((3, 3, 3), bool)


def mask_volume_cm3(mask: np.ndarray, spacing) -> float:
    """The volume of ``mask`` in cm³."""
    return int(np.count_nonzero(mask)) * float(np.prod([float(s) for s in spacing])) / 1000.0


def implausible_brain(mask: np.ndarray, spacing, volume_cm3=BRAIN_VOLUME_CM3,
                      one_piece: bool = False, image: np.ndarray | None = None) -> str | None:
    """Why ``mask`` cannot be a brain, in a few words, or None when it can: a volume outside
    ``volume_cm3`` (low, high), more than :data:`MAX_FACE_SHARE` of the voxels on the volume's
    faces (a mask that fills the field of view), more than one large piece (26-connected pieces
    other than the largest holding over :data:`LARGE_PIECE` of the mask; not checked with
    ``one_piece``, for a mask already reduced to its largest component), or, with the scan's
    ``image``, a median intensity inside the mask at the background's level (a mask of air:
    :data:`MIN_CONTRAST`)."""
    volume = mask_volume_cm3(mask, spacing)
    low, high = volume_cm3
    if not low <= volume <= high:
        return (f"brain mask of {volume:,.0f} cm³ is outside the plausible "
                f"{low:,.0f}-{high:,.0f} cm³ (preprocess.brain_volume_cm3)")
    faces = _faces(mask)
    if faces.mean() > MAX_FACE_SHARE:
        return (f"brain mask covers {100 * faces.mean():.0f}% of the field of view's edge "
                f"(at most {100 * MAX_FACE_SHARE:.0f}%)")
    if not one_piece:
        labels, n = label(mask, _CUBE3)
        if n > 1:
            sizes = label_sizes(labels, n)[1:]
            del labels
            large = int(np.count_nonzero(sizes > LARGE_PIECE * sizes.sum()))
            if large > 1:
                return (f"brain mask is in {large} large pieces (each over "
                        f"{100 * LARGE_PIECE:.0f}% of its volume)")
    if image is not None:
        background = float(np.median(_faces(image)))
        high = float(np.percentile(image, 99.5))
        inside = image[mask]
        median = float(np.median(inside if inside.dtype == np.float32 else
                                 inside.astype(np.float32)))
        contrast = (median - background) / (high - background) if high > background else 0.0
        if not contrast >= MIN_CONTRAST:
            return (f"brain mask is mostly background: its median intensity lies "
                    f"{100 * contrast:.0f}% of the way from the background (the median of "
                    f"the volume's faces) to the 99.5th percentile (a brain's: at least "
                    f"{100 * MIN_CONTRAST:.0f}%)")
    return None


def bounding_box(mask: np.ndarray, margin=0) -> tuple[slice, ...] | None:
    """The smallest box holding ``mask`` grown by ``margin`` voxels (per axis), or None."""
    if not mask.any():
        return None
    margin = np.broadcast_to(np.asarray(margin, int), (mask.ndim,))
    box = []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))
        box.append(slice(max(0, hit[0] - margin[ax]),
                         min(mask.shape[ax], hit[-1] + 1 + margin[ax])))
    return tuple(box)


def grow_mm(mask: np.ndarray, margin_mm: float, spacing) -> np.ndarray:
    """``mask`` grown by ``margin_mm`` (every voxel within that distance of it, in mm), computed
    inside ``mask``'s bounding box padded by the margin (a lesion's box, not the volume)."""
    grown = np.zeros(mask.shape, bool)
    pad = [int(np.ceil(margin_mm / max(float(s), 1e-6))) + 1 for s in spacing]
    box = bounding_box(mask, pad)
    if box is None:
        return grown
    dist = ndimage.distance_transform_edt(~mask[box], sampling=[float(s) for s in spacing])
    grown[box] = dist <= margin_mm
    return grown


def outer_erosion(mask: np.ndarray, depth_mm: float, spacing, slab: int = 48) -> np.ndarray:
    """``mask`` minus the voxels within ``depth_mm`` of the outside of its filled outline.

    A voxel goes when the Euclidean distance (mm) from its centre to the nearest outside voxel's
    centre is at most ``depth_mm`` (2 mm at 1 mm voxels: two layers).  Holes inside the mask are
    filled before measuring, so erosion eats only from the outer surface.

    The distance transform runs on slabs of ``slab`` axial slices with a margin deeper than
    ``depth_mm``: exact for this test (an outside voxel within ``depth_mm`` lies within the
    margin), with memory bounded by the slab rather than the volume.
    """
    mask = np.asarray(mask, bool)
    if depth_mm <= 0:
        return mask.copy()
    box = bounding_box(mask)
    if box is None:
        return mask.copy()
    filled = _fill(mask[box], _CROSS3, (0, 1, 2))
    inside = np.zeros(filled.shape, bool)
    nz = filled.shape[2]
    margin = int(np.ceil(depth_mm / float(spacing[2]))) + 1
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        a, b = max(0, z0 - margin), min(nz, z1 + margin)
        sub = filled[:, :, a:b]
        # the box's own edge is outside; a slab's cut faces are not (their neighbours are real)
        pad = ((1, 1), (1, 1), (1 if a == 0 else 0, 1 if b == nz else 0))
        depth = ndimage.distance_transform_edt(np.pad(sub, pad), sampling=spacing)
        depth = depth[1:-1, 1:-1, pad[2][0]:depth.shape[2] - pad[2][1]]
        inside[:, :, z0:z1] = depth[:, :, z0 - a:z1 - a] > depth_mm
    out = np.zeros_like(mask)
    out[box] = mask[box] & inside
    return out
