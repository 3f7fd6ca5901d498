"""ReLU, ReLU6, clip, sigmoid, hard-sigmoid, hard-swish, SiLU and softmax against float64 torch,
on every backend."""

from __future__ import annotations

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
from scratchnets.backends import OP_TABLE
from scratchnets.kernels import cpu
from scratchnets.reference import activations as act
from tests.cuda import examples
from tests.helpers import (
    LAYOUTS,
    assert_close_f32,
    assert_close_f64,
    numeric_grad,
    record_error,
    t,
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
    with_boundaries,
)

#: the family's torch oracle: op -> torch's function (every backend's tests apply it to the same
#: inputs: in float64 for the oracle, in x's own dtype for the bit-exact selections)
TORCH = {
    "relu": F.relu,
    "relu6": F.relu6,
    "clip": lambda x: F.hardtanh(x, -3.0, 6.0),
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
    "hard_swish": F.hardswish,
    "silu": F.silu,
    "softmax": lambda x: F.softmax(x, -1),
}
#: the arguments after x that the shared tests pass (clip's bounds on the boundary values -3, 6;
#: softmax over the last axis); the drawn ones have tests of their own
ARGS = {"clip": (-3.0, 6.0), "softmax": (-1,)}
SELECTIONS = ("relu", "relu6", "clip")  # forward is a pure selection: bit-exact


def test_the_oracle_covers_every_activation_of_the_op_table():
    assert set(TORCH) == {op.name for op in OP_TABLE if op.family == "activations"}


# ===============================================================================================
# the reference backend
#
# reference activations against torch: relu, relu6, sigmoid, hard_sigmoid, hard_swish, silu
# (incl. kinks, +-1e6).
# ===============================================================================================

#: name -> (forward of x, backward, torch function)
OPS = {
    op: (lambda x, op=op: getattr(act, f"{op}_forward")(x, *ARGS.get(op, ())),
         getattr(act, f"{op}_backward"), fn)
    for op, fn in TORCH.items()
}  # fmt: skip


#: the kinks of relu / relu6 / hard_sigmoid, huge values, signed zero
BOUNDARIES = np.array([0.0, -0.0, 6.0, -3.0, 3.0, 1e6, -1e6])


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
    """The oracle: torch's y and dx in float64 (dy any float dtype)."""
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


@pytest.mark.parametrize("name", SELECTIONS)
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


@pytest.mark.parametrize("name", ["sigmoid", "hard_swish", "silu", "softmax"])
@given(case=arrays_with_boundaries())
def test_smooth_and_swish_family(name, case):
    """float64 within 1e-10 of torch (kinks of hard_swish at -3 and 3 included); float32 against
    the float64 oracle. The slopes are at most 1.5 (hard_swish at x -> 3), ~1.1 (silu); softmax
    sums K terms per element (its dx at most 2 max|dy|)."""
    x, dy = case
    y, dx = run(name, x, dy)
    y_t, dx_t = torch_f64(OPS[name][2], x, dy)
    terms = x.shape[-1] if name == "softmax" else 1
    if x.dtype == np.float64:
        record_error(f"reference/{name} y", y, y_t)
        record_error(f"reference/{name} dx", dx, dx_t)
        assert_close_f64(y, y_t, what="y")
        assert_close_f64(dx, dx_t, what="dx")
    else:
        assert_close_f32(y, y_t, terms, 1.0, what="y")
        assert_close_f32(dx, dx_t, terms, 2 * float(np.max(np.abs(dy))), what="dx")


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

