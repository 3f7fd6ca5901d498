"""Integer-only inference: the uint8 ops of quantized MobileNets, as TensorFlow Lite's reference
kernels compute them (Jacob et al. 2018, arXiv 1712.05877). The fourth family beside the float
ops; forward only (quantized models are trained in float, see ``QuantizedModel.dequantize``).

A uint8 tensor ``q`` with scale ``S`` and zero point ``Z`` stands for the reals

    r = S (q - Z)                                                   [Jacob et al., eq. 1]

so ``q = Z`` is exactly 0.0 (zero padding is exact). For a conv ``r3 = sum r1 r2 + b`` every
term is rewritten in integers:

    q3 = Z3 + M * (sum_k (q1 - Z1)(q2 - Z2) + q_bias),   M = S1 S2 / S3     [eq. 4, 5]

where the bias is stored as int32 with scale ``S1 S2`` and zero point 0. The sum is exact in
int32; only the multiplication by the real ``M`` rounds, once, in fixed point
(``fixed_point.multiply_by_quantized_multiplier``). A fused ReLU6 is then a clamp of ``q3`` to the
codes of 0.0 and 6.0 (``activation_range``): free, since the result is clamped to [0, 255] anyway.

Layout NCHW like every other op here (TFLite's NHWC tensors transposed); arrays of uint8 in and
out, int32 biases, int64 arithmetic holding int32 values. Every op takes the quantization of its
inputs and output as ``QuantParams`` and derives its multipliers from the scales, as TFLite does
when it prepares the graph.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .conv import conv2d_forward
from .fixed_point import (
    exp_on_negative_values,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    reciprocal,
    rescale,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from .windows import conv_output_size, normalize_padding, pad_nchw, pair, sliding_windows

UINT8_MIN, UINT8_MAX = 0, 255


class QuantParams(NamedTuple):
    """Per-tensor affine quantization: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int


def uint8_array(q, name: str) -> np.ndarray:
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 array, got dtype {q.dtype}")
    return q


def activation_range(activation: str | None, out: QuantParams) -> tuple[int, int]:
    """The uint8 codes a fused activation clamps to: ReLU [code(0), 255], ReLU6
    [code(0), code(6)], none [0, 255]; ``code(r) = Z + round(r / S)`` in float32, as TFLite
    (``CalculateActivationRangeQuantized``)."""

    def code(real: float) -> int:
        return out.zero_point + int(np.round(np.float32(real) / np.float32(out.scale)))

    if activation is None:
        return UINT8_MIN, UINT8_MAX
    if activation == "RELU":
        return max(UINT8_MIN, code(0.0)), UINT8_MAX
    if activation == "RELU6":
        return max(UINT8_MIN, code(0.0)), min(UINT8_MAX, code(6.0))
    raise ValueError(f"fused activation {activation!r} is not supported (RELU, RELU6 or None)")


def requantize(acc, real_multiplier: float, out: QuantParams, clamp: tuple[int, int]):
    """``clamp(Z3 + M * acc)`` as uint8: the int32 accumulator brought to the output scale with
    ``M`` in fixed point, the zero point added, the activation's clamp applied."""
    m0, shift = quantize_multiplier(real_multiplier)
    scaled = multiply_by_quantized_multiplier(acc, m0, shift)
    return np.clip(scaled + out.zero_point, *clamp).astype(np.uint8)


def conv_multiplier(x: QuantParams, w: QuantParams, y: QuantParams) -> float:
    """``M = S1 S2 / S3``. TFLite forms ``S1 S2`` in float32 and divides in float64
    (``GetQuantizedConvolutionMultipler``); the last bit of ``M0`` can depend on it."""
    return float(np.float32(x.scale) * np.float32(w.scale)) / float(np.float32(y.scale))


def quantized_conv2d(
    x, x_q: QuantParams, w, w_q: QuantParams, bias, y_q: QuantParams,
    stride=1, padding=0, groups=1, activation: str | None = None,
) -> np.ndarray:  # fmt: skip
    """``y = clamp(Z3 + M (sum (x - Z1)(w - Z2) + bias))``: a uint8 convolution (depthwise with
    ``groups == C_in``, like the float op).

    Shapes: ``x`` (N, C_in, H, W) uint8, ``w`` (C_out, C_in / groups, kh, kw) uint8, ``bias``
    (C_out,) int32 of scale ``S1 S2`` -> ``y`` (N, C_out, OH, OW) uint8. ``padding`` as for
    ``conv2d_forward`` (an int, a pair or (top, bottom, left, right)); padded pixels are real
    zeros, i.e. ``x - Z1 = 0``.

    The int32 accumulator is computed by the float conv in float64: every product
    ``(x - Z1)(w - Z2)`` is an integer below 2^16 and every partial sum stays far below 2^53,
    so float64 adds them exactly, in any order a GEMM chooses.
    """
    x, w = uint8_array(x, "x"), uint8_array(w, "w")
    centred_x = x.astype(np.float64) - x_q.zero_point  # (N, C_in, H, W): x - Z1
    centred_w = w.astype(np.float64) - w_q.zero_point  # (C_out, C_in / groups, kh, kw): w - Z2
    products, _ = conv2d_forward(centred_x, centred_w, None, stride, padding, 1, groups)
    acc = products.astype(np.int64)  # exact integers: (N, C_out, OH, OW)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)[None, :, None, None]
    return requantize(acc, conv_multiplier(x_q, w_q, y_q), y_q, activation_range(activation, y_q))


