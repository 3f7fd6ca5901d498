"""Fully connected layer on the CPU, ``y = x @ w.T + b`` (``F.linear``).

Forward, dx and dw are one GEMM each on every core (``gemm.tiled_matmul``; the transposed
operands ``w.T`` and ``dy.T`` are read as they lie), where the reference's NumPy calls run on
one core under the backend's thread policy (``_threads``). At batch 1 the forward is a
matrix-vector product that streams the whole weight matrix (MobileNetV2's classifier: 5 MB)
from memory; at batch 8 - 32 it is a GEMM worth splitting (1280 -> 1000: b8 1.08 -> 0.50 ms,
b32 1.54 -> 0.81 ms, torch 0.37 / 0.71). Then the bias add (and ``db``), one pass each. Same
validation as the reference (``reference.linear.check_linear`` / ``check_linear_dy``).
"""

from __future__ import annotations

import numpy as np

from scratchnets.reference.linear import check_linear, check_linear_dy

from .gemm import tiled_matmul

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, w, b=None):
    """``reference.linear.linear_forward`` on every core: ``(y, cache)``, y (N, out)."""
    x, w, b = check_linear(x, w, b)
    dtype = np.result_type(x, w)  # NumPy's promotion, as the reference's x @ w.T
    x, w = (np.ascontiguousarray(a, dtype) for a in (x, w))
    y = tiled_matmul(x, w.T, np.empty((x.shape[0], w.shape[0]), dtype))  # (N, out)
    if b is not None:
        y = y + b  # (out,) broadcast over the batch
    return y, (x, w, b is not None)


def linear_backward(dy, cache):
    """``reference.linear.linear_backward`` on every core: ``(dx, dw, db or None)``."""
    x, w, has_bias = cache
    dy = np.ascontiguousarray(check_linear_dy(dy, x, w), x.dtype)
    dx = tiled_matmul(dy, w, np.empty(x.shape, x.dtype))  # (N, out) @ (out, in)
    dw = tiled_matmul(dy.T, x, np.empty(w.shape, x.dtype))  # (out, N) @ (N, in)
    db = dy.sum(axis=0) if has_bias else None  # (out,)
    return dx, dw, db
