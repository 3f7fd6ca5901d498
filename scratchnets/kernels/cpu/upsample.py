"""Nearest and bilinear resizing on the CPU (Numba), like ``F.interpolate(x, size=...)`` with
``mode="nearest"`` and ``mode="bilinear", align_corners=False``.

The source indices and weights along each axis are the reference's (``nearest_taps``, which
reproduces torch's float32 index rounding or a ``Sampling``'s, and ``linear_taps``): small (out_size,)
tables computed once per call in NumPy. What is optimised is the per-pixel work: the reference
resizes in two separable NumPy passes (``np.take`` twice, a temporary between them) and its
backward uses ``np.add.at``, an unbuffered scatter that is slow. Here one kernel, parallel over
the N*C planes, reads each output's 1 or 4 source pixels directly (no temporary); the backward
scatter-adds dy back into its source pixels. Parallelising over planes is what makes that
scatter race-free: several outputs add into the same input pixel, but all of them belong to the
plane that one thread owns. Bilinear arithmetic is done in float64 and rounded once.

Measured on the shared (heavily loaded) 2-core dev box, one numba thread, best of 5, float32
(32, 64, 14, 14) -> 28 x 28: nearest forward 0.8 ms vs the reference's 2.9 ms, backward 3.9 vs
114 ms; bilinear forward 7.4 vs 28 ms, backward 23 vs 289 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from scratchnets.reference.upsample import check_sampling, linear_taps, nearest_taps
from scratchnets.reference.windows import pair

from ._common import check_shape, kernel_array


@njit(parallel=True, cache=True)
def _nearest_kernel(x, rows, cols, y):
    """y[p, a, b] = x[p, rows[a], cols[b]]; x (P, H, W), y (P, H_out, W_out)."""
    planes, oh, ow = y.shape
    for p in prange(planes):
        for a in range(oh):
            r = rows[a]
            for b in range(ow):
                y[p, a, b] = x[p, r, cols[b]]


@njit(parallel=True, cache=True)
def _nearest_backward_kernel(dy, rows, cols, dx):
    """dx[p, rows[a], cols[b]] += dy[p, a, b]; dx zeroed, one thread per plane."""
    planes, oh, ow = dy.shape
    for p in prange(planes):
        for a in range(oh):
            r = rows[a]
            for b in range(ow):
                dx[p, r, cols[b]] += dy[p, a, b]


@njit(parallel=True, cache=True)
def _bilinear_kernel(x, h0, h1, lh, w0, w1, lw, y):
    """y[p, a, b] = (1-lh)((1-lw) x[h0, w0] + lw x[h0, w1]) + lh((1-lw) x[h1, w0] + lw x[h1, w1])
    with the taps of row a and column b; x (P, H, W), y (P, H_out, W_out).
    """
    planes, oh, ow = y.shape
    for p in prange(planes):
        for a in range(oh):
            r0, r1, s = h0[a], h1[a], lh[a]
            for b in range(ow):
                c0, c1, t = w0[b], w1[b], lw[b]
                top = (1.0 - t) * x[p, r0, c0] + t * x[p, r0, c1]
                bottom = (1.0 - t) * x[p, r1, c0] + t * x[p, r1, c1]
                y[p, a, b] = (1.0 - s) * top + s * bottom


@njit(parallel=True, cache=True)
def _bilinear_backward_kernel(dy, h0, h1, lh, w0, w1, lw, dx):
    """The adjoint of ``_bilinear_kernel``: each dy[p, a, b] goes to its four source pixels with
    the forward's weights; dx zeroed, one thread per plane.
    """
    planes, oh, ow = dy.shape
    for p in prange(planes):
        for a in range(oh):
            r0, r1, s = h0[a], h1[a], lh[a]
            for b in range(ow):
                c0, c1, t = w0[b], w1[b], lw[b]
                g = dy[p, a, b]
                dx[p, r0, c0] += (1.0 - s) * (1.0 - t) * g
                dx[p, r0, c1] += (1.0 - s) * t * g
                dx[p, r1, c0] += s * (1.0 - t) * g
                dx[p, r1, c1] += s * t * g


@dataclass(frozen=True)
class ResizeCache:
    """Input shape and dtype and the per-axis tables the kernels read (see ``_tables``)."""

    in_shape: tuple[int, int, int, int]
    out_hw: tuple[int, int]
    dtype: np.dtype
    tables: tuple  # nearest: (rows, cols); bilinear: (h0, h1, lh, w0, w1, lw)


def _nearest_tables(h, w, oh, ow, sampling) -> tuple:
    """(rows, cols): the source index of each output row and column (int64)."""
    return tuple(nearest_taps(size, out, sampling, axis)[0][0].astype(np.int64)
                 for axis, (size, out) in enumerate(((h, oh), (w, ow))))  # fmt: skip


def _bilinear_tables(h, w, oh, ow, sampling) -> tuple:
    """(h0, h1, lh, w0, w1, lw): index pairs (int64) and the second tap's weight l (float64)."""
    tables = []
    for axis, (size, out) in enumerate(((h, oh), (w, ow))):
        (i0, _), (i1, lam) = linear_taps(size, out, sampling, axis)
        tables += [i0.astype(np.int64), i1.astype(np.int64), np.ascontiguousarray(lam)]
    return tuple(tables)


