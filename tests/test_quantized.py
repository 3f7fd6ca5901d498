"""Integer-only inference (reference/fixed_point.py, reference/quantized.py, models/quantized.py).

* the fixed-point helpers against their definitions, written with exact rationals, at the int32
  edges (hypothesis);
* Google's four uint8 MobileNets: every output byte equal to TensorFlow Lite's on the five photos
  (``expected_tflite.npz``), and every intermediate tensor equal to ai-edge-litert's reference
  kernels (``BUILTIN_REF``) on random images, so a mismatch names the first layer that differs;
* a clear error for an op or a quantization scheme the model does not support.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scratchnets import data as sn_data
from scratchnets.formats import read_tflite
from scratchnets.kernels.cpu import quantized as cpu_quantized
from scratchnets.models.quantized import quantized_model_from_tflite
from scratchnets.nn import Conv2d
from scratchnets.reference import conv2d_forward
from scratchnets.reference import fixed_point as fp
from scratchnets.reference import quantized as qops
from scratchnets.reference.quantized import QuantParams
from tests.test_tflite_reader import WEIGHTS, needs_files

INT32 = st.one_of(
    st.integers(fp.INT32_MIN, fp.INT32_MAX),
    st.sampled_from([fp.INT32_MIN, fp.INT32_MIN + 1, -1, 0, 1, fp.INT32_MAX - 1, fp.INT32_MAX]),
)
QUANT_MODELS = (
    "mobilenet_v1_0.25_128_quant",
    "mobilenet_v1_0.5_160_quant",
    "mobilenet_v1_0.75_192_quant",
    "mobilenet_v2_1.0_224_quant",
)
PHOTOS = ("bird.bmp", "cat.bmp", "dragonfly.bmp", "grace_hopper.bmp", "hot_dog.jpg")


def _half_up(value: Fraction) -> int:
    return math.floor(value + Fraction(1, 2))


def _half_away_from_zero(value: Fraction) -> int:
    return int(math.copysign(_half_up(abs(value)), value)) if value else 0


# --------------------------------------------------------------------------- fixed-point helpers


@given(INT32, INT32)
def test_saturating_rounding_doubling_high_mul_is_the_rounded_doubled_high_half(a, b):
    expected = _half_up(Fraction(a * b, 2**31))  # 2ab / 2^32, rounded half up
    if a == b == fp.INT32_MIN:
        expected = fp.INT32_MAX  # 2^31 does not fit: saturates
    assert int(fp.saturating_rounding_doubling_high_mul(a, b)) == expected
    assert fp.INT32_MIN <= expected <= fp.INT32_MAX


@given(INT32, st.integers(0, 31))
def test_rounding_divide_by_pot_rounds_half_away_from_zero(x, exponent):
    assert int(fp.rounding_divide_by_pot(x, exponent)) == _half_away_from_zero(
        Fraction(x, 2**exponent)
    )


@given(st.floats(2.0**-40, 2.0**20, allow_nan=False))
def test_quantize_multiplier_is_normalised_and_within_half_a_step(real):
    m0, shift = fp.quantize_multiplier(real)
    if real < 2.0**-32:  # too small for a 31-bit significand at any allowed shift
        assert (m0, shift) == (0, 0)
        return
    assert 2**30 <= m0 < 2**31
    assert abs(Fraction(m0) * Fraction(2) ** (shift - 31) - Fraction(real)) <= Fraction(2) ** (
        shift - 32
    )


@given(st.integers(-(2**24), 2**24), st.floats(2.0**-20, 0.999, allow_nan=False))
def test_multiply_by_quantized_multiplier_is_within_one_step_of_the_real_product(x, real):
    m0, shift = fp.quantize_multiplier(real)
    result = int(fp.multiply_by_quantized_multiplier(x, m0, shift))
    assert abs(result - Fraction(x) * Fraction(real)) <= 1


@given(INT32, st.integers(-31, 31))
def test_saturating_rounding_multiply_by_pot(x, exponent):
    exact = Fraction(x) * Fraction(2) ** exponent
    expected = _half_away_from_zero(exact)
    expected = min(max(expected, fp.INT32_MIN), fp.INT32_MAX)
    assert int(fp.saturating_rounding_multiply_by_pot(x, exponent)) == expected


# The Numba kernels fold the fixed-point multiply (rounding high multiply, then rounding right
# shift) into one product and one shift (``fixed_point_scale``); the integers must be the same.


def _numba_multiply(x, real) -> int:
    scale = cpu_quantized.fixed_point_scale(real)
    return int(cpu_quantized.multiply_by_quantized_multiplier(np.int64(x), scale))


@given(INT32, st.floats(2.0**-40, 15.0, allow_nan=False))
def test_numba_multiply_by_quantized_multiplier_is_the_references(x, real):
    m0, shift = fp.quantize_multiplier(real)
    x >>= max(shift, 0)  # x << left shift stays an int32, as TFLite's accumulators do
    assert _numba_multiply(x, real) == int(fp.multiply_by_quantized_multiplier(x, m0, shift))


@pytest.mark.parametrize("real", [2.0**-k for k in range(33)] + [3 * 2.0**-9, 0.75, 2.0, 4.0, 0.0])
def test_numba_multiply_rounds_every_tie_as_the_reference(real):
    """Multipliers of few bits put a rounding tie of the high multiply or of the right shift
    every few integers: every x of a range against the reference."""
    m0, shift = fp.quantize_multiplier(real)
    xs = np.arange(-5000, 5000, dtype=np.int64) * (1 + (real < 2.0**-20) * 2**12)
    expected = fp.multiply_by_quantized_multiplier(xs, m0, shift)
    got = [_numba_multiply(x, real) for x in xs]
    np.testing.assert_array_equal(got, expected)


@given(st.integers(fp.INT32_MIN, 0))
def test_exp_on_negative_values_approximates_exp(raw):
    value = raw / 2**26  # Q5.26, the softmax's input
    got = int(fp.exp_on_negative_values(raw, 5)) / 2**31
    # gemmlowp's 4th-order polynomial: 2.29e-7 worst over 6 million raws (most near 0)
    assert abs(got - math.exp(value)) < 2.5e-7


@given(st.integers(0, fp.INT32_MAX))
def test_one_over_one_plus_x(raw):
    got = int(fp.one_over_one_plus_x_for_x_in_0_1(raw)) / 2**31
    # three Newton steps: 3.17e-9 worst over 2 million raws (about 7 units of 2^-31)
    assert abs(got - 1 / (1 + raw / 2**31)) < 4e-9


@given(st.integers(1, 2**32 - 1))
def test_count_leading_zeros(x):
    assert int(fp.count_leading_zeros(x)) == 32 - x.bit_length()


@given(st.integers(1, fp.INT32_MAX), st.integers(0, 12))
def test_reciprocal(x, integer_bits):
    scale, bits_over_unit = fp.reciprocal(x, integer_bits)
    value = x / 2 ** (31 - integer_bits)
    got = int(scale) * 2.0 ** -(31 + int(bits_over_unit))
    # one_over_one_plus_x_for_x_in_0_1's 3.2e-9 on results in (1/2, 1]: 6.4e-9 relative
    assert got == pytest.approx(1 / value, rel=6.5e-9)


# --------------------------------------------------------------------------------- quantized ops


def test_activation_range_is_the_codes_of_0_and_6():
    out = QuantParams(6 / 255, 0)
    assert qops.activation_range("RELU6", out) == (0, 255)
    assert qops.activation_range("RELU6", QuantParams(0.05, 10)) == (10, 130)
    assert qops.activation_range(None, QuantParams(0.05, 10)) == (0, 255)
    with pytest.raises(ValueError, match="TANH"):
        qops.activation_range("TANH", out)


def test_quantized_conv2d_approximates_the_float_conv():
    """Dequantized inputs through the float conv, quantized again: within one output step."""
    rng = np.random.default_rng(0)
    x_q, w_q, y_q = QuantParams(0.02, 128), QuantParams(0.01, 120), QuantParams(0.05, 100)
    x = rng.integers(0, 256, (2, 4, 7, 6), dtype=np.uint8)
    w = rng.integers(0, 256, (6, 2, 3, 3), dtype=np.uint8)
    bias = rng.integers(-2000, 2000, 6).astype(np.int32)
    y = qops.quantized_conv2d(x, x_q, w, w_q, bias, y_q, stride=2, padding=(0, 1, 1, 1), groups=2)
    real_x = x_q.scale * (x.astype(np.float64) - x_q.zero_point)
    real_w = w_q.scale * (w.astype(np.float64) - w_q.zero_point)
    real_y, _ = conv2d_forward(real_x, real_w, bias * x_q.scale * w_q.scale, 2, (0, 1, 1, 1), 1, 2)
    expected = np.clip(np.round(real_y / y_q.scale) + y_q.zero_point, 0, 255)
    assert y.dtype == np.uint8 and y.shape == expected.shape
    assert np.abs(y - expected).max() <= 1


def test_quantized_ops_refuse_other_dtypes():
    q = QuantParams(0.1, 0)
    with pytest.raises(TypeError, match="uint8"):
        qops.quantized_add(np.zeros(3, np.int8), np.zeros(3, np.uint8), q, q, q)
    with pytest.raises(ValueError, match="1/256"):
        qops.quantized_softmax(np.zeros((1, 3), np.uint8), q, 1.0, QuantParams(0.1, 0))


# ------------------------------------------------------------- Numba kernels against the reference

SCALES = st.floats(1e-3, 0.5)
CODES = st.integers(0, 255)


@st.composite
def conv_cases(draw):
    """A uint8 conv: dense, grouped or depthwise, any kernel, stride, asymmetric padding."""
    n, groups = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    c_in = groups * (1 if depthwise else draw(st.integers(1, 3)))
    c_out = c_in if depthwise else groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    height = draw(st.integers(max(1, kh - pads[0] - pads[1]), 9))
    width = draw(st.integers(max(1, kw - pads[2] - pads[3]), 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x_q, w_q = QuantParams(draw(SCALES), draw(CODES)), QuantParams(draw(SCALES), draw(CODES))
    # an output scale that puts the accumulators' typical spread (sqrt(taps) * 74^2 for uniform
    # codes) at about 40 codes, times 0.1 .. 3: most outputs neither 0 nor 255
    taps = c_in // groups * kh * kw
    y_scale = x_q.scale * w_q.scale * 74**2 * taps**0.5 / 40 * draw(st.floats(0.1, 3.0))
    return dict(
        x=rng.integers(0, 256, (n, c_in, height, width), dtype=np.uint8),
        x_q=x_q,
        w=rng.integers(0, 256, (c_out, c_in // groups, kh, kw), dtype=np.uint8),
        w_q=w_q,
        bias=rng.integers(-(2**12), 2**12, c_out).astype(np.int32),
        y_q=QuantParams(y_scale, draw(CODES)),
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        padding=pads,
        groups=groups,
        activation=draw(st.sampled_from([None, "RELU", "RELU6"])),
    )


@given(conv_cases())
def test_cpu_quantized_conv2d_equals_the_reference(case):
    """Every byte, for dense, grouped and depthwise convolutions (exact float convs of the centred codes)."""
    ours = cpu_quantized.quantized_conv2d(**case)
    expected = qops.quantized_conv2d(**case)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, expected)


@given(st.integers(0, 2**32 - 1), CODES, st.integers(0, 3 * cpu_quantized.CENTRE_CHUNK + 5),
       st.sampled_from([np.float32, np.float64]))  # fmt: skip
def test_centring_is_the_exact_difference_of_codes(seed, zero_point, size, dtype):
    """``_centre``'s parallel chunks (sizes across their boundaries) write every element once:
    x - Zx, as NumPy computes it in integers, in the GEMM's dtype."""
    x = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    out = np.full(size, np.nan, dtype)
    cpu_quantized._centre(x, np.int32(zero_point), out)
    np.testing.assert_array_equal(out, (x.astype(np.int64) - zero_point).astype(dtype))


