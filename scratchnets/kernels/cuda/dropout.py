"""Inverted dropout on the GPU (``F.dropout``) with the reference backend's host-side mask.

The keep-mask is drawn on the host by ``reference.dropout.dropout_mask`` and copied to the
device (one byte per element), so every backend gives the same y for the same seed. One thread
per element: ``y = x * (1 / (1 - p) if kept else 0)`` (the multiplier of the reference, so an
inf in a dropped position gives NaN exactly as there). The cache is ``(mask, scale)``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from scratchnets.reference.dropout import check_p, dropout_mask

from ._launch import device_array, device_copy, device_dy, empty, flat, launch_1d


@cuda.jit
def _masked_multiply_kernel(x, keep, scale, y):
    # x, y: flat float arrays; keep: flat uint8 (1 = kept); scale = 1 / (1 - p) in x's dtype
    i = cuda.grid(1)
    if i < x.size:
        y[i] = x[i] * (scale if keep[i] else y.dtype.type(0))


def _apply(x, keep, scale):
    y = empty(x.shape, x.dtype)
    launch_1d(_masked_multiply_kernel, x.size, flat(x), flat(keep), scale, flat(y))
    return y


def dropout_forward(x, p=0.5, training=True, seed=None):
    """y = x * mask / (1 - p) in training; y = x (a copy) in eval mode or for p = 0; zeros for
    p = 1. x: any shape, NumPy or device. Returns ``(y, cache)``, y a device array."""
    x = device_array(x, "x")
    p = check_p(p)
    if not training or p == 0.0:
        return device_copy(x), None  # identity: the cache None means dx = dy
    keep = cuda.to_device(dropout_mask(tuple(x.shape), p, seed).view(np.uint8))
    scale = x.dtype.type(0.0 if p == 1.0 else 1.0 / (1.0 - p))
    return _apply(x, keep, scale), (keep, scale)


def dropout_backward(dy, cache):
    """dx = dy * mask / (1 - p) with the forward's mask; dx = dy (a copy) after an identity."""
    if cache is None:
        return device_copy(device_array(dy, "dy"))
    keep, scale = cache
    dy = device_dy(dy, tuple(keep.shape), np.dtype(type(scale)), "dropout_backward")
    return _apply(dy, keep, scale)
