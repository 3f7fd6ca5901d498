"""Nearest and bilinear upsampling against float64 torch on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets.kernels.cuda as CK
from scratchnets import reference as R
from scratchnets import reference as ref
from scratchnets import to_numpy
from scratchnets.kernels import cpu
from scratchnets.reference.upsample import (
    nearest_source_index,
    upsample_bilinear2d_backward,
    upsample_bilinear2d_forward,
    upsample_nearest2d_backward,
    upsample_nearest2d_forward,
)
from scratchnets.reference.windows import pair
from tests.cuda import examples
from tests.helpers import (
    LAYOUTS,
    assert_close_f32,
    assert_close_f64,
    numeric_grad,
    record_error,
    with_layout,
)
from tests.ops.common import (
    DTYPES,
    FLOATS,
    amax,
    amax_product,
    check_cpu,
    check_cuda,
    layouts,
    rand,
    seeds,
    torch_op,
)


def torch_upsample(mode, x, dy, size):
    """The family's torch oracle (float64), used by every backend's tests: torch's y and dx of
    ``F.interpolate(x, size)`` in ``mode`` ("nearest", or "bilinear" with align_corners=False)."""
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return torch_op(F.interpolate, x, dy, size=pair(size, "size"), mode=mode, **kwargs)


# ===============================================================================================
# the reference backend
#
# reference nearest / bilinear resizing against F.interpolate(size=...) (float64 oracle, random dy).
#
# Nearest is a selection: forward bit-exact in float32 and float64 for up- and down-sampling, with
# torch's source-index rule. Bilinear uses align_corners=False (half-pixel centres).
# ===============================================================================================

OPS = {
    "nearest": (upsample_nearest2d_forward, upsample_nearest2d_backward),
    "bilinear": (upsample_bilinear2d_forward, upsample_bilinear2d_backward),
}


@st.composite
def resize_cases(draw, max_in=9, max_out=16):
    """(shape, size as int or pair, layout, seed, huge values?): up-, down- and same-size."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    shape += (draw(st.integers(1, max_in)), draw(st.integers(1, max_in)))
    size = draw(
        st.one_of(
            st.integers(1, max_out), st.tuples(st.integers(1, max_out), st.integers(1, max_out))
        )
    )
    return (
        shape,
        size,
        draw(st.sampled_from(LAYOUTS)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.booleans()),
    )


def run(mode, case, dtype):
    shape, size, layout, seed, huge = case
    forward, backward = OPS[mode]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * (1e6 if huge else 1.0)
    x = with_layout(x.astype(dtype), layout)
    dy = rng.standard_normal((*shape[:2], *pair(size, "size"))).astype(dtype)
    y, cache = forward(x, size)
    dx = backward(dy, cache)
    y_t, dx_t = torch_upsample(mode, x, dy, size)
    return x, dy, y, dx, y_t, dx_t


def fan_in(in_size: int, out_size: int, taps: int) -> int:
    """Most outputs that read one input pixel along an axis (terms summed into one dx element)."""
    return taps * math.ceil(out_size / in_size) + taps


@pytest.mark.parametrize("mode", list(OPS))
@given(case=resize_cases())
def test_float64_matches_torch(mode, case):
    _, _, y, dx, y_t, dx_t = run(mode, case, np.float64)
    assert y.dtype == dx.dtype == np.float64
    if mode == "nearest":
        np.testing.assert_array_equal(y, y_t)
    else:
        record_error(f"reference/upsample_{mode}2d y", y, y_t)
        assert_close_f64(y, y_t, what="y")
    record_error(f"reference/upsample_{mode}2d dx", dx, dx_t)
    assert_close_f64(dx, dx_t, what="dx")


@pytest.mark.parametrize("mode", list(OPS))
@given(case=resize_cases())
def test_float32_against_float64_oracle(mode, case):
    x, dy, y, dx, y_t, dx_t = run(mode, case, np.float32)
    assert y.dtype == dx.dtype == np.float32
    (H, W), (H_out, W_out) = case[0][2:], pair(case[1], "size")
    taps = 1 if mode == "nearest" else 2
    if mode == "nearest":
        np.testing.assert_array_equal(y, y_t.astype(np.float32))  # a selection: bit-exact
    else:
        assert_close_f32(y, y_t, taps * taps, float(np.abs(x).max()), "y")
    terms = fan_in(H, H_out, taps) * fan_in(W, W_out, taps)
    assert_close_f32(dx, dx_t, terms, float(np.abs(dy).max()), "dx")


