"""The uint8 ops of integer-only inference explained (``reference.quantized``, TFLite's reference
kernels): each element's integer accumulator written out, the real multiplier as its fixed-point
``M0 * 2^(shift - 31)``, the rounding, the zero point and the activation's clamp; checked against
the op's own element exactly, and compared as reals with the float op it stands for."""

from __future__ import annotations

import math

import numpy as np

from ..reference import fixed_point as fp
from ..reference import quantized as ref_q
from ..reference.conv import conv2d_forward
from ..reference.windows import normalize_padding, pair
from ._common import explainer, nchw, output_index, window_count_lines
from .core import Element, Explanation, Source, index_text, num


def _codes(rng, shape) -> np.ndarray:
    return rng.integers(0, 256, shape).astype(np.uint8)


def _listed(values: np.ndarray, shown: int = 12) -> str:
    """A row written out, or for a long one (a 1001-class softmax) its ends and its length."""
    values = [int(v) for v in values]
    if len(values) <= shown:
        return str(values)
    head, tail = values[: shown - 4], values[-4:]
    return f"[{', '.join(map(str, head))}, ... {len(values) - shown} more ..., " + (
        f"{', '.join(map(str, tail))}]")  # fmt: skip


def _real(q: np.ndarray, p: ref_q.QuantParams) -> np.ndarray:
    """r = S (q - Z)."""
    return p.scale * (q.astype(np.float64) - p.zero_point)


def _multiplier_lines(name: str, real: float) -> tuple[list[str], int, int]:
    m0, shift = fp.quantize_multiplier(real)
    return (
        [
            f"{name} = {real:.9g} = M0 * 2^(shift - 31) with M0 = {m0} (in [2^30, 2^31)), "
            f"shift = {shift}: {m0} * 2^{shift - 31} = {m0 * 2.0 ** (shift - 31):.9g}",
        ],
        m0,
        shift,
    )


def _requantize_terms(acc: int, m0: int, shift: int, out: ref_q.QuantParams, clamp):
    """The lines and the value of ``clamp(Z + round(acc * M0 * 2^(shift - 31)))``."""
    scaled = int(fp.multiply_by_quantized_multiplier(np.int64(acc), m0, shift))
    value = min(max(scaled + out.zero_point, clamp[0]), clamp[1])
    return [
        f"acc * M = {acc} * {m0} * 2^{shift - 31} = {acc * m0 * 2.0 ** (shift - 31):.6g}, "
        f"rounded in fixed point: {scaled}",
        f"+ Z_y = {scaled} + {out.zero_point} = {scaled + out.zero_point}, clamped to "
        f"[{clamp[0]}, {clamp[1]}]: {value}",
    ], value


