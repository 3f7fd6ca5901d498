"""add and mul with broadcasting, concat and slice against float64 torch on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from numba import cuda

import scratchnets.kernels.cuda as CK
from scratchnets import reference as R
from scratchnets import reference as ref
from scratchnets.kernels import cpu
from scratchnets.reference import elementwise as ew
from tests.helpers import (
    t,
    torch_grads,
    with_layout,
)
from tests.ops.common import (
    DTYPES,
    amax,
    amax_product,
    check_cpu,
    check_cuda,
    check_grads_numerically,
    compare,
    layouts,
    rand,
    seeds,
)

#: the family's torch oracles, used by every backend's tests: float64 by default (the oracle),
#: or the inputs' own dtype for the bit-exact copies of concat and slice


def torch_binary(op, a, b, dy):
    """torch's y and [da, db] of ``torch.add`` / ``torch.mul`` (broadcasting), float64."""
    at, bt = t(a, True), t(b, True)
    y = getattr(torch, op)(at, bt)
    return y.detach().numpy(), torch_grads(y, [at, bt], dy)


def _tensor(x, dtype):
    return torch.tensor(np.asarray(x, dtype=dtype), requires_grad=True)


def torch_concat(xs, axis, dy, dtype=np.float64):
    """torch's y and [dx of each input] of ``torch.cat(xs, dim=axis)``, computed in ``dtype``."""
    xts = [_tensor(x, dtype) for x in xs]
    y = torch.cat(xts, dim=axis)
    grads = torch.autograd.grad(y, xts, torch.tensor(np.asarray(dy, dtype=dtype)))
    return y.detach().numpy(), [g.numpy() for g in grads]


def torch_slice(x, start, stop, axis, dy, dtype=np.float64):
    """torch's y and dx of ``torch.narrow(x, axis, start, stop - start)``, computed in ``dtype``."""
    xt = _tensor(x, dtype)
    y = torch.narrow(xt, axis, start, stop - start)
    (dx,) = torch.autograd.grad(y, [xt], torch.tensor(np.asarray(dy, dtype=dtype)))
    return y.detach().numpy(), dx.numpy()


# ===============================================================================================
# the reference backend
#
# reference linear, dropout, add/mul (broadcasting), concat/slice and cross-entropy against torch.
# ===============================================================================================


@st.composite
def broadcast_pairs(draw):
    """(a_shape, b_shape): b drops leading axes and/or has size 1 where a does not; maybe swapped."""
    full = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    b = full[draw(st.integers(0, len(full))) :]
    b = tuple(1 if draw(st.booleans()) else n for n in b)
    return (b, full) if draw(st.booleans()) else (full, b)


ELEMENTWISE = {"add": (ew.add_forward, ew.add_backward)}


