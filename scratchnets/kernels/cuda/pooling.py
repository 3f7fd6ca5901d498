"""Max, average and global average pooling on the GPU, forward and backward.

Same arguments, validation and semantics as ``scratchnets.reference.pooling`` (max pooling's
dilation, ceil mode, padding at most half the kernel; taps outside x are skipped). One thread per output element in every forward; every
backward is a gather, one thread per dx element, with no atomics:

* max: the forward scans its window in row-major order with PyTorch's CPU rule (take a cell when
  it is greater than the best so far or is NaN: ties go to the FIRST maximum, a NaN window to its
  LAST NaN) and stores the winner's flat window index ``i*kw + j`` (int32). ``dx[n, c, h, w]``
  sums ``dy[n, c, p, q]`` over the windows (p, q) that contain (h, w) and whose winner is it.
* avg: ``dx[n, c, h, w]`` sums ``dy[n, c, p, q] / D[p, q]`` over the windows containing (h, w);
  the divisor D is recomputed in the kernel (``reference.pooling.divisor_rule``).
* global avg: y = mean over (h, w), one thread per (n, c); dx = dy / (H*W) per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import cuda

from scratchnets.reference.pooling import (
    PoolGeometry,
    divisor_rule,
    prepare_adaptive_pool,
    prepare_pool,
    window_to_input_index,
)

from ._launch import check_float, device_array, device_dy, empty, host_proxy, launch_1d, nchw_index


@dataclass(frozen=True)
class CudaPoolCache:
    """The geometry, the input dtype and, for max pooling, the argmax (int32 device array)."""

    geometry: PoolGeometry
    argmax: object
    dtype: np.dtype
    divisor_rule: tuple[int, int, int] = (0, 0, 0)  # avg pooling: (fixed, gh, gw)


def _window(g: PoolGeometry) -> tuple[int, int, int, int, int, int, int, int]:
    """``(kh, kw, sh, sw, ph, pw, dh, dw)`` for the kernels (average pooling has dh = dw = 1)."""
    return (*g.kernel, *g.stride, *g.padding, *g.dilation)


@cuda.jit
def _max_forward_kernel(x, window, y, argmax):
    kh, kw, sh, sw, ph, pw, dh, dw = window
    i = cuda.grid(1)
    if i >= y.size:
        return
    n, c, p, q = nchw_index(i, y.shape)
    best = x.dtype.type(-math.inf)  # padding holds -inf: it never wins
    best_cell = -1
    for ki in range(kh):
        r = p * sh + ki * dh - ph
        if 0 <= r < x.shape[2]:
            for kj in range(kw):
                s = q * sw + kj * dw - pw
                if 0 <= s < x.shape[3]:
                    v = x[n, c, r, s]
                    if best_cell < 0:
                        best_cell = ki * kw + kj  # an all -inf window routes to its first real cell
                    if v > best or v != v:  # greater than the best so far, or NaN
                        best, best_cell = v, ki * kw + kj
    y[n, c, p, q] = best
    argmax[n, c, p, q] = best_cell


@cuda.jit
def _max_backward_kernel(dy, argmax, window, dx):
    kh, kw, sh, sw, ph, pw, dh, dw = window
    i = cuda.grid(1)
    if i >= dx.size:
        return
    n, c, h, w = nchw_index(i, dx.shape)
    acc = dx.dtype.type(0)
    for ki in range(kh):  # windows whose tap (ki, kj) is the pixel (h, w)
        rr = h + ph - ki * dh
        if rr >= 0 and rr % sh == 0 and rr // sh < dy.shape[2]:
            for kj in range(kw):
                ss = w + pw - kj * dw
                if ss >= 0 and ss % sw == 0 and ss // sw < dy.shape[3]:
                    if argmax[n, c, rr // sh, ss // sw] == ki * kw + kj:
                        acc += dy[n, c, rr // sh, ss // sw]
    dx[n, c, h, w] = acc


@cuda.jit(device=True)
def _divisor(p, q, window, height, width, rule):
    """D[p, q] (an int) by ``rule`` = (fixed, gh, gw): ``fixed`` when nonzero, else the window's
    cells inside the input grown by gh rows and gw columns on each side."""
    kh, kw, sh, sw, ph, pw, _, _ = window
    fixed, gh, gw = rule
    if fixed != 0:
        return fixed
    r0, s0 = p * sh - ph, q * sw - pw
    rows = min(r0 + kh, height + gh) - max(r0, -gh)
    cols = min(s0 + kw, width + gw) - max(s0, -gw)
    return rows * cols


@cuda.jit
def _avg_forward_kernel(x, window, rule, y):
    kh, kw, sh, sw, ph, pw, _, _ = window
    i = cuda.grid(1)
    if i >= y.size:
        return
    n, c, p, q = nchw_index(i, y.shape)
    acc = y.dtype.type(0)
    for ki in range(kh):
        r = p * sh + ki - ph
        if 0 <= r < x.shape[2]:
            for kj in range(kw):
                s = q * sw + kj - pw
                if 0 <= s < x.shape[3]:
                    acc += x[n, c, r, s]  # padded cells add zero
    divisor = _divisor(p, q, window, x.shape[2], x.shape[3], rule)
    y[n, c, p, q] = acc / y.dtype.type(divisor)


@cuda.jit
def _avg_backward_kernel(dy, window, rule, dx):
    kh, kw, sh, sw, ph, pw, _, _ = window
    i = cuda.grid(1)
    if i >= dx.size:
        return
    n, c, h, w = nchw_index(i, dx.shape)
    H, W = dx.shape[2], dx.shape[3]
    acc = dx.dtype.type(0)
    for ki in range(kh):
        rr = h + ph - ki
        if rr >= 0 and rr % sh == 0 and rr // sh < dy.shape[2]:
            p = rr // sh
            for kj in range(kw):
                ss = w + pw - kj
                if ss >= 0 and ss % sw == 0 and ss // sw < dy.shape[3]:
                    q = ss // sw
                    divisor = _divisor(p, q, window, H, W, rule)
                    acc += dy[n, c, p, q] / dx.dtype.type(divisor)
    dx[n, c, h, w] = acc


def _geometry(x, kernel_size, stride, padding, name, dilation=1, ceil_mode=False):
    _, g = prepare_pool(host_proxy(x), kernel_size, stride, padding, name, dilation, ceil_mode)
    return device_array(x, "x"), g


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """y[n, c, p, q] = max of the (-inf padded) window; like ``F.max_pool2d``. Arguments and
    errors as ``reference.max_pool2d_forward``. Returns ``(y, cache)``, y a device array."""
    x, g = _geometry(x, kernel_size, stride, padding, "max_pool2d", dilation, ceil_mode)
    y = empty(g.out_shape, x.dtype)
    argmax = empty(g.out_shape, np.int32)  # flat window index of each output's winner
    launch_1d(_max_forward_kernel, y.size, x, _window(g), y, argmax)
    return y, CudaPoolCache(g, argmax, x.dtype)


def max_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy over the windows whose first maximum is (h, w)."""
    g = cache.geometry
    dy = device_dy(dy, g.out_shape, cache.dtype, "max_pool2d_backward")
    dx = empty(g.in_shape, cache.dtype)
    launch_1d(_max_backward_kernel, dx.size, dy, cache.argmax, _window(g), dx)
    return dx


