"""The "cpu" backend (Numba kernels) against torch float64 and the reference backend.

Every op except conv2d (tests/test_cpu_conv.py), forward and backward, and the eval fast path's
BN folding.
Each comparison (``check``) asserts, for one result of one op:

* float64: agreement with torch float64 with a random dy to ~1e-10 (recorded under
  "cpu/<op> <grad>"), and with the reference backend to the same tolerance;
* float32: agreement with the float64 oracle evaluated on the same float32 inputs. Most kernels
  accumulate in float64 and round once at the end, so the bound is one rounding (``terms=1``);
  the scatter-add backwards (pooling, upsample) add into the float32 output, so there ``terms``
  is the number of contributions per element;
* selection ops (relu, relu6, hard-sigmoid forward, max-pool forward, nearest forward, concat,
  slice, dropout): bit-exact against torch and the reference in both dtypes.

Inputs are drawn by hypothesis: odd sizes, boundary values (0, 6, +-3, +-1e6), ties, and
C-ordered, Fortran-ordered or strided (non-contiguous) layouts.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import scratchnets as sn
from scratchnets import reference as ref
from scratchnets.kernels import cpu
from scratchnets.models.fuse import fold_bn
from scratchnets.reference.windows import pair
from tests.helpers import (
    LAYOUTS,
    assert_close_f32,
    assert_close_f64,
    record_error,
    t,
    torch_grads,
    with_layout,
)

DTYPES = (np.float32, np.float64)
seeds = st.integers(0, 2**32 - 1)
layouts = st.sampled_from(LAYOUTS)


def amax(*arrays) -> float:
    """max |a| over the given arrays (None and empty arrays count as 0)."""
    return max(
        (float(np.max(np.abs(a))) for a in arrays if a is not None and np.size(a)), default=0.0
    )


def check(op, what, got, reference, oracle, terms=1, magnitude=None, exact=False):
    """``got`` (cpu) against the torch float64 ``oracle`` and the reference backend's result."""
    oracle = np.asarray(oracle)
    label = f"cpu/{op} {what}"
    assert got.shape == oracle.shape, f"{label}: shape {got.shape} != {oracle.shape}"
    assert reference is None or got.dtype == reference.dtype, f"{label}: dtype {got.dtype}"
    if exact:
        np.testing.assert_array_equal(got, oracle.astype(got.dtype), err_msg=f"{label} vs torch")
        if reference is not None:
            np.testing.assert_array_equal(got, reference, err_msg=f"{label} vs reference")
    if got.dtype == np.float64:
        record_error(label, got, oracle)
        assert_close_f64(got, oracle, what=f"{label} vs torch")
        if reference is not None:
            assert_close_f64(got, reference, what=f"{label} vs reference")
    else:
        bound = amax(oracle) if magnitude is None else magnitude
        assert_close_f32(got, oracle, terms, bound, what=f"{label} vs float64 oracle")


def with_boundaries(rng, shape, scale, boundaries):
    """Normal values of the given scale with the boundary values written at random positions."""
    x = scale * rng.standard_normal(shape)
    positions = rng.permutation(x.size)[: min(x.size, 2 * len(boundaries))]
    x.flat[positions] = np.resize(boundaries, len(positions))
    return x


# ------------------------------------------------------------------------------------ activations

