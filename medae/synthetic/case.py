"""One generated subject: its arrays on the template grid and the parameters that made it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medae.synthetic.params import rounded_list


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
                out.append(rounded_list((self.affine @ np.append(com, 1.0))[:3], 2))
        return out