@pytest.mark.parametrize("stride", [1, 2])
def test_a_pointwise_conv_requantized_in_its_gemm_tiles_equals_the_reference(stride):
    """A 1x1 conv large enough to be cut into many GEMM tiles, each requantized from its own
    buffer (``_requantized_gemm``): every byte as the reference's, with ReLU6's clamp."""
    rng = np.random.default_rng(stride)
    x = rng.integers(0, 256, (2, 64, 30, 34), dtype=np.uint8)
    w = rng.integers(0, 256, (96, 64, 1, 1), dtype=np.uint8)
    bias = rng.integers(-5000, 5000, 96)
    case = dict(x=x, x_q=QuantParams(0.02, 118), w=w, w_q=QuantParams(0.004, 131), bias=bias,
                y_q=QuantParams(0.05, 7), stride=stride, activation="RELU6")  # fmt: skip
    pixels = len(range(0, 30, stride)) * len(range(0, 34, stride))
    assert len(cpu_quantized.tile_plan(2, 96, pixels, 64, 2)) > 4
    expected = qops.quantized_conv2d(**case)
    assert len(np.unique(expected)) > 50  # codes across the range, both clamps reached
    np.testing.assert_array_equal(cpu_quantized.quantized_conv2d(**case), expected)


@given(st.integers(0, 2**32 - 1), CODES, CODES, st.integers(1, 4), st.integers(1, 40))
def test_the_accumulator_bound_holds_and_is_reached(seed, x_zero, w_zero, out_channels, taps):
    """``accumulator_bound`` is sound: the inputs that maximise each channel's sum (every code at
    an end of [0, 255], on its weight's side) stay within it; and tight: with weights all on one
    side of Zw, the input at the end farthest from Zx reaches it."""
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 256, (out_channels, taps, 1, 1), dtype=np.uint8)
    x_q, w_q = QuantParams(0.1, x_zero), QuantParams(0.1, w_zero)
    centred = w[:, :, 0, 0].astype(np.int64) - w_zero
    bound = cpu_quantized.accumulator_bound(w, w_q, x_q)
    largest_sum = (
        np.maximum(  # per channel: x = 255 where the weight is positive, else 0; or mirrored
            (centred * (np.where(centred > 0, 255, 0) - x_zero)).sum(axis=1),
            -(centred * (np.where(centred > 0, 0, 255) - x_zero)).sum(axis=1),
        )
    )
    assert largest_sum.max() <= bound
    one_sided = np.maximum(w, w_zero).astype(np.uint8)
    far = 255 if 255 - x_zero >= x_zero else 0  # the end of [0, 255] farthest from Zx
    reached = np.abs((one_sided[:, :, 0, 0].astype(np.int64) - w_zero) * (far - x_zero)).sum(1)
    assert reached.max() == cpu_quantized.accumulator_bound(one_sided, w_q, x_q)


