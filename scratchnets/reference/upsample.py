"""Resizing to a given output size: nearest and bilinear (``F.interpolate(x, size=...,
mode="nearest")`` and ``mode="bilinear", align_corners=False``), forward and backward.

Both modes are separable: resize the rows (axis H), then the columns (axis W). Along one axis an
output index ``d`` reads a few input indices ("taps") with weights::

    out[..., d] = sum_t  weight_t[d] * inp[..., index_t[d]]

nearest has one tap of weight 1; bilinear has two (the neighbouring pixels, weights 1 - l and l).
In 2-D the bilinear weights of the four neighbours are the products ``lh * lw``. The backward of a
gather is a scatter-add: ``dinp[..., index_t[d]] += weight_t[d] * dout[..., d]``, summing where
several outputs read the same input (``np.add.at``). See docs/upsample.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import float_array
from .windows import pair

_H, _W = 2, 3  # axes of NCHW


def nearest_source_index(in_size: int, out_size: int) -> np.ndarray:
    """``src[d] = min(floor(d * scale), in_size - 1)`` with ``scale = in_size / out_size``.

    This is ``floor(d * in_size / out_size)`` evaluated the way PyTorch's mode="nearest" does it:
    in float32 (scale rounded to float32, product rounded to float32), whatever the tensor dtype.
    The rounding can land one pixel below the exact integer result, e.g. in=14, out=46, d=23:
    exact 7, torch 6. We follow torch so that models match it pixel for pixel (docs/upsample.md).
    """
    scale = np.float32(in_size) / np.float32(out_size)  # float32 division, as in torch
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale)  # float32 product
    return np.minimum(src.astype(np.intp), in_size - 1)  # (out_size,), values in [0, in_size)


def bilinear_taps(in_size: int, out_size: int):
    """The two taps per output index of linear interpolation with half-pixel centres.

    ``src = max((d + 0.5) * in_size / out_size - 0.5, 0)`` (PyTorch clamps negative source
    coordinates to 0), ``i0 = floor(src)``, ``i1 = min(i0 + 1, in_size - 1)``, ``l = src - i0``;
    returns ``[(i0, 1 - l), (i1, l)]`` with float64 weights. At the last pixel ``i1 == i0`` and the
    two weights add up on it.
    """
    d = np.arange(out_size, dtype=np.float64)
    src = np.maximum((d + 0.5) * (in_size / out_size) - 0.5, 0.0)  # (out_size,) source coordinate
    i0 = np.floor(src).astype(np.intp)  # left/top neighbour, <= in_size - 1
    i1 = np.minimum(i0 + 1, in_size - 1)  # right/bottom neighbour, clamped at the border
    lam = src - i0  # distance from i0, in [0, 1)
    return [(i0, 1.0 - lam), (i1, lam)]


@dataclass(frozen=True)
class ResizeCache:
    """Taps of both axes (lists of ``(index, weight or None)``), the shapes and the dtype."""

    in_shape: tuple[int, int, int, int]  # (N, C, H, W)
    out_shape: tuple[int, int, int, int]  # (N, C, H_out, W_out)
    taps_h: list
    taps_w: list
    dtype: np.dtype


def _along(weight: np.ndarray, axis: int, dtype) -> np.ndarray:
    """Reshape a per-index weight so that it broadcasts along ``axis`` of an NCHW array."""
    return weight.astype(dtype).reshape((-1,) + (1,) * (3 - axis))


def _gather(x: np.ndarray, taps, axis: int) -> np.ndarray:
    """out[..., d, ...] = sum_t weight_t[d] * x[..., index_t[d], ...] along ``axis``."""
    out = None
    for index, weight in taps:
        term = np.take(x, index, axis=axis)  # (.., out_size, ..)
        if weight is not None:
            term = term * _along(weight, axis, x.dtype)
        out = term if out is None else out + term
    return out


def _scatter_add(dout: np.ndarray, taps, axis: int, in_size: int) -> np.ndarray:
    """Adjoint of ``_gather``: din[..., index_t[d], ...] += weight_t[d] * dout[..., d, ...]."""
    shape = list(dout.shape)
    shape[axis] = in_size
    din = np.zeros(shape, dtype=dout.dtype)  # (.., in_size, ..)
    where = (slice(None),) * axis
    for index, weight in taps:
        term = dout if weight is None else dout * _along(weight, axis, dout.dtype)
        np.add.at(din, (*where, index), term)  # repeated indices accumulate
    return din


def _resize_forward(x, size, name: str, make_taps):
    """Validate, build the taps of both axes with ``make_taps(in, out)``, resize H then W."""
    x = float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got shape {x.shape}")
    H_out, W_out = pair(size, "size", minimum=1)
    H, W = x.shape[2:]
    taps_h, taps_w = make_taps(H, H_out), make_taps(W, W_out)
    y = _gather(_gather(x, taps_h, _H), taps_w, _W)  # (N, C, H_out, W) -> (N, C, H_out, W_out)
    return y, ResizeCache(x.shape, y.shape, taps_h, taps_w, x.dtype)


def _resize_backward(dy, cache: ResizeCache, name: str) -> np.ndarray:
    """Adjoint of ``_resize_forward``: undo the W pass, then the H pass, by scatter-adds."""
    H, W = cache.in_shape[2:]
    dy = float_array(dy, "dy").astype(cache.dtype, copy=False)
    if dy.shape != cache.out_shape:
        raise ValueError(f"{name}: dy has shape {dy.shape}, y had shape {cache.out_shape}")
    dx_rows = _scatter_add(dy, cache.taps_w, _W, W)  # (N, C, H_out, W_out) -> (N, C, H_out, W)
    return _scatter_add(dx_rows, cache.taps_h, _H, H)  # -> (N, C, H, W)


def _nearest_taps(in_size: int, out_size: int):
    return [(nearest_source_index(in_size, out_size), None)]  # one tap, weight 1


def upsample_nearest2d_forward(x, size):
    """y[n, c, p, q] = x[n, c, floor(p * H / H_out), floor(q * W / W_out)]; like
    ``F.interpolate(x, size=size, mode="nearest")``. Works for up- and down-sampling.

    Shapes: ``x`` (N, C, H, W), ``size`` int or (H_out, W_out) -> ``y`` (N, C, H_out, W_out).
    Returns ``(y, cache)``; ``y`` is a pure selection of ``x`` (bit-exact in any dtype).
    """
    return _resize_forward(x, size, "upsample_nearest2d", _nearest_taps)


def upsample_nearest2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy[n, c, p, q] over all (p, q) whose source pixel is (h, w).

    Shapes: ``dy`` (N, C, H_out, W_out) -> ``dx`` (N, C, H, W).
    """
    return _resize_backward(dy, cache, "upsample_nearest2d_backward")


