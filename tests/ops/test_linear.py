"""linear against float64 torch on every backend."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets.kernels.cuda as CK
from scratchnets import reference as R
from scratchnets import reference as ref
from scratchnets.kernels import cpu
from scratchnets.kernels.cuda import _gemm
from scratchnets.reference.linear import linear_backward, linear_forward
from tests.cuda import examples
from tests.helpers import (
    LAYOUTS,
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
    check_grads_numerically,
    compare,
    layouts,
    rand,
    seeds,
)


#: the family's torch oracle (float64), used by every backend's tests
def torch_linear(x, w, b, dy):
    """torch's y and [dx, dw, db] of ``F.linear(x, w, b)`` for the upstream gradient dy (db only
    with a bias)."""
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if b is not None else None
    y = F.linear(xt, wt, bt)
    return y.detach().numpy(), torch_grads(y, [xt, wt] + ([bt] if bt is not None else []), dy)


# ===============================================================================================
# the reference backend
#
# reference linear, dropout, add/mul (broadcasting), concat/slice and cross-entropy against torch.
# ===============================================================================================


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
    y_t, grads_t = torch_linear(x, w, b, dy)
    compare("linear", "y", y, y_t, dtype, d_in, max(amax(x) * amax(w), amax(b)))
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
@given(
    n=st.one_of(st.integers(1, 5), st.integers(6, 40)),  # up to sizes cut into several GEMM tiles
    d=st.one_of(
        st.tuples(st.integers(1, 7), st.integers(1, 6)),
        st.tuples(st.integers(8, 150), st.integers(7, 300)),
    ),  # fmt: skip
    bias=st.booleans(),
    layout=layouts,
    seed=seeds,
)
def test_cpu_linear(dtype, n, d, bias, layout, seed):
    (d_in, d_out), rng = d, np.random.default_rng(seed)
    x = with_layout(rng.standard_normal((n, d_in)).astype(dtype), layout)
    w = with_layout(rng.standard_normal((d_out, d_in)).astype(dtype), layout)
    b = rng.standard_normal(d_out).astype(dtype) if bias else None
    dy = rng.standard_normal((n, d_out)).astype(dtype)
    y, cache = cpu.linear_forward(x, w, b)
    grads = cpu.linear_backward(dy, cache)
    y_ref, cache_ref = ref.linear_forward(x, w, b)
    grads_ref = ref.linear_backward(dy, cache_ref)
    y_t, grads_t = torch_linear(x, w, b, dy)
    check_cpu("linear", "y", y, y_ref, y_t, d_in, amax(x) * amax(w) + amax(b))
    check_cpu("linear", "dx", grads[0], grads_ref[0], grads_t[0], d_out, amax(dy) * amax(w))
    check_cpu("linear", "dw", grads[1], grads_ref[1], grads_t[1], n, amax(dy) * amax(x))
    if bias:
        check_cpu("linear", "db", grads[2], grads_ref[2], grads_t[2], n, amax(dy))
    else:
        assert grads[2] is None


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
def test_cuda_linear_matches_torch(variant, seed, dtype, n, n_in, n_out, bias):
    with mock.patch.object(_gemm, "GEMM", variant):
        run_linear(seed, dtype, n, n_in, n_out, bias)


def run_linear(seed, dtype, n, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    x, w = rand(rng, (n, n_in), dtype), rand(rng, (n_out, n_in), dtype)
    b = rand(rng, (n_out,), dtype) if bias else None
    y, cache = CK.linear_forward(x, w, b)
    y_ref, cache_ref = R.linear_forward(x, w, b)
    dy = rand(rng, (n, n_out), dtype)
    dx, dw, db = CK.linear_backward(dy, cache)
    ref = R.linear_backward(dy, cache_ref)
    yt, grads = torch_linear(x, w, b, dy)
    check_cuda("linear", "y", y, yt, y_ref, n_in + 1, amax_product(x, w) + 1)
    check_cuda("linear", "dx", dx, grads[0], ref[0], n_out, amax_product(dy, w))
    check_cuda("linear", "dw", dw, grads[1], ref[1], n, amax_product(dy, x))
    if bias:
        check_cuda("linear", "db", db, grads[2], ref[2], n, amax_product(dy))
    else:
        assert db is None