def test_a_conv_past_float32s_exact_range_runs_in_float64_and_stays_exact():
    """1024 taps of codes 128..255 (Zw = 0) on a saturated input sum past 2^24: a float32 GEMM
    would round them (shown), so the kernel takes float64 and equals the reference."""
    rng = np.random.default_rng(0)
    x = np.full((1, 1024, 2, 2), 255, np.uint8)
    w = rng.integers(128, 256, (16, 1024, 1, 1), dtype=np.uint8)
    x_q, w_q, y_q = QuantParams(0.02, 0), QuantParams(0.01, 0), QuantParams(20000.0, 3)
    assert cpu_quantized.accumulator_bound(w, w_q, x_q) > cpu_quantized.FLOAT32_EXACT_LIMIT
    assert cpu_quantized.centred_weights(w, w_q, x_q).dtype == np.float64
    exact = w[:, :, 0, 0].astype(np.int64) @ np.full(1024, 255, np.int64)
    in_float32 = w[:, :, 0, 0].astype(np.float32) @ np.full(1024, 255, np.float32)
    assert (in_float32.astype(np.int64) != exact).any()  # why the bound matters
    ours = cpu_quantized.quantized_conv2d(x, x_q, w, w_q, None, y_q)
    reference = qops.quantized_conv2d(x, x_q, w, w_q, None, y_q)
    assert 0 < reference.min() and reference.max() < 255  # the requantized sums are not clamped
    np.testing.assert_array_equal(ours, reference)