@pytest.mark.parametrize("mode", list(OPS))
@pytest.mark.parametrize(
    "hw, size", [((3, 3), 7), ((4, 4), 7), ((7, 7), 3), ((7, 7), (14, 14)), ((5, 3), (2, 8))]
)
def test_model_sizes(mode, hw, size):
    """GhostNetV2 resizes pooled maps back up (3x3 -> 7x7, 4x4 -> 7x7); downsampling too."""
    _, _, y, dx, y_t, dx_t = run(mode, ((2, 3, *hw), size, "C", 7, False), np.float64)
    assert y.shape == y_t.shape
    assert_close_f64(y, y_t, what="y")
    record_error(f"reference/upsample_{mode}2d dx", dx, dx_t)
    assert_close_f64(dx, dx_t, what="dx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_index_rule_is_torchs_for_all_small_sizes(dtype):
    """Every (in, out) up to 48 on both axes, including cases where torch's float32 rounding
    differs from exact integer division (in=14, out=46, dst=23: exact 7, torch 6)."""
    assert nearest_source_index(14, 46)[23] == 6 and (23 * 14) // 46 == 7
    for in_size in range(1, 49):
        x = torch.arange(in_size, dtype=dtype)
        for out_size in range(1, 49):
            expected = nearest_source_index(in_size, out_size)
            rows = F.interpolate(x.view(1, 1, in_size, 1), size=(out_size, 1), mode="nearest")
            cols = F.interpolate(x.view(1, 1, 1, in_size), size=(1, out_size), mode="nearest")
            np.testing.assert_array_equal(rows.flatten().long().numpy(), expected)
            np.testing.assert_array_equal(cols.flatten().long().numpy(), expected)


@settings(max_examples=10)
@pytest.mark.parametrize("mode", list(OPS))
@given(case=resize_cases(max_in=5, max_out=8))
def test_backward_matches_finite_differences(mode, case):
    shape, size, _, seed, _ = case
    forward, backward = OPS[mode]
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal(shape), rng.standard_normal((*shape[:2], *pair(size, "size")))
    dx = backward(dy, forward(x, size)[1])
    numeric = numeric_grad(lambda v: np.sum(forward(v, size)[0] * dy), x)
    assert_close_f64(dx, numeric, rtol=1e-7, what=mode)


@pytest.mark.parametrize("forward", [upsample_nearest2d_forward, upsample_bilinear2d_forward])
@pytest.mark.parametrize(
    "x, size, error, message",
    [
        (np.zeros((1, 1, 3, 3)), 0, ValueError, "size"),
        (np.zeros((1, 1, 3, 3)), (4, 5, 6), TypeError, "size"),
        (np.zeros((1, 3, 3)), 4, ValueError, r"\(1, 3, 3\)"),
        (np.zeros((1, 1, 3, 3), np.int32), 4, TypeError, "float32 or float64"),
    ],
)
def test_invalid_arguments_raise_clear_errors(forward, x, size, error, message):
    with pytest.raises(error, match=message):
        forward(x, size)


def test_backward_rejects_dy_of_the_wrong_shape():
    _, cache = upsample_bilinear2d_forward(np.zeros((1, 2, 3, 3)), (5, 6))
    with pytest.raises(
        ValueError, match=r"dy has shape \(1, 2, 5, 5\), y had shape \(1, 2, 5, 6\)"
    ):
        upsample_bilinear2d_backward(np.zeros((1, 2, 5, 5)), cache)


# ===============================================================================================
# the cpu backend
#
# The "cpu" backend (Numba kernels) against torch float64 and the reference backend.
#
# Every op except conv2d (tests/test_cpu_conv.py), forward and backward, and the eval fast path's
# BN folding.
# Each comparison (``check``) asserts, for one result of one op:
#
# * float64: agreement with torch float64 with a random dy to ~1e-10 (recorded under
#   "cpu/<op> <grad>"), and with the reference backend to the same tolerance;
# * float32: agreement with the float64 oracle evaluated on the same float32 inputs. Most kernels
#   accumulate in float64 and round once at the end, so the bound is one rounding (``terms=1``);
#   the scatter-add backwards (pooling, upsample) add into the float32 output, so there ``terms``
#   is the number of contributions per element;
# * selection ops (relu, relu6, hard-sigmoid forward, max-pool forward, nearest forward, concat,
#   slice, dropout): bit-exact against torch and the reference in both dtypes.
#
# Inputs are drawn by hypothesis: odd sizes, boundary values (0, 6, +-3, +-1e6), ties, and
# C-ordered, Fortran-ordered or strided (non-contiguous) layouts.
# ===============================================================================================


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    size=st.one_of(st.integers(1, 16), st.tuples(st.integers(1, 16), st.integers(1, 16))),
    huge=st.booleans(),
    layout=layouts,
    seed=seeds,
)
def test_cpu_upsample(mode, dtype, shape, size, huge, layout, seed):
    """Any input and output sizes, up and down; nearest forward bit-exact (torch's index rule)."""
    rng = np.random.default_rng(seed)
    x = with_layout((rng.standard_normal(shape) * (1e6 if huge else 1.0)).astype(dtype), layout)
    out_hw = pair(size, "size")
    dy = with_layout(rng.standard_normal((*shape[:2], *out_hw)).astype(dtype), layout)
    op = f"upsample_{mode}2d"
    y, cache = getattr(cpu, f"{op}_forward")(x, size)
    dx = getattr(cpu, f"{op}_backward")(dy, cache)
    y_ref, cache_ref = getattr(ref, f"{op}_forward")(x, size)
    dx_ref = getattr(ref, f"{op}_backward")(dy, cache_ref)
    y_t, dx_t = torch_upsample(mode, x, dy, size)
    taps = 1 if mode == "nearest" else 2
    # contributions per dx element: outputs per input pixel along each axis, times the taps
    fan_in = math.prod(
        taps * (math.ceil(o / i) + 1) for i, o in zip(shape[2:], out_hw, strict=True)
    )
    check_cpu(op, "y", y, y_ref, y_t, magnitude=amax(x), exact=mode == "nearest")
    check_cpu(op, "dx", dx, dx_ref, dx_t, fan_in, amax(dy))