@explainer("quantized_conv2d")
def explain_quantized_conv2d(
    input=(1, 2, 5, 5), out_channels=2, kernel=3, stride=1, padding=1, groups=1,
    activation=None, seed=0, at=None, *, arrays=None,
) -> Explanation:  # fmt: skip
    """A uint8 convolution: y = clamp(Z_y + M (sum (x - Z_x)(w - Z_w) + bias)). ``arrays``
    ({"x", "w", "bias", "x_q", "w_q", "y_q"}): explain these codes and quantization parameters
    instead of drawn ones (a real layer's tensors; its shapes then set input, out_channels and
    kernel)."""
    if arrays is not None:
        input, out_channels = arrays["x"].shape, arrays["w"].shape[0]
        kernel = tuple(arrays["w"].shape[2:])
    N, C_in, H, W = nchw(input)
    if C_in % groups or out_channels % groups:
        raise ValueError(
            f"in_channels ({C_in}) and out_channels ({out_channels}) must be divisible by "
            f"groups ({groups})"
        )
    (kh, kw), (sh, sw) = pair(kernel, "kernel"), pair(stride, "stride")
    top, bottom, left, right = normalize_padding(padding)
    Cg, Mg = C_in // groups, out_channels // groups
    rng = np.random.default_rng(seed)
    if arrays is None:
        x_q, w_q = ref_q.QuantParams(0.02, 128), ref_q.QuantParams(0.01, 120)
        y_q = ref_q.QuantParams(0.25, 110)
        x, w = _codes(rng, (N, C_in, H, W)), _codes(rng, (out_channels, Cg, kh, kw))
        bias = rng.integers(-2000, 2000, out_channels).astype(np.int32)
    else:
        x_q, w_q, y_q = arrays["x_q"], arrays["w_q"], arrays["y_q"]
        x, w = np.asarray(arrays["x"]), np.asarray(arrays["w"])
        bias = arrays["bias"]
        bias = np.zeros(out_channels, np.int32) if bias is None else np.asarray(bias, np.int32)
    y = ref_q.quantized_conv2d(x, x_q, w, w_q, bias, y_q, (sh, sw), padding, groups, activation)
    clamp = ref_q.activation_range(activation, y_q)
    real = ref_q.conv_multiplier(x_q, w_q, y_q)
    e = Explanation("quantized_conv2d", dict(input=(N, C_in, H, W), out_channels=out_channels,
                    kernel=(kh, kw), stride=(sh, sw), padding=(top, bottom, left, right),
                    groups=groups, activation=activation, seed=seed),
                    inputs={"x": x, "w": w, "bias": bias})  # fmt: skip
    e.section(
        "the numbers stand for reals: r = S (q - Z)",
        f"x: S_x = {x_q.scale}, Z_x = {x_q.zero_point};  w: S_w = {w_q.scale}, Z_w = "
        f"{w_q.zero_point};  y: S_y = {y_q.scale}, Z_y = {y_q.zero_point};  bias int32 of scale "
        "S_x S_w, zero point 0",
        "padding holds Z_x: a real 0, so (x - Z_x) = 0 there",
    )
    e.section(
        "shapes",
        *window_count_lines("h", H, kh, sh, (top, bottom), 1),
        *window_count_lines("w", W, kw, sw, (left, right), 1),
        f"y uint8 {y.shape}",
    )
    lines, m0, shift = _multiplier_lines("M = S_x S_w / S_y", real)
    e.section(
        "forward (integers only; Jacob et al. 2018, eq. 4-5)",
        "acc[n, co, p, q] = bias[co] + sum_{c, i, j} (x[n, g*Cg + c, p*sh - top + i, q*sw - left + j]"
        " - Z_x) * (w[co, c, i, j] - Z_w)   (exact in int32)",
        *lines,
        "y = clamp(Z_y + round(acc * M)): the one rounding, in fixed point "
        "(fixed_point.multiply_by_quantized_multiplier)",
        f"clamp: the activation's codes {clamp} "
        + ("(ReLU6: the codes of 0.0 and 6.0)" if activation == "RELU6" else "(no activation)"),
        "no backward: quantized models are trained in float (QuantizedModel.dequantize)",
    )
    e.sources = [Source.of(ref_q.quantized_conv2d), Source.of(ref_q.requantize)]
    n, co, p, q = output_index(at, y.shape, (0, out_channels - 1, y.shape[2] // 2, y.shape[3] // 2))
    grp = co // Mg
    terms, acc = [], int(bias[co])
    for c in range(Cg):
        for i in range(kh):
            for j in range(kw):
                r, s = p * sh - top + i, q * sw - left + j
                if not (0 <= r < H and 0 <= s < W):
                    continue
                a, b = (
                    int(x[n, grp * Cg + c, r, s]) - x_q.zero_point,
                    int(w[co, c, i, j]) - w_q.zero_point,
                )
                acc += a * b
                terms.append(f"({index_text('x', (n, grp * Cg + c, r, s))} - {x_q.zero_point}) * "
                             f"({index_text('w', (co, c, i, j))} - {w_q.zero_point}) = {a} * {b} "
                             f"= {a * b}")  # fmt: skip
    more, value = _requantize_terms(acc, m0, shift, y_q, clamp)
    more.insert(0, f"+ bias[{co}] = {int(bias[co])}: acc = {acc}")
    floats, _ = conv2d_forward(_real(x, x_q), _real(w, w_q), bias * x_q.scale * w_q.scale,
                               (sh, sw), padding, 1, groups)  # fmt: skip
    float_y = floats[n, co, p, q]
    e.elements.append(Element(
        "y", (n, co, p, q), "clamp(Z_y + M * acc)", terms, value, int(y[n, co, p, q]), steps=more,
        note=f"as reals: S_y (y - Z_y) = {num(y_q.scale * (value - y_q.zero_point))}; the float "
        f"conv of the reals gives {num(float_y)}"
        + (" (clamped by the activation)" if not clamp[0] < value < clamp[1] else
           f", within half a step S_y / 2 = {y_q.scale / 2:g}"),
    ))  # fmt: skip
    return e


@explainer("quantized_add")
def explain_quantized_add(
    input=(1, 1, 2, 3), activation=None, seed=0, at=None, *, arrays=None
) -> Explanation:
    """A residual addition of uint8 tensors with different scales (TFLite's AddElementwise).
    ``arrays`` ({"a", "b", "a_q", "b_q", "y_q"}): a real layer's codes and parameters."""
    if arrays is None:
        shape = tuple(int(s) for s in input)
        rng = np.random.default_rng(seed)
        a_q, b_q, y_q = (ref_q.QuantParams(0.03, 120), ref_q.QuantParams(0.05, 130),
                         ref_q.QuantParams(0.07, 125))  # fmt: skip
        a, b = _codes(rng, shape), _codes(rng, shape)
    else:
        a, b = np.asarray(arrays["a"]), np.asarray(arrays["b"])
        a_q, b_q, y_q, shape = arrays["a_q"], arrays["b_q"], arrays["y_q"], a.shape
    y = ref_q.quantized_add(a, b, a_q, b_q, y_q, activation)
    clamp = ref_q.activation_range(activation, y_q)
    ma, mb, my = ref_q.add_multipliers(a_q, b_q, y_q)
    e = Explanation("quantized_add", dict(input=shape, activation=activation, seed=seed),
                    inputs={"a": a, "b": b})  # fmt: skip
    la, ma0, ma_shift = _multiplier_lines("M_a = S_a / (2 max(S_a, S_b))", ma)
    lb, mb0, mb_shift = _multiplier_lines("M_b = S_b / (2 max(S_a, S_b))", mb)
    ly, my0, my_shift = _multiplier_lines("M_y = 2 max(S_a, S_b) / (2^20 S_y)", my)
    e.section(
        "the numbers stand for reals: r = S (q - Z)",
        f"a: S = {a_q.scale}, Z = {a_q.zero_point};  b: S = {b_q.scale}, Z = {b_q.zero_point};  "
        f"y: S = {y_q.scale}, Z = {y_q.zero_point}",
    )
    e.section(
        "forward: both operands to a common scale, add, then to the output's scale",
        "A = round(((a - Z_a) << 20) * M_a),  B = round(((b - Z_b) << 20) * M_b)",
        "y = clamp(Z_y + round((A + B) * M_y))   (three fixed-point multiplies, each rounding once)",
        *la,
        *lb,
        *ly,
    )
    e.sources = [Source.of(ref_q.quantized_add), Source.of(ref_q.add_multipliers)]
    index = output_index(at, shape, np.unravel_index(0, shape))
    A = int(
        fp.multiply_by_quantized_multiplier(
            np.int64((int(a[index]) - a_q.zero_point) << 20), ma0, ma_shift
        )
    )
    B = int(
        fp.multiply_by_quantized_multiplier(
            np.int64((int(b[index]) - b_q.zero_point) << 20), mb0, mb_shift
        )
    )
    more, value = _requantize_terms(A + B, my0, my_shift, y_q, clamp)
    real_sum = _real(a[index], a_q) + _real(b[index], b_q)
    e.elements.append(Element(
        "y", index, "clamp(Z_y + M_y (A + B))",
        [f"A = (({int(a[index])} - {a_q.zero_point}) << 20) * M_a = {A}",
         f"B = (({int(b[index])} - {b_q.zero_point}) << 20) * M_b = {B}",
         f"A + B = {A + B}"] + [t.replace("acc", "(A + B)") for t in more],
        value, int(y[index]),
        note=f"as reals: {num(_real(a[index], a_q))} + {num(_real(b[index], b_q))} = "
        f"{num(real_sum)}; S_y (y - Z_y) = {num(y_q.scale * (value - y_q.zero_point))}",
    ))  # fmt: skip
    return e


@explainer("quantized_avg_pool2d")
def explain_quantized_avg_pool2d(
    input=(1, 1, 5, 5), kernel=3, stride=2, padding=1, seed=0, at=None, *, arrays=None
) -> Explanation:
    """uint8 average pooling: input and output share a quantization, so no rescaling.
    ``arrays`` ({"x"}): a real layer's input codes."""
    shape = nchw(input if arrays is None else arrays["x"].shape)
    (kh, kw), (sh, sw) = pair(kernel, "kernel"), pair(stride, "stride")
    top, bottom, left, right = normalize_padding(padding)
    rng = np.random.default_rng(seed)
    x = _codes(rng, shape) if arrays is None else np.asarray(arrays["x"])
    y = ref_q.quantized_avg_pool2d(x, (kh, kw), (sh, sw), padding)
    e = Explanation("quantized_avg_pool2d", dict(input=shape, kernel=(kh, kw), stride=(sh, sw),
                    padding=(top, bottom, left, right), seed=seed), inputs={"x": x})  # fmt: skip
    e.section(
        "shapes",
        *window_count_lines("h", shape[2], kh, sh, (top, bottom), 1),
        *window_count_lines("w", shape[3], kw, sw, (left, right), 1),
    )
    e.section(
        "forward (integers)",
        "y = (sum of the window's real pixels + count / 2) // count: the mean rounded half up; "
        "padding does not count",
        "x and y share S and Z, and a mean of S (q - Z) is S (mean(q) - Z): no rescaling",
    )
    e.sources = [Source.of(ref_q.quantized_avg_pool2d)]
    n, c, p, q = output_index(at, y.shape, (0, shape[1] - 1, y.shape[2] // 2, y.shape[3] // 2))
    cells = [(p * sh - top + i, q * sw - left + j) for i in range(kh) for j in range(kw)]
    cells = [(r, s) for r, s in cells if 0 <= r < shape[2] and 0 <= s < shape[3]]
    total, count = sum(int(x[n, c, r, s]) for r, s in cells), len(cells)
    value = (total + count // 2) // count
    e.elements.append(Element(
        "y", (n, c, p, q), "(sum + count // 2) // count",
        [f"{index_text('x', (n, c, r, s))} = {int(x[n, c, r, s])}" for r, s in cells]
        + [f"({total} + {count} // 2) // {count} = {value}"],
        value, int(y[n, c, p, q]), note=f"the exact mean is {total / count:.4g}",
    ))  # fmt: skip
    return e


@explainer("quantized_softmax")
def explain_quantized_softmax(
    input=(1, 6), beta=1.0, seed=0, at=None, *, arrays=None
) -> Explanation:
    """uint8 softmax over the last axis, in fixed point (TFLite's reference Softmax).
    ``arrays`` ({"x", "x_q", "y_q"}): a real layer's codes and parameters."""
    shape = tuple(int(s) for s in (input if arrays is None else arrays["x"].shape))
    rng = np.random.default_rng(seed)
    x_q, y_q = ref_q.QuantParams(0.1, 128), ref_q.QuantParams(1 / 256, 0)
    x = _codes(rng, shape)
    if arrays is not None:
        x, x_q, y_q = np.asarray(arrays["x"]), arrays["x_q"], arrays["y_q"]
    y = ref_q.quantized_softmax(x, x_q, beta, y_q)
    m0, left_shift, diff_min = ref_q.softmax_input_scaling(beta, x_q)
    e = Explanation("quantized_softmax", dict(input=shape, beta=beta, seed=seed), inputs={"x": x})
    e.section(
        "forward (fixed point; the output has scale 1/256, zero point 0)",
        "d_i = q_i - max(q) <= 0, scaled by beta S_x to Q5.26 (5 integer bits): "
        f"M0 = {m0}, left shift {left_shift}; differences below {diff_min} give exactly 0",
        "exp(d_i) in Q0.31 (exp_on_negative_values), summed in Q12.19; 1 / sum by reciprocal;",
        "y_i = exp(d_i) / sum * 256, rounded, clamped to 255",
    )
    e.sources = [Source.of(ref_q.quantized_softmax)]
    index = output_index(
        at, shape, (*np.unravel_index(0, shape[:-1]), int(np.argmax(x.reshape(-1, shape[-1])[0])))
    )
    row = x[index[:-1]].astype(np.int64)
    diff = row - row.max()
    scaled = fp.saturating_rounding_doubling_high_mul(diff << left_shift, m0)
    exps = fp.exp_on_negative_values(scaled, ref_q.SOFTMAX_DIFF_INTEGER_BITS)
    used = diff >= diff_min
    total = int(np.where(used, fp.rescale(exps, 0, ref_q.SOFTMAX_SUM_INTEGER_BITS), 0).sum())
    inverse, bits = fp.reciprocal(np.int64(total), ref_q.SOFTMAX_SUM_INTEGER_BITS)
    k = index[-1]
    probability = int(fp.saturating_rounding_doubling_high_mul(inverse, exps[k]))
    value = int(
        np.clip(fp.rounding_divide_by_pot(np.int64(probability), int(bits) + 31 - 8), 0, 255)
    )
    value = value if used[k] else 0
    reals = beta * x_q.scale * diff
    exact = math.exp(reals[k]) / np.exp(reals).sum()
    e.elements.append(Element(
        "y", index, "exp(d_k) / sum_j exp(d_j) in fixed point, times 256",
        [f"row {_listed(row)}, max {row.max()}, d = {_listed(diff)}",
         f"d_k = {diff[k]} -> Q5.26 {int(scaled[k])} -> exp in Q0.31: {int(exps[k])} "
         f"({int(exps[k]) / 2**31:.6g})",
         f"sum of exps in Q12.19: {total} ({total / 2**19:.6g}); 1/sum: {int(inverse)} with "
         f"{int(bits)} bits over one",
         f"exp / sum in Q0.31: {probability}; / 2^({int(bits)} + 23), rounded: {value}"],
        value, int(y[index]),
        note=f"the real softmax is {exact:.6g}, times 256 = {exact * 256:.4g}",
    ))  # fmt: skip
    return e
