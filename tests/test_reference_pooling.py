"""reference max / avg / global-avg pooling against torch (float64 oracle, random dy).

Max pooling is a selection: its forward must match bit for bit in float32 and float64, including
on ties (integer-valued inputs) and huge values; the gradient must follow torch's tie rule.
Cases draw ``ceil_mode`` (both pools) and ``dilation`` (max pooling) too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchnets.reference.pooling import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    pool_output_size,
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

VALUE_KINDS = ("normal", "ties", "huge")


@dataclass
class PoolCase:
    shape: tuple[int, int, int, int]
    kernel: int | tuple[int, int]
    stride: int | tuple[int, int] | None
    padding: int | tuple[int, int]
    values: str
    layout: str
    seed: int
    ceil_mode: bool = False
    dilation: int | tuple[int, int] = 1  # max pooling only

    def out_hw(self):
        (kh, kw), (ph, pw) = pair(self.kernel, "kernel"), pair(self.padding, "padding")
        sh, sw = (kh, kw) if self.stride is None else pair(self.stride, "stride")
        (dh, dw), (H, W) = pair(self.dilation, "dilation"), self.shape[2:]
        return (pool_output_size(H, kh, sh, ph, dh, self.ceil_mode),
                pool_output_size(W, kw, sw, pw, dw, self.ceil_mode))  # fmt: skip

    def max_args(self) -> dict:
        return dict(kernel_size=self.kernel, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, ceil_mode=self.ceil_mode)  # fmt: skip

    def overlap(self) -> int:
        """Most windows one input pixel can belong to (terms summed into one dx element)."""
        kh, kw = pair(self.kernel, "kernel")
        sh, sw = (kh, kw) if self.stride is None else pair(self.stride, "stride")
        return math.ceil(kh / sh) * math.ceil(kw / sw)


def _int_or_pair(draw, lo, hi):
    return draw(st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi))))


@st.composite
def pool_cases(draw, max_kernel=4, max_extra=5, values=VALUE_KINDS, dilated=False):
    """A pooling case; ``dilated`` draws a dilation of 1 to 3 too (max pooling only)."""
    kernel = _int_or_pair(draw, 1, max_kernel)
    kh, kw = pair(kernel, "kernel")
    stride = draw(
        st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
    )
    padding = draw(
        st.one_of(
            st.integers(0, min(kh, kw) // 2),
            st.tuples(st.integers(0, kh // 2), st.integers(0, kw // 2)),
        )
    )
    ph, pw = pair(padding, "padding")
    dilation = _int_or_pair(draw, 1, 3) if dilated else 1
    dh, dw = pair(dilation, "dilation")
    H = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, max_extra))
    W = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, max_extra))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), H, W)
    return PoolCase(
        shape,
        kernel,
        stride,
        padding,
        draw(st.sampled_from(values)),
        draw(st.sampled_from(LAYOUTS)),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.booleans()),
        dilation,
    )


def make_inputs(case: PoolCase, dtype):
    """x with the case's values and layout, and a random dy."""
    rng = np.random.default_rng(case.seed)
    if case.values == "ties":  # few distinct integers: many equal maxima per window
        x = rng.integers(-2, 3, case.shape).astype(float)
    elif case.values == "huge":  # +-1e6 next to O(1) values
        x = rng.standard_normal(case.shape) + 1e6 * rng.choice([-1.0, 0.0, 1.0], case.shape)
    else:
        x = rng.standard_normal(case.shape)
    dy = rng.standard_normal((*case.shape[:2], *case.out_hw()))
    return with_layout(x.astype(dtype), case.layout), dy.astype(dtype)


def torch_pool(op, x, dy, **kwargs):
    xt = t(x, True)
    y = op(xt, **kwargs)
    return y.detach().numpy(), torch_grads(y, [xt], dy)[0]


def check_f64(key, actual, expected):
    assert actual.dtype == np.float64
    record_error(f"reference/{key}", actual, expected)
    assert_close_f64(actual, expected, what=key)


# -- max pooling --------------------------------------------------------------------------------


