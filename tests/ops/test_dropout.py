"""dropout: its seeded mask, and torch's formula given that mask, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scratchnets.kernels.cuda as CK
from scratchnets import reference as R
from scratchnets import reference as ref
from scratchnets import to_numpy
from scratchnets.kernels import cpu
from scratchnets.reference import dropout as drop
from tests.helpers import (
    t,
    torch_grads,
    with_layout,
)
from tests.ops.common import (
    DTYPES,
    amax,
    check_cpu,
    check_grads_numerically,
    compare,
    layouts,
    rand,
    seeds,
)

# ===============================================================================================
# the reference backend
#
# reference linear, dropout, add/mul (broadcasting), concat/slice and cross-entropy against torch.
# ===============================================================================================


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
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    p=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]),
    training=st.booleans(),
    layout=layouts,
    seed=seeds,
)
def test_cpu_dropout(dtype, shape, p, training, layout, seed):
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
    check_cpu("dropout", "y", y, y_ref, y_t.detach().numpy(), exact=True)
    check_cpu("dropout", "dx", dx, dx_ref, dx_t, exact=True)


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
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_cuda_dropout_matches_reference_mask(p, training):
    rng = np.random.default_rng(0)
    x, dy = rand(rng, (2, 3, 4), np.float32), rand(rng, (2, 3, 4), np.float32)
    y, cache = CK.dropout_forward(x, p, training, seed=42)
    y_ref, cache_ref = R.dropout_forward(x, p, training, seed=42)
    np.testing.assert_array_equal(to_numpy(y), y_ref)  # the same mask and multiplier
    np.testing.assert_array_equal(
        to_numpy(CK.dropout_backward(dy, cache)), R.dropout_backward(dy, cache_ref)
    )
    if training and 0 < p < 1:  # y = x * mask / (1 - p), mask = the reference's host draw
        mask = R.dropout.dropout_mask(x.shape, p, 42)
        np.testing.assert_allclose(to_numpy(y), np.where(mask, x / np.float32(1 - p), 0), rtol=1e-6)
