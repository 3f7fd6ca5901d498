"""Every op of the cuda backend, forward and backward, against float64 torch and the reference.

float64 inputs: agreement with torch to ~1e-10 (``record_error`` keys "cuda/<op> <grad>") and
with the reference backend; float32 inputs: the float64 oracle within ``assert_close_f32``
(tolerance scaled by the size of each sum); selection ops bit-exact. Upstream gradients are
random. Every kernel variant (``_gemm.GEMM``, ``conv.POINTWISE_CONV``, ``conv.CONV_DW``,
``_reduce.CHANNEL_REDUCTION``) is run, and reductions are checked to be bit-reproducible.
Shapes are tiny: under the simulator every GPU thread is a Python thread.
"""

from __future__ import annotations

import re
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import cuda

import scratchnets.kernels.cuda as K
from scratchnets import reference as R
from scratchnets import to_numpy
from scratchnets.arrays import is_device_array
from scratchnets.kernels.cuda import _gemm, _launch, _reduce, conv
from tests.cuda import SIMULATED, examples
from tests.helpers import (
    assert_close_f32,
    assert_close_f64,
    record_error,
    t,
    torch_grads,
    with_layout,
)

pytestmark = pytest.mark.cuda

FLOATS = st.sampled_from([np.float32, np.float64])


def _amax(*arrays) -> float:
    """Product of the largest magnitudes of ``arrays`` (bounds the size of one product term)."""
    return float(np.prod([np.max(np.abs(to_numpy(a)), initial=0.0) for a in arrays]))


def check(op: str, name: str, actual, expected, ref=None, reduction: int = 1, magnitude=1.0):
    """One output of the cuda op vs the float64 torch value (and the reference's, if given).

    float64 results: ~1e-10 relative, recorded as "cuda/<op> <name>"; float32 results: the f32
    error bound for sums of ``reduction`` terms of size ``magnitude``.
    """
    assert is_device_array(actual), f"{op} {name}: expected a device array, got {type(actual)}"
    if np.dtype(actual.dtype) == np.float64:
        record_error(f"cuda/{op} {name}", actual, expected)
        assert_close_f64(actual, expected, what=f"{op} {name} vs torch")
        if ref is not None:
            assert_close_f64(actual, to_numpy(ref), what=f"{op} {name} vs reference")
    else:
        assert_close_f32(actual, expected, reduction, magnitude, what=f"{op} {name} f32")


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------------------------


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 2))
    cg, mg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 1), (2, 2)]))
    h, w = draw(st.integers(2, 5)), draw(st.integers(2, 5))
    stride = draw(st.sampled_from([1, 2, (1, 2)]))
    dilation = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1, (1, 0), (0, 1, 1, 0)]))
    pads = R.windows.normalize_padding(padding)
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    assume(h + pads[0] + pads[1] >= span_h and w + pads[2] + pads[3] >= span_w)
    return dict(
        n=draw(st.integers(1, 2)),
        c_in=cg * groups,
        c_out=mg * groups,
        groups=groups,
        kernel=(kh, kw),
        hw=(h, w),
        stride=stride,
        dilation=dilation,
        padding=padding,
        bias=draw(st.booleans()),
        dtype=draw(FLOATS),
        seed=draw(st.integers(0, 2**16)),
    )