def run_max(case: PoolCase, dtype):
    """Ours and torch's y and dx, or None when a dilated window holds only padding: we refuse
    that by name, torch returns -inf there (x is finite, so its -inf proves the empty window)."""
    x, dy = make_inputs(case, dtype)
    try:
        y, cache = max_pool2d_forward(x, **case.max_args())
    except ValueError as error:
        assert "holds no pixel" in str(error)
        assert np.isneginf(F.max_pool2d(t(x), **case.max_args()).numpy()).any()
        return None
    dx = max_pool2d_backward(dy, cache)
    y_t, dx_t = torch_pool(F.max_pool2d, x, dy, **case.max_args())
    return y, dx, y_t, dx_t, dy


@given(pool_cases(dilated=True))
def test_max_pool_float64_matches_torch(case):
    if (result := run_max(case, np.float64)) is None:
        return
    y, dx, y_t, dx_t, _ = result
    np.testing.assert_array_equal(y, y_t)  # a selection: bit-exact
    check_f64("max_pool2d dx", dx, dx_t)  # wrong tie routing would be an O(1) error


@given(pool_cases(dilated=True))
def test_max_pool_float32_forward_is_exact(case):
    if (result := run_max(case, np.float32)) is None:
        return
    y, dx, y_t, dx_t, dy = result
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_array_equal(y, y_t.astype(np.float32))
    assert_close_f32(dx, dx_t, case.overlap(), float(np.abs(dy).max()), "dx")


def test_max_pool_all_ties_route_to_the_first_cell_of_each_window():
    x = np.zeros((1, 1, 4, 5))
    dy = np.arange(1.0, 1 + 2 * 3).reshape(1, 1, 2, 3)  # windows (2, 2), stride 2, padding (0, 1)
    y, cache = max_pool2d_forward(x, 2, 2, (0, 1))
    dx = max_pool2d_backward(dy, cache)
    expected = np.zeros_like(x)
    expected[0, 0, 0::2, 0] = dy[0, 0, :, 0]  # first window column is padding: first real cell
    expected[0, 0, 0::2, 1::2] = dy[0, 0, :, 1:]
    np.testing.assert_array_equal(dx, expected)
    np.testing.assert_array_equal(
        dx, torch_pool(F.max_pool2d, x, dy, kernel_size=2, stride=2, padding=(0, 1))[1]
    )


def test_max_pool_minus_infinity_never_routes_to_padding():
    """A window whose real pixels are all -inf: torch gives dy to its first real pixel."""
    x = np.full((1, 2, 3, 4), -np.inf)
    dy = np.random.default_rng(0).standard_normal((1, 2, 3, 4))
    y, cache = max_pool2d_forward(x, 3, 1, 1)
    y_t, dx_t = torch_pool(F.max_pool2d, x, dy, kernel_size=3, stride=1, padding=1)
    np.testing.assert_array_equal(y, y_t)
    assert_close_f64(max_pool2d_backward(dy, cache), dx_t)  # same routing, sums in any order


def test_max_pool_nan_propagates_and_routes_like_torch():
    x = np.array([[[[1.0, np.nan, 0.5], [np.nan, 2.0, 3.0], [0.0, 1.0, np.nan]]]])
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y, cache = max_pool2d_forward(x, 2, 1)
    y_t, dx_t = torch_pool(F.max_pool2d, x, dy, kernel_size=2, stride=1)
    np.testing.assert_array_equal(y, y_t)  # NaN positions equal too
    assert_close_f64(max_pool2d_backward(dy, cache), dx_t)


# -- average pooling ----------------------------------------------------------------------------


def run_avg(case: PoolCase, count_include_pad: bool, dtype, divisor_override=None):
    x, dy = make_inputs(case, dtype)
    args = (case.kernel, case.stride, case.padding, case.ceil_mode, count_include_pad,
            divisor_override)  # fmt: skip
    y, cache = avg_pool2d_forward(x, *args)
    dx = avg_pool2d_backward(dy, cache)
    y_t, dx_t = torch_pool(lambda xt: F.avg_pool2d(xt, *args), x, dy)
    return x, dy, y, dx, y_t, dx_t


@given(pool_cases(), st.booleans(), st.sampled_from([None, 1, 4, -3]))
def test_avg_pool_float64_matches_torch(case, count_include_pad, divisor_override):
    _, _, y, dx, y_t, dx_t = run_avg(case, count_include_pad, np.float64, divisor_override)
    check_f64("avg_pool2d y", y, y_t)
    check_f64("avg_pool2d dx", dx, dx_t)


