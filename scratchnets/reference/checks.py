"""Input checks shared by the reference ops (NumPy only): clear errors instead of silent casts."""

from __future__ import annotations

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(a, name: str) -> np.ndarray:
    """Return ``a`` as a NumPy array, raising TypeError unless its dtype is float32 or float64."""
    arr = np.asarray(a)
    if arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {arr.dtype}")
    return arr


def check_dy(dy, y_shape, op: str, dtype=None) -> np.ndarray:
    """``dy`` as a float array (cast to ``dtype``, the forward's, when given), after checking that
    it has the shape of the op's output ``y``."""
    dy = float_array(dy, "dy")
    if dtype is not None:
        dy = dy.astype(dtype, copy=False)
    if dy.shape != tuple(y_shape):
        raise ValueError(f"{op}_backward: dy has shape {dy.shape}, y had shape {tuple(y_shape)}")
    return dy