#: the left shift that gives an addition's operands 20 bits of headroom below int32's 31
ADD_LEFT_SHIFT = 20


def quantized_add(
    a, b, a_q: QuantParams, b_q: QuantParams, y_q: QuantParams, activation: str | None = None
) -> np.ndarray:
    """``y = a + b`` for uint8 tensors of different scales (a residual connection).

    Both operands are brought to a common scale ``2 max(S_a, S_b)`` before they are added:
    ``(q - Z) * 2^20`` (room for the rounding to keep 20 bits), times ``S / (2 max(S_a, S_b))``
    (a multiplier <= 1/2), then the sum times ``2 max(S_a, S_b) / (2^20 S_y)``. Three fixed-point
    multiplies, each rounding once (TFLite's ``AddElementwise``).
    """
    a, b = uint8_array(a, "a"), uint8_array(b, "b")
    a_multiplier, b_multiplier, out_multiplier = add_multipliers(a_q, b_q, y_q)

    def to_common_scale(q, q_params: QuantParams, real_multiplier: float):
        shifted = (q.astype(np.int64) - q_params.zero_point) << ADD_LEFT_SHIFT
        return multiply_by_quantized_multiplier(shifted, *quantize_multiplier(real_multiplier))

    raw_sum = to_common_scale(a, a_q, a_multiplier) + to_common_scale(b, b_q, b_multiplier)
    return requantize(raw_sum, out_multiplier, y_q, activation_range(activation, y_q))


def add_multipliers(a_q: QuantParams, b_q: QuantParams, y_q: QuantParams):
    """The three real multipliers of ``quantized_add``: ``S_a / (2 max(S_a, S_b))``,
    ``S_b / (2 max(S_a, S_b))`` and ``2 max(S_a, S_b) / (2^20 S_y)``, from the float32 scales
    in float64 (TFLite's ``PrepareGeneralSubOp``)."""
    twice_max_scale = 2.0 * float(max(np.float32(a_q.scale), np.float32(b_q.scale)))
    return (
        float(np.float32(a_q.scale)) / twice_max_scale,
        float(np.float32(b_q.scale)) / twice_max_scale,
        twice_max_scale / ((1 << ADD_LEFT_SHIFT) * float(np.float32(y_q.scale))),
    )


def avg_pool_geometry(x_shape, kernel_size, stride, padding) -> tuple:
    """``(kernel, stride, (top, bottom, left, right), (OH, OW))`` of an average pool over an
    (N, C, H, W) input, its arguments checked."""
    kernel, stride = pair(kernel_size, "kernel_size", 1), pair(stride, "stride", 1)
    pads = normalize_padding(padding)
    top, bottom, left, right = pads
    out_hw = (
        conv_output_size(x_shape[2], kernel[0], stride[0], top, bottom),
        conv_output_size(x_shape[3], kernel[1], stride[1], left, right),
    )
    return kernel, stride, pads, out_hw


