"""Spatial padding (``pad2d``) with Numba: the reference's gather, parallel over (n, c) planes.

The forward copies ``y[p, q] = x[rows[p], cols[q]]`` (or the value) plane by plane, one prange
step per plane, with the source tables of ``reference.pad.pad_source_index``. The backward is
written as a gather too, so that the planes' pixels need no scatter: each input pixel sums the
gradients of the outputs that read it, found in the tables of ``reference.pad.pad_readers``::

    dx[h, w] = sum_{p in readers_h(h)} ( sum_{q in readers_w(w)} dy[p, q] )

with the same association as the reference (each output row's columns first, rows in ascending
order), so the result equals the reference's bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from scratchnets.reference.checks import float_array
from scratchnets.reference.pad import (
    OUTSIDE,
    PadCache,
    check_pad,
    check_pad_gradient,
    pad_readers,
    pad_source_index,
)


@njit(parallel=True, cache=True)
def _pad_kernel(x, rows, cols, value, y):
    """y[n, c, p, q] = x[n, c, rows[p], cols[q]], or value where either is OUTSIDE."""
    N, C, OH, OW = y.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        for p in range(OH):
            h = rows[p]
            for q in range(OW):
                w = cols[q]
                y[n, c, p, q] = value if h == OUTSIDE or w == OUTSIDE else x[n, c, h, w]


@njit(parallel=True, cache=True)
def _pad_backward_kernel(dy, row_offsets, row_readers, col_offsets, col_readers, dx):
    """dx[n, c, h, w] = sum over the rows p and columns q that read (h, w) of dy[n, c, p, q]."""
    N, C, H, W = dx.shape
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        for h in range(H):
            for w in range(W):
                acc = dx.dtype.type(0)
                for k in range(row_offsets[h], row_offsets[h + 1]):
                    row = dx.dtype.type(0)
                    for k2 in range(col_offsets[w], col_offsets[w + 1]):
                        row += dy[n, c, row_readers[k], col_readers[k2]]
                    acc += row
                dx[n, c, h, w] = acc


def pad2d_forward(x, padding, mode="constant", value=0.0):
    x = np.ascontiguousarray(float_array(x, "x"))
    (top, bottom, left, right), mode = check_pad(x.shape, padding, mode)
    N, C, H, W = x.shape
    rows = pad_source_index(H, top, bottom, mode)
    cols = pad_source_index(W, left, right, mode)
    y = np.empty((N, C, rows.size, cols.size), dtype=x.dtype)
    _pad_kernel(x, rows, cols, x.dtype.type(value), y)
    return y, PadCache(x.shape, rows, cols)


def pad2d_backward(dy, cache):
    dy = np.ascontiguousarray(float_array(dy, "dy"))
    check_pad_gradient(dy.shape, cache)
    dx = np.empty(cache.in_shape, dtype=dy.dtype)
    H, W = cache.in_shape[2:]
    _pad_backward_kernel(dy, *pad_readers(cache.rows, H), *pad_readers(cache.cols, W), dx)
    return dx
