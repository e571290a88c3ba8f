"""The smooth multiplicative bias field: exp of a low-order polynomial over the volume."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.lru_cache(maxsize=4)
def bias_terms(order: int) -> tuple[tuple[int, int, int], ...]:
    """Exponents (i, j, k) of the polynomial's terms, of degree 1 to ``order``."""
    return tuple((i, j, k) for i in range(order + 1) for j in range(order + 1 - i)
                 for k in range(order + 1 - i - j) if i + j + k > 0)


def bias_field(bias: dict[str, Any], shape: tuple[int, int, int]) -> np.ndarray:
    """The multiplicative field (float32, ``shape``) of the recorded ``params["bias_field"]``,
    the polynomial over [-1, 1] on each axis."""
    terms = bias_terms(int(bias["order"]))
    coefs = bias["coefficients"]
    if len(coefs) != len(terms):
        raise ValueError(f"bias_field: {len(terms)} coefficients expected, got {len(coefs)}")
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    log = np.zeros(shape, np.float32)
    for (i, j, k), c in zip(terms, coefs, strict=True):
        log += np.float32(c) * (axes[0][:, None, None] ** i * axes[1][None, :, None] ** j
                                * axes[2][None, None, :] ** k)
    return np.exp(log)