@given(pool_cases(), st.booleans())
def test_avg_pool_float32_against_float64_oracle(case, count_include_pad):
    x, dy, y, dx, y_t, dx_t = run_avg(case, count_include_pad, np.float32)
    assert y.dtype == dx.dtype == np.float32
    kh, kw = pair(case.kernel, "kernel")
    assert_close_f32(y, y_t, kh * kw, float(np.abs(x).max()), "y")
    assert_close_f32(dx, dx_t, case.overlap(), float(np.abs(dy).max()), "dx")


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize(
    "hw, kernel, stride, padding",
    [((7, 7), 2, 2, 0), ((7, 7), 3, 2, 1), ((5, 8), (3, 2), (2, 1), (1, 1)), ((1, 1), 3, 1, 1)],
)
def test_avg_pool_odd_sizes(hw, kernel, stride, padding, count_include_pad):
    """E.g. GhostNetV2's DFC branch: 7x7 input, k=2, s=2 -> 3x3."""
    case = PoolCase((2, 3, *hw), kernel, stride, padding, "normal", "C", 1)
    _, _, y, dx, y_t, dx_t = run_avg(case, count_include_pad, np.float64)
    assert y.shape == y_t.shape
    check_f64("avg_pool2d y", y, y_t)
    check_f64("avg_pool2d dx", dx, dx_t)


@pytest.mark.parametrize(
    "size, kernel, stride, padding, dilation, windows",
    [
        (5, 2, 2, 1, 1, 3),  # rounding up gives 4, but the 4th would start in the padding: dropped
        (6, 3, 2, 1, 1, 4),  # floor 3: the last window overhangs the padded input by one
        (7, 3, 3, 0, 1, 3),  # floor 2: the last window holds the last pixel alone
        (1, 2, 2, 1, 1, 1),  # rounding up gives 2, the 2nd would start in the padding
        (2, 3, 3, 0, 1, 1),  # a kernel larger than the input: floor 0, one overhanging window
        (4, 3, 2, 1, 2, 2),  # dilated (max pooling only): floor 1
    ],
)
def test_ceil_mode_edges_match_torch(size, kernel, stride, padding, dilation, windows):
    """Windows whose start or end sits in the padding or past it; both pools, every divisor."""
    case = PoolCase((2, 3, size, size + 1), kernel, stride, padding, "normal", "C", 7,
                    ceil_mode=True, dilation=dilation)  # fmt: skip
    y, dx, y_t, dx_t, _ = run_max(case, np.float64)
    assert y.shape[2] == windows and y.shape == y_t.shape
    np.testing.assert_array_equal(y, y_t)
    check_f64("max_pool2d ceil_mode dx", dx, dx_t)
    if dilation != 1:
        return
    for count_include_pad, divisor_override in ((True, None), (False, None), (True, 2)):
        _, _, y, dx, y_t, dx_t = run_avg(case, count_include_pad, np.float64, divisor_override)
        assert y.shape == y_t.shape
        check_f64("avg_pool2d ceil_mode y", y, y_t)
        check_f64("avg_pool2d ceil_mode dx", dx, dx_t)


def test_max_pool_window_of_padding_only_is_refused_by_name():
    """torch returns -inf for such a window (and an index outside the input); we refuse it."""
    with pytest.raises(ValueError, match=r"window of output row 0 holds no pixel .*\(1, 1, 2, 2\)"):
        max_pool2d_forward(np.zeros((1, 1, 2, 2)), 2, 1, 1, dilation=3)


# -- global average pooling ---------------------------------------------------------------------