def quantized_avg_pool2d(
    x, kernel_size, stride, padding=0, clamp: tuple[int, int] = (UINT8_MIN, UINT8_MAX)
) -> np.ndarray:
    """``y = round(sum of the window's real pixels / their count)``, rounding half up
    (``(sum + count / 2) / count`` in integers); input and output share one quantization, so no
    rescaling. Padded pixels do not count. Shapes: (N, C, H, W) -> (N, C, OH, OW) uint8."""
    x = uint8_array(x, "x")
    kernel, stride, pads, out_hw = avg_pool_geometry(x.shape, kernel_size, stride, padding)
    padded = pad_nchw(x.astype(np.int64), pads)  # (N, C, Hp, Wp)
    real = pad_nchw(np.ones((1, 1, *x.shape[2:]), dtype=np.int64), pads)  # 1 on real pixels
    total = sliding_windows(padded, kernel, stride, (1, 1), out_hw).sum(axis=(-2, -1))
    count = sliding_windows(real, kernel, stride, (1, 1), out_hw).sum(axis=(-2, -1))
    mean = (total + count // 2) // count  # (N, C, OH, OW), both non-negative: floor = C's division
    return np.clip(mean, *clamp).astype(np.uint8)


#: the softmax's exponent input is Q5.26 (differences down to -32) and its sum of exps Q12.19
#: (up to 4096 terms of at most 1)
SOFTMAX_DIFF_INTEGER_BITS, SOFTMAX_SUM_INTEGER_BITS = 5, 12


def softmax_input_scaling(beta: float, x_q: QuantParams) -> tuple[int, int, int]:
    """``(M0, left_shift, diff_min)``: the multiplier taking an input difference ``q - max(q)``
    (scale ``beta S``) to Q5.26, and the most negative difference whose exp is not rounded to 0
    (TFLite's ``PreprocessSoftmaxScaling`` and ``CalculateInputRadius``)."""
    fractional_bits = 31 - SOFTMAX_DIFF_INTEGER_BITS
    real = min(beta * float(np.float32(x_q.scale)) * 2.0**fractional_bits, 2.0**31 - 1.0)
    m0, left_shift = quantize_multiplier(real)
    # the largest difference representable after the scaling: (2^5 - 1) * 2^26 / 2^left_shift
    radius = int(
        np.floor((2**SOFTMAX_DIFF_INTEGER_BITS - 1) * 2.0**fractional_bits / 2**left_shift)
    )
    return m0, left_shift, -radius


def check_softmax_output(y_q: QuantParams) -> None:
    if (float(np.float32(y_q.scale)), y_q.zero_point) != (1 / 256, 0):
        raise ValueError(f"a uint8 softmax outputs scale 1/256, zero point 0; got {y_q}")


def softmax_exps(diff, x_q: QuantParams, beta: float) -> tuple[np.ndarray, ...]:
    """Steps 1 and 2 of ``quantized_softmax`` for input differences ``diff = q - max(q)`` (int64,
    <= 0): ``(exps, terms, used)``, the Q0.31 exps, the Q12.19 terms of the sum (0 where not
    ``used``) and whether the difference reaches ``diff_min``."""
    m0, left_shift, diff_min = softmax_input_scaling(beta, x_q)
    used = diff >= diff_min
    scaled_diff = saturating_rounding_doubling_high_mul(diff << left_shift, m0)  # Q5.26
    exps = exp_on_negative_values(scaled_diff, SOFTMAX_DIFF_INTEGER_BITS)  # Q0.31
    terms = np.where(used, rescale(exps, 0, SOFTMAX_SUM_INTEGER_BITS), 0)  # Q12.19
    return exps, terms, used


def softmax_outputs(sum_of_exps, exps, used) -> np.ndarray:
    """Steps 3 and 4 of ``quantized_softmax``: the uint8 outputs of ``exps`` (Q0.31) over their
    row's ``sum_of_exps`` (Q12.19, broadcast against them), 0 where not ``used``."""
    inverse, bits_over_unit = reciprocal(sum_of_exps, SOFTMAX_SUM_INTEGER_BITS)
    probability = saturating_rounding_doubling_high_mul(inverse, exps)  # Q0.31 of exp / sum
    y = rounding_divide_by_pot(probability, bits_over_unit + 31 - 8)
    return np.where(used, np.clip(y, UINT8_MIN, UINT8_MAX), 0).astype(np.uint8)


def quantized_softmax(x, x_q: QuantParams, beta: float, y_q: QuantParams) -> np.ndarray:
    """``y = exp(beta r_i) / sum_j exp(beta r_j)`` over the last axis, in integers only, into
    uint8 with scale 1/256 and zero point 0.

    1. ``d_i = q_i - max(q)`` <= 0, scaled to Q5.26 by ``beta S`` (the max cancels: softmax
       is shift-invariant, and every exp is then <= 1);
    2. ``exp(d_i)`` in Q0.31 (``exp_on_negative_values``), summed in Q12.19;
    3. ``1 / sum`` as ``scale * 2^-(31 + bits_over_unit)`` (``reciprocal``);
    4. ``y_i = exp(d_i) / sum * 256``: the Q0.31 product shifted right by ``bits_over_unit + 23``
       (31 fractional bits less the 8 of the output), rounded, clamped to 255.
    Differences below ``diff_min`` give exactly 0 and are left out of the sum.
    """
    x = uint8_array(x, "x")
    check_softmax_output(y_q)
    diff = x.astype(np.int64) - x.max(axis=-1, keepdims=True)  # (..., K) <= 0
    exps, terms, used = softmax_exps(diff, x_q, beta)
    return softmax_outputs(terms.sum(axis=-1, keepdims=True), exps, used)
