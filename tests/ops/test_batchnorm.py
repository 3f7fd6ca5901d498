"""batch_norm2d against float64 torch on every backend, and BatchNorm2d's options."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import cuda

import scratchnets as sn
import scratchnets.kernels.cuda as CK
from scratchnets import reference as R
from scratchnets import reference as ref
from scratchnets import to_numpy
from scratchnets.kernels import cpu
from scratchnets.kernels.cuda import _reduce
from scratchnets.models.fuse import fold_bn
from scratchnets.reference.batchnorm import batch_norm2d_backward, batch_norm2d_forward
from scratchnets.reference.windows import pair
from tests.cuda import SIMULATED, examples
from tests.helpers import (
    LAYOUTS,
    assert_close_f32,
    assert_close_f64,
    numeric_grad,
    record_error,
    t,
    torch_grads,
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
)

# ===============================================================================================
# the reference backend
#
# reference.batch_norm2d against torch.nn.functional.batch_norm (float64 oracle, random dy).
# ===============================================================================================

MOMENTUM, EPS = 0.1, 1e-5


#: the family's torch oracle (float64), used by every backend's tests
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


@st.composite
def bn_cases(draw, min_values_per_channel=2):
    """(rng, shape, layout, offset): odd sizes, N*H*W >= min_values_per_channel."""
    n, c = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    if n * h * w < min_values_per_channel:
        n = 2
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layout = draw(st.sampled_from(LAYOUTS))
    offset = draw(st.sampled_from([0.0, 1e3]))  # 1e3 + noise: |mean| >> std
    return rng, (n, c, h, w), layout, offset


def make_inputs(rng, shape, layout, offset, dtype, noise=1.0):
    """x (layout as asked), weight, bias, running stats, dy: all of ``dtype``."""
    c = shape[1]
    x = offset + noise * rng.uniform(0.2, 3.0, (1, c, 1, 1)) * rng.standard_normal(shape)
    x = with_layout(x.astype(dtype), layout)
    weight = rng.uniform(-2, 2, c).astype(dtype)
    bias = rng.uniform(-1, 1, c).astype(dtype)
    running_mean = (offset + rng.standard_normal(c)).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, c).astype(dtype)
    dy = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    return x, weight, bias, running_mean, running_var, dy


def check_f64(key, actual, expected, rtol=1e-10):
    record_error(f"reference/batch_norm2d {key}", actual, expected)
    assert_close_f64(actual, expected, rtol=rtol, what=key)


@given(bn_cases(), st.booleans())
def test_float64_matches_torch_over_two_steps(case, training):
    """Two consecutive steps: y, dx, dweight, dbias and both running stats after each step."""
    rng, shape, layout, offset = case
    _, weight, bias, running_mean, running_var, _ = make_inputs(
        rng, shape, layout, offset, np.float64
    )
    rm_torch, rv_torch = running_mean.copy(), running_var.copy()
    for step in range(2):
        x, *_, dy = make_inputs(rng, shape, layout, offset, np.float64, noise=0.1 * (step + 1))
        y, cache = batch_norm2d_forward(
            x, weight, bias, running_mean, running_var, training, MOMENTUM, EPS
        )
        dx, dweight, dbias = batch_norm2d_backward(dy, cache)
        y_t, (dx_t, dw_t, db_t), (rm_torch, rv_torch) = torch_batch_norm(
            x, weight, bias, rm_torch, rv_torch, training, dy
        )
        assert y.dtype == dx.dtype == dweight.dtype == dbias.dtype == np.float64
        assert y.shape == dx.shape == shape
        check_f64("y", y, y_t)
        check_f64("dx", dx, dx_t)
        check_f64("dweight", dweight, dw_t)
        check_f64("dbias", dbias, db_t)
        check_f64("running_mean", running_mean, rm_torch)
        check_f64("running_var", running_var, rv_torch)


def f32_bounds(x64, weight, bias, dy, mean, var):
    """Magnitudes for assert_close_f32, from a float32 error analysis of the formulas.

    The mean of M values of size max|x| has error ~ eps*sqrt(M)*max|x|; dividing the centred
    values by sigma turns it into an error ~ eps*sqrt(M)*cond in xhat, ``cond = max|x| / sigma``
    (large when |mean| >> std). The outputs scale that by the factors multiplying xhat.
    """
    sigma = np.sqrt(var + EPS)  # (C,)
    x_max = float(np.max(np.abs(x64)))
    cond = x_max / float(sigma.min())
    xhat_max = float(np.max(np.abs((x64 - mean.reshape(1, -1, 1, 1)) / sigma.reshape(1, -1, 1, 1))))
    g, d = float(np.max(np.abs(weight))), float(np.max(np.abs(dy)))
    return {
        "y": g * cond + float(np.max(np.abs(bias))),
        "dx": g / float(sigma.min()) * d * cond * max(xhat_max, 1.0),
        "dweight": d * cond,
        "dbias": d,
        "running_mean": x_max,
        "running_var": 2 * x_max * xhat_max * float(sigma.max()),
    }


@settings(max_examples=20)
@given(bn_cases(), st.booleans())
def test_float32_against_float64_oracle(case, training):
    rng, shape, layout, offset = case
    x, weight, bias, running_mean, running_var, dy = make_inputs(
        rng, shape, layout, offset, np.float32
    )
    rm_before, rv_before = running_mean.copy(), running_var.copy()
    y, cache = batch_norm2d_forward(x, weight, bias, running_mean, running_var, training)
    dx, dweight, dbias = batch_norm2d_backward(dy, cache)
    assert {a.dtype for a in (y, dx, dweight, dbias, running_mean, running_var)} == {
        np.dtype(np.float32)
    }
    y_t, (dx_t, dw_t, db_t), (rm_t, rv_t) = torch_batch_norm(
        x, weight, bias, rm_before, rv_before, training, dy
    )
    x64 = x.astype(np.float64)
    if training:
        mean, var = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    else:
        mean, var = rm_before.astype(np.float64), rv_before.astype(np.float64)
    bounds = f32_bounds(x64, weight, bias, dy, mean, var)
    m = shape[0] * shape[2] * shape[3]
    got = {"y": y, "dx": dx, "dweight": dweight, "dbias": dbias}
    got |= {"running_mean": running_mean, "running_var": running_var}
    want = {"y": y_t, "dx": dx_t, "dweight": dw_t, "dbias": db_t}
    want |= {"running_mean": rm_t, "running_var": rv_t}
    for key in got:
        assert_close_f32(got[key], want[key], m, bounds[key], what=key)


def test_large_offset_float64_is_stable():
    """x = 1000 + 0.1 * noise: a one-pass E[x^2] - E[x]^2 loses ~1e-8 here, two passes do not."""
    rng = np.random.default_rng(7)
    x, weight, bias, running_mean, running_var, dy = make_inputs(
        rng, (8, 3, 5, 5), "C", 1e3, np.float64, noise=0.1
    )
    # torch works on copies of the running stats (t() copies)
    y_t, (dx_t, _, _), (_, rv_t) = torch_batch_norm(
        x, weight, bias, running_mean, running_var, True, dy
    )
    y, cache = batch_norm2d_forward(x, weight, bias, running_mean, running_var)
    dx, _, _ = batch_norm2d_backward(dy, cache)
    check_f64("y", y, y_t, rtol=1e-11)
    check_f64("dx", dx, dx_t, rtol=1e-11)
    check_f64("running_var", running_var, rv_t, rtol=1e-11)


def test_running_var_is_unbiased_and_eval_leaves_stats_alone():
    x = np.arange(2 * 1 * 1 * 3, dtype=np.float64).reshape(2, 1, 1, 3)  # 0..5, var_unbiased 3.5
    rm, rv = np.zeros(1), np.ones(1)
    batch_norm2d_forward(x, None, None, rm, rv, training=True, momentum=1.0)
    np.testing.assert_allclose(rm, [2.5], rtol=1e-15)
    np.testing.assert_allclose(rv, [3.5], rtol=1e-15)
    before = (rm.copy(), rv.copy())
    batch_norm2d_forward(x + 7, None, None, rm, rv, training=False)
    np.testing.assert_array_equal(rm, before[0])
    np.testing.assert_array_equal(rv, before[1])


def test_no_affine_and_no_running_stats():
    rng = np.random.default_rng(3)
    x, _, _, _, _, dy = make_inputs(rng, (3, 2, 4, 5), "F", 0.0, np.float64)
    y, cache = batch_norm2d_forward(x, None, None, None, None, training=True)
    dx, dweight, dbias = batch_norm2d_backward(dy, cache)
    assert dweight is None and dbias is None
    xt = t(x, True)
    y_t = F.batch_norm(xt, None, None, training=True, eps=EPS)
    (dx_t,) = torch_grads(y_t, [xt], dy)
    check_f64("y", y, y_t.detach().numpy())
    check_f64("dx", dx, dx_t)


@pytest.mark.parametrize("training", [True, False])
def test_finite_differences(training):
    """Central differences of sum(y * dy) w.r.t. x, weight and bias (float64, tiny shape)."""
    rng = np.random.default_rng(11)
    x, weight, bias, running_mean, running_var, dy = make_inputs(
        rng, (2, 2, 3, 2), "C", 0.5, np.float64
    )

    def loss(x_=x, w_=weight, b_=bias):  # copies of the stats: the update must not leak
        y, _ = batch_norm2d_forward(x_, w_, b_, running_mean.copy(), running_var.copy(), training)
        return np.sum(y * dy)

    _, cache = batch_norm2d_forward(
        x, weight, bias, running_mean.copy(), running_var.copy(), training
    )
    dx, dweight, dbias = batch_norm2d_backward(dy, cache)
    for what, got, num in [
        ("dx", dx, numeric_grad(lambda v: loss(x_=v), x)),
        ("dweight", dweight, numeric_grad(lambda v: loss(w_=v), weight)),
        ("dbias", dbias, numeric_grad(lambda v: loss(b_=v), bias)),
    ]:
        np.testing.assert_allclose(got, num, rtol=1e-6, atol=1e-7, err_msg=what)


def test_errors():
    x = np.zeros((2, 3, 2, 2))
    c = np.ones(3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        batch_norm2d_forward(np.zeros((2, 3)), c, c, c, c)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        batch_norm2d_forward(x, np.ones(4), c, c, c)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm2d_forward(np.zeros((1, 3, 1, 1)), c, c, c.copy(), c.copy())
    with pytest.raises(ValueError, match="eval mode needs"):
        batch_norm2d_forward(x, c, c, None, None, training=False)
    with pytest.raises(TypeError, match="float32 or float64"):
        batch_norm2d_forward(x.astype(np.int64), c, c, c, c)
    with pytest.raises(TypeError, match="in place"):
        batch_norm2d_forward(x, c, c, [0.0, 0.0, 0.0], c)
    _, cache = batch_norm2d_forward(x + np.arange(24).reshape(x.shape), c, c, None, None)
    with pytest.raises(ValueError, match="dy has shape"):
        batch_norm2d_backward(np.zeros((2, 3, 2, 1)), cache)


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


@st.composite
def cpu_bn_cases(draw):
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


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=cpu_bn_cases())
def test_cpu_batch_norm(dtype, case):
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
    check_cpu("batch_norm2d", "y", y, y_ref, y_t)
    check_cpu("batch_norm2d", "dx", grads[0], grads_ref[0], grads_t[0], magnitude=dx_terms)
    for i, what in ((1, "dweight"), (2, "dbias")):
        if weight is None:
            assert grads[i] is None and grads_ref[i] is None
        else:
            bound = amax(dy) * (amax(xhat) if what == "dweight" else 1.0)
            check_cpu("batch_norm2d", what, grads[i], grads_ref[i], grads_t[i], magnitude=bound)
    for got, got_ref, want, what in zip(
        (running_mean, running_var),
        stats_ref,
        stats_t,
        ("running_mean", "running_var"),
        strict=True,
    ):
        if want is not None:
            check_cpu("batch_norm2d", what, got, got_ref, want)


#: the activations ``cpu.batch_norm2d_act_forward`` runs in BN's passes, with their torch ops
BN_ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6, "hard_swish": F.hardswish}


def run_bn_act(case, dtype, activation):
    """``cpu.batch_norm2d_act_forward`` and its backward on the case's inputs: ``(inputs,
    running statistics as they were, y, (dx, dweight, dbias))``; the inputs' running statistics
    are updated in place."""
    x, weight, bias, running_mean, running_var, dy = inputs = bn_inputs(case, dtype)
    before = copies(running_mean, running_var)
    y, cache = cpu.batch_norm2d_act_forward(x, weight, bias, running_mean, running_var, case[4],
                                            MOMENTUM, EPS, activation=activation)  # fmt: skip
    return inputs, before, y, cpu.batch_norm2d_backward(dy, cache)


@pytest.mark.parametrize("activation", BN_ACTIVATIONS)
@given(case=cpu_bn_cases())
def test_cpu_batch_norm_act_float64_matches_torch(activation, case):
    """act(BN(x)) in BN's passes against torch's batch_norm then the activation (float64, random
    dy): y, the three gradients and the running statistics."""
    inputs, stats_before, y, grads = run_bn_act(case, np.float64, activation)
    x, weight, bias, running_mean, running_var, dy = inputs
    y_t, grads_t, stats_t = torch_batch_norm(x, weight, bias, *stats_before, case[4], dy,
                                             then=BN_ACTIVATIONS[activation])  # fmt: skip
    check_cpu("batch_norm2d_act", "y", y, None, y_t)
    for got, want, what in zip(grads, grads_t, ("dx", "dweight", "dbias"), strict=True):
        if weight is None and what != "dx":
            assert got is None
        else:
            check_cpu("batch_norm2d_act", what, got, None, want)
    for got, want, what in zip((running_mean, running_var), stats_t, ("mean", "var"), strict=True):
        if want is not None:
            check_cpu("batch_norm2d_act", f"running_{what}", got, None, want)


@pytest.mark.parametrize("activation", [*BN_ACTIVATIONS, None])
@given(case=cpu_bn_cases())
def test_cpu_batch_norm_act_float32_is_the_two_ops_in_turn(activation, case):
    """In float32 (where an input within rounding of a kink makes the gradient of the float64
    oracle another function) the fused op is compared with the cpu BN, then the cpu activation,
    each tested against torch above and in test_activations.py: y bit for bit, the gradients to
    float32 rounding (the sums may group differently)."""
    inputs, stats, y, grads = run_bn_act(case, np.float32, activation)
    x, weight, bias, running_mean, running_var, dy = inputs
    y_turn, cache_bn = cpu.batch_norm2d_forward(x, weight, bias, *stats, case[4], MOMENTUM, EPS)
    dy_bn = dy
    if activation is not None:
        y_turn, cache_act = getattr(cpu, f"{activation}_forward")(y_turn)
        dy_bn = getattr(cpu, f"{activation}_backward")(dy, cache_act)
    grads_turn = cpu.batch_norm2d_backward(dy_bn, cache_bn)
    np.testing.assert_array_equal(y, y_turn)
    for got, want in zip((running_mean, running_var), stats, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want, what in zip(grads, grads_turn, ("dx", "dweight", "dbias"), strict=True):
        if want is None:
            assert got is None
        else:
            assert got.dtype == np.float32
            scale = max(amax(want), amax(dy)) * (1 + amax(x - x.mean()))
            np.testing.assert_allclose(got, want, rtol=0, atol=4e-7 * scale, err_msg=what)


@pytest.mark.parametrize("activation", BN_ACTIVATIONS)
@pytest.mark.parametrize("kink", [0.0, 6.0, -3.0, 3.0])
def test_cpu_batch_norm_act_at_the_kinks(activation, kink):
    """weight 0 puts every BN output exactly on ``kink``: the slope there is the activation's
    own (0 at ReLU's 0, ReLU6's 0 and 6, h-swish's -3; h-swish's 1 at 3), as torch's."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    weight, bias = np.zeros(3, np.float32), np.full(3, kink, np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, cache = cpu.batch_norm2d_act_forward(x, weight, bias, None, None, activation=activation)
    _, dweight, dbias = cpu.batch_norm2d_backward(dy, cache)
    xt, wt, bt = t(x), t(weight, True), t(bias, True)
    yt = BN_ACTIVATIONS[activation](F.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS))
    expected = torch_grads(yt, [wt, bt], dy)
    np.testing.assert_array_equal(y, yt.detach().numpy().astype(np.float32))
    np.testing.assert_allclose(dbias, expected[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dweight, expected[0], rtol=1e-5, atol=1e-5)


def test_cpu_batch_norm_act_errors():
    x = np.ones((2, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'gelu'"):
        cpu.batch_norm2d_act_forward(x, None, None, None, None, activation="gelu")


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
def test_cpu_fold_bn_equals_conv_then_bn_eval(
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


# ===============================================================================================
# every backend
#
# BatchNorm2d's torch options: affine=False, bias=False, track_running_stats=False, empty batches.
#
# Each configuration is built like its torch twin on the reference and cpu backends in float64,
# run in train and in eval mode, and compared with torch: y, dx, the parameter gradients, the
# running statistics and num_batches_tracked afterwards (random upstream gradient).
# ===============================================================================================

OPTIONS = [
    dict(affine=affine, track_running_stats=track, bias=bias)
    for affine, track, bias in itertools.product([True, False], repeat=3)
    if affine or bias  # torch: bias=False only means something with affine
]


def twins(options, backend):
    torch.manual_seed(0)
    theirs = torch.nn.BatchNorm2d(3, momentum=0.3, **options).double()
    ours = sn.nn.BatchNorm2d(3, momentum=0.3, **options, dtype=np.float64).to(backend)
    with torch.no_grad():  # non-trivial weights and statistics
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
        if theirs.running_mean is not None:
            theirs.running_mean.uniform_(-1, 1)
            theirs.running_var.uniform_(0.5, 2)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
@pytest.mark.parametrize("batch", [2, 0])
def test_batchnorm_options_match_torch(backend, training, options, batch):
    ours, theirs = twins(options, backend)
    ours.train(training), theirs.train(training)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, 3, 4, 5)) * 2 + 1
    xt = t(x, True)
    yt = theirs(xt)
    y = ours(x)
    assert y.shape == tuple(yt.shape)
    assert_close_f64(y, yt.detach().numpy(), what="y")
    dy = rng.standard_normal(y.shape)
    params = list(theirs.parameters())
    expected = torch_grads(yt, [xt, *params], dy)
    assert_close_f64(ours.backward(dy), expected[0], what="dx")
    for (name, p), grad in zip(ours.named_parameters(), expected[1:], strict=True):
        assert_close_f64(p.grad, np.zeros(3) if grad is None else grad, what=f"d{name}")
    for name, buffer in theirs.named_buffers():
        np.testing.assert_allclose(getattr(ours, name), buffer.numpy(), rtol=0, atol=1e-12)
    if theirs.running_mean is None:
        assert ours.running_mean is None and ours.running_var is None


def test_without_running_statistics_eval_uses_the_batch():
    bn = sn.nn.BatchNorm2d(2, track_running_stats=False, dtype=np.float64).eval()
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)) * 5 + 3
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-3)


