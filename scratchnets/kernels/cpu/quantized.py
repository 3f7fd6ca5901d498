"""Integer-only inference on the CPU: the ops of ``scratchnets.reference.quantized`` with the same
names, signatures and **bit-identical** results, faster.

What the reference spends its time on (MobileNetV2 1.0 at 224 px, batch 1: 280 ms, cProfile):
half in requantization, NumPy passes over int64 arrays (the high multiply's product, nudge,
division and saturation test, then the rounding shift's mask, threshold and compare, each a
temporary), a third in the float64 convolutions. Here:

* **requantization fused** into one Numba pass per output (``_requantize``): each int32
  accumulator goes through bias, the fixed-point multiply (gemmlowp's rounding high multiply
  and rounding right shift, folded into one int64 product and one shift: ``fixed_point_scale``),
  zero point and clamp in registers and is written once as uint8;
* **every convolution** (pointwise, depthwise, the stem) as the float conv of this backend (tiled
  BLAS GEMMs, the vectorised depthwise kernels) on the centred codes ``x - Zx`` and ``w - Zw``:
  every product and partial sum is an integer, exact in a float type while it stays below the
  type's integer limit. Whatever order the kernel sums in, a partial sum of output channel c is
  at most ``max|x - Zx| * sum_k |w[c, k] - Zw|`` (``accumulator_bound``, fixed by the weights
  alone), so where that is below 2^24 the conv runs in **float32** (every layer of Google's
  MobileNets: at most half the limit; a 3x3 depthwise conv always, 9 * 255 * 255 < 2^24), else
  in float64 (2^53, any model). Padding is the real 0, ``q = Zx``: a centred 0, as the float
  conv pads. The centred weights are prepared once per layer (``centred_weights``, cached by the
  model), the centred input by one parallel pass per call (``_centre``). The accumulators then
  go through ``_requantize``; a 1x1 conv requantizes each GEMM tile from a tile-sized buffer
  while it is in L1 (``_requantized_gemm``), so its float accumulators never reach memory.
  Measured (MobileNetV2 224 px batch 1, 2-core EPYC): the first version's float64 GEMMs and
  int64 depthwise loop (one output pixel at a time, a bounds test per tap, not vectorised) took
  10 and 23 ms of a 42 ms forward.
* the addition and the average pool are one Numba pass each; the softmax reads the exps of its
  256 possible input differences from a table made once by the reference's own steps
  (``_softmax_table``), and its outputs from a table made once per row: the reference's NumPy
  chains (~50 small-array operations) took 1 ms of a 12 ms MobileNetV2 forward.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange, uint64

from scratchnets.reference.conv import ConvGeometry, conv_geometry
from scratchnets.reference.fixed_point import quantize_multiplier
from scratchnets.reference.quantized import (
    ADD_LEFT_SHIFT,
    UINT8_MAX,
    UINT8_MIN,
    QuantParams,
    activation_range,
    add_multipliers,
    avg_pool_geometry,
    check_softmax_output,
    conv_multiplier,
    softmax_exps,
    softmax_outputs,
    uint8_array,
)

from ._threads import planned_threads
from .conv import conv_kind
from .conv.pointwise import _pointwise_input
from .fused import conv2d_bias_act_checked
from .gemm import _gemm_tile, blas_gemm, tile_plan

__all__ = [
    "accumulator_bound",
    "centred_weights",
    "quantized_conv2d",
    "quantized_conv2d_prepared",
    "quantized_add",
    "quantized_avg_pool2d",
    "quantized_softmax",
]


@njit(inline="always")
def multiply_by_quantized_multiplier(total, scale):
    """``reference.fixed_point.multiply_by_quantized_multiplier`` on an int64 scalar, as one
    product and one shift: ``scale`` is ``fixed_point_scale(M)`` (see there)."""
    multiplier, shift, nudge_up, nudge_down = scale
    product = total * multiplier
    return (product + (nudge_up if product >= -(1 << 30) else nudge_down)) >> shift


@njit(inline="always")
def _requantize_row(acc, bias, scale, zero_point, low, high, out):
    """out[i] = clamp(Z + M (acc[i] + bias)) for a row of float accumulators holding integers,
    into a uint8 row (both 1-D views indexed from 0); ``scale``: ``fixed_point_scale(M)``."""
    for i in range(acc.size):
        value = multiply_by_quantized_multiplier(np.int64(acc[i]) + bias, scale)
        out[i] = min(max(value + zero_point, low), high)


@njit(parallel=True, cache=True)
def _requantize(acc, bias, scale, zero_point, low, high, out):
    """out[n, c] = clamp(Z + M (acc[n, c] + bias[c])) for float accumulators holding integers:
    (N, C, P) -> uint8 (N, C, P), one (n, c) plane per iteration."""
    n_batch, channels, _ = acc.shape
    for plane in prange(n_batch * channels):
        n, c = plane // channels, plane % channels
        _requantize_row(acc[n, c], bias[c], scale, zero_point, low, high, out[n, c])


@njit(parallel=True, cache=True)
def _requantized_gemm(gemm, w, x, tiles, bias, scale, zero_point, low, high, out):
    """out[n] = clamp(Z + M (w @ x[n] + bias)) for w (C_out, C_in) and x (N, C_in, P) holding
    centred codes, out uint8 (N, C_out, P): each output tile (n, r0, r1, c0, c1) is one BLAS call
    into a tile-sized float buffer, requantized from there while it is in L1, so the float
    accumulators never go to memory (a 1x1 conv's requantize pass inside its GEMM)."""
    for t in prange(tiles.shape[0]):
        n, r0, r1, c0, c1 = tiles[t, 0], tiles[t, 1], tiles[t, 2], tiles[t, 3], tiles[t, 4]
        acc = np.empty((r1 - r0, c1 - c0), x.dtype)
        _gemm_tile(gemm, w[r0:r1], False, x[n, :, c0:c1], False, acc, 0, r1 - r0, 0, c1 - c0, 0.0)
        for i in range(r1 - r0):
            _requantize_row(acc[i], bias[r0 + i], scale, zero_point, low, high,
                            out[n, r0 + i, c0:c1])  # fmt: skip


def _uint8(q, name: str) -> np.ndarray:
    return np.ascontiguousarray(uint8_array(q, name))


@functools.lru_cache(maxsize=4096)
def fixed_point_scale(real_multiplier: float) -> tuple[int, int, int, int]:
    """TFLite's ``MultiplyByQuantizedMultiplier(x, M0, shift)`` (``reference.fixed_point``: a left
    shift by L = max(shift, 0), the rounding high multiply, a rounding right shift by
    R = max(-shift, 0)) as the constants of one int64 product and one shift,
    ``(multiplier, shift, nudge_up, nudge_down)``. With q = x 2^L M0:

        high multiply   h = floor((q + 2^30) / 2^31)     (gemmlowp's sign-dependent nudge and
                                                          truncation towards 0 are this floor)
        right shift     r = floor((h + c) / 2^R),  c = 2^(R-1) for h >= 0, 2^(R-1) - 1 for h < 0
                                                          (ties away from 0; c = 0 for R = 0)
        so              r = (q + 2^30 + c 2^31) >> (31 + R),  h >= 0 exactly when q >= -2^30,

    since floor(floor(a / 2^31) / 2^R) = floor(a / 2^(31 + R)). Both of gemmlowp's steps are
    ~20 int64 operations per vector of lanes; this is five (the requantize pass measured
    365 -> 171 us on 1.2 M accumulators). The high multiply's one saturating case, M0 = -2^31,
    cannot occur: ``quantize_multiplier`` gives M0 in [0, 2^31)."""
    m0, exponent = quantize_multiplier(real_multiplier)
    left, right = max(exponent, 0), max(-exponent, 0)
    up = (1 << right) >> 1
    down = max(up - 1, 0)
    return m0 << left, 31 + right, (1 << 30) + (up << 31), (1 << 30) + (down << 31)


@functools.lru_cache(maxsize=4096)
def _requantize_arguments(x_q: QuantParams, w_q: QuantParams, y_q: QuantParams, activation):
    """``_requantize``'s layer constants (``fixed_point_scale(M)``, Zy, low, high), computed
    once per layer's parameters: ~10 us of Python a call otherwise."""
    scale = fixed_point_scale(conv_multiplier(x_q, w_q, y_q))
    return (scale, y_q.zero_point, *activation_range(activation, y_q))


#: float32 holds every integer of magnitude up to 2^24 exactly
FLOAT32_EXACT_LIMIT = 2**24


def accumulator_bound(w: np.ndarray, w_q: QuantParams, x_q: QuantParams) -> int:
    """The largest magnitude any partial sum of a conv's accumulators can reach, whatever the
    input and the order of summation: ``max|x - Zx| * max_c sum_k |w[c, k] - Zw|`` (uint8 x)."""
    largest_input = max(x_q.zero_point, 255 - x_q.zero_point)
    centred = np.abs(w.reshape(len(w), -1).astype(np.int64) - w_q.zero_point)
    return largest_input * int(centred.sum(axis=1).max(initial=0))


def centred_weights(w, w_q: QuantParams, x_q: QuantParams) -> np.ndarray:
    """``w - Zw`` for the GEMM of ``quantized_conv2d``: float32 where ``accumulator_bound``
    proves every partial sum exact in it, else float64."""
    w = _uint8(w, "w")
    exact32 = accumulator_bound(w, w_q, x_q) < FLOAT32_EXACT_LIMIT
    return np.subtract(w, w_q.zero_point, dtype=np.float32 if exact32 else np.float64)


#: elements per parallel task of ``_centre``
CENTRE_CHUNK = 1 << 14


@njit(parallel=True, cache=True)
def _centre(x, zero_point, out):
    """out = x - zero_point for uint8 codes x, in out's float dtype (exact), on every core: one
    vectorised pass (uint64 indices, no wrap-around test), where NumPy's mixed-type subtract
    runs on one core (a 96 x 112 x 112 input: 286 -> 72 us)."""
    flat, centred = x.reshape(-1), out.reshape(-1)
    size = flat.size
    for chunk in prange((size + CENTRE_CHUNK - 1) // CENTRE_CHUNK):
        start = chunk * CENTRE_CHUNK
        for i in range(min(CENTRE_CHUNK, size - start)):
            k = uint64(start + i)
            centred[k] = np.int32(flat[k]) - zero_point


def _hashable(argument):
    return tuple(argument) if isinstance(argument, list) else argument


@functools.lru_cache(maxsize=1024)
def _geometry(x_shape, w_shape, stride, padding, groups) -> ConvGeometry:
    """The conv's geometry (its checks included), once per shape and arguments: the checks of a
    whole ``prepare_conv`` cost ~50 us a layer, on arrays this module made itself."""
    return conv_geometry(x_shape, w_shape, stride, padding, 1, groups)


def quantized_conv2d(
    x, x_q: QuantParams, w, w_q: QuantParams, bias, y_q: QuantParams,
    stride=1, padding=0, groups=1, activation: str | None = None, centred_w=None,
) -> np.ndarray:  # fmt: skip
    """``reference.quantized.quantized_conv2d``, bit for bit; see the module docstring.
    ``centred_w``: ``centred_weights(w, w_q, x_q)``, prepared once (computed here if None)."""
    x = _uint8(x, "x")
    return quantized_conv2d_prepared(
        x.shape, x_q, w, w_q, bias, y_q, stride, padding, groups, activation, centred_w
    )(x)


def quantized_conv2d_prepared(
    x_shape, x_q: QuantParams, w, w_q: QuantParams, bias, y_q: QuantParams,
    stride=1, padding=0, groups=1, activation: str | None = None, centred_w=None,
):  # fmt: skip
    """``quantized_conv2d`` prepared once for uint8 inputs of shape ``x_shape``: a function
    ``run(x) -> y`` with the geometry, the requantize constants, the centred weights and (1x1
    convs) the GEMM's tile plan chosen here, the uint8 model's per-layer plan
    (``QuantizedModel``'s cpu forward; ~8 us of Python a layer otherwise)."""
    w = _uint8(w, "w")
    out_channels = w.shape[0]
    bias = np.zeros(out_channels, np.int64) if bias is None else np.asarray(bias, np.int64)
    requantize = _requantize_arguments(x_q, w_q, y_q, activation)
    if centred_w is None:
        centred_w = centred_weights(w, w_q, x_q)
    elif centred_w.shape != w.shape:
        raise ValueError(f"quantized_conv2d: centred_w {centred_w.shape} is not w's {w.shape}")
    g = _geometry(tuple(x_shape), w.shape, _hashable(stride), _hashable(padding), groups)
    out_shape = (g.batch, out_channels, g.out_hw[0] * g.out_hw[1])
    zero_point = np.int32(x_q.zero_point)

    def centred(x):  # x - Zx in the GEMM's dtype, exact: module docstring
        centred_x = np.empty(x.shape, centred_w.dtype)
        _centre(x, zero_point, centred_x)
        return centred_x

    if conv_kind(g) != "pointwise":

        def run(x):
            acc = conv2d_bias_act_checked(centred(x), centred_w, None, g, None)
            out = np.empty(out_shape, np.uint8)
            _requantize(acc.reshape(out_shape), bias, *requantize, out)
            return out.reshape(g.batch, out_channels, *g.out_hw)

        return run

    # 1x1: the requantize pass inside the GEMM's tiles
    tiles = tile_plan(g.batch, out_channels, out_shape[2], g.in_channels, planned_threads())
    gemm, weights = blas_gemm(centred_w.dtype), centred_w.reshape(out_channels, -1)

    def run_pointwise(x):
        out = np.empty(out_shape, np.uint8)
        columns = _pointwise_input(centred(x), g)  # (N, C_in, OH*OW)
        _requantized_gemm(gemm, weights, columns, tiles, bias, *requantize, out)
        return out.reshape(g.batch, out_channels, *g.out_hw)

    return run_pointwise


@njit(parallel=True, cache=True)
def _add_kernel(a, b, a_zero, b_zero, a_scale, b_scale, out_scale, zero_point, low, high, out):
    """The three fixed-point multiplies of ``quantized_add`` per element; ``*_scale`` are
    ``fixed_point_scale`` tuples."""
    flat_a, flat_b, flat_out = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    for i in prange(flat_a.size):
        sum_ = multiply_by_quantized_multiplier(
            (np.int64(flat_a[i]) - a_zero) << ADD_LEFT_SHIFT, a_scale
        ) + multiply_by_quantized_multiplier(
            (np.int64(flat_b[i]) - b_zero) << ADD_LEFT_SHIFT, b_scale
        )
        value = multiply_by_quantized_multiplier(sum_, out_scale) + zero_point
        flat_out[i] = min(max(value, low), high)


def quantized_add(
    a, b, a_q: QuantParams, b_q: QuantParams, y_q: QuantParams, activation: str | None = None
) -> np.ndarray:
    """``reference.quantized.quantized_add``, bit for bit, in one pass."""
    a, b = _uint8(a, "a"), _uint8(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"quantized_add: shapes {a.shape} and {b.shape} differ")
    a_scale, b_scale, out_scale = map(fixed_point_scale, add_multipliers(a_q, b_q, y_q))
    low, high = activation_range(activation, y_q)
    out = np.empty(a.shape, np.uint8)
    _add_kernel(a, b, a_q.zero_point, b_q.zero_point, a_scale, b_scale, out_scale,
                y_q.zero_point, low, high, out)  # fmt: skip
    return out


@njit(parallel=True, cache=True)
def _avg_pool_kernel(x, kernel_h, kernel_w, stride_h, stride_w, top, left, low, high, out):
    """out[n, c, i, j] = clamp((sum + count // 2) // count) over the window's real pixels."""
    batch, channels, height, width = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for plane in prange(batch * channels):
        n, c = plane // channels, plane % channels
        for i in range(out_h):
            h0 = i * stride_h - top
            h_start, h_stop = max(h0, 0), min(h0 + kernel_h, height)
            for j in range(out_w):
                w0 = j * stride_w - left
                w_start, w_stop = max(w0, 0), min(w0 + kernel_w, width)
                total = np.int64(0)
                for h in range(h_start, h_stop):
                    for w in range(w_start, w_stop):
                        total += x[n, c, h, w]
                count = max(h_stop - h_start, 0) * max(w_stop - w_start, 0)
                mean = (total + count // 2) // count if count > 0 else 0  # NumPy's x // 0 is 0
                out[n, c, i, j] = min(max(mean, low), high)


def quantized_avg_pool2d(
    x, kernel_size, stride, padding=0, clamp: tuple[int, int] = (UINT8_MIN, UINT8_MAX)
) -> np.ndarray:
    """``reference.quantized.quantized_avg_pool2d``, bit for bit, in one pass."""
    x = _uint8(x, "x")
    kernel, stride, (top, _, left, _), out_hw = avg_pool_geometry(
        x.shape, kernel_size, stride, padding
    )
    out = np.empty((*x.shape[:2], *out_hw), np.uint8)
    _avg_pool_kernel(x, *kernel, *stride, top, left, *clamp, out)
    return out


#: the differences ``q - max(q)`` a uint8 softmax can see: 0, -1, ..., -255
SOFTMAX_DIFFERENCES = -np.arange(UINT8_MAX + 1, dtype=np.int64)


@functools.lru_cache(maxsize=64)
def _softmax_table(x_q: QuantParams, beta: float) -> tuple[np.ndarray, ...]:
    """``reference.quantized.softmax_exps`` of every difference a uint8 input can have, indexed by
    ``max(q) - q``: an exp depends on its input only through that difference."""
    return softmax_exps(SOFTMAX_DIFFERENCES, x_q, beta)


def quantized_softmax(x, x_q: QuantParams, beta: float, y_q: QuantParams) -> np.ndarray:
    """``reference.quantized.quantized_softmax``, bit for bit: the exps and the sum's terms read
    from ``_softmax_table``, the outputs from a table of the 256 differences' outputs for each
    row's sum (an output depends only on its difference and its row's sum)."""
    x = _uint8(x, "x")
    check_softmax_output(y_q)
    exps, terms, used = _softmax_table(x_q, float(beta))
    index = (x.max(axis=-1, keepdims=True) - x).astype(np.intp)  # max(q) - q, (..., K)
    sum_of_exps = terms[index].sum(axis=-1, keepdims=True)  # (..., 1)
    outputs = softmax_outputs(sum_of_exps, exps, used)  # (..., 256): each row's table
    return np.take_along_axis(outputs, index, axis=-1)