def _resize(x, size, name, make_tables, kernel, sampling):
    x = kernel_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got shape {x.shape}")
    check_sampling(sampling)
    oh, ow = pair(size, "size", minimum=1)
    n, c, h, w = x.shape
    tables = make_tables(h, w, oh, ow, sampling)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    kernel(x.reshape(n * c, h, w), *tables, y.reshape(n * c, oh, ow))
    return y, ResizeCache(x.shape, (oh, ow), x.dtype, tables)


def _resize_backward(dy, cache: ResizeCache, name, kernel):
    n, c, h, w = cache.in_shape
    dy = kernel_array(dy, "dy", cache.dtype)
    check_shape(dy, (n, c, *cache.out_hw), name)
    dx = np.zeros(cache.in_shape, dtype=cache.dtype)
    kernel(dy.reshape(n * c, *cache.out_hw), *cache.tables, dx.reshape(n * c, h, w))
    return dx


def upsample_nearest2d_forward(x, size, sampling=None):
    """y[n, c, p, q] = x[n, c, src_h(p), src_w(q)], src(d) = floor(d * in / out) evaluated like
    torch (``reference.upsample.nearest_source_index``); like ``F.interpolate(mode="nearest")``;
    a ``Sampling`` gives its own src (ONNX's Resize). Shapes: (N, C, H, W), size int or
    (H_out, W_out) -> (N, C, H_out, W_out). Bit-exact selection.
    """
    return _resize(x, size, "upsample_nearest2d", _nearest_tables, _nearest_kernel, sampling)


def upsample_nearest2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy[n, c, p, q] over the outputs whose source pixel is (h, w)."""
    return _resize_backward(dy, cache, "upsample_nearest2d_backward", _nearest_backward_kernel)


def upsample_bilinear2d_forward(x, size, sampling=None):
    """Bilinear resize with half-pixel centres (``align_corners=False``): each output is the
    weighted sum of its four neighbours, weights ``(1-a)(1-b), (1-a)b, a(1-b), ab`` from
    ``reference.upsample.linear_taps`` (a ``Sampling`` places them its way).
    Shapes: (N, C, H, W) -> (N, C, H_out, W_out).
    """
    return _resize(x, size, "upsample_bilinear2d", _bilinear_tables, _bilinear_kernel, sampling)


def upsample_bilinear2d_backward(dy, cache):
    """dy[n, c, p, q] scattered to its four source pixels with the forward's weights."""
    return _resize_backward(dy, cache, "upsample_bilinear2d_backward", _bilinear_backward_kernel)