ACTIVATIONS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
    "hard_swish": F.hardswish,
    "silu": F.silu,
}
#: the kinks of relu / relu6 / hard_sigmoid, huge values, signed zero
KINKS = np.array([0.0, -0.0, 6.0, -6.0, 3.0, -3.0, 1e6, -1e6])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), layout=layouts, seed=seeds)
def test_activations(name, dtype, shape, layout, seed):
    rng = np.random.default_rng(seed)
    x = with_layout(with_boundaries(rng, shape, 5.0, KINKS).astype(dtype), layout)
    dy = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    forward, backward = getattr(cpu, f"{name}_forward"), getattr(cpu, f"{name}_backward")
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        y, cache = forward(x)
        dx = backward(dy, cache)
    assert y.dtype == dx.dtype == dtype
    y_ref, cache_ref = getattr(ref, f"{name}_forward")(x)
    dx_ref = getattr(ref, f"{name}_backward")(dy, cache_ref)
    xt = t(x, True)
    y_t = ACTIVATIONS[name](xt)
    (dx_t,) = torch_grads(y_t, [xt], dy)
    check(name, "y", y, y_ref, y_t.detach().numpy(), exact=name in ("relu", "relu6"))
    if name == "hard_sigmoid":
        # y = relu6(x + 3) / 6 in x's dtype: bit-exact against torch and the reference in x's dtype
        np.testing.assert_array_equal(y, F.hardsigmoid(torch.tensor(x)).numpy())
        np.testing.assert_array_equal(y, y_ref)
        # dx = dy * (1/6) here, dy / 6 in the reference: at most one rounding apart. torch's CPU
        # kernel multiplies by the float32 constant 1/6 in both dtypes: ~3e-8 relative.
        np.testing.assert_array_equal(dx == 0, dx_t == 0)  # same zero set, kinks included
        np.testing.assert_allclose(dx, dx_ref, rtol=2 * np.finfo(dtype).eps, atol=0)
        np.testing.assert_allclose(dx, dx_t, rtol=4 * np.finfo(np.float32).eps, atol=0)
    else:
        smooth = name in ("sigmoid", "hard_swish", "silu")  # slopes from arithmetic, not a select
        check(name, "dx", dx, dx_ref, dx_t, magnitude=1.5 * amax(dy), exact=not smooth)


# ------------------------------------------------------------------------------------ batch norm

MOMENTUM, EPS = 0.1, 1e-5


