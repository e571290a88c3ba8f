"""Pictures of a scored scan: anomaly heat map and lesion candidates over the grey scan.

:func:`write_overlays` writes two PNG files into a folder:

* ``overlay_ortho.png``: the axial, coronal and sagittal planes through one voxel (by default the
  strongest candidate), with a crosshair at that voxel;
* ``overlay_mosaic.png``: 16 axial slices evenly spaced through the brain.

Both show the scan in grey (window: 1st to 99.5th percentile inside the brain), the heat map in a
perceptual colour map where it exceeds a display floor (3/4 of the threshold, or the 90th
percentile of the in-brain scores), candidate outlines in cyan, and a colour bar with the
threshold marked.  Arrays are RAS+ (axis 0 left to right, 1 posterior to anterior, 2 inferior to
superior); the pictures use the neurological convention (subject's left on the screen's left),
every panel is upright and drawn at its true millimetre aspect ratio.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas: no pyplot, no display,
no global state; each file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from skimage.measure import find_contours

from medae.io.atomic import atomic_write_bytes

ORTHO_NAME = "overlay_ortho.png"
MOSAIC_NAME = "overlay_mosaic.png"

DPI = 100
ORTHO_SIZE = (15.0, 5.5)        # inches; 1500 x 550 px at DPI
MOSAIC_SIZE = (14.0, 14.0)      # 1400 x 1400 px
MOSAIC_GRID = (4, 4)

BACKGROUND = "#101010"
TEXT = "#e8e8e8"
CONTOUR = "#00e5ff"
CROSSHAIR = "#7dff7d"
FLOOR_FRACTION = 0.75  # heat is shown above this fraction of the threshold
ALPHA_MIN, ALPHA_MAX = 0.45, 0.9   # heat opacity at the display floor and at the top of the bar
_CMAP_NAME = "inferno"
_CMAP_START = 0.2                  # skip inferno's near-black start: low scores stay visible
_LUT = colormaps[_CMAP_NAME](np.linspace(_CMAP_START, 1.0, 256))[:, :3]
_CMAP = ListedColormap(_LUT, name="inferno_overlay")
_SAMPLE = 2_000_000                # voxels used for percentiles (strided subsample above this)


# ---------------------------------------------------------------------------------------------
# public helpers


def default_focus(heatmap: np.ndarray, candidates: np.ndarray | None = None
                  ) -> tuple[int, int, int]:
    """Voxel the orthogonal views centre on.

    The centroid of the strongest candidate (label 1, or the lowest label present), moved to the
    nearest voxel of that candidate when the centroid falls outside it (ring-shaped lesions);
    without candidates the heat map's maximum; for an all-zero heat map the volume's centre.
    """
    heat = np.asarray(heatmap)
    if candidates is not None:
        cand = np.asarray(candidates)
        # memory-light on CT-size volumes: whole-volume tests a block of slices at a time, the
        # centroid from per-axis projections, voxel lists one slice of the candidate's box at a
        # time
        label = _focus_label(cand)
        if label is not None:
            box = _label_box(cand, label)
            inside = cand[box] == label
            count = np.count_nonzero(inside)
            centre = np.array([b.start + float(np.dot(
                inside.sum(axis=tuple(a for a in range(3) if a != ax), dtype=np.int64),
                np.arange(inside.shape[ax]))) / count for ax, b in enumerate(box)])
            centre = np.rint(centre).astype(int)
            if cand[tuple(centre)] != label:
                centre = _nearest_voxel(inside, box, centre)
            return tuple(int(v) for v in centre)
    finite = heat.astype(np.float32, copy=False)
    if not all(np.isfinite(finite[i:i + 8]).all() for i in range(0, len(finite), 8)):
        finite = np.nan_to_num(finite, nan=0.0, posinf=0.0, neginf=0.0)
    if finite.size and finite.max() > 0:
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(finite)), finite.shape))
    return tuple(int(s // 2) for s in heat.shape)


def _blocks(n: int, step: int = 32):
    return ((i, min(n, i + step)) for i in range(0, n, step))


def _focus_label(cand: np.ndarray) -> int | None:
    """Label 1 if present, else the lowest positive label, else None (a block at a time)."""
    lowest = None
    for i, j in _blocks(len(cand)):
        part = cand[i:j]
        if np.any(part == 1):
            return 1
        pos = part[part > 0]
        if pos.size:
            lowest = int(pos.min()) if lowest is None else min(lowest, int(pos.min()))
    return lowest


def _label_box(cand: np.ndarray, label: int) -> tuple[slice, ...]:
    """The bounding box of ``cand == label`` (present), a block of slices at a time."""
    hit = [np.zeros(n, bool) for n in cand.shape]
    for i, j in _blocks(len(cand)):
        part = cand[i:j] == label
        hit[0][i:j] |= part.any(axis=(1, 2))
        hit[1] |= part.any(axis=(0, 2))
        hit[2] |= part.any(axis=(0, 1))
    return tuple(slice(int(h[0]), int(h[-1]) + 1) for h in (np.flatnonzero(h) for h in hit))


def _nearest_voxel(inside: np.ndarray, box: tuple[slice, ...], centre: np.ndarray) -> np.ndarray:
    """The voxel of ``inside`` (a box at ``box``) nearest ``centre``; on a tie the first in
    C order, as ``np.argmin`` over ``np.argwhere`` would give, one slice at a time."""
    best, best_d = None, None
    for i in range(inside.shape[0]):
        pts = np.argwhere(inside[i])
        if not len(pts):
            continue
        x = i + box[0].start
        offset = np.array([box[1].start, box[2].start])
        d = ((pts + offset - centre[1:]) ** 2).sum(axis=1) + (x - centre[0]) ** 2
        k = int(np.argmin(d))
        if best_d is None or d[k] < best_d:
            best_d = d[k]
            best = np.array([x, pts[k][0] + box[1].start, pts[k][1] + box[2].start])
    return best


def ortho_panels(shape: tuple[int, int, int], spacing: tuple[float, float, float]
                 ) -> dict[str, tuple[float, float, float, float]]:
    """Where the ortho figure puts its panels: figure fractions ``(left, bottom, width, height)``.

    ``shape`` is the size in voxels of the box shown: the brain's bounding box plus a margin of
    4 % of the largest dimension, clipped to the volume (the whole volume when the mask covers
    it).  Keys ``"axial"``, ``"coronal"``, ``"sagittal"`` and ``"colorbar"``.  The panels share
    one millimetre-to-pixel scale and have exactly their data's aspect ratio, so a voxel's pixel
    position follows from these boxes (the tests use that).
    """
    nx, ny, nz = shape
    sx, sy, sz = spacing
    fw, fh = ORTHO_SIZE
    left, right, top, bottom, gap = 0.25, 1.45, 0.95, 0.45, 0.35   # inches
    bar_gap, bar_w = 0.3, 0.18                                      # right of the last panel
    widths = [nx * sx, nx * sx, ny * sy]                            # mm
    heights = [ny * sy, nz * sz, nz * sz]
    avail_w = fw - left - right - 2 * gap
    avail_h = fh - top - bottom
    scale = min(avail_w / sum(widths), avail_h / max(heights))     # inches per mm
    # panels and colour bar (with its labels, ~right) centred as one block
    block = scale * sum(widths) + 2 * gap + right
    x = left + max(0.0, (fw - left - block) / 2)
    boxes = {}
    for name, w, h in zip(("axial", "coronal", "sagittal"), widths, heights, strict=True):
        y = bottom + (avail_h - scale * h) / 2
        boxes[name] = (x / fw, y / fh, scale * w / fw, scale * h / fh)
        x += scale * w + gap
    bar_h = 0.75 * avail_h
    boxes["colorbar"] = ((x - gap + bar_gap) / fw, (bottom + (avail_h - bar_h) / 2) / fh,
                         bar_w / fw, bar_h / fh)
    return boxes


def write_overlays(image: np.ndarray, heatmap: np.ndarray, spacing: tuple[float, float, float],
                   out_dir: Path, *, candidates: np.ndarray | None = None,
                   threshold: float | None = None, mask: np.ndarray | None = None,
                   units: str = "reconstruction error", title: str = "",
                   focus: tuple[int, int, int] | None = None) -> list[Path]:
    """Write ``overlay_ortho.png`` and ``overlay_mosaic.png`` into ``out_dir``; return their paths.

    Args:
        image: the scan, (X, Y, Z) in RAS+ orientation.
        heatmap: anomaly score per voxel, same shape (>= 0, zero outside the brain).
        spacing: voxel size in mm per axis (panels keep the true aspect ratio).
        out_dir: folder for the pictures (created if missing).
        candidates: integer label image, same shape (0 background, 1..N candidates by score).
        threshold: the voxel threshold; marked on the colour bar; 3/4 of it is the display floor.
        mask: brain mask, same shape; default: voxels that differ from the image's background.
        units: label of the colour bar.
        title: figure title.
        focus: voxel (x, y, z) the orthogonal views go through; default :func:`default_focus`.

    Raises:
        ValueError: shapes differ, the arrays are not 3-D, the spacing is not three positive
            numbers, or ``focus`` lies outside the volume.
    """
    view = _View.build(image, heatmap, spacing, candidates, threshold, mask)
    if focus is None:
        focus = default_focus(view.heat, view.cand)
    focus = tuple(int(v) for v in focus)
    if len(focus) != 3 or not all(0 <= f < n for f, n in zip(focus, view.shape, strict=True)):
        raise ValueError(f"focus {focus} lies outside the volume of shape {view.shape}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in ((ORTHO_NAME, _ortho_figure), (MOSAIC_NAME, _mosaic_figure)):
        fig = draw(view, focus, units, title)
        buf = io.BytesIO()
        FigureCanvasAgg(fig)
        fig.savefig(buf, format="png", dpi=DPI, facecolor=fig.get_facecolor(),
                    pil_kwargs={"compress_level": 3})  # half the time of 6, +12% size
        fig.clear()
        paths.append(atomic_write_bytes(out_dir / name, buf.getbuffer()))
    return paths


# ---------------------------------------------------------------------------------------------
# values shared by both figures


@dataclass
class _View:
    image: np.ndarray
    heat: np.ndarray
    cand: np.ndarray | None
    brain: np.ndarray
    spacing: tuple[float, float, float]
    grey_lo: float
    grey_hi: float
    floor: float          # heat shown where heat > floor
    top: float            # top of the colour bar
    threshold: float | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image.shape

    @classmethod
    def build(cls, image, heatmap, spacing, candidates, threshold, mask) -> _View:
        image = np.asarray(image)
        heat = np.asarray(heatmap)
        if image.ndim != 3:
            raise ValueError(f"image must be 3-D (X, Y, Z), got shape {image.shape}")
        for name, arr in (("heatmap", heat), ("candidates", candidates), ("mask", mask)):
            if arr is not None and np.shape(arr) != image.shape:
                raise ValueError(
                    f"{name} shape {np.shape(arr)} differs from the image shape {image.shape}")
        try:
            sp = tuple(float(s) for s in spacing)
        except (TypeError, ValueError):
            raise ValueError(f"spacing must be three positive numbers, got {spacing!r}") from None
        if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
            raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
        if threshold is not None and not math.isfinite(float(threshold)):
            threshold = None

        image = _finite(image)
        heat = _finite(heat)
        if heat.size and heat.min() < 0:  # scoring's maps are >= 0: no copy then
            heat = np.maximum(heat, 0.0)
        cand = None if candidates is None else np.asarray(candidates)
        if mask is not None:
            brain = np.asarray(mask).astype(bool, copy=False)
        else:
            brain = image != 0
            low = image.min() if image.size else 0.0
            if np.any(image > low):
                brain &= image > low      # constant background below the brain (z-scored scans)
        if not brain.any():
            brain = np.ones(image.shape, bool)

        lo, hi = _percentiles(_masked_sample(image, brain), (1.0, 99.5))
        if not hi > lo:
            lo, hi = float(image.min()), float(image.max())
            if not hi > lo:
                hi = lo + 1.0

        heat_max = float(heat.max()) if heat.size else 0.0  # (the brain's max is no larger)
        if threshold is not None and threshold > 0:
            floor = FLOOR_FRACTION * float(threshold)
        else:
            inside = _masked_sample(heat, brain)
            floor = _percentiles(inside, (90.0,))[0] if inside.size else 0.0
        top = max(heat_max, float(threshold or 0.0) * 1.1, floor)
        if not top > floor:
            top = floor + (abs(floor) * 0.1 or 1.0)
        return cls(image, heat, cand, brain, sp, lo, hi, float(floor), float(top),
                   None if threshold is None else float(threshold))

    def norm(self) -> Normalize:
        return Normalize(vmin=self.floor, vmax=self.top)

    def rgb(self, grey: np.ndarray, heat: np.ndarray) -> np.ndarray:
        """Grey scan with the heat map blended over it, float RGB in [0, 1]."""
        g = np.clip((grey - self.grey_lo) / (self.grey_hi - self.grey_lo), 0.0, 1.0)
        t = np.clip((heat - self.floor) / (self.top - self.floor), 0.0, 1.0)
        colour = _LUT[(t * (len(_LUT) - 1)).astype(np.intp)]
        alpha = np.where(heat > self.floor, ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * t, 0.0)
        alpha = alpha[..., None]
        return (g[..., None] * (1.0 - alpha) + colour * alpha).astype(np.float32)


def _finite(a: np.ndarray) -> np.ndarray:
    """``a`` with NaN and infinities set to 0 (whole-number arrays as they are: a compacted
    int16 scan stays int16, not a full-size float32 copy)."""
    if a.dtype.kind in "iu":
        return a
    a = a.astype(np.float32, copy=False)
    if not all(np.isfinite(a[i:i + 8]).all() for i in range(0, len(a), 8)):  # in slabs
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return a


def _masked_sample(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values[mask]``, or above ``_SAMPLE`` voxels exactly the strided subsample that
    :func:`_percentiles` takes of it, gathered slab by slab (no full-size copy)."""
    total = int(np.count_nonzero(mask))
    if total <= _SAMPLE:
        return values[mask]
    step = total // _SAMPLE + 1
    parts, seen = [], 0
    for i in range(0, len(values), 8):
        part = values[i:i + 8][mask[i:i + 8]]
        parts.append(part[(-seen) % step::step])
        seen += part.size
    return np.concatenate(parts)  # at most _SAMPLE values: _percentiles takes them all