@needs_files
@pytest.mark.parametrize("name", QUANT_MODELS)
def test_googles_mobilenets_run_every_gemm_in_float32(name):
    """Their accumulator bounds leave float32 exact everywhere: the fast GEMM, prepared once."""
    model = quantized_model_from_tflite(WEIGHTS / f"{name}.tflite")
    _, height, width, channels = model.graph.tensors[model.input_index].shape
    model(np.zeros((1, channels, height, width), np.uint8))
    convs = [i for i, layer in enumerate(model.layers) if layer.op == "quantized_conv2d"]
    assert sorted(model._centred_weights) == convs
    assert {centred.dtype for _, centred in model._centred_weights.values()} == {
        np.dtype(np.float32)
    }


@given(
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    SCALES, CODES, SCALES, CODES, SCALES, CODES,
    st.sampled_from([None, "RELU6"]),
)  # fmt: skip
def test_cpu_quantized_add_equals_the_reference(seed, shape, sa, za, sb, zb, sy, zy, activation):
    rng = np.random.default_rng(seed)
    a, b = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2))
    args = (a, b, QuantParams(sa, za), QuantParams(sb, zb), QuantParams(sy, zy), activation)
    np.testing.assert_array_equal(cpu_quantized.quantized_add(*args), qops.quantized_add(*args))