#: the kinks of relu / relu6 / hard_sigmoid, huge values, signed zero
KINKS = np.array([0.0, -0.0, 6.0, -6.0, 3.0, -3.0, 1e6, -1e6])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(TORCH))
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), layout=layouts, seed=seeds)
def test_cpu_activations(name, dtype, shape, layout, seed):
    rng = np.random.default_rng(seed)
    x = with_layout(with_boundaries(rng, shape, 5.0, KINKS).astype(dtype), layout)
    dy = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    forward, backward = getattr(cpu, f"{name}_forward"), getattr(cpu, f"{name}_backward")
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        y, cache = forward(x, *ARGS.get(name, ()))
        dx = backward(dy, cache)
    assert y.dtype == dx.dtype == dtype
    y_ref, cache_ref = getattr(ref, f"{name}_forward")(x, *ARGS.get(name, ()))
    dx_ref = getattr(ref, f"{name}_backward")(dy, cache_ref)
    y_t, dx_t = torch_f64(TORCH[name], x, dy)
    check_cpu(name, "y", y, y_ref, y_t, exact=name in SELECTIONS)
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
        smooth = name in ("sigmoid", "hard_swish", "silu", "softmax")  # arithmetic, not a select
        check_cpu(name, "dx", dx, dx_ref, dx_t, magnitude=2 * amax(dy), exact=not smooth)


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
@pytest.mark.parametrize("op", sorted(TORCH))
@settings(max_examples=examples(3, 50))
@given(seed=st.integers(0, 2**16), dtype=FLOATS, shape=st.sampled_from([(7,), (2, 3, 2, 2)]))
def test_cuda_activation_matches_torch(op, seed, dtype, shape):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    x.flat[:4] = [0.0, 6.0, -3.0, 3.0]  # the kinks: gradient 0 there, as torch
    y, cache = getattr(CK, f"{op}_forward")(x, *ARGS.get(op, ()))
    y_ref, cache_ref = getattr(R, f"{op}_forward")(x, *ARGS.get(op, ()))
    dy = rand(rng, shape, dtype)
    dx = getattr(CK, f"{op}_backward")(dy, cache)
    yt, dxt = torch_f64(TORCH[op], x, dy)
    if op == "hard_sigmoid":
        # torch multiplies by the float32 constant 1/6 even in float64 (3e-8 off): the oracle
        # is the exact rule dy / 6 inside (-3, 3), with torch's zero set (the kinks included)
        np.testing.assert_array_equal(to_numpy(dx) == 0, dxt == 0)
        dxt = np.where((x > -3) & (x < 3), dy.astype(np.float64) / 6, 0.0)
    if op in SELECTIONS:
        np.testing.assert_array_equal(to_numpy(y), y_ref)
    terms = shape[-1] if op == "softmax" else 1
    check_cuda(op, "y", y, yt, y_ref, terms)
    check_cuda(
        op, "dx", dx, dxt, getattr(R, f"{op}_backward")(dy, cache_ref), terms, 2 * amax_product(dy)
    )


# ===============================================================================================
# clip's drawn bounds and softmax's drawn axis, on every backend
# ===============================================================================================

BACKENDS = {"reference": ref, "cpu": cpu}

#: clip bounds: finite, half-open (ReLU's [0, inf)), and crossed (low > high: high everywhere)
BOUNDS = st.sampled_from([(-1.0, 1.0), (0.0, 6.0), (0.0, np.inf), (-np.inf, 2.5), (-0.5, 0.25),
                          (2.0, -1.0), (-np.inf, np.inf)])  # fmt: skip


@pytest.mark.parametrize("backend", list(BACKENDS))
@given(bounds=BOUNDS, dtype=FLOATS, shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       seed=seeds)  # fmt: skip
def test_clip_drawn_bounds_bit_exact(backend, bounds, dtype, shape, seed):
    """y and dx bit-exact against torch's hardtanh in x's dtype, the bounds themselves in x."""
    ops = BACKENDS[backend]
    rng = np.random.default_rng(seed)
    finite = [b for b in bounds if np.isfinite(b)]
    x = with_boundaries(rng, shape, 2.0, np.array(finite or [0.0])).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, cache = ops.clip_forward(x, *bounds)
    dx = ops.clip_backward(dy, cache)
    y_t, dx_t = torch_same_dtype(lambda v: torch.clamp(v, *bounds) if bounds[0] > bounds[1]
                                 else F.hardtanh(v, *bounds), x, dy)  # fmt: skip
    np.testing.assert_array_equal(y, y_t)
    expected_dx = np.where((x > bounds[0]) & (x < bounds[1]), dy, 0)  # hardtanh's rule
    if bounds[0] <= bounds[1]:
        np.testing.assert_array_equal(dx_t, expected_dx)  # the rule is torch's
    np.testing.assert_array_equal(dx, expected_dx)


