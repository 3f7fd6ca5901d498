"""reference nearest / bilinear resizing against F.interpolate(size=...) (float64 oracle, random dy).

Nearest is a selection: forward bit-exact in float32 and float64 for up- and down-sampling, with
torch's source-index rule. Bilinear uses align_corners=False (half-pixel centres).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchnets.reference.upsample import (
    nearest_source_index,
    upsample_bilinear2d_backward,
    upsample_bilinear2d_forward,
    upsample_nearest2d_backward,
    upsample_nearest2d_forward,
)
from scratchnets.reference.windows import pair
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

OPS = {
    "nearest": (upsample_nearest2d_forward, upsample_nearest2d_backward, {"mode": "nearest"}),
    "bilinear": (
        upsample_bilinear2d_forward,
        upsample_bilinear2d_backward,
        {"mode": "bilinear", "align_corners": False},
    ),
}


@st.composite
def resize_cases(draw, max_in=9, max_out=16):
    """(shape, size as int or pair, layout, seed, huge values?): up-, down- and same-size."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)))
    shape += (draw(st.integers(1, max_in)), draw(st.integers(1, max_in)))
    size = draw(
        st.one_of(
            st.integers(1, max_out), st.tuples(st.integers(1, max_out), st.integers(1, max_out))
        )
    )
    return (
        shape,
        size,
        draw(st.sampled_from(LAYOUTS)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.booleans()),
    )


def run(mode, case, dtype):
    shape, size, layout, seed, huge = case
    forward, backward, torch_kwargs = OPS[mode]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * (1e6 if huge else 1.0)
    x = with_layout(x.astype(dtype), layout)
    dy = rng.standard_normal((*shape[:2], *pair(size, "size"))).astype(dtype)
    y, cache = forward(x, size)
    dx = backward(dy, cache)
    xt = t(x, True)
    y_t = F.interpolate(xt, size=pair(size, "size"), **torch_kwargs)
    dx_t = torch_grads(y_t, [xt], dy)[0]
    return x, dy, y, dx, y_t.detach().numpy(), dx_t


def fan_in(in_size: int, out_size: int, taps: int) -> int:
    """Most outputs that read one input pixel along an axis (terms summed into one dx element)."""
    return taps * math.ceil(out_size / in_size) + taps


@pytest.mark.parametrize("mode", list(OPS))
@given(case=resize_cases())
def test_float64_matches_torch(mode, case):
    _, _, y, dx, y_t, dx_t = run(mode, case, np.float64)
    assert y.dtype == dx.dtype == np.float64
    if mode == "nearest":
        np.testing.assert_array_equal(y, y_t)
    else:
        record_error(f"reference/upsample_{mode}2d y", y, y_t)
        assert_close_f64(y, y_t, what="y")
    record_error(f"reference/upsample_{mode}2d dx", dx, dx_t)
    assert_close_f64(dx, dx_t, what="dx")


@pytest.mark.parametrize("mode", list(OPS))
@given(case=resize_cases())
def test_float32_against_float64_oracle(mode, case):
    x, dy, y, dx, y_t, dx_t = run(mode, case, np.float32)
    assert y.dtype == dx.dtype == np.float32
    (H, W), (H_out, W_out) = case[0][2:], pair(case[1], "size")
    taps = 1 if mode == "nearest" else 2
    if mode == "nearest":
        np.testing.assert_array_equal(y, y_t.astype(np.float32))  # a selection: bit-exact
    else:
        assert_close_f32(y, y_t, taps * taps, float(np.abs(x).max()), "y")
    terms = fan_in(H, H_out, taps) * fan_in(W, W_out, taps)
    assert_close_f32(dx, dx_t, terms, float(np.abs(dy).max()), "dx")


@pytest.mark.parametrize("mode", list(OPS))
@pytest.mark.parametrize(
    "hw, size", [((3, 3), 7), ((4, 4), 7), ((7, 7), 3), ((7, 7), (14, 14)), ((5, 3), (2, 8))]
)
def test_model_sizes(mode, hw, size):
    """GhostNetV2 resizes pooled maps back up (3x3 -> 7x7, 4x4 -> 7x7); downsampling too."""
    _, _, y, dx, y_t, dx_t = run(mode, ((2, 3, *hw), size, "C", 7, False), np.float64)
    assert y.shape == y_t.shape
    assert_close_f64(y, y_t, what="y")
    record_error(f"reference/upsample_{mode}2d dx", dx, dx_t)
    assert_close_f64(dx, dx_t, what="dx")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_index_rule_is_torchs_for_all_small_sizes(dtype):
    """Every (in, out) up to 48 on both axes, including cases where torch's float32 rounding
    differs from exact integer division (in=14, out=46, dst=23: exact 7, torch 6)."""
    assert nearest_source_index(14, 46)[23] == 6 and (23 * 14) // 46 == 7
    for in_size in range(1, 49):
        x = torch.arange(in_size, dtype=dtype)
        for out_size in range(1, 49):
            expected = nearest_source_index(in_size, out_size)
            rows = F.interpolate(x.view(1, 1, in_size, 1), size=(out_size, 1), mode="nearest")
            cols = F.interpolate(x.view(1, 1, 1, in_size), size=(1, out_size), mode="nearest")
            np.testing.assert_array_equal(rows.flatten().long().numpy(), expected)
            np.testing.assert_array_equal(cols.flatten().long().numpy(), expected)


@settings(max_examples=10)
@pytest.mark.parametrize("mode", list(OPS))
@given(case=resize_cases(max_in=5, max_out=8))
def test_backward_matches_finite_differences(mode, case):
    shape, size, _, seed, _ = case
    forward, backward, _ = OPS[mode]
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal(shape), rng.standard_normal((*shape[:2], *pair(size, "size")))
    dx = backward(dy, forward(x, size)[1])
    numeric = numeric_grad(lambda v: np.sum(forward(v, size)[0] * dy), x)
    assert_close_f64(dx, numeric, rtol=1e-7, what=mode)


@pytest.mark.parametrize("forward", [upsample_nearest2d_forward, upsample_bilinear2d_forward])
@pytest.mark.parametrize(
    "x, size, error, message",
    [
        (np.zeros((1, 1, 3, 3)), 0, ValueError, "size"),
        (np.zeros((1, 1, 3, 3)), (4, 5, 6), TypeError, "size"),
        (np.zeros((1, 3, 3)), 4, ValueError, r"\(1, 3, 3\)"),
        (np.zeros((1, 1, 3, 3), np.int32), 4, TypeError, "float32 or float64"),
    ],
)
def test_invalid_arguments_raise_clear_errors(forward, x, size, error, message):
    with pytest.raises(error, match=message):
        forward(x, size)


def test_backward_rejects_dy_of_the_wrong_shape():
    _, cache = upsample_bilinear2d_forward(np.zeros((1, 2, 3, 3)), (5, 6))
    with pytest.raises(
        ValueError, match=r"dy has shape \(1, 2, 5, 5\), y had shape \(1, 2, 5, 6\)"
    ):
        upsample_bilinear2d_backward(np.zeros((1, 2, 5, 5)), cache)
