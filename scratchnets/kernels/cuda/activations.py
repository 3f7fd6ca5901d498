"""Activations on the GPU: ReLU, ReLU6, clip, hard-sigmoid, sigmoid, hard-swish, SiLU elementwise,
softmax along an axis, and their gradients.

One thread per element of the flattened (contiguous) array; semantics exactly as
``scratchnets.reference.activations`` (gradient 0 at the kinks, NaN propagates forward).
The three piecewise-linear ops are one clamp with different constants::

    y = min(max(x + shift, 0), top) / divisor
        relu: shift 0, top inf;  relu6: shift 0, top 6;  hard_sigmoid: shift 3, top 6, divisor 6

and their backward is one select, ``dx = dy / divisor where lo < x < hi else 0``. The cache is
the input x itself (no mask array): the backward recomputes the comparison. Sigmoid's backward
recomputes sigmoid(x) and sigmoid(-x) from the cached x with the overflow-free formula; so do
hard-swish (its slope x / 3 + 1/2 between the kinks) and SiLU (s (1 + x (1 - s))). Clip has
its own clamp (arbitrary bounds) and the same select backward, its cache (x, low, high).

Softmax views the array as (O, K, I) lines of K along the axis (``softmax_lines``), one thread
per line: max, sum of exps, exps over the sum, in float64 and rounded once.
"""

from __future__ import annotations

import math

from numba import cuda

from scratchnets.reference.activations import softmax_lines

from ._launch import device_array, device_dy, empty, flat, launch_1d


@cuda.jit
def _clamp_kernel(x, shift, top, divisor, y):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i] + shift
        if v < 0:  # a NaN fails both tests and passes through, like np.maximum / torch
            v = y.dtype.type(0)
        elif v > top:
            v = top
        y[i] = v / divisor


@cuda.jit
def _select_kernel(dy, x, lo, hi, divisor, dx):
    i = cuda.grid(1)
    if i < dy.size:
        dx[i] = dy[i] / divisor if lo < x[i] < hi else dx.dtype.type(0)


@cuda.jit(device=True)
def _sigmoid_pair(v, one):
    """(sigmoid(v), sigmoid(-v)) with z = exp(-|v|) in (0, 1]: never overflows."""
    z = math.exp(-abs(v))
    big, small = one / (one + z), z / (one + z)  # sigmoid(|v|), sigmoid(-|v|)
    return (big, small) if v >= 0 else (small, big)


@cuda.jit
def _sigmoid_kernel(x, y):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = _sigmoid_pair(x[i], y.dtype.type(1))[0]


@cuda.jit
def _sigmoid_backward_kernel(dy, x, dx):
    i = cuda.grid(1)
    if i < dy.size:
        s, s_neg = _sigmoid_pair(x[i], dx.dtype.type(1))
        dx[i] = dy[i] * s * s_neg  # dy * y * (1 - y), with 1 - y computed without cancellation


def _clamp_forward(x, shift: float, top: float, divisor: float):
    x = device_array(x, "x")
    y = empty(x.shape, x.dtype)
    t = x.dtype.type
    launch_1d(_clamp_kernel, x.size, flat(x), t(shift), t(top), t(divisor), flat(y))
    return y, x


def _select_backward(dy, x, lo: float, hi: float, divisor: float, op: str):
    dy = device_dy(dy, tuple(x.shape), x.dtype, f"{op}_backward")
    dx = empty(x.shape, x.dtype)
    t = x.dtype.type
    launch_1d(_select_kernel, x.size, flat(dy), flat(x), t(lo), t(hi), t(divisor), flat(dx))
    return dx


def relu_forward(x):
    """y = max(x, 0); like ``F.relu``. x: NumPy or device array; returns ``(y, cache)``."""
    return _clamp_forward(x, 0.0, math.inf, 1.0)


def relu_backward(dy, cache):
    """dx = dy * [x > 0] (0 at x = 0, as torch)."""
    return _select_backward(dy, cache, 0.0, math.inf, 1.0, "relu")


def relu6_forward(x):
    """y = min(max(x, 0), 6); like ``F.relu6``."""
    return _clamp_forward(x, 0.0, 6.0, 1.0)


def relu6_backward(dy, cache):
    """dx = dy * [0 < x < 6] (0 at exactly 0 and 6, as ``F.relu6``)."""
    return _select_backward(dy, cache, 0.0, 6.0, 1.0, "relu6")


@cuda.jit
def _clip_kernel(x, low, high, y):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        t = low if v < low else v  # a NaN passes both tests
        y[i] = high if t > high else t  # low > high: high everywhere, as torch.clamp


def clip_forward(x, low=-1.0, high=1.0):
    """y = min(max(x, low), high); like ``F.hardtanh`` and ONNX's Clip."""
    x = device_array(x, "x")
    y = empty(x.shape, x.dtype)
    low, high = x.dtype.type(low), x.dtype.type(high)
    launch_1d(_clip_kernel, x.size, flat(x), low, high, flat(y))
    return y, (x, low, high)


def clip_backward(dy, cache):
    """dx = dy * [low < x < high] (0 at exactly the bounds, as ``F.hardtanh``)."""
    x, low, high = cache
    return _select_backward(dy, x, low, high, 1.0, "clip")


