"""reference activations against torch: relu, relu6, sigmoid, hard_sigmoid, hard_swish, silu
(incl. kinks, +-1e6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from scratchnets.reference import activations as act
from tests.helpers import (
    LAYOUTS,
    assert_close_f32,
    assert_close_f64,
    numeric_grad,
    record_error,
    t,
    with_layout,
)

#: name -> (forward, backward, torch function)
OPS = {
    "relu": (act.relu_forward, act.relu_backward, F.relu),
    "relu6": (act.relu6_forward, act.relu6_backward, F.relu6),
    "sigmoid": (act.sigmoid_forward, act.sigmoid_backward, torch.sigmoid),
    "hard_sigmoid": (act.hard_sigmoid_forward, act.hard_sigmoid_backward, F.hardsigmoid),
    "hard_swish": (act.hard_swish_forward, act.hard_swish_backward, F.hardswish),
    "silu": (act.silu_forward, act.silu_backward, F.silu),
}
#: the kinks of relu / relu6 / hard_sigmoid, huge values, signed zero
BOUNDARIES = np.array([0.0, -0.0, 6.0, -3.0, 3.0, 1e6, -1e6])
DTYPES = (np.float32, np.float64)


@st.composite
def arrays_with_boundaries(draw):
    """(x, dy) of a drawn shape, dtype and layout; x always holds every boundary value it can."""
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(0, 5, shape)
    flat_positions = rng.permutation(x.size)[: min(x.size, 2 * len(BOUNDARIES))]
    x.flat[flat_positions] = np.resize(BOUNDARIES, len(flat_positions))
    dy = rng.standard_normal(shape)
    layout = draw(st.sampled_from(LAYOUTS))
    return with_layout(x.astype(dtype), layout), with_layout(dy.astype(dtype), layout)


def torch_same_dtype(fn, x, dy):
    """torch's y and dx computed in x's own dtype (for the bit-exact comparisons)."""
    xt = torch.tensor(x, requires_grad=True)
    y = fn(xt)
    (dx,) = torch.autograd.grad(y, xt, torch.tensor(dy))
    return y.detach().numpy(), dx.numpy()


def torch_f64(fn, x, dy):
    xt = t(x, True)
    y = fn(xt)
    (dx,) = torch.autograd.grad(y, xt, t(dy))
    return y.detach().numpy(), dx.numpy()


def run(name, x, dy):
    forward, backward, _ = OPS[name]
    # no overflow, 0/0 or inf-inf anywhere, even at +-1e6 (underflow to 0 is harmless)
    with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        y, cache = forward(x)
        dx = backward(dy, cache)
    assert y.dtype == dx.dtype == x.dtype and y.shape == dx.shape == x.shape
    return y, dx


@pytest.mark.parametrize("name", ["relu", "relu6"])
@given(case=arrays_with_boundaries())
def test_relu_family_bit_exact(name, case):
    """Selection ops: forward and gradient bit-exact against torch in float32 and float64."""
    x, dy = case
    y, dx = run(name, x, dy)
    y_t, dx_t = torch_same_dtype(OPS[name][2], x, dy)
    np.testing.assert_array_equal(y, y_t)
    np.testing.assert_array_equal(dx, dx_t)
    if x.dtype == np.float64:
        record_error(f"reference/{name} y", y, y_t)
        record_error(f"reference/{name} dx", dx, dx_t)


@given(case=arrays_with_boundaries())
def test_hard_sigmoid(case):
    """Forward bit-exact; gradient dy/6 strictly inside (-3, 3) and exactly 0 elsewhere.

    torch's CPU kernel multiplies by the float32 constant 1/6 even for float64 tensors
    (0.1666666716...), so against torch the float64 gradient agrees to ~3e-8 relative, not 1e-10;
    the exact rule is checked separately.
    """
    x, dy = case
    y, dx = run("hard_sigmoid", x, dy)
    y_t, dx_t = torch_same_dtype(F.hardsigmoid, x, dy)
    np.testing.assert_array_equal(y, y_t)
    inside = (x > -3) & (x < 3)
    np.testing.assert_array_equal(dx, np.where(inside, dy / 6, 0))  # the exact rule
    np.testing.assert_array_equal(dx == 0, dx_t == 0)  # same zero set as torch, boundaries too
    np.testing.assert_allclose(dx, dx_t, rtol=4 * np.finfo(np.float32).eps, atol=0)
    if x.dtype == np.float64:
        record_error("reference/hard_sigmoid y", y, y_t)
        record_error("reference/hard_sigmoid dx", dx, dx_t)


@pytest.mark.parametrize("name", ["sigmoid", "hard_swish", "silu"])
@given(case=arrays_with_boundaries())
def test_smooth_and_swish_family(name, case):
    """float64 within 1e-10 of torch (kinks of hard_swish at -3 and 3 included); float32 against
    the float64 oracle. The slopes are at most 1.5 (hard_swish at x -> 3), ~1.1 (silu)."""
    x, dy = case
    y, dx = run(name, x, dy)
    y_t, dx_t = torch_f64(OPS[name][2], x, dy)
    if x.dtype == np.float64:
        record_error(f"reference/{name} y", y, y_t)
        record_error(f"reference/{name} dx", dx, dx_t)
        assert_close_f64(y, y_t, what="y")
        assert_close_f64(dx, dx_t, what="dx")
    else:
        assert_close_f32(y, y_t, 1, 1.0, what="y")
        assert_close_f32(dx, dx_t, 1, 1.5 * float(np.max(np.abs(dy))), what="dx")


def test_hard_swish_slope_at_the_kinks_is_torchs():
    """The slope jumps at -3 (0 -> -1/2) and 3 (3/2 -> 1); torch takes the outer pieces there."""
    x = np.array([-3.5, -3.0, -2.0, 0.0, 2.0, 3.0, 3.5])
    _, cache = act.hard_swish_forward(x)
    slope = act.hard_swish_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(slope, [0.0, 0.0, -2 / 3 + 0.5, 0.5, 2 / 3 + 0.5, 1.0, 1.0])
    _, torch_slope = torch_same_dtype(F.hardswish, x, np.ones_like(x))
    np.testing.assert_array_equal(slope, torch_slope)


def test_sigmoid_tails_keep_relative_accuracy():
    """Far in the tails y and dy/dx are tiny but must stay accurate in relative terms.

    sigmoid(-x) = e^-x / (1 + e^-x) and sigmoid'(x) = e^-|x| / (1 + e^-|x|)^2 = e^-|x| (1 + O(e^-|x|)).
    Computing 1 - y by subtraction would give exactly 0 for x = 40.
    """
    x = np.array([-700.0, -40.0, 40.0, 700.0])
    y, cache = act.sigmoid_forward(x)
    dx = act.sigmoid_backward(np.ones_like(x), cache)
    tail = np.exp(-np.abs(x))
    np.testing.assert_allclose(y[:2], tail[:2], rtol=1e-15)
    np.testing.assert_array_equal(y[2:], 1.0)
    np.testing.assert_allclose(dx, tail, rtol=1e-15)


@pytest.mark.parametrize("name", list(OPS))
def test_finite_differences(name):
    """Central differences of sum(f(x) * dy), with x kept 1e-2 away from every kink."""
    forward, backward, _ = OPS[name]
    rng = np.random.default_rng(5)
    x = rng.uniform(-8, 8, (3, 4))
    kinks = np.array([-3.0, 0.0, 3.0, 6.0])
    near = np.abs(x[..., None] - kinks).min(axis=-1) < 1e-2
    x[near] += 0.05
    dy = rng.standard_normal(x.shape)
    _, cache = forward(x)
    numeric = numeric_grad(lambda v: np.sum(forward(v)[0] * dy), x)
    np.testing.assert_allclose(backward(dy, cache), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", list(OPS))
def test_errors(name):
    forward, backward, _ = OPS[name]
    with pytest.raises(TypeError, match="float32 or float64"):
        forward(np.arange(4))
    _, cache = forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dy has shape \(3, 2\)"):
        backward(np.zeros((3, 2)), cache)