@st.composite
def bn_cases(draw):
    """(shape, layout, seed, offset, training, affine, running): N*H*W >= 2 values per channel."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    if n * h * w < 2:
        n = 2
    offset = draw(st.sampled_from([0.0, 1e3]))  # 1e3 + noise: |mean| >> std
    training = draw(st.booleans())
    running = draw(st.booleans()) or not training  # eval needs the running statistics
    return (n, c, h, w), draw(layouts), draw(seeds), offset, training, draw(st.booleans()), running


def bn_inputs(case, dtype):
    """x, weight, bias, running_mean, running_var, dy (None where the case has none)."""
    shape, layout, seed, offset, _, affine, running = case
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = offset + rng.uniform(0.2, 3.0, (1, c, 1, 1)) * rng.standard_normal(shape)
    weight, bias = rng.uniform(-2, 2, c), rng.uniform(-1, 1, c)
    running_mean, running_var = offset + rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    dy = rng.standard_normal(shape)
    as_dtype = lambda a, keep=True: a.astype(dtype) if keep else None  # noqa: E731
    return (
        with_layout(as_dtype(x), layout),
        as_dtype(weight, affine),
        as_dtype(bias, affine),
        as_dtype(running_mean, running),
        as_dtype(running_var, running),
        with_layout(as_dtype(dy), layout),
    )


def copies(*arrays):
    return [None if a is None else a.copy() for a in arrays]


def torch_batch_norm(x, weight, bias, running_mean, running_var, training, dy, then=None):
    """torch float64: y, (dx, dweight, dbias), running stats after the in-place update."""
    xt = t(x, True)
    wt, bt = [None if v is None else t(v, True) for v in (weight, bias)]
    rm, rv = [None if v is None else t(v) for v in (running_mean, running_var)]
    y = F.batch_norm(xt, rm, rv, wt, bt, training=training, momentum=MOMENTUM, eps=EPS)
    y = y if then is None else then(y)
    grads = torch_grads(y, [v for v in (xt, wt, bt) if v is not None], dy)
    dx, dweight, dbias = grads[0], *(grads[1:] if weight is not None else (None, None))
    stats = [None if v is None else v.numpy() for v in (rm, rv)]
    return y.detach().numpy(), (dx, dweight, dbias), stats


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=bn_cases())
def test_batch_norm(dtype, case):
    training = case[4]
    x, weight, bias, running_mean, running_var, dy = bn_inputs(case, dtype)
    stats_ref, stats_torch = copies(running_mean, running_var), copies(running_mean, running_var)
    y, cache = cpu.batch_norm2d_forward(x, weight, bias, running_mean, running_var, training)
    grads = cpu.batch_norm2d_backward(dy, cache)
    y_ref, cache_ref = ref.batch_norm2d_forward(x, weight, bias, *stats_ref, training)
    grads_ref = ref.batch_norm2d_backward(dy, cache_ref)
    y_t, grads_t, stats_t = torch_batch_norm(x, weight, bias, *stats_torch, training, dy)
    assert y.dtype == grads[0].dtype == dtype

    # float32 magnitudes: one rounding of each result, plus the float64 work (negligible) on the
    # terms of dx = gamma/sigma * (dy - mean(dy) - xhat * mean(dy * xhat)) before they cancel
    x64 = np.asarray(x, np.float64)
    mean = x64.mean(axis=(0, 2, 3)) if training else running_mean.astype(np.float64)
    var = x64.var(axis=(0, 2, 3)) if training else running_var.astype(np.float64)
    xhat = (x64 - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + EPS)
    gamma_over_sigma = (1.0 if weight is None else amax(weight)) / float(np.sqrt(var + EPS).min())
    dx_terms = gamma_over_sigma * amax(dy) * (1 + amax(xhat)) ** 2
    check("batch_norm2d", "y", y, y_ref, y_t)
    check("batch_norm2d", "dx", grads[0], grads_ref[0], grads_t[0], magnitude=dx_terms)
    for i, what in ((1, "dweight"), (2, "dbias")):
        if weight is None:
            assert grads[i] is None and grads_ref[i] is None
        else:
            bound = amax(dy) * (amax(xhat) if what == "dweight" else 1.0)
            check("batch_norm2d", what, grads[i], grads_ref[i], grads_t[i], magnitude=bound)
    for got, got_ref, want, what in zip(
        (running_mean, running_var),
        stats_ref,
        stats_t,
        ("running_mean", "running_var"),
        strict=True,
    ):
        if want is not None:
            check("batch_norm2d", what, got, got_ref, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride, padding, groups, conv_bias",
    [
        (3, 8, 3, 2, 1, 1, False),  # a stem
        (6, 6, 3, 1, 1, 6, False),  # depthwise
        (6, 12, 3, 2, 1, 6, True),  # depthwise, multiplier 2, with bias
        (5, 4, 1, 1, 0, 1, True),  # pointwise
        (4, 6, (1, 5), 1, (0, 2), 2, False),  # grouped, asymmetric kernel
    ],
)
def test_fold_bn_equals_conv_then_bn_eval(
    dtype, c_in, c_out, kernel, stride, padding, groups, conv_bias
):
    """``models.fuse.fold_bn`` (the eval fast path's folding): the folded conv's weights give
    torch's conv then eval-mode BN."""
    rng = np.random.default_rng(c_in * 10 + c_out)
    kh, kw = pair(kernel, "kernel")
    x = rng.standard_normal((2, c_in, 7, 9))
    conv = sn.nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=conv_bias,
                        dtype=dtype)  # fmt: skip
    bn = sn.nn.BatchNorm2d(c_out, eps=EPS, dtype=np.float64)
    w, b = conv.weight.data, None if conv.bias is None else conv.bias.data
    gamma, beta = rng.uniform(-2, 2, c_out), rng.uniform(-1, 1, c_out)
    mean, var = rng.standard_normal(c_out), rng.uniform(0.1, 3.0, c_out)
    bn.load_state_dict({"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var,
                        "num_batches_tracked": np.array(1)})  # fmt: skip
    folded = fold_bn(conv, bn.eval())
    w_f, b_f = folded.weight.data, folded.bias.data
    assert w_f.dtype == b_f.dtype == dtype and w_f.shape == w.shape and b_f.shape == (c_out,)
    conv = dict(stride=stride, padding=padding, groups=groups)
    y_fold = F.conv2d(t(x), t(w_f), t(b_f), **conv).numpy()
    y_conv = F.conv2d(t(x), t(w), None if b is None else t(b), **conv)
    y_bn = F.batch_norm(y_conv, t(mean), t(var), t(gamma), t(beta), training=False, eps=EPS).numpy()
    if dtype == np.float64:
        record_error("fold_bn y", y_fold, y_bn)
        assert_close_f64(y_fold, y_bn)
    else:  # w' and b' each rounded once to float32, then summed over C_in/groups * kh * kw terms
        terms = (c_in // groups) * kh * kw
        assert_close_f32(y_fold, y_bn, terms, amax(x) * amax(w_f) + amax(b_f))


# --------------------------------------------------------------------------------------- pooling


@st.composite
def pool_cases(draw, dilated=False):
    """(shape, kernel, stride, padding, values, layout, seed, ceil_mode, dilation); padding <=
    half the kernel; ``dilated`` draws a dilation of 1 to 3 (max pooling only)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kernel = kh if kh == kw and draw(st.booleans()) else (kh, kw)
    stride = draw(st.one_of(st.none(), st.integers(1, 3), st.tuples(*[st.integers(1, 3)] * 2)))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 5))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 5))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    values = draw(st.sampled_from(["normal", "ties", "huge"]))
    case = shape, kernel, stride, (ph, pw), values, draw(layouts), draw(seeds)
    return (*case, draw(st.booleans()), (dh, dw))


def pool_input(shape, values, layout, seed, dtype):
    rng = np.random.default_rng(seed)
    if values == "ties":  # few distinct integers: many equal maxima per window
        x = rng.integers(-2, 3, shape).astype(float)
    elif values == "huge":  # +-1e6 next to O(1) values
        x = rng.standard_normal(shape) + 1e6 * rng.choice([-1.0, 0.0, 1.0], shape)
    else:
        x = rng.standard_normal(shape)
    return with_layout(x.astype(dtype), layout), rng


def window_overlap(kernel, stride, dilation=(1, 1)) -> int:
    """Most windows one input pixel belongs to: the terms added into one dx element."""
    (kh, kw), (dh, dw) = pair(kernel, "kernel"), dilation
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride")
    return math.ceil((dh * (kh - 1) + 1) / sh) * math.ceil((dw * (kw - 1) + 1) / sw)


def torch_op(fn, x, dy, **kwargs):
    xt = t(x, True)
    y = fn(xt, **kwargs)
    return y.detach().numpy(), torch_grads(y, [xt], dy)[0]


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases(dilated=True))
def test_max_pool(dtype, case):
    """Forward bit-exact; the gradient goes to the first maximum (ties, +-1e6 values); ceil
    mode and dilation. A dilated window of padding only is refused like the reference's."""
    shape, kernel, stride, padding, values, layout, seed, ceil_mode, dilation = case
    x, rng = pool_input(shape, values, layout, seed, dtype)
    args = (kernel, stride, padding, dilation, ceil_mode)
    try:
        y_ref, cache_ref = ref.max_pool2d_forward(x, *args)
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):
            cpu.max_pool2d_forward(x, *args)
        return
    y, cache = cpu.max_pool2d_forward(x, *args)
    dy = with_layout(rng.standard_normal(y.shape).astype(dtype), layout)
    dx = cpu.max_pool2d_backward(dy, cache)
    dx_ref = ref.max_pool2d_backward(dy, cache_ref)
    y_t, dx_t = torch_op(lambda xt: F.max_pool2d(xt, *args), x, dy)
    np.testing.assert_array_equal(cpu.max_pool2d_indices(cache), ref.max_pool2d_indices(cache_ref))
    check("max_pool2d", "y", y, y_ref, y_t, exact=True)
    check("max_pool2d", "dx", dx, dx_ref, dx_t, window_overlap(kernel, stride, dilation), amax(dy))


