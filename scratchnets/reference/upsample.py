"""Resizing to a given output size: nearest and bilinear (``F.interpolate(x, size=...,
mode="nearest")`` and ``mode="bilinear", align_corners=False``), forward and backward; and, with
a ``Sampling``, every way ONNX's Resize places its samples (align_corners, half-pixel, nearest's
four roundings, the scales a file gives).

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


#: ONNX's coordinate_transformation_mode: output index d's coordinate in the input, with
#: scale = out / in (or the file's scale)
COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_half_pixel_for_nn")  # fmt: skip
#: ONNX's nearest_mode, and "simple" (opsets before 11: floor when enlarging, ceil when shrinking)
ROUNDINGS = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


@dataclass(frozen=True)
class Sampling:
    """Where each output pixel of a resize reads its input, in the terms of ONNX's Resize:
    ``coordinates`` (its coordinate_transformation_mode), ``rounding`` (nearest's nearest_mode)
    and ``scales``, the (H, W) scales a file gives (None: out / in). The coordinate is evaluated
    as ONNX Runtime does (``source``; torch's "nearest" computes ``d * float32(in / out)``
    instead, which differs by a pixel for some sizes, e.g. 2 -> 82), then rounded (nearest) or
    split into two taps (linear), and clamped to the input."""

    coordinates: str = "half_pixel"
    rounding: str = "round_prefer_floor"
    scales: tuple[float, float] | None = None

    def __post_init__(self):
        if self.coordinates not in COORDINATES:
            raise ValueError(f"coordinates {self.coordinates!r}: expected one of {COORDINATES}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding {self.rounding!r}: expected one of {ROUNDINGS}")

    def scale(self, in_size: int, out_size: int, axis: int) -> np.float32:
        """The file's scale, else float32(out) / float32(in) (ONNX Runtime's float32)."""
        if self.scales is not None:
            return np.float32(self.scales[axis])
        return np.float32(out_size) / np.float32(in_size)

    def output_size(self, in_size: int, axis: int) -> int:
        """floor(in * scale) in float32, as ONNX Runtime sizes a Resize given scales."""
        return int(np.floor(np.float32(in_size) * np.float32(self.scales[axis])))

    def source(self, in_size: int, out_size: int, axis: int, exact: bool = False) -> np.ndarray:
        """(out_size,) float64: the input coordinate each output index samples (unclamped).

        Where it picks a pixel (nearest), evaluated as ONNX Runtime does, which the tests pin
        down against it: asymmetric from sizes as ``d * in / out`` (7 -> 2 samples exactly 3.5,
        rounded up to 4 by round_prefer_ceil), every other case in float32 as ``t / scale - b``
        with ``t`` = d or d + 1/2, ``scale`` the file's or float32(out) / float32(in) (7 -> 1
        half-pixel samples float32(0.5 / float32(1 / 7)) - 0.5 = 2.9999998, floored to 2).
        ``exact``: the same formulas in float64 (linear's weights, within float32 rounding of
        ONNX Runtime's and equal to torch's align_corners in float64)."""
        if self.coordinates == "pytorch_half_pixel" and out_size == 1:
            return np.zeros(out_size)
        dtype = np.float64 if exact else np.float32
        d = np.arange(out_size, dtype=dtype)
        if self.coordinates == "align_corners":
            if out_size == 1:
                return np.zeros(out_size)
            return (d * dtype(in_size - 1) / dtype(out_size - 1)).astype(np.float64)
        shift = dtype(0.0 if self.coordinates == "asymmetric" else 0.5)
        back = dtype(0.5 if self.coordinates in ("half_pixel", "pytorch_half_pixel") else 0.0)
        scale = (dtype(self.scales[axis]) if self.scales is not None
                 else dtype(out_size) / dtype(in_size))  # fmt: skip
        return ((d + shift) / scale - back).astype(np.float64)

    def nearest_index(self, in_size: int, out_size: int, axis: int) -> np.ndarray:
        """(out_size,) source indices: the coordinate rounded (ties as ``rounding`` says, in
        float64 so that x +- 0.5 is exact), clamped to [0, in_size - 1]. An axis of
        scale 1 is copied as it is (ONNX Runtime's rule; only tf_half_pixel_for_nn would move
        it)."""
        if self.scale(in_size, out_size, axis) == 1:
            return np.arange(out_size, dtype=np.intp)
        x = self.source(in_size, out_size, axis)
        rounding = self.rounding
        if rounding == "simple":
            rounding = "ceil" if self.scale(in_size, out_size, axis) < 1 else "floor"
        index = {"floor": np.floor, "ceil": np.ceil,
                 "round_prefer_floor": lambda v: _round_half(v, up=False),
                 "round_prefer_ceil": lambda v: _round_half(v, up=True)}[rounding](x)  # fmt: skip
        return np.clip(index, 0, in_size - 1).astype(np.intp)

    def linear_taps(self, in_size: int, out_size: int, axis: int):
        """The two taps of linear interpolation at the coordinate clamped to [0, in_size - 1]
        (float64), as ``bilinear_taps``."""
        x = np.clip(self.source(in_size, out_size, axis, exact=True), 0, in_size - 1)
        i0 = np.floor(x).astype(np.intp)
        i1 = np.minimum(i0 + 1, in_size - 1)
        lam = x - i0
        return [(i0, 1.0 - lam), (i1, lam)]


#: how close to a half a coordinate counts as the half for the round_prefer_* modes: measured
#: against ONNX Runtime 1.32 (3.4999998 and 11.500001 are halves to it, 24.499998 is not)
TIE_TOLERANCE = 1e-6


def _round_half(x: np.ndarray, up: bool) -> np.ndarray:
    """x rounded to the nearest integer, a half (within ``TIE_TOLERANCE``) going up or down."""
    half = np.floor(x) + 0.5
    nearest = np.round(x)
    tie = np.abs(x - half) < TIE_TOLERANCE
    return np.where(tie, np.ceil(half) if up else np.floor(half), nearest)


def nearest_taps(in_size: int, out_size: int, sampling: Sampling | None = None, axis: int = 0):
    """The one tap (index, weight None) of nearest resizing along ``axis``: torch's
    ``nearest_source_index`` without a ``sampling``, else the sampling's index."""
    if sampling is None:
        return [(nearest_source_index(in_size, out_size), None)]
    return [(sampling.nearest_index(in_size, out_size, axis), None)]


