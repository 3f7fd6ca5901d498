"""reference linear, dropout, add/mul (broadcasting), concat/slice and cross-entropy against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from scratchnets.reference import dropout as drop
from scratchnets.reference import elementwise as ew
from scratchnets.reference.linear import linear_backward, linear_forward
from scratchnets.reference.loss import cross_entropy_backward, cross_entropy_forward
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

DTYPES = (np.float32, np.float64)
seeds = st.integers(0, 2**32 - 1)


def amax(a) -> float:
    """max |a|, 0 for None or empty."""
    return 0.0 if a is None or np.size(a) == 0 else float(np.max(np.abs(a)))


def compare(op, what, actual, expected, dtype, reduction_size, magnitude):
    """Same dtype as the inputs; float64: ~1e-10 against torch (recorded); float32: scaled bound."""
    assert actual.dtype == dtype, f"{op} {what}: dtype {actual.dtype}, inputs were {dtype}"
    if actual.dtype == np.float64:
        record_error(f"reference/{op} {what}", actual, expected)
        assert_close_f64(actual, expected, what=f"{op} {what}")
    else:
        assert_close_f32(actual, expected, reduction_size, magnitude, what=f"{op} {what}")


def check_grads_numerically(fn, inputs, grads, rtol=1e-6, atol=1e-8):
    """Finite differences of the scalar fn(*inputs) w.r.t. each input, against ``grads``."""
    for i, (x, g) in enumerate(zip(inputs, grads, strict=True)):

        def fn_i(v, i=i):
            args = list(inputs)
            args[i] = v
            return fn(*args)

        np.testing.assert_allclose(g, numeric_grad(fn_i, x), rtol=rtol, atol=atol, err_msg=str(i))


# ----------------------------------------------------------------------------------------- linear


@given(
    n=st.integers(1, 5),
    d_in=st.integers(1, 7),
    d_out=st.integers(1, 6),
    bias=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    seed=seeds,
)
def test_linear_matches_torch(n, d_in, d_out, bias, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = with_layout(rng.standard_normal((n, d_in)).astype(dtype), layout)
    w = with_layout(rng.standard_normal((d_out, d_in)).astype(dtype), layout)
    b = rng.standard_normal(d_out).astype(dtype) if bias else None
    dy = rng.standard_normal((n, d_out)).astype(dtype)
    y, cache = linear_forward(x, w, b)
    dx, dw, db = linear_backward(dy, cache)
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if bias else None
    y_t = F.linear(xt, wt, bt)
    grads_t = torch_grads(y_t, [xt, wt] + ([bt] if bias else []), dy)
    compare("linear", "y", y, y_t.detach().numpy(), dtype, d_in, max(amax(x) * amax(w), amax(b)))
    compare("linear", "dx", dx, grads_t[0], dtype, d_out, amax(dy) * amax(w))
    compare("linear", "dw", dw, grads_t[1], dtype, n, amax(dy) * amax(x))
    if bias:
        compare("linear", "db", db, grads_t[2], dtype, n, amax(dy))
    else:
        assert db is None


def test_linear_finite_differences():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)
    dy = rng.standard_normal((3, 2))
    grads = linear_backward(dy, linear_forward(x, w, b)[1])
    check_grads_numerically(lambda *a: np.sum(linear_forward(*a)[0] * dy), (x, w, b), grads)


def test_linear_errors():
    with pytest.raises(ValueError, match=r"x has 3 input features but w of shape \(2, 4\)"):
        linear_forward(np.zeros((5, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"x \(N, in\)"):
        linear_forward(np.zeros(4), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        linear_forward(np.zeros((5, 4)), np.zeros((2, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="dy has shape"):
        linear_backward(np.zeros((5, 3)), linear_forward(np.zeros((5, 4)), np.zeros((2, 4)))[1])


# ---------------------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_a_fraction_one_minus_p(p):
    """Kept fraction within 5 binomial standard deviations of 1 - p; E[y] = E[x]."""
    x = np.ones((50, 40, 50))
    y, _ = drop.dropout_forward(x, p, seed=123)
    kept = np.count_nonzero(y) / y.size
    assert abs(kept - (1 - p)) < 5 * np.sqrt(p * (1 - p) / y.size)
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-15)
    assert abs(y.mean() - 1) < 5 * np.sqrt(p / (1 - p) / y.size)


def test_dropout_seed_determines_the_mask():
    a = drop.dropout_mask((4, 5, 6), 0.5, seed=7)
    np.testing.assert_array_equal(a, drop.dropout_mask((4, 5, 6), 0.5, seed=7))
    assert not np.array_equal(a, drop.dropout_mask((4, 5, 6), 0.5, seed=8))
    np.testing.assert_array_equal(a, np.random.default_rng(7).random((4, 5, 6)) >= 0.5)
    x = np.random.default_rng(0).standard_normal((4, 5, 6))
    y1, _ = drop.dropout_forward(x, 0.5, seed=7)
    y2, _ = drop.dropout_forward(x, 0.5, seed=7)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1 != 0, a)


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    p=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
    dtype=st.sampled_from(DTYPES),
    seed=seeds,
)
def test_dropout_matches_torch_given_the_mask(shape, p, dtype, seed):
    """y and dx equal torch's x * mask / (1 - p) with the same mask (torch's own RNG differs)."""
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    y, cache = drop.dropout_forward(x, p, training=True, seed=seed)
    dx = drop.dropout_backward(dy, cache)
    mask = drop.dropout_mask(shape, p, seed) if p > 0 else np.ones(shape, bool)
    xt = t(x, True)
    y_t = xt * (torch.tensor(mask, dtype=torch.float64) / (1 - p)) if p < 1 else xt * 0
    (dx_t,) = torch_grads(y_t, [xt], dy)
    scale = 1 / (1 - p) if p < 1 else 0.0
    compare("dropout", "y", y, y_t.detach().numpy(), dtype, 1, amax(x) * scale)
    compare("dropout", "dx", dx, dx_t, dtype, 1, amax(dy) * scale)


def test_dropout_identity_cases_and_p_one():
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    for kwargs in ({"p": 0.5, "training": False}, {"p": 0.0}):
        y, cache = drop.dropout_forward(x, seed=1, **kwargs)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(drop.dropout_backward(2 * x, cache), 2 * x)
    y, cache = drop.dropout_forward(x, p=1.0, seed=1)
    assert y.dtype == np.float32 and not np.any(y)
    assert not np.any(drop.dropout_backward(x, cache))


def test_dropout_finite_differences():
    x = np.random.default_rng(3).standard_normal((3, 4))
    dy = np.random.default_rng(4).standard_normal((3, 4))
    grads = (drop.dropout_backward(dy, drop.dropout_forward(x, 0.3, seed=5)[1]),)
    loss = lambda v: np.sum(drop.dropout_forward(v, 0.3, seed=5)[0] * dy)  # noqa: E731
    check_grads_numerically(loss, (x,), grads)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_p_outside_unit_interval(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        drop.dropout_forward(np.zeros(3), p)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        drop.dropout_mask((3,), p)


# --------------------------------------------------------------------------------------- add, mul


@st.composite
def broadcast_pairs(draw):
    """(a_shape, b_shape): b drops leading axes and/or has size 1 where a does not; maybe swapped."""
    full = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    b = full[draw(st.integers(0, len(full))) :]
    b = tuple(1 if draw(st.booleans()) else n for n in b)
    return (b, full) if draw(st.booleans()) else (full, b)


ELEMENTWISE = {"add": (ew.add_forward, ew.add_backward, torch.add)}
ELEMENTWISE["mul"] = (ew.mul_forward, ew.mul_backward, torch.mul)


@pytest.mark.parametrize("op", list(ELEMENTWISE))
@given(shapes=broadcast_pairs(), dtype=st.sampled_from(DTYPES), seed=seeds)
def test_add_mul_broadcasting_match_torch(op, shapes, dtype, seed):
    check_add_mul(op, *shapes, dtype, seed)


@pytest.mark.parametrize("op", list(ELEMENTWISE))
@pytest.mark.parametrize(
    "a_shape, b_shape",
    [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 1, 1), (2, 3, 4, 5)), ((2, 3, 4, 5), (1, 3, 1, 1))],
    ids=["residual", "se_gate", "per_channel"],
)
def test_add_mul_block_shapes(op, a_shape, b_shape):
    for dtype in DTYPES:
        check_add_mul(op, a_shape, b_shape, dtype, seed=9)


def check_add_mul(op, a_shape, b_shape, dtype, seed):
    forward, backward, torch_fn = ELEMENTWISE[op]
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(a_shape).astype(dtype), rng.standard_normal(b_shape).astype(dtype)
    y, cache = forward(a, b)
    dy = rng.standard_normal(y.shape).astype(dtype)
    da, db = backward(dy, cache)
    assert da.shape == a_shape and db.shape == b_shape
    at, bt = t(a, True), t(b, True)
    y_t = torch_fn(at, bt)
    da_t, db_t = torch_grads(y_t, [at, bt], dy)
    other = {"add": (1.0, 1.0), "mul": (amax(b), amax(a))}[op]  # |dy/da|, |dy/db| factors
    compare(op, "y", y, y_t.detach().numpy(), dtype, 1, amax(a) * amax(b) + amax(a) + amax(b))
    compare(op, "da", da, da_t, dtype, y.size // a.size, amax(dy) * other[0])
    compare(op, "db", db, db_t, dtype, y.size // b.size, amax(dy) * other[1])


@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_add_mul_finite_differences(op):
    forward, backward, _ = ELEMENTWISE[op]
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 3, 1, 1))
    dy = rng.standard_normal((2, 3, 2, 2))
    grads = backward(dy, forward(a, b)[1])
    check_grads_numerically(lambda *v: np.sum(forward(*v)[0] * dy), (a, b), grads)


def test_add_mul_errors():
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(4,\) do not broadcast"):
        ew.add_forward(np.zeros((2, 3)), np.zeros(4))
    with pytest.raises(TypeError, match="share one dtype"):
        ew.mul_forward(np.zeros(3, np.float32), np.zeros(3))
    with pytest.raises(ValueError, match="dy has shape"):
        ew.mul_backward(np.zeros((2, 2)), ew.mul_forward(np.zeros((2, 3)), np.zeros(3))[1])


# ----------------------------------------------------------------------------------- concat, slice


@given(
    base=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    data=st.data(),
    dtype=st.sampled_from(DTYPES),
    seed=seeds,
)
def test_concat_and_slice_match_torch_exactly(base, sizes, data, dtype, seed):
    """Pure copies: values and gradients bit-exact in both dtypes; concat and slice are adjoint."""
    axis = data.draw(st.integers(-len(base), len(base) - 1), label="axis")
    rng = np.random.default_rng(seed)
    ax = axis % len(base)
    xs = [rng.standard_normal(base[:ax] + (s,) + base[ax + 1 :]).astype(dtype) for s in sizes]
    y, cache = ew.concat_forward(xs, axis=axis)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dxs = ew.concat_backward(dy, cache)
    xts = [torch.tensor(x, requires_grad=True) for x in xs]
    y_t = torch.cat(xts, dim=axis)
    dxs_t = torch.autograd.grad(y_t, xts, torch.tensor(dy))
    np.testing.assert_array_equal(y, y_t.detach().numpy())
    assert len(dxs) == len(xs)
    for dx, dx_t in zip(dxs, dxs_t, strict=True):
        assert dx.dtype == dtype
        np.testing.assert_array_equal(dx, dx_t.numpy())

    # slice: one piece of y, against torch.narrow; its backward pads with zeros
    start = data.draw(st.integers(0, y.shape[ax]), label="start")
    stop = data.draw(st.integers(start, y.shape[ax]), label="stop")
    piece, slice_cache = ew.slice_forward(y, start, stop, axis=axis)
    yt = torch.tensor(y, requires_grad=True)
    piece_t = torch.narrow(yt, axis, start, stop - start)
    dpiece = rng.standard_normal(piece.shape).astype(dtype)
    (dslice_t,) = torch.autograd.grad(piece_t, yt, torch.tensor(dpiece))
    np.testing.assert_array_equal(piece, piece_t.detach().numpy())
    np.testing.assert_array_equal(ew.slice_backward(dpiece, slice_cache), dslice_t.numpy())

    # duality: concat's backward is slicing; the slices' backwards sum back to dy
    bounds = np.cumsum([0, *sizes])
    total = np.zeros_like(dy)
    for dx, lo, hi in zip(dxs, bounds[:-1], bounds[1:], strict=True):
        sliced, c = ew.slice_forward(dy, lo, hi, axis=axis)
        np.testing.assert_array_equal(dx, sliced)
        total += ew.slice_backward(sliced, c)
    np.testing.assert_array_equal(total, dy)


def test_concat_slice_finite_differences():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 1, 3))
    dy = rng.standard_normal((2, 3, 3))
    grads = ew.concat_backward(dy, ew.concat_forward([a, b])[1])
    check_grads_numerically(lambda *v: np.sum(ew.concat_forward(v)[0] * dy), (a, b), grads)
    dpiece = rng.standard_normal((2, 2, 3))
    grad = ew.slice_backward(dpiece, ew.slice_forward(dy, 1, 3)[1])
    check_grads_numerically(lambda v: np.sum(ew.slice_forward(v, 1, 3)[0] * dpiece), (dy,), (grad,))


def test_concat_slice_errors():
    with pytest.raises(ValueError, match="differ in other dimensions"):
        ew.concat_forward([np.zeros((2, 3)), np.zeros((3, 3))], axis=1)
    with pytest.raises(ValueError, match="at least one"):
        ew.concat_forward([])
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        ew.concat_forward([np.zeros((2, 3))], axis=2)
    with pytest.raises(ValueError, match=r"0 <= start <= stop <= 3"):
        ew.slice_forward(np.zeros((2, 3)), 2, 4)
    with pytest.raises(ValueError, match=r"0 <= start <= stop <= 3"):
        ew.slice_forward(np.zeros((2, 3)), 2, 1)


# ---------------------------------------------------------------------------------- cross-entropy


@given(
    n=st.integers(1, 6),
    k=st.integers(1, 7),
    logit_scale=st.sampled_from([1.0, 1e4]),
    label_smoothing=st.sampled_from([0.0, 0.1]),
    dtype=st.sampled_from(DTYPES),
    seed=seeds,
)
def test_cross_entropy_matches_torch(n, k, logit_scale, label_smoothing, dtype, seed):
    rng = np.random.default_rng(seed)
    logits = (logit_scale * rng.standard_normal((n, k))).astype(dtype)
    target = rng.integers(0, k, n)
    dloss = rng.standard_normal()
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, cache = cross_entropy_forward(logits, target, label_smoothing)
        dlogits = cross_entropy_backward(dloss, cache)
    assert loss.shape == () and loss.dtype == dtype and dlogits.dtype == dtype
    zt = t(logits, True)
    loss_t = F.cross_entropy(zt, torch.tensor(target), label_smoothing=label_smoothing)
    (dlogits_t,) = torch_grads(loss_t, [zt], np.asarray(dloss))
    magnitude = amax(logits) + 1.0  # log-sum-exp and z_t each carry ~eps * max|z|
    compare("cross_entropy", "loss", loss, loss_t.detach().numpy(), dtype, k, magnitude)
    compare("cross_entropy", "dlogits", dlogits, dlogits_t, dtype, k, abs(dloss) * magnitude / n)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_single_sample_by_hand(label_smoothing):
    """N = 1, K = 2, logits (0, log 3): p = (1/4, 3/4), q = (eps/2, 1 - eps/2) for target 1."""
    eps = label_smoothing
    loss, cache = cross_entropy_forward(np.array([[0.0, np.log(3.0)]]), np.array([1]), eps)
    expected = (1 - eps / 2) * np.log(4 / 3) + eps / 2 * np.log(4)
    np.testing.assert_allclose(loss, expected, rtol=1e-15)
    np.testing.assert_allclose(
        cross_entropy_backward(1.0, cache), [[0.25 - eps / 2, 0.75 - (1 - eps / 2)]], atol=1e-16
    )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_finite_differences(label_smoothing):
    rng = np.random.default_rng(10)
    logits, target = rng.standard_normal((3, 4)), np.array([0, 3, 1])
    grad = cross_entropy_backward(0.7, cross_entropy_forward(logits, target, label_smoothing)[1])
    loss = lambda z: 0.7 * cross_entropy_forward(z, target, label_smoothing)[0]  # noqa: E731
    check_grads_numerically(loss, (logits,), (grad,))


def test_cross_entropy_errors():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        cross_entropy_forward(z, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        cross_entropy_forward(z, np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"target must have shape \(2,\)"):
        cross_entropy_forward(z, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="integer class indices"):
        cross_entropy_forward(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"logits of shape \(N, K\)"):
        cross_entropy_forward(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        cross_entropy_forward(z, np.array([0, 1]), label_smoothing=1.5)