def test_max_pool_nan_and_all_minus_infinity_windows():
    """A NaN is the maximum and its LAST occurrence in scan order gets the gradient (torch's
    indices); a window of -inf routes to a real pixel, never the padding. Same as the reference."""
    one_nan = np.array([[[[1.0, np.nan, 2.0, np.nan], [-np.inf, -np.inf, 0.5, 3.0]]]])
    two_nans = np.array([[[[np.nan, 1.0, 2.0, 0.0], [np.nan, 5.0, np.nan, np.nan]]]])
    cases = ((one_nan, (2,)), (one_nan, (2, 1, 1)), (two_nans, (2,)), (two_nans, (2, 2, 1)))
    for x, args in cases:
        y, cache = cpu.max_pool2d_forward(x, *args)
        y_ref, cache_ref = ref.max_pool2d_forward(x, *args)
        _, indices_t = F.max_pool2d(torch.tensor(x), *args, return_indices=True)
        np.testing.assert_array_equal(cpu.max_pool2d_indices(cache), indices_t.numpy())
        np.testing.assert_array_equal(ref.max_pool2d_indices(cache_ref), indices_t.numpy())
        np.testing.assert_array_equal(y, y_ref)
        dy = np.arange(1.0, y.size + 1).reshape(y.shape)
        np.testing.assert_array_equal(
            cpu.max_pool2d_backward(dy, cache), ref.max_pool2d_backward(dy, cache_ref)
        )


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    case=pool_cases(),
    count_include_pad=st.booleans(),
    divisor_override=st.sampled_from([None, None, 1, 3, -2]),
)
def test_avg_pool(dtype, case, count_include_pad, divisor_override):
    shape, kernel, stride, padding, values, layout, seed, ceil_mode, _ = case
    x, rng = pool_input(shape, values, layout, seed, dtype)
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    y, cache = cpu.avg_pool2d_forward(x, *args)
    dy = with_layout(rng.standard_normal(y.shape).astype(dtype), layout)
    dx = cpu.avg_pool2d_backward(dy, cache)
    y_ref, cache_ref = ref.avg_pool2d_forward(x, *args)
    dx_ref = ref.avg_pool2d_backward(dy, cache_ref)
    y_t, dx_t = torch_op(lambda xt: F.avg_pool2d(xt, *args), x, dy)
    check("avg_pool2d", "y", y, y_ref, y_t, magnitude=amax(x))  # float64 sums: one rounding
    check("avg_pool2d", "dx", dx, dx_ref, dx_t, window_overlap(kernel, stride), amax(dy))


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=pool_cases())
def test_global_avg_pool(dtype, case):
    shape, _, _, _, values, layout, seed, _, _ = case
    x, rng = pool_input(shape, values, layout, seed, dtype)
    dy = with_layout(rng.standard_normal((*shape[:2], 1, 1)).astype(dtype), layout)
    y, cache = cpu.global_avg_pool2d_forward(x)
    dx = cpu.global_avg_pool2d_backward(dy, cache)
    y_ref, cache_ref = ref.global_avg_pool2d_forward(x)
    dx_ref = ref.global_avg_pool2d_backward(dy, cache_ref)
    y_t, dx_t = torch_op(F.adaptive_avg_pool2d, x, dy, output_size=1)
    check("global_avg_pool2d", "y", y, y_ref, y_t, magnitude=amax(x))
    check("global_avg_pool2d", "dx", dx, dx_ref, dx_t)