@given(
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
    st.integers(0, 2), st.integers(0, 2),
    st.sampled_from([(0, 255), (3, 200)]),
)  # fmt: skip
def test_cpu_quantized_avg_pool_equals_the_reference(seed, shape, kh, kw, sh, sw, ph, pw, clamp):
    x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    kh, kw = min(kh, shape[2] + 2 * ph), min(kw, shape[3] + 2 * pw)
    ph, pw = min(ph, kh - 1), min(pw, kw - 1)  # every window holds a real pixel
    args = (x, (kh, kw), (sh, sw), (ph, pw), clamp)
    np.testing.assert_array_equal(
        cpu_quantized.quantized_avg_pool2d(*args), qops.quantized_avg_pool2d(*args)
    )


@given(
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(1, 3), st.integers(1, 1100)),
    st.floats(1e-3, 2.0),
    st.sampled_from([1.0, 0.5, 3.0]),
)  # fmt: skip
def test_cpu_quantized_softmax_equals_the_reference(seed, shape, scale, beta):
    """Scales from 1e-3 (every difference used, exps near 1) to 2 (most differences under
    diff_min: exactly 0), one to a thousand classes."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    x[:, : shape[1] // 2] = rng.integers(200, 256, (shape[0], shape[1] // 2))  # close rivals
    args = (x, QuantParams(scale, 7), beta, QuantParams(1 / 256, 0))
    np.testing.assert_array_equal(
        cpu_quantized.quantized_softmax(*args), qops.quantized_softmax(*args)
    )


# --------------------------------------------------------------------------- Google's MobileNets


def _photo_input(expected, model: str, photo: str) -> np.ndarray:
    nhwc = expected[f"{model}/{photo}/input"]
    return nhwc.reshape(-1, *nhwc.shape[-3:]).transpose(0, 3, 1, 2)  # NCHW uint8


@needs_files
@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", QUANT_MODELS)
def test_uint8_mobilenets_equal_tflite_bit_for_bit(name, backend):
    expected = np.load(WEIGHTS / "expected_tflite.npz")
    model = quantized_model_from_tflite(WEIGHTS / f"{name}.tflite").to(backend)
    batch = np.concatenate([_photo_input(expected, name, photo) for photo in PHOTOS])
    probabilities = model(batch)  # the five photos as one batch
    assert probabilities.dtype == np.uint8 and probabilities.shape == (5, 1001)
    for row, photo in zip(probabilities, PHOTOS, strict=True):
        np.testing.assert_array_equal(row, expected[f"{name}/{photo}/output"].reshape(-1))


@needs_files
@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name", QUANT_MODELS)
def test_every_intermediate_tensor_equals_the_tflite_reference_kernels(name, backend):
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    path = str(WEIGHTS / f"{name}.tflite")
    interpreter = litert.Interpreter(
        model_path=path,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF,
        experimental_preserve_all_tensors=True,
    )
    interpreter.allocate_tensors()
    model = quantized_model_from_tflite(path).to(backend)
    shape = interpreter.get_input_details()[0]["shape"]
    rng = np.random.default_rng(sum(map(ord, name)))
    images = (
        rng.integers(0, 256, shape, dtype=np.uint8),  # noise: every code, large sums
        np.full(shape, 255, dtype=np.uint8),  # saturated
        rng.integers(100, 156, shape, dtype=np.uint8),  # low contrast, near the zero point
    )
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
        interpreter.invoke()
        ours = model(image.transpose(0, 3, 1, 2), return_all=True)
        for layer in model.layers:
            theirs = interpreter.get_tensor(layer.output)
            mine = ours[layer.output]
            mine = mine.transpose(0, 2, 3, 1) if mine.ndim == 4 else mine
            assert np.array_equal(mine, theirs), (
                f"{name}: {layer.name} ({layer.op}) is the first tensor that differs, by up to "
                f"{np.abs(mine.astype(int) - theirs.astype(int)).max()} steps"
            )


@needs_files
def test_the_uint8_plan_is_made_per_input_shape_and_again_for_a_replaced_weight():
    """The cpu forward's plan (``quantized_conv2d_prepared`` per conv) is made on the first input
    of a shape and replayed after: every byte as the reference backend's, for two shapes in
    turn, and after a conv's weights are replaced by another array."""
    path = WEIGHTS / "mobilenet_v1_0.25_128_quant.tflite"
    model, reference = (quantized_model_from_tflite(path).to(b) for b in ("cpu", "reference"))
    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (n, 3, 128, 128), dtype=np.uint8) for n in (1, 2, 1, 2)]
    for image in images:
        np.testing.assert_array_equal(model(image), reference(image))
    assert len(model.__dict__["_plans"]) == 2
    before = model(images[0])
    assert model.layers[0].op == "quantized_conv2d"
    replaced = 255 - model.layers[0].arguments["w"]
    for layers in (model.layers, reference.layers):  # the same new array in both models
        layers[0].arguments["w"] = replaced
    after = model(images[0])
    np.testing.assert_array_equal(after, reference(images[0]))
    assert not np.array_equal(after, before)