def upsample_bilinear2d_forward(x, size):
    """Bilinear resize with half-pixel centres; like ``F.interpolate(x, size=size,
    mode="bilinear", align_corners=False)``. With the row taps ``(h0, 1-a), (h1, a)`` of output
    row p and the column taps ``(w0, 1-b), (w1, b)`` of output column q (``bilinear_taps``)::

        y[n,c,p,q] = (1-a)(1-b) x[n,c,h0,w0] + (1-a) b x[n,c,h0,w1]
                   + a (1-b) x[n,c,h1,w0]    + a b x[n,c,h1,w1]

    Shapes: ``x`` (N, C, H, W), ``size`` int or (H_out, W_out) -> ``y`` (N, C, H_out, W_out);
    any sizes (up- or down-sampling; no antialiasing, like torch's default).
    Returns ``(y, cache)``.
    """
    return _resize_forward(x, size, "upsample_bilinear2d", bilinear_taps)


def upsample_bilinear2d_backward(dy, cache):
    """Each dy[n, c, p, q] is scattered to its four source pixels with the same four weights
    (``(1-a)(1-b)``, ...) used in the forward pass; contributions to a pixel add up.

    Shapes: ``dy`` (N, C, H_out, W_out) -> ``dx`` (N, C, H, W).
    """
    return _resize_backward(dy, cache, "upsample_bilinear2d_backward")
