"""Lesion candidates: thresholded heat map, 26-connected components, size filter, statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

_26 = np.ones((3, 3, 3), bool)  # 26-connectivity


@dataclass(frozen=True)
class Candidate:
    """One connected component of supra-threshold voxels.

    ``centroid_mm`` is in world (RAS+) millimetres; ``bbox`` is (x0, y0, z0, x1, y1, z1) voxel
    indices of the scan's array (end exclusive).
    """

    id: int
    voxels: int
    volume_mm3: float
    centroid_mm: tuple[float, float, float]
    bbox: tuple[int, int, int, int, int, int]
    max_score: float
    mean_score: float

    def row(self) -> dict:
        d = asdict(self)
        x, y, z = d.pop("centroid_mm")
        bbox = d.pop("bbox")
        d.update(centroid_x_mm=round(x, 2), centroid_y_mm=round(y, 2), centroid_z_mm=round(z, 2),
                 bbox=" ".join(map(str, bbox)), volume_mm3=round(self.volume_mm3, 2),
                 max_score=float(f"{self.max_score:.6g}"),
                 mean_score=float(f"{self.mean_score:.6g}"))
        return d


def find_candidates(heat: np.ndarray, affine: np.ndarray, threshold: float,
                    min_volume_mm3: float = 0.0) -> tuple[np.ndarray, list[Candidate]]:
    """Label supra-threshold voxels (26-connectivity), drop small components, sort by max score.

    Returns the label image (int32, 1 = strongest candidate) and the candidates.
    """
    # int32 labels written directly and relabelled in place: CT-size volumes stay affordable
    labels, n = ndimage.label(heat > threshold, structure=_26, output=np.int32)
    if n == 0:
        return labels, []
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    idx = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    maxes = ndimage.maximum(heat, labels, idx)
    means = ndimage.mean(heat, labels, idx)
    boxes = ndimage.find_objects(labels)
    keep = [i for i in range(n) if counts[i] * voxel_mm3 >= min_volume_mm3]
    keep.sort(key=lambda i: (-maxes[i], -counts[i]))
    relabel = np.zeros(n + 1, np.int32)
    out = []
    for new_id, i in enumerate(keep, start=1):
        relabel[i + 1] = new_id
        box = boxes[i]
        inside = np.argwhere(labels[box] == i + 1).mean(axis=0)  # within the bounding box only
        centroid = inside + [s.start for s in box]
        world = affine @ np.r_[centroid, 1.0]
        out.append(Candidate(
            id=new_id, voxels=int(counts[i]), volume_mm3=float(counts[i] * voxel_mm3),
            centroid_mm=tuple(float(v) for v in world[:3]),
            bbox=tuple(int(s.start) for s in box) + tuple(int(s.stop) for s in box),
            max_score=float(maxes[i]), mean_score=float(means[i])))
    np.take(relabel, labels, out=labels)
    return labels, out