@needs_files
def test_unsupported_graphs_are_named():
    path = WEIGHTS / "mobilenet_v1_0.25_128_quant.tflite"
    graph = read_tflite(path)
    mul = dataclasses.replace(graph.operators[5], op="MUL")
    with pytest.raises(ValueError, match="MUL .*operator 5.*supported: CONV_2D"):
        operators = [*graph.operators[:5], mul, *graph.operators[6:]]
        quantized_model_from_tflite(path, dataclasses.replace(graph, operators=operators))
    weight = graph.operators[0].inputs[1]
    tensors = list(graph.tensors)
    tensors[weight] = dataclasses.replace(tensors[weight], scale=(0.1, 0.2), zero_point=(0, 0))
    with pytest.raises(ValueError, match="2 per-axis scales.*per-tensor"):
        quantized_model_from_tflite(path, dataclasses.replace(graph, tensors=tensors))
    tensors = list(graph.tensors)
    tensors[weight] = dataclasses.replace(tensors[weight], dtype=np.int8)
    with pytest.raises(ValueError, match="int8: only uint8 graphs"):
        quantized_model_from_tflite(path, dataclasses.replace(graph, tensors=tensors))
    relu1 = dataclasses.replace(
        graph.operators[0], options=graph.operators[0].options | {"activation": "RELU_N1_TO_1"}
    )
    with pytest.raises(ValueError, match="RELU_N1_TO_1"):
        quantized_model_from_tflite(path, dataclasses.replace(graph, operators=[relu1]))