def test_fold_bn_refuses_batch_statistics_and_handles_no_affine():
    conv = sn.nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate", dtype=np.float64)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fold_bn(conv, sn.nn.BatchNorm2d(3, track_running_stats=False, dtype=np.float64))
    bn = sn.nn.BatchNorm2d(3, affine=False, dtype=np.float64)
    bn.running_mean[...] = [0.5, -1, 2]
    bn.running_var[...] = [2, 0.5, 1]
    conv.eval(), bn.eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    fused = fold_bn(conv, bn)
    assert fused.padding_mode == "replicate"
    np.testing.assert_allclose(fused(x), bn(conv(x)), rtol=0, atol=1e-12)


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


def run_batch_norm(seed, shape, dtype, training, affine, device_buffers=True):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rand(rng, shape, dtype) * 2 + 3
    weight = rand(rng, (c,), dtype) if affine else None
    bias = rand(rng, (c,), dtype) if affine else None
    running = [rand(rng, (c,), dtype), np.abs(rand(rng, (c,), dtype)) + 0.5]
    ref_running = [r.copy() for r in running]
    torch_running = [r.copy() for r in running]  # before the forward updates running in place
    buffers = [cuda.to_device(r) for r in running] if device_buffers else running
    y, cache = CK.batch_norm2d_forward(x, weight, bias, *buffers, training, 0.1, 1e-5)
    y_ref, cache_ref = R.batch_norm2d_forward(x, weight, bias, *ref_running, training, 0.1, 1e-5)
    dy = rand(rng, shape, dtype)
    dx, dweight, dbias = CK.batch_norm2d_backward(dy, cache)
    ref = R.batch_norm2d_backward(dy, cache_ref)

    yt, grads, torch_running = torch_batch_norm(x, weight, bias, *torch_running, training, dy)
    m = shape[0] * shape[2] * shape[3]
    xhat = cache_ref[0]
    scale = amax_product(weight) if affine else 1.0
    inv_std = float(np.max(to_numpy(cache_ref[2])))
    check_cuda("batch_norm2d", "y", y, yt, y_ref, m, scale * amax_product(x) * inv_std + 1)
    check_cuda(
        "batch_norm2d", "dx", dx, grads[0], ref[0], m, scale * inv_std * amax_product(dy, xhat) * 2
    )
    if affine:
        check_cuda("batch_norm2d", "dweight", dweight, grads[1], ref[1], m, amax_product(dy, xhat))
        check_cuda("batch_norm2d", "dbias", dbias, grads[2], ref[2], m, amax_product(dy))
    else:
        assert dweight is None and dbias is None
    for name, mine, theirs in zip(
        ("running_mean", "running_var"), buffers, torch_running, strict=True
    ):
        actual = to_numpy(mine)
        assert_close_f32(actual, theirs, m, amax_product(x) ** 2, what=name)
        if dtype == np.float64:
            record_error(f"cuda/batch_norm2d {name}", actual, theirs)
    return dx, dweight


