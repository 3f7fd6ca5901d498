"""Shared pieces of the Numba CPU backend: argument normalisation and the masked-scale kernel.

Every public wrapper turns its arrays into C-contiguous float32 or float64 arrays before calling
a jitted kernel (``kernel_array``): a kernel compiles once per argument type, so allowing any
dtype or memory layout through would cost a fresh compilation for each new combination. The
validation itself (dtype, shapes) is the reference backend's, so both backends raise the same
errors.

``masked_scale`` is the one kernel several ops share: the backward of the piecewise-linear
activations (``dx = dy * slope`` where the slope is a constant or 0) and both passes of dropout.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from scratchnets.reference.checks import float_array


def kernel_array(a, name: str, dtype=None) -> np.ndarray:
    """``a`` as a C-contiguous float32/float64 array (TypeError for other dtypes).

    With ``dtype`` the array is also cast to it (e.g. ``dy`` to the forward's dtype). No copy is
    made when ``a`` already qualifies.
    """
    arr = float_array(a, name)
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return np.asarray(arr, dtype=arr.dtype if dtype is None else dtype, order="C")


def check_shape(a: np.ndarray, expected: tuple, op: str, name: str = "dy", of: str = "y"):
    """ValueError naming both shapes unless ``a.shape == expected``."""
    if a.shape != tuple(expected):
        raise ValueError(f"{op}: {name} has shape {a.shape}, {of} had shape {tuple(expected)}")


@njit(parallel=True, cache=True)
def _masked_scale_kernel(values, mask, scale, out):
    for i in prange(values.size):
        out[i] = values[i] * scale if mask[i] else 0.0


def masked_scale(values: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """out = values * scale where ``mask`` else 0 (a select, so a masked-out inf/NaN gives 0).

    ``values`` C-contiguous float32/float64, ``mask`` bool of the same shape; ``scale`` is rounded
    to the values' dtype first, so float32 work multiplies by a float32 constant, as torch does.
    One pass over memory, parallel over elements.
    """
    out = np.empty_like(values)
    scale = values.dtype.type(scale)
    _masked_scale_kernel(values.reshape(-1), mask.reshape(-1), scale, out.reshape(-1))
    return out