# -------------------------------------------------------------------------------------- upsample


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    size=st.one_of(st.integers(1, 16), st.tuples(st.integers(1, 16), st.integers(1, 16))),
    huge=st.booleans(),
    layout=layouts,
    seed=seeds,
)
def test_upsample(mode, dtype, shape, size, huge, layout, seed):
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
    kwargs = {"mode": mode} | ({"align_corners": False} if mode == "bilinear" else {})
    y_t, dx_t = torch_op(F.interpolate, x, dy, size=out_hw, **kwargs)
    taps = 1 if mode == "nearest" else 2
    # contributions per dx element: outputs per input pixel along each axis, times the taps
    fan_in = math.prod(
        taps * (math.ceil(o / i) + 1) for i, o in zip(shape[2:], out_hw, strict=True)
    )
    check(op, "y", y, y_ref, y_t, magnitude=amax(x), exact=mode == "nearest")
    check(op, "dx", dx, dx_ref, dx_t, fan_in, amax(dy))


# ------------------------------------------------------------------------ linear, dropout, losses


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    n=st.integers(1, 5),
    d=st.tuples(st.integers(1, 7), st.integers(1, 6)),
    bias=st.booleans(),
    layout=layouts,
    seed=seeds,
)
def test_linear(dtype, n, d, bias, layout, seed):
    (d_in, d_out), rng = d, np.random.default_rng(seed)
    x = with_layout(rng.standard_normal((n, d_in)).astype(dtype), layout)
    w = with_layout(rng.standard_normal((d_out, d_in)).astype(dtype), layout)
    b = rng.standard_normal(d_out).astype(dtype) if bias else None
    dy = rng.standard_normal((n, d_out)).astype(dtype)
    y, cache = cpu.linear_forward(x, w, b)
    grads = cpu.linear_backward(dy, cache)
    y_ref, cache_ref = ref.linear_forward(x, w, b)
    grads_ref = ref.linear_backward(dy, cache_ref)
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if bias else None
    y_t = F.linear(xt, wt, bt)
    grads_t = torch_grads(y_t, [xt, wt] + ([bt] if bias else []), dy)
    check("linear", "y", y, y_ref, y_t.detach().numpy(), d_in, amax(x) * amax(w) + amax(b))
    check("linear", "dx", grads[0], grads_ref[0], grads_t[0], d_out, amax(dy) * amax(w))
    check("linear", "dw", grads[1], grads_ref[1], grads_t[1], n, amax(dy) * amax(x))
    if bias:
        check("linear", "db", grads[2], grads_ref[2], grads_t[2], n, amax(dy))
    else:
        assert grads[2] is None


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    p=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
    training=st.booleans(),
    layout=layouts,
    seed=seeds,
)
def test_dropout(dtype, shape, p, training, layout, seed):
    """Same mask as the reference for the same seed (bit-exact), and torch's x * mask / (1 - p)."""
    rng = np.random.default_rng(seed)
    x = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    dy = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    y, cache = cpu.dropout_forward(x, p, training, seed)
    dx = cpu.dropout_backward(dy, cache)
    y_ref, cache_ref = ref.dropout_forward(x, p, training, seed)
    dx_ref = ref.dropout_backward(dy, cache_ref)
    keep = ref.dropout.dropout_mask(shape, p, seed) if training else np.ones(shape, bool)
    scale = (0.0 if p == 1.0 else 1.0 / (1.0 - p)) if training else 1.0
    xt = t(x, True)
    y_t = xt * t(keep * dtype(scale))  # the multiplier in x's dtype, as torch does
    (dx_t,) = torch_grads(y_t, [xt], dy)
    check("dropout", "y", y, y_ref, y_t.detach().numpy(), exact=True)
    check("dropout", "dx", dx, dx_ref, dx_t, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    n=st.integers(1, 6),
    k=st.integers(1, 7),
    logit_scale=st.sampled_from([1.0, 1e4, 1e6]),
    label_smoothing=st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0.0, 1.0)),
    seed=seeds,
)
def test_cross_entropy(dtype, n, k, logit_scale, label_smoothing, seed):
    rng = np.random.default_rng(seed)
    logits = (logit_scale * rng.standard_normal((n, k))).astype(dtype)
    target = rng.integers(0, k, n)
    dloss = rng.standard_normal()
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, cache = cpu.cross_entropy_forward(logits, target, label_smoothing)
        dlogits = cpu.cross_entropy_backward(dloss, cache)
    loss_ref, cache_ref = ref.cross_entropy_forward(logits, target, label_smoothing)
    dlogits_ref = ref.cross_entropy_backward(dloss, cache_ref)
    assert loss.shape == () and loss.dtype == dlogits.dtype == dtype
    zt = t(logits, True)
    loss_t = F.cross_entropy(zt, torch.tensor(target), label_smoothing=label_smoothing)
    (dlogits_t,) = torch_grads(loss_t, [zt], np.asarray(dloss))
    # float64 throughout: log-sum-exp and z_t carry ~eps64 * max|z|, then one rounding
    check("cross_entropy", "loss", loss, loss_ref, loss_t.detach().numpy(), 1, amax(logits) + 1)
    check("cross_entropy", "dlogits", dlogits, dlogits_ref, dlogits_t, 1, abs(dloss) / n)