@pytest.mark.cuda
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
def test_cuda_batch_norm_matches_torch(seed, n, c, hw, dtype, training, affine):
    assume(not training or n * hw[0] * hw[1] > 1)
    run_batch_norm(seed, (n, c, *hw), dtype, training, affine)


@pytest.mark.cuda
@pytest.mark.parametrize("variant", _reduce.VARIANTS)
def test_cuda_batch_norm_reduction_variants(monkeypatch, variant):
    """Both reductions; 2*3*5 = 30 values per channel span several strides of a simulator block.
    Host running buffers are updated in place too."""
    monkeypatch.setattr(_reduce, "CHANNEL_REDUCTION", variant)
    run_batch_norm(1, (2, 2, 3, 5), np.float64, True, True, device_buffers=False)
    run_batch_norm(2, (2, 3, 3, 5), np.float32, True, True)


@pytest.mark.cuda
def test_cuda_batch_norm_backward_is_deterministic():
    first = run_batch_norm(7, (2, 2, 3, 4), np.float32, True, True)
    second = run_batch_norm(7, (2, 2, 3, 4), np.float32, True, True)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.cuda
@pytest.mark.skipif(SIMULATED, reason="realistic sizes take hours under the simulator")
def test_cuda_batch_norm_realistic_size_on_gpu():
    run_batch_norm(0, (16, 96, 28, 28), np.float32, True, True)
    run_batch_norm(1, (16, 96, 28, 28), np.float64, True, True)