def hard_sigmoid_forward(x):
    """y = min(max(x + 3, 0), 6) / 6; like ``F.hardsigmoid``."""
    return _clamp_forward(x, 3.0, 6.0, 6.0)


def hard_sigmoid_backward(dy, cache):
    """dx = dy / 6 for -3 < x < 3, else 0 (0 at exactly -3 and 3, as torch)."""
    return _select_backward(dy, cache, -3.0, 3.0, 6.0, "hard_sigmoid")


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)); like ``torch.sigmoid``, without overflow for any finite x."""
    return _elementwise(_sigmoid_kernel, x)


def sigmoid_backward(dy, cache):
    """dx = dy * sigmoid(x) * sigmoid(-x) = dy * y * (1 - y)."""
    return _elementwise_backward(_sigmoid_backward_kernel, dy, cache, "sigmoid")


@cuda.jit
def _hard_swish_kernel(x, y):
    i = cuda.grid(1)
    if i < x.size:
        t = y.dtype.type
        v = x[i]
        r = v + t(3)
        if r <= t(0):
            r = t(0)
        elif r >= t(6):
            r = t(6)
        y[i] = v * r / t(6)


@cuda.jit
def _hard_swish_backward_kernel(dy, x, dx):
    i = cuda.grid(1)
    if i < dy.size:
        t = dx.dtype.type
        v = x[i]
        if v <= t(-3):
            dx[i] = t(0)
        elif v < t(3):
            dx[i] = dy[i] * (v / t(3) + t(0.5))
        else:  # x >= 3, or NaN (as torch)
            dx[i] = dy[i]


@cuda.jit
def _silu_kernel(x, y):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = x[i] * _sigmoid_pair(x[i], y.dtype.type(1))[0]


@cuda.jit
def _silu_backward_kernel(dy, x, dx):
    i = cuda.grid(1)
    if i < dy.size:
        one = dx.dtype.type(1)
        s, s_neg = _sigmoid_pair(x[i], one)
        dx[i] = dy[i] * s * (one + x[i] * s_neg)


def _elementwise(kernel, x):
    """y = kernel(x) elementwise; the cache is x (the backward recomputes from it)."""
    x = device_array(x, "x")
    y = empty(x.shape, x.dtype)
    launch_1d(kernel, x.size, flat(x), flat(y))
    return y, x


def _elementwise_backward(kernel, dy, x, op: str):
    dy = device_dy(dy, tuple(x.shape), x.dtype, f"{op}_backward")
    dx = empty(x.shape, x.dtype)
    launch_1d(kernel, x.size, flat(dy), flat(x), flat(dx))
    return dx


def hard_swish_forward(x):
    """y = x * min(max(x + 3, 0), 6) / 6; like ``F.hardswish``."""
    return _elementwise(_hard_swish_kernel, x)


def hard_swish_backward(dy, cache):
    """dx = dy * (0 for x <= -3, x / 3 + 1/2 inside, 1 for x >= 3), the kinks as torch."""
    return _elementwise_backward(_hard_swish_backward_kernel, dy, cache, "hard_swish")


def silu_forward(x):
    """y = x * sigmoid(x); like ``F.silu``."""
    return _elementwise(_silu_kernel, x)


def silu_backward(dy, cache):
    """dx = dy * s * (1 + x (1 - s)), s = sigmoid(x) recomputed from the cached x."""
    return _elementwise_backward(_silu_backward_kernel, dy, cache, "silu")


@cuda.jit
def _softmax_kernel(x, y):
    line = cuda.grid(1)
    outer, size, inner = x.shape
    if line < outer * inner:
        o, i = line // inner, line % inner
        top = x[o, 0, i]
        for k in range(1, size):
            top = max(top, x[o, k, i])
        total = 0.0
        for k in range(size):
            total += math.exp(float(x[o, k, i]) - float(top))
        for k in range(size):
            y[o, k, i] = math.exp(float(x[o, k, i]) - float(top)) / total


@cuda.jit
def _softmax_backward_kernel(dy, y, dx):
    line = cuda.grid(1)
    outer, size, inner = y.shape
    if line < outer * inner:
        o, i = line // inner, line % inner
        dot = 0.0
        for k in range(size):
            dot += float(dy[o, k, i]) * float(y[o, k, i])
        for k in range(size):
            dx[o, k, i] = float(y[o, k, i]) * (float(dy[o, k, i]) - dot)


def softmax_forward(x, axis=-1):
    """y = exp(x - max) / sum exp(x - max) along ``axis``; like ``F.softmax(x, dim=axis)``."""
    x = device_array(x, "x")
    outer, size, inner = lines = softmax_lines(tuple(x.shape), axis)
    y = empty(x.shape, x.dtype)
    launch_1d(_softmax_kernel, outer * inner if x.size else 0, x.reshape(lines), y.reshape(lines))
    return y, (y, axis)


def softmax_backward(dy, cache):
    """dx = y * (dy - sum(dy * y)) along the axis."""
    y, axis = cache
    dy = device_dy(dy, tuple(y.shape), y.dtype, "softmax_backward")
    outer, size, inner = lines = softmax_lines(tuple(y.shape), axis)
    dx = empty(y.shape, y.dtype)
    launch_1d(_softmax_backward_kernel, outer * inner if y.size else 0, dy.reshape(lines),
              y.reshape(lines), dx.reshape(lines))  # fmt: skip
    return dx