def max_pool2d_indices(cache):
    """torch's ``return_indices`` (flat input index h * W + w, int64) of a max_pool2d cache, as a
    device array (worked out on the host from the winners' window cells)."""
    return cuda.to_device(window_to_input_index(cache.argmax.copy_to_host(), cache.geometry))


def avg_pool2d_forward(
    x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None,
):  # fmt: skip
    """y = window sum / D; like ``F.avg_pool2d``. Arguments and errors as
    ``reference.avg_pool2d_forward``. Returns ``(y, cache)``, y a device array."""
    x, g = _geometry(x, kernel_size, stride, padding, "avg_pool2d", ceil_mode=ceil_mode)
    fixed, grow = divisor_rule(g.padding, count_include_pad, divisor_override)
    y = empty(g.out_shape, x.dtype)
    launch_1d(_avg_forward_kernel, y.size, x, _window(g), (fixed, *grow), y)
    return y, CudaPoolCache(g, None, x.dtype, (fixed, *grow))


def avg_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = sum over windows (p, q) containing (h, w) of dy[n, c, p, q] / D[p, q]."""
    g = cache.geometry
    dy = device_dy(dy, g.out_shape, cache.dtype, "avg_pool2d_backward")
    dx = empty(g.in_shape, cache.dtype)
    launch_1d(_avg_backward_kernel, dx.size, dy, _window(g), cache.divisor_rule, dx)
    return dx


@cuda.jit
def _global_avg_kernel(x, y):
    # one thread per (n, c): y[n, c, 0, 0] = sum_{h, w} x[n, c, h, w] / (H*W)
    i = cuda.grid(1)
    N, C, H, W = x.shape
    if i < N * C:
        n, c = i // C, i % C
        acc = y.dtype.type(0)
        for h in range(H):
            for w in range(W):
                acc += x[n, c, h, w]
        y[n, c, 0, 0] = acc / y.dtype.type(H * W)


@cuda.jit
def _global_avg_backward_kernel(dy, dx):
    i = cuda.grid(1)
    if i < dx.size:
        n, c, h, w = nchw_index(i, dx.shape)
        dx[n, c, h, w] = dy[n, c, 0, 0] / dx.dtype.type(dx.shape[2] * dx.shape[3])


def global_avg_pool2d_forward(x):
    """y[n, c, 0, 0] = mean_{h, w} x[n, c, h, w]; like ``F.adaptive_avg_pool2d(x, 1)``.
    Shapes: (N, C, H, W) -> (N, C, 1, 1) device array. Returns ``(y, cache)``."""
    check_float(x, "x")
    if len(x.shape) != 4:
        raise ValueError(f"global_avg_pool2d expects x of shape (N, C, H, W), got shape {x.shape}")
    x = device_array(x, "x")
    N, C = x.shape[:2]
    y = empty((N, C, 1, 1), x.dtype)
    launch_1d(_global_avg_kernel, N * C, x, y)
    return y, (tuple(x.shape), x.dtype)


def global_avg_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = dy[n, c, 0, 0] / (H*W). Shapes: (N, C, 1, 1) -> (N, C, H, W)."""
    in_shape, dtype = cache
    dy = device_dy(dy, (*in_shape[:2], 1, 1), dtype, "global_avg_pool2d_backward")
    dx = empty(in_shape, dtype)
    launch_1d(_global_avg_backward_kernel, dx.size, dy, dx)
    return dx