def _percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    if values.size == 0:
        return [0.0 for _ in qs]
    if values.size > _SAMPLE:
        values = values[:: values.size // _SAMPLE + 1]
    return [float(v) for v in np.percentile(values, qs)]


# ---------------------------------------------------------------------------------------------
# drawing


def _plane(view: _View, axis: int, index: int, crop=None):
    """2-D grey, heat and candidate arrays of one plane, rows = screen vertical (bottom first).

    Axial (axis 2): x across, y up.  Coronal (axis 1): x across, z up.  Sagittal (axis 0): y
    across, z up.  ``crop`` = ((h0, h1), (v0, v1)) voxel ranges (half-open) on those axes.
    """
    sel = [slice(None)] * 3
    sel[axis] = index
    if crop is not None:
        h_axis, v_axis = [a for a in range(3) if a != axis]
        sel[h_axis] = slice(*crop[0])
        sel[v_axis] = slice(*crop[1])
    sel = tuple(sel)
    grey = view.image[sel].T
    heat = view.heat[sel].T
    cand = None if view.cand is None else (view.cand[sel] > 0).T
    return grey, heat, cand


def _draw_plane(ax, view: _View, axis: int, index: int, crop=None, lw: float = 1.2) -> None:
    h_axis, v_axis = [a for a in range(3) if a != axis]
    sh, sv = view.spacing[h_axis], view.spacing[v_axis]
    (h0, h1), (v0, v1) = crop if crop is not None else ((0, view.shape[h_axis]),
                                                          (0, view.shape[v_axis]))
    grey, heat, cand = _plane(view, axis, index, crop)
    extent = (h0 * sh, h1 * sh, v0 * sv, v1 * sv)
    ax.imshow(view.rgb(grey, heat), origin="lower", extent=extent, aspect="equal",
              interpolation="bilinear" if max(sh, sv) / min(sh, sv) > 1.01 else "antialiased")
    if cand is not None and cand.any():
        padded = np.pad(cand, 1).astype(np.float32)
        # one collection per plane (hundreds of outlines would each be a Line2D artist):
        # drawn alike, in a fraction of the time
        paths = [np.column_stack(((c[:, 1] - 1 + 0.5 + h0) * sh, (c[:, 0] - 1 + 0.5 + v0) * sv))
                 for c in find_contours(padded, 0.5)]
        ax.add_collection(LineCollection(paths, colors=CONTOUR, linewidths=lw, alpha=0.95,
                                         capstyle="projecting", joinstyle="round"),
                          autolim=False)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_axis_off()


def _crosshair(ax, h: float, v: float, extent, gap: float) -> None:
    """Crosshair through (h, v) in mm, with a gap around the point so the lesion stays visible."""
    kw = {"color": CROSSHAIR, "lw": 0.8, "alpha": 0.8, "ls": (0, (4, 3))}
    ax.plot([extent[0], h - gap], [v, v], **kw)
    ax.plot([h + gap, extent[1]], [v, v], **kw)
    ax.plot([h, h], [extent[2], v - gap], **kw)
    ax.plot([h, h], [v + gap, extent[3]], **kw)


def _letters(ax, left: str, right: str, top: str, bottom: str, size: float = 11) -> None:
    kw = {"color": TEXT, "fontsize": size, "fontweight": "bold", "alpha": 0.85,
          "transform": ax.transAxes}
    ax.text(0.015, 0.5, left, ha="left", va="center", **kw)
    ax.text(0.985, 0.5, right, ha="right", va="center", **kw)
    ax.text(0.5, 0.985, top, ha="center", va="top", **kw)
    ax.text(0.5, 0.015, bottom, ha="center", va="bottom", **kw)


def _colorbar(fig: Figure, cax, view: _View, units: str) -> None:
    bar = fig.colorbar(ScalarMappable(norm=view.norm(), cmap=_CMAP), cax=cax)
    bar.set_label(units, color=TEXT, fontsize=11)
    bar.ax.tick_params(colors=TEXT, labelsize=9)
    bar.outline.set_edgecolor("#666666")
    if view.threshold is not None and view.floor <= view.threshold <= view.top:
        cax.axhline(view.threshold, color=CONTOUR, lw=2.0)
        cax.text(-0.3, view.threshold, "threshold", color=CONTOUR, fontsize=9, rotation=90,
                 ha="right", va="center", transform=cax.get_yaxis_transform())
    cax.set_title(f"shown\n> {view.floor:.3g}", color="#aaaaaa", fontsize=8, pad=6)


def _ortho_figure(view: _View, focus, units: str, title: str) -> Figure:
    fig = Figure(figsize=ORTHO_SIZE, dpi=DPI, facecolor=BACKGROUND)
    box = _display_box(view, focus)
    boxes = ortho_panels(tuple(b - a for a, b in box), view.spacing)
    fx, fy, fz = focus
    sx, sy, sz = view.spacing
    centre = [(f + 0.5) * s for f, s in zip(focus, view.spacing, strict=True)]
    gap = 0.04 * max((b - a) * s for (a, b), s in zip(box, view.spacing, strict=True))
    panels = (
        ("axial", 2, fz, (0, 1), ("L", "R", "A", "P"), f"axial  z = {fz}"),
        ("coronal", 1, fy, (0, 2), ("L", "R", "S", "I"), f"coronal  y = {fy}"),
        ("sagittal", 0, fx, (1, 2), ("P", "A", "S", "I"), f"sagittal  x = {fx}"),
    )
    for name, axis, index, (ha, va), letters, label in panels:
        ax = fig.add_axes(boxes[name])
        crop = (box[ha], box[va])
        _draw_plane(ax, view, axis, index, crop)
        hs, vs = view.spacing[ha], view.spacing[va]
        extent = (crop[0][0] * hs, crop[0][1] * hs, crop[1][0] * vs, crop[1][1] * vs)
        _crosshair(ax, centre[ha], centre[va], extent, gap)
        _letters(ax, *letters)
        ax.set_title(label, color=TEXT, fontsize=11, pad=4)
    _colorbar(fig, fig.add_axes(boxes["colorbar"]), view, units)

    value = float(view.heat[fx, fy, fz])
    label = int(view.cand[fx, fy, fz]) if view.cand is not None else 0
    info = f"focus voxel ({fx}, {fy}, {fz}), score {value:.3g}"
    if label:
        info += f", candidate {label}"
    if view.cand is not None:
        info += f"  |  {int(view.cand.max())} candidate(s) outlined in cyan"
    if not view.heat.any():
        info += "  |  the heat map is zero everywhere"
    fig.text(0.5, 1 - 0.22 / ORTHO_SIZE[1], title or "anomaly map", color=TEXT, fontsize=14,
             ha="center", va="top", fontweight="bold")
    fig.text(0.5, 1 - 0.52 / ORTHO_SIZE[1], info, color="#bbbbbb", fontsize=10,
             ha="center", va="top")
    fig.text(0.008, 0.015, "neurological convention: subject's left on screen left (L/R); "
             f"voxel {sx:g} x {sy:g} x {sz:g} mm", color="#999999", fontsize=9,
             ha="left", va="bottom")
    return fig


def _display_box(view: _View, focus) -> list[tuple[int, int]]:
    """Voxel ranges the ortho views show: the brain's bounding box plus a margin, and the focus."""
    margin = max(2, round(0.04 * max(view.shape)))
    box = _brain_box(view, margin)
    return [(min(a, f), max(b, f + 1)) for (a, b), f in zip(box, focus, strict=True)]


def _brain_box(view: _View, margin: int = 3):
    """Voxel ranges (half-open) of the brain mask per axis, widened by ``margin``."""
    ranges = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(view.brain.any(axis=other))
        n = view.shape[axis]
        ranges.append((max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, n)))
    return ranges