ELEMENTWISE["mul"] = (ew.mul_forward, ew.mul_backward)


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
    forward, backward = ELEMENTWISE[op]
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(a_shape).astype(dtype), rng.standard_normal(b_shape).astype(dtype)
    y, cache = forward(a, b)
    dy = rng.standard_normal(y.shape).astype(dtype)
    da, db = backward(dy, cache)
    assert da.shape == a_shape and db.shape == b_shape
    y_t, (da_t, db_t) = torch_binary(op, a, b, dy)
    other = {"add": (1.0, 1.0), "mul": (amax(b), amax(a))}[op]  # |dy/da|, |dy/db| factors
    compare(op, "y", y, y_t, dtype, 1, amax(a) * amax(b) + amax(a) + amax(b))
    compare(op, "da", da, da_t, dtype, y.size // a.size, amax(dy) * other[0])
    compare(op, "db", db, db_t, dtype, y.size // b.size, amax(dy) * other[1])


@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_add_mul_finite_differences(op):
    forward, backward = ELEMENTWISE[op]
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
    y_t, dxs_t = torch_concat(xs, axis, dy, dtype)
    np.testing.assert_array_equal(y, y_t)
    assert len(dxs) == len(xs)
    for dx, dx_t in zip(dxs, dxs_t, strict=True):
        assert dx.dtype == dtype
        np.testing.assert_array_equal(dx, dx_t)

    # slice: one piece of y, against torch.narrow; its backward pads with zeros
    start = data.draw(st.integers(0, y.shape[ax]), label="start")
    stop = data.draw(st.integers(start, y.shape[ax]), label="stop")
    piece, slice_cache = ew.slice_forward(y, start, stop, axis=axis)
    dpiece = rng.standard_normal(piece.shape).astype(dtype)
    piece_t, dslice_t = torch_slice(y, start, stop, axis, dpiece, dtype)
    np.testing.assert_array_equal(piece, piece_t)
    np.testing.assert_array_equal(ew.slice_backward(dpiece, slice_cache), dslice_t)

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
def cpu_broadcast_pairs(draw):
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
@given(shapes=cpu_broadcast_pairs(), layout=layouts, seed=seeds)
def test_cpu_add_mul_broadcasting(op, dtype, shapes, layout, seed):
    rng = np.random.default_rng(seed)
    a, b = (rng.standard_normal(s).astype(dtype) for s in shapes)
    a, b = (with_layout(v, layout) if v.ndim else v for v in (a, b))  # b may be 0-d
    y, cache = getattr(cpu, f"{op}_forward")(a, b)
    dy = with_layout(rng.standard_normal(y.shape).astype(dtype), layout)
    da, db = getattr(cpu, f"{op}_backward")(dy, cache)
    y_ref, cache_ref = getattr(ref, f"{op}_forward")(a, b)
    da_ref, db_ref = getattr(ref, f"{op}_backward")(dy, cache_ref)
    y_t, (da_t, db_t) = torch_binary(op, a, b, dy)
    slope_a, slope_b = (1.0, 1.0) if op == "add" else (amax(b), amax(a))
    check_cpu(op, "y", y, y_ref, y_t, magnitude=amax(a) * amax(b) + amax(a, b))
    check_cpu(op, "da", da, da_ref, da_t, y.size // a.size, amax(dy) * slope_a)
    check_cpu(op, "db", db, db_ref, db_t, y.size // b.size, amax(dy) * slope_b)


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    base=st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple),
    sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4),
    data=st.data(),
    seed=seeds,
)
def test_cpu_concat_slice(dtype, base, sizes, data, seed):
    """Pure copies: bit-exact against torch.cat / torch.narrow and the reference."""
    axis = data.draw(st.integers(-len(base), len(base) - 1), label="axis")
    ax, rng = axis % len(base), np.random.default_rng(seed)
    xs = [rng.standard_normal(base[:ax] + (s,) + base[ax + 1 :]).astype(dtype) for s in sizes]
    y, cache = cpu.concat_forward(xs, axis=axis)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dxs = cpu.concat_backward(dy, cache)
    y_t, dxs_t = torch_concat(xs, axis, dy)
    check_cpu("concat", "y", y, ref.concat_forward(xs, axis=axis)[0], y_t, exact=True)
    for dx, dx_t in zip(dxs, dxs_t, strict=True):
        check_cpu("concat", "dx", dx, None, dx_t, exact=True)

    start = data.draw(st.integers(0, y.shape[ax]), label="start")
    stop = data.draw(st.integers(start, y.shape[ax]), label="stop")
    piece, slice_cache = cpu.slice_forward(y, start, stop, axis=axis)
    dpiece = rng.standard_normal(piece.shape).astype(dtype)
    piece_t, dslice_t = torch_slice(y, start, stop, axis, dpiece)
    piece_ref, slice_cache_ref = ref.slice_forward(y, start, stop, axis=axis)
    check_cpu("slice", "y", piece, piece_ref, piece_t, exact=True)
    check_cpu(
        "slice",
        "dx",
        cpu.slice_backward(dpiece, slice_cache),
        ref.slice_backward(dpiece, slice_cache_ref),
        dslice_t,
        exact=True,
    )


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

BROADCAST_PAIRS = [
    ((2, 3, 2, 2), (2, 3, 2, 2)),  # residual
    ((2, 3, 1, 1), (2, 3, 3, 2)),  # squeeze-excitation gate
    ((2, 3, 2, 2), (3, 1, 1)),  # fewer dims
    ((4,), (3, 1)),  # both broadcast
    ((), (2, 2)),  # a 0-d array
]


@pytest.mark.cuda
@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("shapes", BROADCAST_PAIRS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_add_mul_broadcasting_matches_torch(op, shapes, dtype):
    rng = np.random.default_rng(1)
    a, b = rand(rng, shapes[0], dtype), rand(rng, shapes[1], dtype)
    y, cache = getattr(CK, f"{op}_forward")(a, b)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(a, b)
    dy = rand(rng, y_ref.shape, dtype)
    da, db = getattr(CK, f"{op}_backward")(dy, cache)
    ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    yt, grads = torch_binary(op, a, b, dy)
    r = int(np.prod(y_ref.shape))
    check_cuda(
        op,
        "y",
        y,
        yt,
        y_ref,
        1,
        amax_product(a, b) + amax_product(a) + amax_product(b),
    )
    check_cuda(op, "da", da, grads[0], ref[0], r, amax_product(dy, b) + amax_product(dy))
    check_cuda(op, "db", db, grads[1], ref[1], r, amax_product(dy, a) + amax_product(dy))


@pytest.mark.cuda
def test_cuda_add_rejects_bad_shapes_with_names():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"):
        CK.add_forward(np.zeros((2, 3)), cuda.to_device(np.zeros(4)))
    with pytest.raises(ValueError, match="up to 4 dimensions"):
        CK.mul_forward(np.zeros((1, 1, 1, 1, 2)), np.zeros(2))


@pytest.mark.cuda
@pytest.mark.parametrize("axis", [1, -1, 0])
def test_cuda_concat_and_slice_match_torch(axis):
    rng = np.random.default_rng(2)
    sizes = (1, 3, 2)  # the inputs' extents along the concat axis
    xs = [
        rand(rng, (2, 2, 3)[: axis % 3] + (n,) + (2, 2, 3)[axis % 3 + 1 :], np.float64)
        for n in sizes
    ]
    y, cache = CK.concat_forward([cuda.to_device(xs[0]), *xs[1:]], axis)
    dy = rand(rng, tuple(y.shape), np.float64)
    yt, grads = torch_concat(xs, axis, dy)
    check_cuda("concat", "y", y, yt)
    for i, (dx, g) in enumerate(zip(CK.concat_backward(dy, cache), grads, strict=True)):
        check_cuda("concat", f"dx{i}", dx, g)

    x = xs[-1]
    length = x.shape[axis]
    s, cache = CK.slice_forward(x, 1, length, axis)
    ds = rand(rng, tuple(s.shape), np.float64)
    st_, dxt = torch_slice(x, 1, length, axis, ds)
    check_cuda("slice", "y", s, st_)
    check_cuda("slice", "dx", CK.slice_backward(ds, cache), dxt)