# ===============================================================================================
# the cuda backend
#
# Every op of the cuda backend, forward and backward, against float64 torch and the reference.
#
# float64 inputs: agreement with torch to ~1e-10 (``record_error`` keys "cuda/<op> <grad>") and
# with the reference backend; float32 inputs: the float64 oracle within ``assert_close_f32``
# (tolerance scaled by the size of each sum); selection ops bit-exact. Upstream gradients are
# random. Every kernel variant (``_gemm.GEMM``, ``conv.POINTWISE_CONV``, ``conv.CONV_DW``,
# ``_reduce.CHANNEL_REDUCTION``) is run, and reductions are checked to be bit-reproducible.
# Shapes are tiny: under the simulator every GPU thread is a Python thread.
# ===============================================================================================


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@settings(max_examples=examples(4, 60))
@given(
    seed=st.integers(0, 2**16),
    dtype=FLOATS,
    hw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
)
def test_cuda_upsample_matches_torch(mode, seed, dtype, hw, size):
    rng = np.random.default_rng(seed)
    x = rand(rng, (1, 2, *hw), dtype)
    op = f"upsample_{mode}2d"
    y, cache = getattr(CK, f"{op}_forward")(x, size)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(x, size)
    dy = rand(rng, y_ref.shape, dtype)
    dx = getattr(CK, f"{op}_backward")(dy, cache)
    dx_ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    yt, dxt = torch_upsample(mode, x, dy, size)
    if mode == "nearest":
        np.testing.assert_array_equal(to_numpy(y), y_ref)
    # the most outputs one input feeds: ceil(out / in) + 1 per axis
    fan = int(np.prod([-(-o // i) + 1 for o, i in zip(size, hw, strict=True)]))
    check_cuda(op, "y", y, yt, y_ref, 4, amax_product(x))
    check_cuda(op, "dx", dx, dxt, dx_ref, fan, amax_product(dy))


# ===============================================================================================
# Sampling: ONNX's Resize placements, on every backend, against ONNX Runtime
#
# The forward of each (coordinates, rounding, scales) is ONNX Runtime's output for a one-node
# Resize graph (bit-exact for nearest: a selection); the backward is the forward's adjoint
# (<y, dy> = <x, dx>, float64) and equal across the backends; align_corners bilinear also against
# torch's F.interpolate(align_corners=True) in float64, gradients included.
# ===============================================================================================

SAMPLING_BACKENDS = {"reference": R, "cpu": cpu}


def onnx_runtime_resize(x, mode, sampling, size):
    """ONNX Runtime's Resize (opset 19) of x with the sampling's attributes: sizes, or the
    sampling's scales."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    if sampling.scales is None:
        inputs, initializer = ["x", "", "", "sizes"], numpy_helper.from_array(
            np.array([*x.shape[:2], *size], np.int64), "sizes")  # fmt: skip
    else:
        inputs, initializer = ["x", "", "scales"], numpy_helper.from_array(
            np.array([1, 1, *sampling.scales], np.float32), "scales")  # fmt: skip
    node = helper.make_node("Resize", inputs, ["y"], mode=mode,
                            coordinate_transformation_mode=sampling.coordinates,
                            nearest_mode=sampling.rounding)  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [initializer])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32)})[0]


@st.composite
def samplings(draw):
    """(sampling, in (H, W), out (H, W)): sizes given, or scales whose float32 output size is
    at least 1."""
    from scratchnets.reference.upsample import COORDINATES, Sampling

    hw = draw(st.tuples(st.integers(1, 7), st.integers(1, 7)), label="in")
    coordinates = draw(st.sampled_from(COORDINATES), label="coordinates")
    rounding = draw(st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]),
                    label="rounding")  # fmt: skip
    if draw(st.booleans(), label="scales given"):
        scales = draw(
            st.tuples(*[st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 1 / 3])] * 2)
        )
        sampling = Sampling(coordinates, rounding, tuple(float(np.float32(s)) for s in scales))
        out = tuple(sampling.output_size(n, axis) for axis, n in enumerate(hw))
        from hypothesis import assume

        assume(min(out) >= 1)
    else:
        sampling = Sampling(coordinates, rounding)
        out = draw(st.tuples(st.integers(1, 12), st.integers(1, 12)), label="out")
    return sampling, hw, out


@pytest.mark.parametrize("backend", list(SAMPLING_BACKENDS))
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@settings(max_examples=60, deadline=None)
@given(case=samplings(), seed=seeds)
def test_sampling_matches_onnx_runtime_and_its_backward_is_the_adjoint(backend, mode, case, seed):
    sampling, hw, out = case
    if mode == "bilinear" and sampling.coordinates == "tf_half_pixel_for_nn":
        return  # ONNX Runtime refuses linear with it (a nearest-only mode)
    ops, op = SAMPLING_BACKENDS[backend], f"upsample_{mode}2d"
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, *hw)).astype(np.float32)
    y, _ = getattr(ops, f"{op}_forward")(x, out, sampling)
    expected = onnx_runtime_resize(x, "nearest" if mode == "nearest" else "linear", sampling, out)
    assert y.shape == expected.shape
    if mode == "nearest":
        np.testing.assert_array_equal(y, expected)
    else:
        assert_close_f32(y, expected, 4, amax(x), what=f"{backend} {op} vs ONNX Runtime")
    x64 = x.astype(np.float64)
    y64, cache = getattr(ops, f"{op}_forward")(x64, out, sampling)
    dy = rng.standard_normal(y64.shape)
    dx = getattr(ops, f"{op}_backward")(dy, cache)
    np.testing.assert_allclose(np.vdot(y64, dy), np.vdot(x64, dx), rtol=1e-12, atol=1e-12)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(x64, out, sampling)
    np.testing.assert_allclose(dx, getattr(R, f"{op}_backward")(dy, cache_ref), rtol=1e-13,
                               atol=1e-13)  # fmt: skip


@pytest.mark.parametrize("backend", list(SAMPLING_BACKENDS))
@given(hw=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       size=st.tuples(st.integers(1, 11), st.integers(1, 11)), seed=seeds)  # fmt: skip
def test_align_corners_bilinear_is_torchs_in_float64(backend, hw, size, seed):
    from scratchnets.reference.upsample import Sampling

    ops = SAMPLING_BACKENDS[backend]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2, *hw))
    y, cache = ops.upsample_bilinear2d_forward(x, size, Sampling("align_corners"))
    dy = rng.standard_normal(y.shape)
    dx = ops.upsample_bilinear2d_backward(dy, cache)
    yt, dxt = torch_op(lambda v: F.interpolate(v, size=size, mode="bilinear", align_corners=True),
                       x, dy)  # fmt: skip
    record_error(f"{backend}/upsample_bilinear2d align_corners y", y, yt)
    assert_close_f64(y, yt, what="y")
    assert_close_f64(dx, dxt, what="dx")


def test_a_sampling_of_the_wrong_type_is_refused():
    for ops in SAMPLING_BACKENDS.values():
        with pytest.raises(TypeError, match="sampling must be a reference.upsample.Sampling"):
            ops.upsample_nearest2d_forward(np.zeros((1, 1, 2, 2)), 3, "align_corners")


@pytest.mark.cuda
@settings(max_examples=examples(3, 30), deadline=None)
@given(case=samplings(), mode=st.sampled_from(["nearest", "bilinear"]), seed=st.integers(0, 99))
def test_cuda_sampling_equals_the_reference(case, mode, seed):
    sampling, hw, out = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, *hw))
    op = f"upsample_{mode}2d"
    y, cache = getattr(CK, f"{op}_forward")(x, out, sampling)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(x, out, sampling)
    dy = rng.standard_normal(y_ref.shape)
    check_cuda(op, "y", y, y_ref, y_ref, 4, amax_product(x))
    dx_ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    check_cuda(op, "dx", getattr(CK, f"{op}_backward")(dy, cache), dx_ref, dx_ref, 16,
               amax_product(dy))  # fmt: skip