def _mosaic_slices(view: _View, count: int) -> list[int]:
    (z0, z1) = _brain_box(view, margin=0)[2]
    n = z1 - z0
    if n <= count:
        return list(range(z0, z1))
    # skip the thin caps at both ends: evenly spaced interior positions
    picks = np.linspace(z0, z1 - 1, count + 2)[1:-1]
    return sorted({round(float(p)) for p in picks})


def _mosaic_figure(view: _View, focus, units: str, title: str) -> Figure:
    fig = Figure(figsize=MOSAIC_SIZE, dpi=DPI, facecolor=BACKGROUND)
    rows, cols = MOSAIC_GRID
    slices = _mosaic_slices(view, rows * cols)
    (x0, x1), (y0, y1), _ = _brain_box(view)
    crop = ((x0, x1), (y0, y1))
    sx, sy, _sz = view.spacing
    w_mm, h_mm = (x1 - x0) * sx, (y1 - y0) * sy

    fw, fh = MOSAIC_SIZE
    left, right, top, bottom, gap = 0.15, 1.3, 0.75, 0.35, 0.08
    cell_w = (fw - left - right - (cols - 1) * gap) / cols
    cell_h = (fh - top - bottom - (rows - 1) * gap) / rows
    scale = min(cell_w / w_mm, cell_h / h_mm)
    tw, th = scale * w_mm, scale * h_mm
    grid_w = cols * tw + (cols - 1) * gap
    grid_h = rows * th + (rows - 1) * gap
    gx = max(left, (fw - grid_w - right) / 2 + left / 2)     # grid and colour bar centred
    gy = bottom + (fh - top - bottom - grid_h) / 2

    for k, z in enumerate(slices):
        r, c = divmod(k, cols)
        bx = gx + c * (tw + gap)
        by = gy + grid_h - (r + 1) * th - r * gap
        ax = fig.add_axes((bx / fw, by / fh, tw / fw, th / fh))
        _draw_plane(ax, view, 2, z, crop, lw=1.0)
        hot = view.cand is not None and bool((view.cand[:, :, z] > 0).any())
        ax.text(0.03, 0.97, f"z {z}", color=CONTOUR if hot else TEXT, fontsize=10,
                ha="left", va="top", transform=ax.transAxes, alpha=0.9)
        if k == 0:
            _letters(ax, "L", "R", "A", "P", size=10)

    bar_h = 0.6 * (fh - top - bottom)
    cax = fig.add_axes(((gx + grid_w + 0.35) / fw, (bottom + (fh - top - bottom - bar_h) / 2) / fh,
                        0.2 / fw, bar_h / fh))
    _colorbar(fig, cax, view, units)
    fig.text(0.5, 1 - 0.2 / fh, (title or "anomaly map") + "  -  axial slices",
             color=TEXT, fontsize=15, ha="center", va="top", fontweight="bold")
    fig.text(0.5, 1 - 0.5 / fh, f"{len(slices)} slices, inferior (top left) to superior; "
             "neurological convention (subject's left on screen left); candidates in cyan",
             color="#bbbbbb", fontsize=10, ha="center", va="top")
    return fig
