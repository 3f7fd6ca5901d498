"""reference.batch_norm2d against torch.nn.functional.batch_norm (float64 oracle, random dy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchnets.reference.batchnorm import batch_norm2d_backward, batch_norm2d_forward
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

MOMENTUM, EPS = 0.1, 1e-5


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


def torch_bn(x, weight, bias, running_mean, running_var, training, dy):
    """Oracle: y, (dx, dweight, dbias), and the float64 running stats torch updated in place."""
    xt, wt, bt = t(x, True), t(weight, True), t(bias, True)
    rm, rv = t(running_mean), t(running_var)
    y = F.batch_norm(xt, rm, rv, wt, bt, training=training, momentum=MOMENTUM, eps=EPS)
    return y.detach().numpy(), torch_grads(y, [xt, wt, bt], dy), rm.numpy(), rv.numpy()


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
        y_t, (dx_t, dw_t, db_t), rm_torch, rv_torch = torch_bn(
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
    y_t, (dx_t, dw_t, db_t), rm_t, rv_t = torch_bn(
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
    y_t, (dx_t, _, _), _, rv_t = torch_bn(x, weight, bias, running_mean, running_var, True, dy)
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