def run_conv(case):
    """cuda, reference and torch results of one conv forward + backward; asserts them all."""
    rng = np.random.default_rng(case["seed"])
    dtype, groups = case["dtype"], case["groups"]
    x = rand(rng, (case["n"], case["c_in"], *case["hw"]), dtype)
    w = rand(rng, (case["c_out"], case["c_in"] // groups, *case["kernel"]), dtype)
    b = rand(rng, (case["c_out"],), dtype) if case["bias"] else None
    args = (case["stride"], case["padding"], case["dilation"], groups)
    y, cache = K.conv2d_forward(x, w, b, *args)
    y_ref, cache_ref = R.conv2d_forward(x, w, b, *args)
    dy = rand(rng, y_ref.shape, dtype)
    dx, dw, db = K.conv2d_backward(dy, cache)
    dx_ref, dw_ref, db_ref = R.conv2d_backward(dy, cache_ref)

    top, bottom, left, right = R.windows.normalize_padding(case["padding"])
    xt, wt = t(x, True), t(w, True)
    bt = None if b is None else t(b, True)
    yt = TF.conv2d(
        TF.pad(xt, (left, right, top, bottom)), wt, bt, case["stride"], 0, case["dilation"], groups
    )
    grads = torch_grads(yt, [xt, wt] + ([bt] if b is not None else []), dy)
    kh, kw = case["kernel"]
    taps = kh * kw
    m = y_ref.shape[0] * y_ref.shape[2] * y_ref.shape[3]
    check("conv2d", "y", y, yt.detach().numpy(), y_ref, w.shape[1] * taps + 1, _amax(x, w) + 1)
    check("conv2d", "dx", dx, grads[0], dx_ref, w.shape[0] * taps, _amax(dy, w))
    check("conv2d", "dw", dw, grads[1], dw_ref, m, _amax(dy, x))
    if b is None:
        assert db is None
    else:
        check("conv2d", "db", db, grads[2], db_ref, m, _amax(dy))
    return dx, dw


@settings(max_examples=examples(6, 100))
@given(case=conv_cases())
def test_conv2d_matches_torch(case):
    run_conv(case)


@pytest.mark.parametrize("pointwise", conv.POINTWISE_VARIANTS)
@pytest.mark.parametrize("gemm", _gemm.VARIANTS)
def test_pointwise_conv_variants(monkeypatch, pointwise, gemm):
    """1x1 convs through each path; K = 5 input channels spans two simulator tiles."""
    monkeypatch.setattr(conv, "POINTWISE_CONV", pointwise)
    monkeypatch.setattr(_gemm, "GEMM", gemm)
    base = dict(groups=1, kernel=(1, 1), stride=1, dilation=1, padding=0, bias=True, seed=3)
    run_conv(dict(base, n=2, c_in=5, c_out=3, hw=(3, 2), dtype=np.float64))
    run_conv(dict(base, n=1, c_in=6, c_out=5, hw=(2, 3), dtype=np.float32))


@pytest.mark.parametrize("variant", conv.DW_VARIANTS)
def test_conv_weight_gradient_variants(monkeypatch, variant):
    """Depthwise and grouped dense convs with each dw kernel; the sums span several threads."""
    monkeypatch.setattr(conv, "CONV_DW", variant)
    base = dict(n=2, hw=(4, 5), stride=1, dilation=1, padding=1, bias=False, seed=5)
    run_conv(dict(base, c_in=3, c_out=3, groups=3, kernel=(3, 3), dtype=np.float64))
    run_conv(dict(base, c_in=2, c_out=4, groups=2, kernel=(1, 3), dtype=np.float32))


def test_conv_backward_is_deterministic():
    case = dict(n=2, c_in=2, c_out=2, groups=2, kernel=(3, 3), hw=(4, 4), stride=1, dilation=1)
    case.update(padding=1, bias=True, dtype=np.float32, seed=11)
    first, second = run_conv(case), run_conv(case)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_conv_accepts_device_arrays_and_layouts():
    """Device inputs give the same result as host ones; non-contiguous host inputs work."""
    rng = np.random.default_rng(0)
    x, w = rand(rng, (1, 2, 4, 4), np.float64), rand(rng, (2, 1, 3, 3), np.float64)
    expected, _ = R.conv2d_forward(x, w, None, 1, 1, 1, 2)
    y_dev, _ = K.conv2d_forward(cuda.to_device(x), cuda.to_device(w), None, 1, 1, 1, 2)
    y_strided, _ = K.conv2d_forward(with_layout(x, "strided"), w, None, 1, 1, 1, 2)
    assert_close_f64(y_dev, expected)
    assert_close_f64(y_strided, expected)


def test_conv_errors_name_the_shapes():
    x, w = np.zeros((1, 3, 4, 4)), np.zeros((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\)"):
        K.conv2d_forward(cuda.to_device(x), w)
    with pytest.raises(TypeError, match="int64"):
        K.conv2d_forward(np.zeros((1, 2, 4, 4), np.int64), w)
    _, cache = K.conv2d_forward(np.zeros((1, 2, 4, 4)), w)
    with pytest.raises(ValueError, match=r"dy has shape \(1, 2, 3, 3\)"):
        K.conv2d_backward(np.zeros((1, 2, 3, 3)), cache)


# ---------------------------------------------------------------------------------------------
# batch norm
# ---------------------------------------------------------------------------------------------


def run_batch_norm(seed, shape, dtype, training, affine, device_buffers=True):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rand(rng, shape, dtype) * 2 + 3
    weight = rand(rng, (c,), dtype) if affine else None
    bias = rand(rng, (c,), dtype) if affine else None
    running = [rand(rng, (c,), dtype), np.abs(rand(rng, (c,), dtype)) + 0.5]
    ref_running = [r.copy() for r in running]
    torch_running = [t(r) for r in running]
    buffers = [cuda.to_device(r) for r in running] if device_buffers else running
    y, cache = K.batch_norm2d_forward(x, weight, bias, *buffers, training, 0.1, 1e-5)
    y_ref, cache_ref = R.batch_norm2d_forward(x, weight, bias, *ref_running, training, 0.1, 1e-5)
    dy = rand(rng, shape, dtype)
    dx, dweight, dbias = K.batch_norm2d_backward(dy, cache)
    ref = R.batch_norm2d_backward(dy, cache_ref)

    xt = t(x, True)
    params = [t(weight, True), t(bias, True)] if affine else [None, None]
    yt = TF.batch_norm(xt, *torch_running, *params, training, 0.1, 1e-5)
    grads = torch_grads(yt, [xt] + (params if affine else []), dy)
    m = shape[0] * shape[2] * shape[3]
    xhat = cache_ref[0]
    scale = _amax(weight) if affine else 1.0
    inv_std = float(np.max(to_numpy(cache_ref[2])))
    check("batch_norm2d", "y", y, yt.detach().numpy(), y_ref, m, scale * _amax(x) * inv_std + 1)
    check("batch_norm2d", "dx", dx, grads[0], ref[0], m, scale * inv_std * _amax(dy, xhat) * 2)
    if affine:
        check("batch_norm2d", "dweight", dweight, grads[1], ref[1], m, _amax(dy, xhat))
        check("batch_norm2d", "dbias", dbias, grads[2], ref[2], m, _amax(dy))
    else:
        assert dweight is None and dbias is None
    for name, mine, theirs in zip(
        ("running_mean", "running_var"), buffers, torch_running, strict=True
    ):
        actual = to_numpy(mine)
        assert_close_f32(actual, theirs.numpy(), m, _amax(x) ** 2, what=name)
        if dtype == np.float64:
            record_error(f"cuda/batch_norm2d {name}", actual, theirs.numpy())
    return dx, dweight


@settings(max_examples=examples(5, 60))
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    dtype=FLOATS,
    training=st.booleans(),
    affine=st.booleans(),
)
def test_batch_norm_matches_torch(seed, n, c, hw, dtype, training, affine):
    assume(not training or n * hw[0] * hw[1] > 1)
    run_batch_norm(seed, (n, c, *hw), dtype, training, affine)


@pytest.mark.parametrize("variant", _reduce.VARIANTS)
def test_batch_norm_reduction_variants(monkeypatch, variant):
    """Both reductions; 2*3*5 = 30 values per channel span several strides of a simulator block.
    Host running buffers are updated in place too."""
    monkeypatch.setattr(_reduce, "CHANNEL_REDUCTION", variant)
    run_batch_norm(1, (2, 2, 3, 5), np.float64, True, True, device_buffers=False)
    run_batch_norm(2, (2, 3, 3, 5), np.float32, True, True)


def test_batch_norm_backward_is_deterministic():
    first = run_batch_norm(7, (2, 2, 3, 4), np.float32, True, True)
    second = run_batch_norm(7, (2, 2, 3, 4), np.float32, True, True)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------

ACTIVATIONS = {
    "relu": TF.relu,
    "relu6": TF.relu6,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": TF.hardsigmoid,
    "hard_swish": TF.hardswish,
    "silu": TF.silu,
}
SELECTIONS = ("relu", "relu6")  # forward is a pure selection: bit-exact


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
@settings(max_examples=examples(3, 50))
@given(seed=st.integers(0, 2**16), dtype=FLOATS, shape=st.sampled_from([(7,), (2, 3, 2, 2)]))
def test_activation_matches_torch(op, seed, dtype, shape):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x.flat[:4] = [0.0, 6.0, -3.0, 3.0]  # the kinks: gradient 0 there, as torch
    y, cache = getattr(K, f"{op}_forward")(x)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(x)
    dy = rand(rng, shape, dtype)
    dx = getattr(K, f"{op}_backward")(dy, cache)
    xt = t(x, True)
    yt = ACTIVATIONS[op](xt)
    (dxt,) = torch_grads(yt, [xt], dy)
    if op == "hard_sigmoid":
        # torch multiplies by the float32 constant 1/6 even in float64 (3e-8 off): the oracle
        # is the exact rule dy / 6 inside (-3, 3), with torch's zero set (the kinks included)
        np.testing.assert_array_equal(to_numpy(dx) == 0, dxt == 0)
        dxt = np.where((x > -3) & (x < 3), dy.astype(np.float64) / 6, 0.0)
    if op in SELECTIONS:
        np.testing.assert_array_equal(to_numpy(y), y_ref)
    check(op, "y", y, yt.detach().numpy(), y_ref)
    check(op, "dx", dx, dxt, getattr(R, f"{op}_backward")(dy, cache_ref), 1, 1.5 * _amax(dy))


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["max", "avg", "avg_exclude_pad", "avg_divisor_override"])
@settings(max_examples=examples(4, 80))
@given(
    seed=st.integers(0, 2**16),
    dtype=FLOATS,
    hw=st.tuples(st.integers(2, 5), st.integers(2, 5)),
    kernel=st.sampled_from([(2, 2), (3, 3), (2, 3)]),
    stride=st.sampled_from([None, 1, 2]),
    pad=st.booleans(),
    ties=st.booleans(),
    ceil_mode=st.booleans(),
    dilation=st.sampled_from([1, (2, 1)]),
)
def test_pooling_matches_torch(kind, seed, dtype, hw, kernel, stride, pad, ties, ceil_mode,
                               dilation):  # fmt: skip
    padding = (kernel[0] // 2, kernel[1] // 2) if pad else 0
    pads = padding if pad else (0, 0)
    assume(all(s + 2 * p >= k for s, p, k in zip(hw, pads, kernel, strict=True)))
    rng = np.random.default_rng(seed)
    x = rand(rng, (2, 2, *hw), dtype)
    if ties:  # few distinct values: many ties, the gradient must go to the first maximum
        x = np.round(x).astype(dtype)
    op = "max_pool2d" if kind == "max" else "avg_pool2d"
    extra = {"ceil_mode": ceil_mode}
    if kind == "max":
        extra["dilation"] = dilation
    else:
        extra["count_include_pad"] = kind == "avg"
    if kind == "avg_divisor_override":
        extra["divisor_override"] = 3
    try:
        y_ref, cache_ref = getattr(R, f"{op}_forward")(x, kernel, stride, padding, **extra)
    except ValueError as error:  # a dilated kernel that does not fit: refused the same way
        with pytest.raises(ValueError, match=re.escape(str(error))):
            getattr(K, f"{op}_forward")(x, kernel, stride, padding, **extra)
        return
    y, cache = getattr(K, f"{op}_forward")(x, kernel, stride, padding, **extra)
    dy = rand(rng, y_ref.shape, dtype)
    dx = getattr(K, f"{op}_backward")(dy, cache)
    dx_ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    xt = t(x, True)
    torch_op = getattr(TF, op)
    yt = torch_op(xt, kernel, stride, padding, **extra)
    if kind == "max":
        np.testing.assert_array_equal(
            to_numpy(K.max_pool2d_indices(cache)), R.max_pool2d_indices(cache_ref)
        )
    (dxt,) = torch_grads(yt, [xt], dy)
    overlap = int(np.prod(kernel))
    if kind == "max":
        np.testing.assert_array_equal(to_numpy(y), y_ref)
    check(op, "y", y, yt.detach().numpy(), y_ref, overlap, _amax(x))
    check(op, "dx", dx, dxt, dx_ref, overlap, _amax(dy))


@settings(max_examples=examples(3, 50))
@given(seed=st.integers(0, 2**16), dtype=FLOATS, hw=st.tuples(st.integers(1, 5), st.integers(1, 5)))
def test_global_avg_pool_matches_torch(seed, dtype, hw):
    rng = np.random.default_rng(seed)
    x = rand(rng, (2, 3, *hw), dtype)
    y, cache = K.global_avg_pool2d_forward(x)
    y_ref, cache_ref = R.global_avg_pool2d_forward(x)
    dy = rand(rng, (2, 3, 1, 1), dtype)
    dx = K.global_avg_pool2d_backward(dy, cache)
    xt = t(x, True)
    yt = TF.adaptive_avg_pool2d(xt, 1)
    (dxt,) = torch_grads(yt, [xt], dy)
    r = hw[0] * hw[1]
    check("global_avg_pool2d", "y", y, yt.detach().numpy(), y_ref, r, _amax(x))
    dx_ref = R.global_avg_pool2d_backward(dy, cache_ref)
    check("global_avg_pool2d", "dx", dx, dxt, dx_ref, 1, _amax(dy))


# ---------------------------------------------------------------------------------------------
# linear, dropout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", _gemm.VARIANTS)
@settings(max_examples=examples(3, 50))
@given(
    seed=st.integers(0, 2**16),
    dtype=FLOATS,
    n=st.integers(1, 5),
    n_in=st.integers(1, 6),
    n_out=st.integers(1, 5),
    bias=st.booleans(),
)
def test_linear_matches_torch(variant, seed, dtype, n, n_in, n_out, bias):
    with mock.patch.object(_gemm, "GEMM", variant):
        run_linear(seed, dtype, n, n_in, n_out, bias)


def run_linear(seed, dtype, n, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    x, w = rand(rng, (n, n_in), dtype), rand(rng, (n_out, n_in), dtype)
    b = rand(rng, (n_out,), dtype) if bias else None
    y, cache = K.linear_forward(x, w, b)
    y_ref, cache_ref = R.linear_forward(x, w, b)
    dy = rand(rng, (n, n_out), dtype)
    dx, dw, db = K.linear_backward(dy, cache)
    ref = R.linear_backward(dy, cache_ref)
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if bias else None
    yt = TF.linear(xt, wt, bt)
    grads = torch_grads(yt, [xt, wt] + ([bt] if bias else []), dy)
    check("linear", "y", y, yt.detach().numpy(), y_ref, n_in + 1, _amax(x, w) + 1)
    check("linear", "dx", dx, grads[0], ref[0], n_out, _amax(dy, w))
    check("linear", "dw", dw, grads[1], ref[1], n, _amax(dy, x))
    if bias:
        check("linear", "db", db, grads[2], ref[2], n, _amax(dy))
    else:
        assert db is None


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout_matches_reference_mask(p, training):
    rng = np.random.default_rng(0)
    x, dy = rand(rng, (2, 3, 4), np.float32), rand(rng, (2, 3, 4), np.float32)
    y, cache = K.dropout_forward(x, p, training, seed=42)
    y_ref, cache_ref = R.dropout_forward(x, p, training, seed=42)
    np.testing.assert_array_equal(to_numpy(y), y_ref)  # the same mask and multiplier
    np.testing.assert_array_equal(
        to_numpy(K.dropout_backward(dy, cache)), R.dropout_backward(dy, cache_ref)
    )
    if training and 0 < p < 1:  # y = x * mask / (1 - p), mask = the reference's host draw
        mask = R.dropout.dropout_mask(x.shape, p, 42)
        np.testing.assert_allclose(to_numpy(y), np.where(mask, x / np.float32(1 - p), 0), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# upsampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@settings(max_examples=examples(4, 60))
@given(
    seed=st.integers(0, 2**16),
    dtype=FLOATS,
    hw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    size=st.tuples(st.integers(1, 7), st.integers(1, 7)),
)
def test_upsample_matches_torch(mode, seed, dtype, hw, size):
    rng = np.random.default_rng(seed)
    x = rand(rng, (1, 2, *hw), dtype)
    op = f"upsample_{mode}2d"
    y, cache = getattr(K, f"{op}_forward")(x, size)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(x, size)
    dy = rand(rng, y_ref.shape, dtype)
    dx = getattr(K, f"{op}_backward")(dy, cache)
    dx_ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    xt = t(x, True)
    extra = {} if mode == "nearest" else {"align_corners": False}
    yt = TF.interpolate(xt, size=size, mode=mode, **extra)
    (dxt,) = torch_grads(yt, [xt], dy)
    if mode == "nearest":
        np.testing.assert_array_equal(to_numpy(y), y_ref)
    # the most outputs one input feeds: ceil(out / in) + 1 per axis
    fan = int(np.prod([-(-o // i) + 1 for o, i in zip(size, hw, strict=True)]))
    check(op, "y", y, yt.detach().numpy(), y_ref, 4, _amax(x))
    check(op, "dx", dx, dxt, dx_ref, fan, _amax(dy))


@pytest.mark.parametrize("kind", ["avg", "max"])
@settings(max_examples=examples(3, 40))
@given(
    seed=st.integers(0, 2**16),
    dtype=FLOATS,
    hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    output_size=st.sampled_from([1, 3, (2, None), (4, 2)]),
)
def test_adaptive_pooling_matches_torch(kind, seed, dtype, hw, output_size):
    rng = np.random.default_rng(seed)
    x = np.round(rand(rng, (1, 2, *hw), dtype) * 2)  # ties: the first maximum wins
    op = f"adaptive_{kind}_pool2d"
    y, cache = getattr(K, f"{op}_forward")(x, output_size)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(x, output_size)
    dy = rand(rng, y_ref.shape, dtype)
    dx = getattr(K, f"{op}_backward")(dy, cache)
    dx_ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    if kind == "max":
        np.testing.assert_array_equal(to_numpy(cache.argmax), cache_ref.argmax)
    xt = t(x, True)
    yt = getattr(TF, op)(xt, output_size)
    (dxt,) = torch_grads(yt, [xt], dy)
    window = hw[0] * hw[1]  # a window is at most the whole plane
    check(op, "y", y, yt.detach().numpy(), y_ref, window, _amax(x))
    check(op, "dx", dx, dxt, dx_ref, 4 * window, _amax(dy))


# ---------------------------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@settings(max_examples=examples(3, 40))
@given(seed=st.integers(0, 2**16), dtype=FLOATS, hw=st.tuples(st.integers(2, 4), st.integers(2, 4)))
def test_pad2d_matches_torch(mode, seed, dtype, hw):
    rng = np.random.default_rng(seed)
    pads = tuple(int(p) for p in rng.integers(0, min(hw), size=4))  # < size: valid in every mode
    x = rand(rng, (1, 2, *hw), dtype)
    y, cache = K.pad2d_forward(x, pads, mode, 0.5)
    y_ref, cache_ref = R.pad2d_forward(x, pads, mode, 0.5)
    dy = rand(rng, y_ref.shape, dtype)
    dx = K.pad2d_backward(dy, cache)
    np.testing.assert_array_equal(to_numpy(y), y_ref)  # a selection
    np.testing.assert_array_equal(to_numpy(dx), R.pad2d_backward(dy, cache_ref))  # same sums
    xt = t(x, True)
    top, bottom, left, right = pads
    extra = {"value": 0.5} if mode == "constant" else {}
    yt = TF.pad(xt, (left, right, top, bottom), mode=mode, **extra)
    (dxt,) = torch_grads(yt, [xt], dy)
    check("pad2d", "dx", dx, dxt, None, 4 * max(pads) + 4, _amax(dy))


# ---------------------------------------------------------------------------------------------
# add, mul, concat, slice
# ---------------------------------------------------------------------------------------------

BROADCAST_PAIRS = [
    ((2, 3, 2, 2), (2, 3, 2, 2)),  # residual
    ((2, 3, 1, 1), (2, 3, 3, 2)),  # squeeze-excitation gate
    ((2, 3, 2, 2), (3, 1, 1)),  # fewer dims
    ((4,), (3, 1)),  # both broadcast
    ((), (2, 2)),  # a 0-d array
]


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("shapes", BROADCAST_PAIRS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_mul_broadcasting_matches_torch(op, shapes, dtype):
    rng = np.random.default_rng(1)
    a, b = rand(rng, shapes[0], dtype), rand(rng, shapes[1], dtype)
    y, cache = getattr(K, f"{op}_forward")(a, b)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(a, b)
    dy = rand(rng, y_ref.shape, dtype)
    da, db = getattr(K, f"{op}_backward")(dy, cache)
    ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    at, bt = t(a, True), t(b, True)
    yt = getattr(torch, op)(at, bt)
    grads = torch_grads(yt, [at, bt], dy)
    r = int(np.prod(y_ref.shape))
    check(op, "y", y, yt.detach().numpy(), y_ref, 1, _amax(a, b) + _amax(a) + _amax(b))
    check(op, "da", da, grads[0], ref[0], r, _amax(dy, b) + _amax(dy))
    check(op, "db", db, grads[1], ref[1], r, _amax(dy, a) + _amax(dy))


def test_add_rejects_bad_shapes_with_names():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"):
        K.add_forward(np.zeros((2, 3)), cuda.to_device(np.zeros(4)))
    with pytest.raises(ValueError, match="up to 4 dimensions"):
        K.mul_forward(np.zeros((1, 1, 1, 1, 2)), np.zeros(2))


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_concat_and_slice_match_torch(axis):
    rng = np.random.default_rng(2)
    sizes = (1, 3, 2)  # the inputs' extents along the concat axis
    xs = [
        rand(rng, (2, 2, 3)[: axis % 3] + (n,) + (2, 2, 3)[axis % 3 + 1 :], np.float64)
        for n in sizes
    ]
    y, cache = K.concat_forward([cuda.to_device(xs[0]), *xs[1:]], axis)
    ts = [t(x, True) for x in xs]
    yt = torch.cat(ts, dim=axis)
    dy = rand(rng, tuple(yt.shape), np.float64)
    grads = torch_grads(yt, ts, dy)
    check("concat", "y", y, yt.detach().numpy())
    for i, (dx, g) in enumerate(zip(K.concat_backward(dy, cache), grads, strict=True)):
        check("concat", f"dx{i}", dx, g)

    x = xs[-1]
    length = x.shape[axis]
    s, cache = K.slice_forward(x, 1, length, axis)
    xt = t(x, True)
    st_ = torch.narrow(xt, axis, 1, length - 1)
    ds = rand(rng, tuple(st_.shape), np.float64)
    (dxt,) = torch_grads(st_, [xt], ds)
    check("slice", "y", s, st_.detach().numpy())
    check("slice", "dx", K.slice_backward(ds, cache), dxt)


# ---------------------------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------------------------


@settings(max_examples=examples(4, 60))
@given(
    seed=st.integers(0, 2**16),
    dtype=FLOATS,
    n=st.integers(1, 4),
    k=st.integers(2, 5),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    dloss=st.floats(-2, 2),
    device_target=st.booleans(),
)
def test_cross_entropy_matches_torch(seed, dtype, n, k, smoothing, dloss, device_target):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, k)) * 5).astype(dtype)
    target = rng.integers(0, k, n)
    loss, cache = K.cross_entropy_forward(
        z, cuda.to_device(target) if device_target else target, smoothing
    )
    loss_ref, cache_ref = R.cross_entropy_forward(z, target, smoothing)
    assert tuple(loss.shape) == () and to_numpy(loss).dtype == dtype
    dz = K.cross_entropy_backward(dloss, cache)
    zt = t(z, True)
    lt = TF.cross_entropy(zt, torch.tensor(target), label_smoothing=smoothing)
    (dzt,) = torch.autograd.grad(lt * dloss, [zt])
    check("cross_entropy", "loss", loss, lt.detach().numpy(), loss_ref, n * k, _amax(z) + 1)
    ref = R.cross_entropy_backward(dloss, cache_ref)
    check("cross_entropy", "dlogits", dz, dzt.numpy(), ref, k, abs(dloss) + 1e-30)


# ---------------------------------------------------------------------------------------------
# launch helpers and realistic sizes (real GPU only)
# ---------------------------------------------------------------------------------------------


def test_device_array_normalises_dtype_and_layout():
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    as64 = _launch.device_array(cuda.to_device(host), "a", np.float64)  # cast on the device
    assert as64.dtype == np.float64
    np.testing.assert_array_equal(to_numpy(as64), host)
    view = cuda.to_device(host)[:, 1:3]  # a non-contiguous device view
    np.testing.assert_array_equal(to_numpy(_launch.device_array(view, "a")), host[:, 1:3])
    with pytest.raises(TypeError, match="float32 or float64"):
        _launch.device_array(np.arange(3), "a")


@pytest.mark.skipif(SIMULATED, reason="realistic sizes take hours under the simulator")
@pytest.mark.parametrize(
    "case",
    [
        dict(n=8, c_in=96, c_out=24, groups=1, kernel=(1, 1), hw=(28, 28), stride=1, padding=0),
        dict(n=8, c_in=144, c_out=144, groups=144, kernel=(3, 3), hw=(28, 28), stride=2, padding=1),
        dict(n=4, c_in=3, c_out=32, groups=1, kernel=(3, 3), hw=(112, 112), stride=2, padding=1),
    ],
)
def test_conv_realistic_sizes_on_gpu(case):
    run_conv(dict(case, dilation=1, bias=False, dtype=np.float32, seed=0))
    run_conv(dict(case, dilation=1, bias=True, dtype=np.float64, seed=1))


@pytest.mark.skipif(SIMULATED, reason="realistic sizes take hours under the simulator")
def test_batch_norm_realistic_size_on_gpu():
    run_batch_norm(0, (16, 96, 28, 28), np.float32, True, True)
    run_batch_norm(1, (16, 96, 28, 28), np.float64, True, True)