@given(pool_cases(), st.sampled_from([np.float32, np.float64]))
def test_global_avg_pool_matches_torch(case, dtype):
    x, _ = make_inputs(case, dtype)
    dy = np.random.default_rng(case.seed).standard_normal((*case.shape[:2], 1, 1)).astype(dtype)
    y, cache = global_avg_pool2d_forward(x)
    dx = global_avg_pool2d_backward(dy, cache)
    y_t, dx_t = torch_pool(F.adaptive_avg_pool2d, x, dy, output_size=1)
    assert y.shape == (*case.shape[:2], 1, 1) and y.dtype == dx.dtype == dtype
    if dtype == np.float64:
        check_f64("global_avg_pool2d y", y, y_t)
        check_f64("global_avg_pool2d dx", dx, dx_t)
    else:
        hw = case.shape[2] * case.shape[3]
        assert_close_f32(y, y_t, hw, float(np.abs(x).max()), "y")
        assert_close_f32(dx, dx_t, 1, float(np.abs(dy).max()), "dx")


# -- finite differences -------------------------------------------------------------------------


@settings(max_examples=10)
@given(pool_cases(max_kernel=3, max_extra=2, values=("normal",)))
def test_backwards_match_finite_differences(case):
    """L = sum(y * dy); max pooling on well-separated values so that h never flips a max."""
    rng = np.random.default_rng(case.seed)
    x = rng.permutation(np.arange(np.prod(case.shape))).reshape(case.shape) * 0.1  # gaps of 0.1
    _, dy = make_inputs(case, np.float64)
    dy_global = rng.standard_normal((*case.shape[:2], 1, 1))
    ops = {
        "max": (
            max_pool2d_forward,
            max_pool2d_backward,
            (case.kernel, case.stride, case.padding, case.dilation, case.ceil_mode),
            dy,
        ),
        "avg": (
            avg_pool2d_forward,
            avg_pool2d_backward,
            (case.kernel, case.stride, case.padding, case.ceil_mode, False),
            dy,
        ),
        "global": (global_avg_pool2d_forward, global_avg_pool2d_backward, (), dy_global),
    }
    for name, (forward, backward, args, g) in ops.items():
        dx = backward(g, forward(x, *args)[1])
        numeric = numeric_grad(lambda v, f=forward, a=args, g=g: np.sum(f(v, *a)[0] * g), x)
        assert_close_f64(dx, numeric, rtol=1e-7, what=name)


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("forward", [max_pool2d_forward, avg_pool2d_forward])
@pytest.mark.parametrize(
    "x, kwargs, error, message",
    [
        (np.zeros((1, 1, 5, 5)), {"kernel_size": 3, "padding": 2}, ValueError, "at most half"),
        (np.zeros((1, 1, 2, 5)), {"kernel_size": 3}, ValueError, r"\(1, 1, 2, 5\)"),
        (np.zeros((1, 5, 5)), {"kernel_size": 2}, ValueError, r"\(1, 5, 5\)"),
        (np.zeros((1, 1, 5, 5), np.int64), {"kernel_size": 2}, TypeError, "float32 or float64"),
        (np.zeros((1, 1, 5, 5)), {"kernel_size": 0}, ValueError, "kernel_size"),
        (np.zeros((1, 1, 5, 5)), {"kernel_size": 2, "stride": 0}, ValueError, "stride"),
        (
            np.zeros((1, 1, 1, 1)),
            {"kernel_size": 3, "stride": 1, "ceil_mode": True},
            ValueError,
            "does not fit",
        ),
    ],
)
def test_invalid_arguments_raise_clear_errors(forward, x, kwargs, error, message):
    with pytest.raises(error, match=message):
        forward(x, **kwargs)


def test_backward_rejects_dy_of_the_wrong_shape():
    _, cache = max_pool2d_forward(np.zeros((1, 2, 4, 4)), 2)
    with pytest.raises(
        ValueError, match=r"dy has shape \(1, 2, 4, 4\), y had shape \(1, 2, 2, 2\)"
    ):
        max_pool2d_backward(np.zeros((1, 2, 4, 4)), cache)
    _, cache = global_avg_pool2d_forward(np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="dy has shape"):
        global_avg_pool2d_backward(np.zeros((1, 2)), cache)


@pytest.mark.parametrize(
    "divisor, error, message",
    [(0, ValueError, "must not be zero"), (1.5, TypeError, "must be an int"),
     (True, TypeError, "must be an int")],
)  # fmt: skip
def test_divisor_override_must_be_a_nonzero_int(divisor, error, message):
    with pytest.raises(error, match=message):
        avg_pool2d_forward(np.zeros((1, 1, 4, 4)), 2, divisor_override=divisor)
