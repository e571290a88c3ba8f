"""Lesion candidates: thresholded heat map, 26-connected components, size filter, statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from medae.masks import label_above, lookup

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

    Returns the label image (1 = strongest candidate; uint16, or int32 when there are 65,536
    components or more) and the candidates.
    """
    # labels in uint16 when they fit (labelled in place: no boolean image), statistics within
    # each component's bounding box and the relabelling in place chunk by chunk: no full-size
    # 64-bit or boolean temporaries on CT-size volumes
    labels, n = label_above(heat, threshold, _26)
    if n == 0:
        return labels, []
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    boxes = ndimage.find_objects(labels)
    stats = []
    for i, box in enumerate(boxes):
        inside = labels[box] == i + 1
        count = int(np.count_nonzero(inside))
        if count * voxel_mm3 < min_volume_mm3:
            continue
        part = heat[box]
        top = float(np.max(part, where=inside, initial=-np.inf))
        total = float(np.sum(part, where=inside, dtype=np.float64))
        # centroid from the per-axis projections (the voxel indices are never listed)
        centroid = [s.start + float(np.dot(inside.sum(axis=tuple(a for a in range(3) if a != ax),
                                                      dtype=np.int64),
                                           np.arange(inside.shape[ax]))) / count
                    for ax, s in enumerate(box)]
        stats.append((i, count, top, total / count, centroid))
    stats.sort(key=lambda t: (-t[2], -t[1]))
    relabel = np.zeros(n + 1, labels.dtype)
    out = []
    for new_id, (i, count, top, mean, centroid) in enumerate(stats, start=1):
        relabel[i + 1] = new_id
        box = boxes[i]
        world = affine @ np.r_[centroid, 1.0]
        out.append(Candidate(
            id=new_id, voxels=count, volume_mm3=float(count * voxel_mm3),
            centroid_mm=tuple(float(v) for v in world[:3]),
            bbox=tuple(int(s.start) for s in box) + tuple(int(s.stop) for s in box),
            max_score=top, mean_score=mean))
    lookup(relabel, labels, out=labels)
    return labels, out
