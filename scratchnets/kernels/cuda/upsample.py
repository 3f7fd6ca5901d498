"""Nearest and bilinear resizing on the GPU (``F.interpolate``, align_corners=False).

Both modes are separable with ``T`` taps per axis (nearest: 1 tap of weight 1; bilinear: 2),
taken from the reference backend (``nearest_taps``, ``linear_taps``) and copied to the
device as tables ``index (T, out)`` (int32) and ``weight (T, out)``::

    y[n, c, p, q] = sum_tw ww[tw, q] * sum_th wh[th, p] * x[n, c, ih[th, p], iw[tw, q]]

One thread per output element. Nearest is a pure selection: 0 + 1 * x is x, bit for bit.

The backward is a gather, not a scatter with atomics: one thread per input pixel (h, w) sums
the outputs that read it. The source indices grow with the output index, so the outputs
reading input row h form a contiguous range ``[first[h], stop[h])`` (computed on the host);
within it the weight of row p for h is ``sum_t wh[t, p] * [ih[t, p] == h]``::

    dx[n, c, h, w] = sum_{p in range(h)} W_h(p, h) * sum_{q in range(w)} W_w(q, w) * dy[n, c, p, q]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import cuda

from scratchnets.reference.upsample import check_sampling, linear_taps, nearest_taps
from scratchnets.reference.windows import pair

from ._launch import check_float, device_array, device_dy, empty, launch_1d


@dataclass(frozen=True)
class AxisTaps:
    """The taps of one axis on the device: index, weight (T, out) and, per input index, the
    range [first, stop) of the outputs that read it."""

    index: object
    weight: object
    first: object
    stop: object


@dataclass(frozen=True)
class CudaResizeCache:
    in_shape: tuple[int, int, int, int]
    taps_h: AxisTaps
    taps_w: AxisTaps
    dtype: np.dtype


def _axis_taps(taps, in_size: int, dtype) -> AxisTaps:
    """Device tables for the reference's taps ``[(index, weight or None), ...]`` of one axis."""
    index = np.stack([np.asarray(i) for i, _ in taps]).astype(np.int32)  # (T, out)
    weight = np.stack([np.ones(index.shape[1]) if w is None else w for _, w in taps])
    # outputs reading input i: those whose largest tap index is >= i and smallest is <= i
    pixels = np.arange(in_size)
    first = np.searchsorted(index.max(axis=0), pixels, side="left")  # (in,)
    stop = np.searchsorted(index.min(axis=0), pixels, side="right")  # (in,)
    return AxisTaps(
        cuda.to_device(index),
        cuda.to_device(weight.astype(dtype)),
        cuda.to_device(first.astype(np.int32)),
        cuda.to_device(stop.astype(np.int32)),
    )


@cuda.jit
def _resize_kernel(x, ih, wh, iw, ww, y):
    i = cuda.grid(1)
    N, C, OH, OW = y.shape
    if i >= y.size:
        return
    n, c, p, q = i // (OW * OH * C), (i // (OW * OH)) % C, (i // OW) % OH, i % OW
    acc = y.dtype.type(0)
    for tw in range(iw.shape[0]):
        column = y.dtype.type(0)  # the rows resized first, as in the reference
        for th in range(ih.shape[0]):
            column += wh[th, p] * x[n, c, ih[th, p], iw[tw, q]]
        acc += ww[tw, q] * column
    y[n, c, p, q] = acc


@cuda.jit(device=True)
def _tap_weight(index, weight, d, source):
    """Total weight with which output d reads input ``source`` (0 when it does not)."""
    total = weight.dtype.type(0)
    for t in range(index.shape[0]):
        if index[t, d] == source:
            total += weight[t, d]
    return total


@cuda.jit
def _resize_backward_kernel(dy, ih, wh, first_h, stop_h, iw, ww, first_w, stop_w, dx):
    i = cuda.grid(1)
    N, C, H, W = dx.shape
    if i >= dx.size:
        return
    n, c, h, w = i // (W * H * C), (i // (W * H)) % C, (i // W) % H, i % W
    acc = dx.dtype.type(0)
    for p in range(first_h[h], stop_h[h]):
        row = dx.dtype.type(0)  # the columns first, as the reference's backward
        for q in range(first_w[w], stop_w[w]):
            row += _tap_weight(iw, ww, q, w) * dy[n, c, p, q]
        acc += _tap_weight(ih, wh, p, h) * row
    dx[n, c, h, w] = acc


def _resize_forward(x, size, name: str, make_taps, sampling):
    check_float(x, "x")
    check_sampling(sampling)
    if len(x.shape) != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got shape {tuple(x.shape)}")
    out_h, out_w = pair(size, "size", minimum=1)
    x = device_array(x, "x")
    N, C, H, W = x.shape
    taps_h = _axis_taps(make_taps(H, out_h, sampling, 0), H, x.dtype)
    taps_w = _axis_taps(make_taps(W, out_w, sampling, 1), W, x.dtype)
    y = empty((N, C, out_h, out_w), x.dtype)
    launch_1d(
        _resize_kernel, y.size, x, taps_h.index, taps_h.weight, taps_w.index, taps_w.weight, y
    )
    return y, CudaResizeCache(tuple(x.shape), taps_h, taps_w, x.dtype)


def _resize_backward(dy, cache: CudaResizeCache, name: str):
    th, tw = cache.taps_h, cache.taps_w
    N, C = cache.in_shape[:2]
    dy = device_dy(dy, (N, C, th.index.shape[1], tw.index.shape[1]), cache.dtype, name)
    dx = empty(cache.in_shape, cache.dtype)
    launch_1d(
        _resize_backward_kernel,
        dx.size,
        dy,
        th.index,
        th.weight,
        th.first,
        th.stop,
        tw.index,
        tw.weight,
        tw.first,
        tw.stop,
        dx,
    )
    return dx


def upsample_nearest2d_forward(x, size, sampling=None):
    """y[n, c, p, q] = x[n, c, floor(p * H / H_out), floor(q * W / W_out)] (torch's float32
    rounding); like ``F.interpolate(mode="nearest")``; a ``Sampling`` gives its own indices
    (ONNX's Resize). Returns ``(y, cache)``, y on the device."""
    return _resize_forward(x, size, "upsample_nearest2d", nearest_taps, sampling)


def upsample_nearest2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy[n, c, p, q] over the outputs whose source pixel is (h, w)."""
    return _resize_backward(dy, cache, "upsample_nearest2d_backward")


def upsample_bilinear2d_forward(x, size, sampling=None):
    """Bilinear resize with half-pixel centres; like ``F.interpolate(mode="bilinear",
    align_corners=False)``; a ``Sampling`` places the taps its way. Returns ``(y, cache)``, y a
    device array."""
    return _resize_forward(x, size, "upsample_bilinear2d", linear_taps, sampling)


def upsample_bilinear2d_backward(dy, cache):
    """Each input pixel gathers the outputs that read it, with the forward's weights."""
    return _resize_backward(dy, cache, "upsample_bilinear2d_backward")