@pytest.mark.parametrize("backend", list(BACKENDS))
@given(dtype=FLOATS, shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=seeds,
       data=st.data())  # fmt: skip
def test_softmax_drawn_axis_matches_torch(backend, dtype, shape, seed, data):
    ops = BACKENDS[backend]
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    rng = np.random.default_rng(seed)
    x = (6 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, cache = ops.softmax_forward(x, axis)
    dx = ops.softmax_backward(dy, cache)
    assert y.dtype == dx.dtype == dtype
    y_t, dx_t = torch_f64(lambda v: F.softmax(v, axis), x, dy)
    if dtype == np.float64:
        record_error(f"{backend}/softmax y", y, y_t)
        record_error(f"{backend}/softmax dx", dx, dx_t)
        assert_close_f64(y, y_t, what="y")
        assert_close_f64(dx, dx_t, what="dx")
    else:
        assert_close_f32(y, y_t, shape[axis], 1.0, what="y")
        assert_close_f32(dx, dx_t, shape[axis], 2 * amax(dy), what="dx")
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=4 * shape[axis] * np.finfo(dtype).eps)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_clip_crossed_bounds_give_high_everywhere_and_nan_passes(backend):
    x = np.array([-3.0, -1.0, 0.0, 2.0, 5.0, np.nan])
    y, _ = BACKENDS[backend].clip_forward(x, 2.0, -1.0)
    np.testing.assert_array_equal(y, torch.clamp(torch.tensor(x), 2.0, -1.0).numpy())
    y, _ = BACKENDS[backend].clip_forward(x, -0.5, 0.5)
    np.testing.assert_array_equal(y, [-0.5, -0.5, 0.0, 0.5, 0.5, np.nan])


def test_softmax_and_clip_errors_name_the_problem():
    for ops in BACKENDS.values():
        with pytest.raises(ValueError, match=r"softmax: axis 2 for an input of shape \(3, 4\)"):
            ops.softmax_forward(np.zeros((3, 4)), 2)
        with pytest.raises(TypeError, match="float32 or float64"):
            ops.clip_forward(np.arange(3), 0, 1)


@pytest.mark.cuda
@settings(max_examples=examples(3, 30))
@given(seed=st.integers(0, 2**16), dtype=FLOATS, axis=st.sampled_from([0, 1, -1]),
       bounds=BOUNDS)  # fmt: skip
def test_cuda_softmax_axis_and_clip_bounds(seed, dtype, axis, bounds):
    rng = np.random.default_rng(seed)
    shape = (2, 3, 2, 2)
    x = (4 * rng.standard_normal(shape)).astype(dtype)
    dy = rand(rng, shape, dtype)
    y, cache = CK.softmax_forward(x, axis)
    dx = CK.softmax_backward(dy, cache)
    yt, dxt = torch_f64(lambda v: F.softmax(v, axis), x, dy)
    check_cuda("softmax", "y", y, yt, ref.softmax_forward(x, axis)[0], shape[axis])
    check_cuda("softmax", "dx", dx, dxt, None, shape[axis], 2 * amax_product(dy))
    y, cache = CK.clip_forward(x, *bounds)
    np.testing.assert_array_equal(to_numpy(y), ref.clip_forward(x, *bounds)[0])
    dx = CK.clip_backward(dy, cache)
    np.testing.assert_array_equal(to_numpy(dx), np.where((x > bounds[0]) & (x < bounds[1]), dy, 0))