# ---------------------------------------------------------------------------------------------
# adaptive pooling: torch's variable windows (reference.pooling.adaptive_windows) as device
# tables; one thread per output (forward) or per input pixel (backward: a gather, no atomics)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CudaAdaptiveCache:
    in_shape: tuple[int, int, int, int]
    out_hw: tuple[int, int]
    windows: tuple  # (r0, r1, c0, c1) int64 device arrays
    dtype: np.dtype
    argmax: object = None  # max: flat input index h * W + w of each output's winner (int64)


@cuda.jit
def _adaptive_avg_kernel(x, r0, r1, c0, c1, y):
    i = cuda.grid(1)
    if i >= y.size:
        return
    n, c, p, q = nchw_index(i, y.shape)
    acc = y.dtype.type(0)
    for h in range(r0[p], r1[p]):
        for w in range(c0[q], c1[q]):
            acc += x[n, c, h, w]
    y[n, c, p, q] = acc / y.dtype.type((r1[p] - r0[p]) * (c1[q] - c0[q]))


@cuda.jit
def _adaptive_avg_backward_kernel(dy, r0, r1, c0, c1, dx):
    i = cuda.grid(1)
    if i >= dx.size:
        return
    n, c, h, w = nchw_index(i, dx.shape)
    acc = dx.dtype.type(0)
    for p in range(r0.size):
        if r0[p] <= h < r1[p]:
            for q in range(c0.size):
                if c0[q] <= w < c1[q]:
                    area = (r1[p] - r0[p]) * (c1[q] - c0[q])
                    acc += dy[n, c, p, q] / dx.dtype.type(area)
    dx[n, c, h, w] = acc


