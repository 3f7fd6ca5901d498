"""Spatial padding (``pad2d``) on the GPU: one thread per element, gathers both ways.

Forward: one thread per output element, ``y[n, c, p, q] = x[n, c, rows[p], cols[q]]`` (or the
value) with the reference's source tables (``reference.pad.pad_source_index``) on the device.
Backward: one thread per input element sums the outputs that read it, listed by
``reference.pad.pad_readers`` (a gather, no atomics: deterministic), each output row's columns
first and the rows in ascending order, as the reference adds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import cuda

from scratchnets.reference.pad import OUTSIDE, check_pad, pad_readers, pad_source_index

from ._launch import device_array, device_dy, empty, host_proxy, launch_1d, nchw_index


@dataclass(frozen=True)
class CudaPadCache:
    in_shape: tuple[int, int, int, int]
    out_hw: tuple[int, int]
    row_readers: tuple  # (offsets, readers) on the device, for the backward
    col_readers: tuple
    dtype: np.dtype


@cuda.jit
def _pad_kernel(x, rows, cols, value, y):
    i = cuda.grid(1)
    if i >= y.size:
        return
    n, c, p, q = nchw_index(i, y.shape)
    h, w = rows[p], cols[q]
    y[n, c, p, q] = value if h == OUTSIDE or w == OUTSIDE else x[n, c, h, w]


@cuda.jit
def _pad_backward_kernel(dy, row_offsets, row_readers, col_offsets, col_readers, dx):
    i = cuda.grid(1)
    if i >= dx.size:
        return
    n, c, h, w = nchw_index(i, dx.shape)
    acc = dx.dtype.type(0)
    for k in range(row_offsets[h], row_offsets[h + 1]):
        row = dx.dtype.type(0)
        for k2 in range(col_offsets[w], col_offsets[w + 1]):
            row += dy[n, c, row_readers[k], col_readers[k2]]
        acc += row
    dx[n, c, h, w] = acc


def _device_readers(source: np.ndarray, size: int) -> tuple:
    return tuple(cuda.to_device(table) for table in pad_readers(source, size))


def pad2d_forward(x, padding, mode="constant", value=0.0):
    """y = x padded by ``padding`` = (top, bottom, left, right) (or an int / pair) in ``mode``
    ("constant" with ``value``, "reflect", "replicate", "circular"); y a device array."""
    (top, bottom, left, right), mode = check_pad(host_proxy(x).shape, padding, mode)
    x = device_array(x, "x")
    N, C, H, W = x.shape
    rows = pad_source_index(H, top, bottom, mode)
    cols = pad_source_index(W, left, right, mode)
    y = empty((N, C, rows.size, cols.size), x.dtype)
    launch_1d(_pad_kernel, y.size, x, cuda.to_device(rows), cuda.to_device(cols),
              x.dtype.type(value), y)  # fmt: skip
    cache = CudaPadCache(tuple(x.shape), (rows.size, cols.size), _device_readers(rows, H),
                         _device_readers(cols, W), x.dtype)  # fmt: skip
    return y, cache


def pad2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy[n, c, p, q] over the outputs (p, q) that copied (h, w)."""
    N, C = cache.in_shape[:2]
    dy = device_dy(dy, (N, C, *cache.out_hw), cache.dtype, "pad2d_backward")
    dx = empty(cache.in_shape, cache.dtype)
    launch_1d(_pad_backward_kernel, dx.size, dy, *cache.row_readers, *cache.col_readers, dx)
    return dx