def linear_taps(in_size: int, out_size: int, sampling: Sampling | None = None, axis: int = 0):
    """The two taps of linear resizing along ``axis``: torch's half-pixel ``bilinear_taps``
    without a ``sampling``, else the sampling's."""
    if sampling is None:
        return bilinear_taps(in_size, out_size)
    return sampling.linear_taps(in_size, out_size, axis)


def check_sampling(sampling) -> None:
    if sampling is not None and not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be a reference.upsample.Sampling or None, got "
                        f"{type(sampling).__name__}")  # fmt: skip


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


def _resize_forward(x, size, name: str, make_taps, sampling):
    """Validate, build the taps of both axes with ``make_taps(in, out, sampling, axis)``,
    resize H then W."""
    x = float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got shape {x.shape}")
    check_sampling(sampling)
    H_out, W_out = pair(size, "size", minimum=1)
    H, W = x.shape[2:]
    taps_h, taps_w = make_taps(H, H_out, sampling, 0), make_taps(W, W_out, sampling, 1)
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


def upsample_nearest2d_forward(x, size, sampling=None):
    """y[n, c, p, q] = x[n, c, floor(p * H / H_out), floor(q * W / W_out)]; like
    ``F.interpolate(x, size=size, mode="nearest")``. Works for up- and down-sampling. With a
    ``Sampling``: y[n, c, p, q] = x[n, c, src_h(p), src_w(q)] with its indices (ONNX's Resize).

    Shapes: ``x`` (N, C, H, W), ``size`` int or (H_out, W_out) -> ``y`` (N, C, H_out, W_out).
    Returns ``(y, cache)``; ``y`` is a pure selection of ``x`` (bit-exact in any dtype).
    """
    return _resize_forward(x, size, "upsample_nearest2d", nearest_taps, sampling)


def upsample_nearest2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy[n, c, p, q] over all (p, q) whose source pixel is (h, w).

    Shapes: ``dy`` (N, C, H_out, W_out) -> ``dx`` (N, C, H, W).
    """
    return _resize_backward(dy, cache, "upsample_nearest2d_backward")


def upsample_bilinear2d_forward(x, size, sampling=None):
    """Bilinear resize with half-pixel centres; like ``F.interpolate(x, size=size,
    mode="bilinear", align_corners=False)``. With the row taps ``(h0, 1-a), (h1, a)`` of output
    row p and the column taps ``(w0, 1-b), (w1, b)`` of output column q (``bilinear_taps``)::

        y[n,c,p,q] = (1-a)(1-b) x[n,c,h0,w0] + (1-a) b x[n,c,h0,w1]
                   + a (1-b) x[n,c,h1,w0]    + a b x[n,c,h1,w1]

    Shapes: ``x`` (N, C, H, W), ``size`` int or (H_out, W_out) -> ``y`` (N, C, H_out, W_out);
    any sizes (up- or down-sampling; no antialiasing, like torch's default). A ``Sampling``
    places the taps its way instead (align_corners: ``Sampling("align_corners")``).
    Returns ``(y, cache)``.
    """
    return _resize_forward(x, size, "upsample_bilinear2d", linear_taps, sampling)


def upsample_bilinear2d_backward(dy, cache):
    """Each dy[n, c, p, q] is scattered to its four source pixels with the same four weights
    (``(1-a)(1-b)``, ...) used in the forward pass; contributions to a pixel add up.

    Shapes: ``dy`` (N, C, H_out, W_out) -> ``dx`` (N, C, H, W).
    """
    return _resize_backward(dy, cache, "upsample_bilinear2d_backward")