@cuda.jit
def _adaptive_max_kernel(x, r0, r1, c0, c1, y, argmax):
    i = cuda.grid(1)
    if i >= y.size:
        return
    n, c, p, q = nchw_index(i, y.shape)
    width = x.shape[3]
    best, where = -math.inf, r0[p] * width + c0[q]
    for h in range(r0[p], r1[p]):
        for w in range(c0[q], c1[q]):
            v = x[n, c, h, w]
            if v > best or math.isnan(v):  # first maximum in scan order, or the last NaN
                best, where = v, h * width + w
    y[n, c, p, q] = best
    argmax[n, c, p, q] = where


@cuda.jit
def _adaptive_max_backward_kernel(dy, argmax, r0, r1, c0, c1, dx):
    i = cuda.grid(1)
    if i >= dx.size:
        return
    n, c, h, w = nchw_index(i, dx.shape)
    me = h * dx.shape[3] + w
    acc = dx.dtype.type(0)
    for p in range(r0.size):
        if r0[p] <= h < r1[p]:
            for q in range(c0.size):
                if c0[q] <= w < c1[q] and argmax[n, c, p, q] == me:
                    acc += dy[n, c, p, q]
    dx[n, c, h, w] = acc


def _adaptive_forward(x, output_size, name: str, kernel, with_argmax: bool):
    _, rows, cols = prepare_adaptive_pool(host_proxy(x), output_size, name)
    x = device_array(x, "x")
    windows = tuple(cuda.to_device(np.ascontiguousarray(t)) for t in (*rows, *cols))
    out_shape = (*x.shape[:2], rows[0].size, cols[0].size)
    y = empty(out_shape, x.dtype)
    argmax = empty(out_shape, np.int64) if with_argmax else None
    launch_1d(kernel, y.size, x, *windows, y, *((argmax,) if with_argmax else ()))
    return y, CudaAdaptiveCache(tuple(x.shape), out_shape[2:], windows, x.dtype, argmax)


def adaptive_avg_pool2d_forward(x, output_size):
    """y[n, c, p, q] = mean of x over torch's adaptive window (p, q); like
    ``F.adaptive_avg_pool2d``. Returns ``(y, cache)``, y a device array."""
    return _adaptive_forward(x, output_size, "adaptive_avg_pool2d", _adaptive_avg_kernel, False)


def _adaptive_backward(dy, cache, name: str, kernel, *tables):
    """dx from ``kernel(dy, *tables, *windows, dx)``, one thread per input pixel."""
    dy = device_dy(dy, (*cache.in_shape[:2], *cache.out_hw), cache.dtype, name)
    dx = empty(cache.in_shape, cache.dtype)
    launch_1d(kernel, dx.size, dy, *tables, *cache.windows, dx)
    return dx


def adaptive_avg_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = sum over the windows holding (h, w) of dy[n, c, p, q] / area(p, q)."""
    name = "adaptive_avg_pool2d_backward"
    return _adaptive_backward(dy, cache, name, _adaptive_avg_backward_kernel)


def adaptive_max_pool2d_forward(x, output_size):
    """y[n, c, p, q] = max of x over torch's adaptive window (p, q); like
    ``F.adaptive_max_pool2d``. Returns ``(y, cache)``, y a device array."""
    return _adaptive_forward(x, output_size, "adaptive_max_pool2d", _adaptive_max_kernel, True)


def adaptive_max_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy[n, c, p, q] over the outputs whose winner is (h, w)."""
    name = "adaptive_max_pool2d_backward"
    return _adaptive_backward(dy, cache, name, _adaptive_max_backward_kernel, cache.argmax)


def adaptive_max_pool2d_indices(cache):
    """torch's ``return_indices`` (flat input index h * W + w, int64 device array)."""
    return cache.argmax
