"""Filters over time in numpy: Gaussian smoothing, a moving average, the distance to a frame.

They compute what scipy.ndimage's gaussian_filter1d and uniform_filter1d (mode "nearest",
sums in float64, the input's dtype out) and a 1-D distance_transform_edt compute, on the
arrays the predictor, the live stream, the mouth bank and the Rhubarb classifier pass. They
live here because importing scipy.ndimage took 0.09 s (python -X importtime), a fifth of a
cold `lipsync predict` of a 3 s line's time after torch left it (docs/benchmarks.md).
Must not: import anything of the engine above core.
"""

from __future__ import annotations

import numpy as np


def gaussian_smooth(x: np.ndarray, sigma: float, axis: int = 0, truncate: float = 4.0) -> np.ndarray:
    """x smoothed along `axis` by a Gaussian of `sigma` samples, the kernel cut at truncate sigmas,
    the edges held (mode "nearest"); same shape and dtype (float inputs).

    >>> gaussian_smooth(np.array([0.0, 0.0, 3.0, 0.0, 0.0]), 1.0, truncate=1.0).round(3)
    array([0.   , 0.822, 1.356, 0.822, 0.   ])
    """
    radius = int(truncate * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / (float(sigma) ** 2) * offsets.astype(np.float64) ** 2) if radius else np.ones(1)
    return _correlate(x, kernel / kernel.sum(), offsets, axis)


def moving_average(x: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    """Mean of `size` samples along `axis`, samples i - size // 2 .. i + (size - 1) // 2 (edges held).

    >>> moving_average(np.array([0.0, 3.0, 0.0, 0.0]), 3)
    array([1., 1., 1., 0.])
    """
    offsets = np.arange(-(size // 2), size - size // 2)
    return _correlate(x, np.full(size, 1.0 / size), offsets, axis)


def _correlate(x: np.ndarray, weights: np.ndarray, offsets: np.ndarray, axis: int) -> np.ndarray:
    x = np.asarray(x)
    moved = np.moveaxis(x, axis, 0)
    n = len(moved)
    if n == 0:
        return x.copy()
    out = np.zeros(moved.shape, np.float64)
    index = np.arange(n)
    for w, k in zip(weights, offsets):
        out += w * moved[np.clip(index + k, 0, n - 1)]
    return np.moveaxis(out.astype(x.dtype, copy=False), 0, axis)


def distance_to_false(mask: np.ndarray) -> np.ndarray:
    """(n,) float64: for each element of a 1-D bool mask, the distance in samples to the nearest
    False element (0 at False); ValueError if every element is True.

    >>> distance_to_false(np.array([True, False, True, True, True, False]))
    array([1., 0., 1., 2., 1., 0.])
    """
    mask = np.asarray(mask, bool)
    false = np.flatnonzero(~mask)
    if len(false) == 0:
        raise ValueError("distance_to_false needs at least one False element")
    i = np.arange(len(mask))
    right = np.searchsorted(false, i)
    after = false[np.minimum(right, len(false) - 1)]
    before = false[np.maximum(right - 1, 0)]
    return np.minimum(np.abs(after - i), np.abs(i - before)).astype(np.float64)
