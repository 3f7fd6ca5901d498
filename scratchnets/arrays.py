"""Array helpers shared by every backend: converting to NumPy and checking dtypes."""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def to_numpy(a) -> np.ndarray:
    """Return ``a`` as a host NumPy array, whatever backend produced it (copies device arrays)."""
    if hasattr(a, "copy_to_host"):  # numba.cuda device array (real GPU or simulator)
        return a.copy_to_host()
    return np.asarray(a)


def is_device_array(a) -> bool:
    return hasattr(a, "copy_to_host")


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> a contiguous (N, H, W, C) copy (the eval plan's channels-last stretch)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> a contiguous (N, C, H, W) array (a reshape when H = W = 1)."""
    n, h, w, c = x.shape
    if h * w == 1:
        return x.reshape(n, c, 1, 1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
