"""The softmax cross-entropy (label smoothing) against float64 torch on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import cuda

import scratchnets.kernels.cuda as CK
from scratchnets import reference as R
from scratchnets import reference as ref
from scratchnets import to_numpy
from scratchnets.kernels import cpu
from scratchnets.reference.loss import cross_entropy_backward, cross_entropy_forward
from tests.cuda import examples
from tests.helpers import (
    t,
    torch_grads,
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
    seeds,
)


def torch_cross_entropy(logits, target, label_smoothing, dloss):
    """The family's torch oracle (float64), used by every backend's tests: torch's loss and
    dlogits of ``F.cross_entropy(logits, target, label_smoothing=...)`` for the upstream dloss."""
    zt = t(logits, True)
    loss = F.cross_entropy(zt, torch.tensor(target), label_smoothing=label_smoothing)
    (dlogits,) = torch_grads(loss, [zt], np.asarray(dloss))
    return loss.detach().numpy(), dlogits


# ===============================================================================================
# the reference backend
#
# reference linear, dropout, add/mul (broadcasting), concat/slice and cross-entropy against torch.
# ===============================================================================================


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
    loss_t, dlogits_t = torch_cross_entropy(logits, target, label_smoothing, dloss)
    magnitude = amax(logits) + 1.0  # log-sum-exp and z_t each carry ~eps * max|z|
    compare("cross_entropy", "loss", loss, loss_t, dtype, k, magnitude)
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
    n=st.integers(1, 6),
    k=st.integers(1, 7),
    logit_scale=st.sampled_from([1.0, 1e4, 1e6]),
    label_smoothing=st.one_of(st.sampled_from([0.0, 0.1, 1.0]), st.floats(0.0, 1.0)),
    seed=seeds,
)
def test_cpu_cross_entropy(dtype, n, k, logit_scale, label_smoothing, seed):
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
    loss_t, dlogits_t = torch_cross_entropy(logits, target, label_smoothing, dloss)
    # float64 throughout: log-sum-exp and z_t carry ~eps64 * max|z|, then one rounding
    check_cpu("cross_entropy", "loss", loss, loss_ref, loss_t, 1, amax(logits) + 1)
    check_cpu("cross_entropy", "dlogits", dlogits, dlogits_ref, dlogits_t, 1, abs(dloss) / n)


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
def test_cuda_cross_entropy_matches_torch(seed, dtype, n, k, smoothing, dloss, device_target):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((n, k)) * 5).astype(dtype)
    target = rng.integers(0, k, n)
    loss, cache = CK.cross_entropy_forward(
        z, cuda.to_device(target) if device_target else target, smoothing
    )
    loss_ref, cache_ref = R.cross_entropy_forward(z, target, smoothing)
    assert tuple(loss.shape) == () and to_numpy(loss).dtype == dtype
    dz = CK.cross_entropy_backward(dloss, cache)
    lt, dzt = torch_cross_entropy(z, target, smoothing, dloss)
    check_cuda("cross_entropy", "loss", loss, lt, loss_ref, n * k, amax_product(z) + 1)
    ref = R.cross_entropy_backward(dloss, cache_ref)
    check_cuda("cross_entropy", "dlogits", dz, dzt, ref, k, abs(dloss) + 1e-30)