# ----------------------------------------------------------------------------------- elementwise


@st.composite
def broadcast_pairs(draw):
    """(a_shape, b_shape): the squeeze-excitation gate (N, C, 1, 1) x (N, C, H, W) in either
    order (the fused kernel's case), or b dropping leading axes / having size-1 axes."""
    if draw(st.booleans()):
        n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
        full = (n, c, draw(st.integers(1, 6)), draw(st.integers(1, 6)))
        pair_ = (full, (n, c, 1, 1))
    else:
        full = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
        b = full[draw(st.integers(0, len(full))) :]
        pair_ = (full, tuple(1 if draw(st.booleans()) else d for d in b))
    return pair_[::-1] if draw(st.booleans()) else pair_


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["add", "mul"])
@given(shapes=broadcast_pairs(), layout=layouts, seed=seeds)
def test_add_mul_broadcasting(op, dtype, shapes, layout, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s).astype(dtype) for s in shapes)
    a, b = (with_layout(v, layout) if v.ndim else v for v in (a, b))  # b may be 0-d
    y, cache = getattr(cpu, f"{op}_forward")(a, b)
    dy = with_layout(rng.standard_normal(y.shape).astype(dtype), layout)
    da, db = getattr(cpu, f"{op}_backward")(dy, cache)
    y_ref, cache_ref = getattr(ref, f"{op}_forward")(a, b)
    da_ref, db_ref = getattr(ref, f"{op}_backward")(dy, cache_ref)
    at, bt = t(a, True), t(b, True)
    y_t = getattr(torch, op)(at, bt)
    da_t, db_t = torch_grads(y_t, [at, bt], dy)
    slope_a, slope_b = (1.0, 1.0) if op == "add" else (amax(b), amax(a))
    check(op, "y", y, y_ref, y_t.detach().numpy(), magnitude=amax(a) * amax(b) + amax(a, b))
    check(op, "da", da, da_ref, da_t, y.size // a.size, amax(dy) * slope_a)
    check(op, "db", db, db_ref, db_t, y.size // b.size, amax(dy) * slope_b)


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    base=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    data=st.data(),
    seed=seeds,
)
def test_concat_slice(dtype, base, sizes, data, seed):
    """Pure copies: bit-exact against torch.cat / torch.narrow and the reference."""
    axis = data.draw(st.integers(-len(base), len(base) - 1), label="axis")
    ax, rng = axis % len(base), np.random.default_rng(seed)
    xs = [rng.standard_normal(base[:ax] + (s,) + base[ax + 1 :]).astype(dtype) for s in sizes]
    y, cache = cpu.concat_forward(xs, axis=axis)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dxs = cpu.concat_backward(dy, cache)
    xts = [t(x, True) for x in xs]
    y_t = torch.cat(xts, dim=axis)
    check("concat", "y", y, ref.concat_forward(xs, axis=axis)[0], y_t.detach().numpy(), exact=True)
    for dx, dx_t in zip(dxs, torch_grads(y_t, xts, dy), strict=True):
        check("concat", "dx", dx, None, dx_t, exact=True)

    start = data.draw(st.integers(0, y.shape[ax]), label="start")
    stop = data.draw(st.integers(start, y.shape[ax]), label="stop")
    piece, slice_cache = cpu.slice_forward(y, start, stop, axis=axis)
    dpiece = rng.standard_normal(piece.shape).astype(dtype)
    yt = t(y, True)
    piece_t = torch.narrow(yt, axis, start, stop - start)
    piece_ref, slice_cache_ref = ref.slice_forward(y, start, stop, axis=axis)
    check("slice", "y", piece, piece_ref, piece_t.detach().numpy(), exact=True)
    check(
        "slice",
        "dx",
        cpu.slice_backward(dpiece, slice_cache),
        ref.slice_backward(dpiece, slice_cache_ref),
        torch_grads(piece_t, [yt], dpiece)[0],
        exact=True,
    )


# ------------------------------------------------------------------------------ errors, contract

#: op -> (forward arguments, the shape of a wrong dy)
_ERROR_CASES = {
    "relu": ((np.zeros((2, 3)),), (3, 2)),
    "relu6": ((np.zeros((2, 3)),), (3, 2)),
    "sigmoid": ((np.zeros((2, 3)),), (3, 2)),
    "hard_sigmoid": ((np.zeros((2, 3)),), (3, 2)),
    "batch_norm2d": ((np.zeros((2, 3, 2, 2)), None, None, None, None), (2, 3, 2, 3)),
    "max_pool2d": ((np.zeros((1, 2, 4, 4)), 2), (1, 2, 3, 2)),
    "avg_pool2d": ((np.zeros((1, 2, 4, 4)), 2), (1, 2, 3, 2)),
    "global_avg_pool2d": ((np.zeros((1, 2, 4, 4)),), (1, 2, 2, 1)),
    "upsample_nearest2d": ((np.zeros((1, 2, 3, 3)), (5, 6)), (1, 2, 5, 5)),
    "upsample_bilinear2d": ((np.zeros((1, 2, 3, 3)), (5, 6)), (1, 2, 5, 5)),
    "dropout": ((np.zeros((2, 3)), 0.5, True, 0), (3, 2)),
    "mul": ((np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 1, 1))), (2, 3, 4, 3)),
}


@pytest.mark.parametrize("op", list(_ERROR_CASES))
def test_errors_name_the_problem(op):
    """Integer input: TypeError naming the dtypes; dy of the wrong shape: ValueError naming it."""
    args, wrong_dy = _ERROR_CASES[op]
    forward, backward = getattr(cpu, f"{op}_forward"), getattr(cpu, f"{op}_backward")
    with pytest.raises(TypeError, match="float32 or float64"):
        forward(args[0].astype(np.int64), *args[1:])
    _, cache = forward(*args)
    with pytest.raises(ValueError, match=r"dy has shape \(" + ", ".join(map(str, wrong_dy))):
        backward(np.zeros(wrong_dy), cache)
