"""Adaptive average and max pooling against torch (``F.adaptive_avg_pool2d`` / ``_max_pool2d``).

Any output size, larger or smaller than the input, None entries keeping an axis; torch's window
rule ``[floor(i H / OH), ceil((i + 1) H / OH))``. float64 within 1e-10 of torch on the reference
and cpu backends (the max's winner index equals torch's ``return_indices`` exactly, ties and NaN
included); float32 against the float64 oracle with the bound for sums of a window's terms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import scratchnets as sn
from scratchnets import reference as R
from scratchnets.kernels import cpu as K
from scratchnets.reference.pooling import adaptive_windows
from tests.helpers import assert_close_f32, assert_close_f64, record_error, t, torch_grads

BACKENDS = {"reference": R, "cpu": K}


@st.composite
def cases(draw):
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    size = st.one_of(st.integers(1, 10), st.none())
    output_size = draw(st.one_of(st.integers(1, 10), st.tuples(size, size)))
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
                output_size=output_size, ties=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))  # fmt: skip


def inputs(case, dtype):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"]) * 3
    if case["ties"]:  # few distinct values: ties go to the first maximum in scan order
        x = np.round(x)
    return x.astype(dtype), rng


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("kind", ["avg", "max"])
@given(case=cases())
def test_float64_matches_torch(backend, kind, case):
    ops = BACKENDS[backend]
    x, rng = inputs(case, np.float64)
    y, cache = getattr(ops, f"adaptive_{kind}_pool2d_forward")(x, case["output_size"])
    xt = t(x, True)
    if kind == "max":
        yt, indices = F.adaptive_max_pool2d(xt, case["output_size"], return_indices=True)
        np.testing.assert_array_equal(cache.argmax, indices.numpy())
    else:
        yt = F.adaptive_avg_pool2d(xt, case["output_size"])
    assert y.shape == tuple(yt.shape)
    dy = rng.standard_normal(y.shape)
    dx = getattr(ops, f"adaptive_{kind}_pool2d_backward")(dy, cache)
    (dx_t,) = torch_grads(yt, [xt], dy)
    record_error(f"{backend}/adaptive_{kind}_pool2d dx", dx, dx_t)
    assert_close_f64(y, yt.detach().numpy(), what="y")
    assert_close_f64(dx, dx_t, what="dx")


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("kind", ["avg", "max"])
@given(case=cases())
def test_float32_against_float64_oracle(backend, kind, case):
    ops = BACKENDS[backend]
    x, rng = inputs(case, np.float32)
    y, cache = getattr(ops, f"adaptive_{kind}_pool2d_forward")(x, case["output_size"])
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = getattr(ops, f"adaptive_{kind}_pool2d_backward")(dy, cache)
    assert y.dtype == dx.dtype == np.float32
    xt = t(x, True)
    yt = getattr(F, f"adaptive_{kind}_pool2d")(xt, case["output_size"])
    (dx_t,) = torch_grads(yt, [xt], dy)
    H, W = x.shape[2:]
    (r0, r1), (c0, c1) = (adaptive_windows(n, o) for n, o in zip((H, W), y.shape[2:], strict=True))
    window = int((r1 - r0).max() * (c1 - c0).max())  # terms of the largest sum
    overlap = 4  # adjacent windows overlap by at most one row and one column
    assert_close_f32(y, yt.detach().numpy(), window, float(np.abs(x).max()), "y")
    assert_close_f32(dx, dx_t, overlap * window, float(np.abs(dy).max()), "dx")


def test_windows_follow_torchs_rule():
    start, end = adaptive_windows(5, 3)  # floor(5i/3), ceil(5(i+1)/3)
    assert start.tolist() == [0, 1, 3] and end.tolist() == [2, 4, 5]
    start, end = adaptive_windows(2, 5)  # upsampling: windows repeat pixels
    assert start.tolist() == [0, 0, 0, 1, 1] and end.tolist() == [1, 1, 2, 2, 2]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize(
    "shape, output_size, message",
    [
        ((1, 1, 4, 4), 0, "output_size must be >= 1"),
        ((1, 4, 4), 2, r"expects x of shape \(N, C, H, W\)"),
        ((1, 1, 0, 4), 2, "empty spatial axis"),
    ],
)
def test_invalid_arguments_raise_clear_errors(backend, shape, output_size, message):
    for kind in ("avg", "max"):
        with pytest.raises(ValueError, match=message):
            getattr(BACKENDS[backend], f"adaptive_{kind}_pool2d_forward")(
                np.zeros(shape), output_size
            )


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize(
    "layer, args, shape",
    [
        ("MaxPool2d", (3, 2, 1), (2, 3, 7, 6)),
        ("MaxPool2d", ((2, 3), (1, 2), (1, 1)), (3, 5, 7)),  # unbatched
        ("AdaptiveMaxPool2d", ((3, None),), (2, 3, 5, 4)),
        ("AdaptiveMaxPool2d", (2,), (3, 5, 5)),  # unbatched
    ],
)
def test_return_indices_equal_torchs(backend, layer, args, shape):
    """``return_indices=True``: (y, indices), indices the flat h * W + w of each maximum, int64,
    equal to torch's (ties on rounded inputs go to the first maximum); backward unchanged."""
    ours = getattr(sn.nn, layer)(*args, return_indices=True).to(backend)
    theirs = getattr(torch.nn, layer)(*args, return_indices=True)
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal(shape) * 2)
    xt = t(x, True)
    yt, indices_t = theirs(xt)
    y, indices = ours(x)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, indices_t.numpy())
    dy = rng.standard_normal(y.shape)
    assert_close_f64(y, yt.detach().numpy(), what="y")
    assert_close_f64(ours.backward(dy), torch_grads(yt, [xt], dy)[0], what="dx")