@needs_files
def test_uint8_model_refuses_float_input_and_training():
    model = quantized_model_from_tflite(WEIGHTS / "mobilenet_v1_0.25_128_quant.tflite")
    with pytest.raises(ValueError, match=r"uint8 pixels of shape \(N, 3, H, W\)"):
        model(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(RuntimeError, match="dequantize"):
        model.train()


# --------------------------------------------------------------------------------- dequantize


@needs_files
@pytest.mark.parametrize("name", QUANT_MODELS)
def test_dequantized_layers_reproduce_the_integer_layers(name):
    """Each float conv of ``dequantize()``, fed the reals of its integer twin's input, gives its
    twin's output within one step once quantized (the rounding of M is the only difference):
    weights, biases, padding and their order are mapped right."""
    expected = np.load(WEIGHTS / "expected_tflite.npz")
    model = quantized_model_from_tflite(WEIGHTS / f"{name}.tflite")
    float_model = model.dequantize()
    assert float_model.pretrained_cfg["architecture"] in ("tf_mobilenet_v1", "tf_mobilenet_v2")
    tensors = model(_photo_input(expected, name, "cat.bmp"), return_all=True)
    convs = [layer for layer in model.layers if layer.op == "quantized_conv2d"]
    float_convs = [m for m in float_model.modules() if isinstance(m, Conv2d)]
    assert len(convs) == len(float_convs)
    for layer, conv in zip(convs, float_convs, strict=True):
        a = layer.arguments
        x_q, y_q = a["x_q"], a["y_q"]
        real_x = x_q.scale * (tensors[layer.inputs[0]].astype(np.float64) - x_q.zero_point)
        real_y = conv.to(dtype=np.float64)(real_x)
        low, high = qops.activation_range(a["activation"], y_q)
        requantized = np.clip(np.round(real_y / y_q.scale) + y_q.zero_point, low, high)
        steps = np.abs(requantized - tensors[layer.output])
        assert steps.max() <= 1, (layer.name, steps.max())


@needs_files
def test_dequantized_mobilenet_v2_agrees_with_the_integer_model():
    """Real ImageNet weights as a float model: on every photo, through its own preprocessing, the
    float MobileNetV2 predicts the integer model's class with probabilities within 0.05 of
    TFLite's (measured: 0.04 worst, on grace_hopper)."""
    expected = np.load(WEIGHTS / "expected_tflite.npz")
    name = "mobilenet_v2_1.0_224_quant"
    float_model = quantized_model_from_tflite(WEIGHTS / f"{name}.tflite").dequantize()
    pipeline = sn_data.pretrained_transforms(float_model.pretrained_cfg)
    for photo in PHOTOS:
        x = pipeline(np.asarray(sn_data.open_rgb(WEIGHTS / "images" / photo)))[None]
        logits = float_model(x)[0].astype(np.float64)
        probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        theirs = expected[f"{name}/{photo}/output"].ravel() / 256
        assert probabilities.argmax() == theirs.argmax(), photo
        assert np.abs(probabilities - theirs).max() < 0.05, photo
