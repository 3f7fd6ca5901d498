"""Max, average, global and adaptive pooling against float64 torch on every backend."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.functional as TF
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import scratchnets as sn
import scratchnets.kernels.cuda as CK
from scratchnets import reference as R
from scratchnets import reference as ref
from scratchnets import to_numpy
from scratchnets.kernels import cpu
from scratchnets.kernels import cpu as K
from scratchnets.reference.pooling import (
    adaptive_windows,
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    pool_output_size,
)
from scratchnets.reference.windows import pair
from tests.cuda import examples
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
    torch_op,
)

# ===============================================================================================
# the reference backend
#
# reference max / avg / global-avg pooling against torch (float64 oracle, random dy).
#
# Max pooling is a selection: its forward must match bit for bit in float32 and float64, including
# on ties (integer-valued inputs) and huge values; the gradient must follow torch's tie rule.
# Cases draw ``ceil_mode`` (both pools) and ``dilation`` (max pooling) too.
# ===============================================================================================

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


def check_f64(key, actual, expected):
    assert actual.dtype == np.float64
    record_error(f"reference/{key}", actual, expected)
    assert_close_f64(actual, expected, what=key)


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
    y_t, dx_t = torch_op(F.max_pool2d, x, dy, **case.max_args())
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
        dx, torch_op(F.max_pool2d, x, dy, kernel_size=2, stride=2, padding=(0, 1))[1]
    )


def test_max_pool_minus_infinity_never_routes_to_padding():
    """A window whose real pixels are all -inf: torch gives dy to its first real pixel."""
    x = np.full((1, 2, 3, 4), -np.inf)
    dy = np.random.default_rng(0).standard_normal((1, 2, 3, 4))
    y, cache = max_pool2d_forward(x, 3, 1, 1)
    y_t, dx_t = torch_op(F.max_pool2d, x, dy, kernel_size=3, stride=1, padding=1)
    np.testing.assert_array_equal(y, y_t)
    assert_close_f64(max_pool2d_backward(dy, cache), dx_t)  # same routing, sums in any order


def test_max_pool_nan_propagates_and_routes_like_torch():
    x = np.array([[[[1.0, np.nan, 0.5], [np.nan, 2.0, 3.0], [0.0, 1.0, np.nan]]]])
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y, cache = max_pool2d_forward(x, 2, 1)
    y_t, dx_t = torch_op(F.max_pool2d, x, dy, kernel_size=2, stride=1)
    np.testing.assert_array_equal(y, y_t)  # NaN positions equal too
    assert_close_f64(max_pool2d_backward(dy, cache), dx_t)


def run_avg(case: PoolCase, count_include_pad: bool, dtype, divisor_override=None):
    x, dy = make_inputs(case, dtype)
    args = (case.kernel, case.stride, case.padding, case.ceil_mode, count_include_pad,
            divisor_override)  # fmt: skip
    y, cache = avg_pool2d_forward(x, *args)
    dx = avg_pool2d_backward(dy, cache)
    y_t, dx_t = torch_op(lambda xt: F.avg_pool2d(xt, *args), x, dy)
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


@given(pool_cases(), st.sampled_from([np.float32, np.float64]))
def test_global_avg_pool_matches_torch(case, dtype):
    x, _ = make_inputs(case, dtype)
    dy = np.random.default_rng(case.seed).standard_normal((*case.shape[:2], 1, 1)).astype(dtype)
    y, cache = global_avg_pool2d_forward(x)
    dx = global_avg_pool2d_backward(dy, cache)
    y_t, dx_t = torch_op(F.adaptive_avg_pool2d, x, dy, output_size=1)
    assert y.shape == (*case.shape[:2], 1, 1) and y.dtype == dx.dtype == dtype
    if dtype == np.float64:
        check_f64("global_avg_pool2d y", y, y_t)
        check_f64("global_avg_pool2d dx", dx, dx_t)
    else:
        hw = case.shape[2] * case.shape[3]
        assert_close_f32(y, y_t, hw, float(np.abs(x).max()), "y")
        assert_close_f32(dx, dx_t, 1, float(np.abs(dy).max()), "dx")


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
def cpu_pool_cases(draw, dilated=False):
    """(shape, kernel, stride, padding, values, layout, seed, ceil_mode, dilation); padding <=
    half the kernel; ``dilated`` draws a dilation of 1 to 3 (max pooling only)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kernel = kh if kh == kw and draw(st.booleans()) else (kh, kw)
    stride = draw(st.one_of(st.none(), st.integers(1, 3), st.tuples(*[st.integers(1, 3)] * 2)))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilated else (1, 1)
    h = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 5))
    w = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 5))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w)
    values = draw(st.sampled_from(["normal", "ties", "huge"]))
    case = shape, kernel, stride, (ph, pw), values, draw(layouts), draw(seeds)
    return (*case, draw(st.booleans()), (dh, dw))


def pool_input(shape, values, layout, seed, dtype):
    rng = np.random.default_rng(seed)
    if values == "ties":  # few distinct integers: many equal maxima per window
        x = rng.integers(-2, 3, shape).astype(float)
    elif values == "huge":  # +-1e6 next to O(1) values
        x = rng.standard_normal(shape) + 1e6 * rng.choice([-1.0, 0.0, 1.0], shape)
    else:
        x = rng.standard_normal(shape)
    return with_layout(x.astype(dtype), layout), rng


def window_overlap(kernel, stride, dilation=(1, 1)) -> int:
    """Most windows one input pixel belongs to: the terms added into one dx element."""
    (kh, kw), (dh, dw) = pair(kernel, "kernel"), dilation
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride")
    return math.ceil((dh * (kh - 1) + 1) / sh) * math.ceil((dw * (kw - 1) + 1) / sw)


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=cpu_pool_cases(dilated=True))
def test_cpu_max_pool(dtype, case):
    """Forward bit-exact; the gradient goes to the first maximum (ties, +-1e6 values); ceil
    mode and dilation. A dilated window of padding only is refused like the reference's."""
    shape, kernel, stride, padding, values, layout, seed, ceil_mode, dilation = case
    x, rng = pool_input(shape, values, layout, seed, dtype)
    args = (kernel, stride, padding, dilation, ceil_mode)
    try:
        y_ref, cache_ref = ref.max_pool2d_forward(x, *args)
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):
            cpu.max_pool2d_forward(x, *args)
        return
    y, cache = cpu.max_pool2d_forward(x, *args)
    dy = with_layout(rng.standard_normal(y.shape).astype(dtype), layout)
    dx = cpu.max_pool2d_backward(dy, cache)
    dx_ref = ref.max_pool2d_backward(dy, cache_ref)
    y_t, dx_t = torch_op(lambda xt: F.max_pool2d(xt, *args), x, dy)
    np.testing.assert_array_equal(cpu.max_pool2d_indices(cache), ref.max_pool2d_indices(cache_ref))
    check_cpu("max_pool2d", "y", y, y_ref, y_t, exact=True)
    check_cpu(
        "max_pool2d", "dx", dx, dx_ref, dx_t, window_overlap(kernel, stride, dilation), amax(dy)
    )


def test_cpu_max_pool_nan_and_all_minus_infinity_windows():
    """A NaN is the maximum and its LAST occurrence in scan order gets the gradient (torch's
    indices); a window of -inf routes to a real pixel, never the padding. Same as the reference."""
    one_nan = np.array([[[[1.0, np.nan, 2.0, np.nan], [-np.inf, -np.inf, 0.5, 3.0]]]])
    two_nans = np.array([[[[np.nan, 1.0, 2.0, 0.0], [np.nan, 5.0, np.nan, np.nan]]]])
    cases = ((one_nan, (2,)), (one_nan, (2, 1, 1)), (two_nans, (2,)), (two_nans, (2, 2, 1)))
    for x, args in cases:
        y, cache = cpu.max_pool2d_forward(x, *args)
        y_ref, cache_ref = ref.max_pool2d_forward(x, *args)
        _, indices_t = F.max_pool2d(torch.tensor(x), *args, return_indices=True)
        np.testing.assert_array_equal(cpu.max_pool2d_indices(cache), indices_t.numpy())
        np.testing.assert_array_equal(ref.max_pool2d_indices(cache_ref), indices_t.numpy())
        np.testing.assert_array_equal(y, y_ref)
        dy = np.arange(1.0, y.size + 1).reshape(y.shape)
        np.testing.assert_array_equal(
            cpu.max_pool2d_backward(dy, cache), ref.max_pool2d_backward(dy, cache_ref)
        )


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    case=cpu_pool_cases(),
    count_include_pad=st.booleans(),
    divisor_override=st.sampled_from([None, None, 1, 3, -2]),
)
def test_cpu_avg_pool(dtype, case, count_include_pad, divisor_override):
    shape, kernel, stride, padding, values, layout, seed, ceil_mode, _ = case
    x, rng = pool_input(shape, values, layout, seed, dtype)
    args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    y, cache = cpu.avg_pool2d_forward(x, *args)
    dy = with_layout(rng.standard_normal(y.shape).astype(dtype), layout)
    dx = cpu.avg_pool2d_backward(dy, cache)
    y_ref, cache_ref = ref.avg_pool2d_forward(x, *args)
    dx_ref = ref.avg_pool2d_backward(dy, cache_ref)
    y_t, dx_t = torch_op(lambda xt: F.avg_pool2d(xt, *args), x, dy)
    check_cpu("avg_pool2d", "y", y, y_ref, y_t, magnitude=amax(x))  # float64 sums: one rounding
    check_cpu("avg_pool2d", "dx", dx, dx_ref, dx_t, window_overlap(kernel, stride), amax(dy))


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=cpu_pool_cases())
def test_cpu_global_avg_pool(dtype, case):
    shape, _, _, _, values, layout, seed, _, _ = case
    x, rng = pool_input(shape, values, layout, seed, dtype)
    dy = with_layout(rng.standard_normal((*shape[:2], 1, 1)).astype(dtype), layout)
    y, cache = cpu.global_avg_pool2d_forward(x)
    dx = cpu.global_avg_pool2d_backward(dy, cache)
    y_ref, cache_ref = ref.global_avg_pool2d_forward(x)
    dx_ref = ref.global_avg_pool2d_backward(dy, cache_ref)
    y_t, dx_t = torch_op(F.adaptive_avg_pool2d, x, dy, output_size=1)
    check_cpu("global_avg_pool2d", "y", y, y_ref, y_t, magnitude=amax(x))
    check_cpu("global_avg_pool2d", "dx", dx, dx_ref, dx_t)


# ===============================================================================================
# every backend
#
# Adaptive average and max pooling against torch (``F.adaptive_avg_pool2d`` / ``_max_pool2d``).
#
# Any output size, larger or smaller than the input, None entries keeping an axis; torch's window
# rule ``[floor(i H / OH), ceil((i + 1) H / OH))``. float64 within 1e-10 of torch on the reference
# and cpu backends (the max's winner index equals torch's ``return_indices`` exactly, ties and NaN
# included); float32 against the float64 oracle with the bound for sums of a window's terms.
# ===============================================================================================

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
def test_invalid_arguments_raise_clear_errors_backends(backend, shape, output_size, message):
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
@pytest.mark.parametrize("kind", ["max", "avg", "avg_exclude_pad", "avg_divisor_override"])
@settings(max_examples=examples(4, 80))
@given(
    seed=st.integers(0, 2**16),
    dtype=FLOATS,
    hw=st.tuples(st.integers(2, 5), st.integers(2, 5)),
    kernel=st.sampled_from([(2, 2), (3, 3), (2, 3)]),
    stride=st.sampled_from([None, 1, 2]),
    pad=st.booleans(),
    ties=st.booleans(),
    ceil_mode=st.booleans(),
    dilation=st.sampled_from([1, (2, 1)]),
)
def test_cuda_pooling_matches_torch(kind, seed, dtype, hw, kernel, stride, pad, ties, ceil_mode,
                               dilation):  # fmt: skip
    padding = (kernel[0] // 2, kernel[1] // 2) if pad else 0
    pads = padding if pad else (0, 0)
    assume(all(s + 2 * p >= k for s, p, k in zip(hw, pads, kernel, strict=True)))
    rng = np.random.default_rng(seed)
    x = rand(rng, (2, 2, *hw), dtype)
    if ties:  # few distinct values: many ties, the gradient must go to the first maximum
        x = np.round(x).astype(dtype)
    op = "max_pool2d" if kind == "max" else "avg_pool2d"
    extra = {"ceil_mode": ceil_mode}
    if kind == "max":
        extra["dilation"] = dilation
    else:
        extra["count_include_pad"] = kind == "avg"
    if kind == "avg_divisor_override":
        extra["divisor_override"] = 3
    try:
        y_ref, cache_ref = getattr(R, f"{op}_forward")(x, kernel, stride, padding, **extra)
    except ValueError as error:  # a dilated kernel that does not fit: refused the same way
        with pytest.raises(ValueError, match=re.escape(str(error))):
            getattr(CK, f"{op}_forward")(x, kernel, stride, padding, **extra)
        return
    y, cache = getattr(CK, f"{op}_forward")(x, kernel, stride, padding, **extra)
    dy = rand(rng, y_ref.shape, dtype)
    dx = getattr(CK, f"{op}_backward")(dy, cache)
    dx_ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    yt, dxt = torch_op(lambda xt: getattr(TF, op)(xt, kernel, stride, padding, **extra), x, dy)
    if kind == "max":
        np.testing.assert_array_equal(
            to_numpy(CK.max_pool2d_indices(cache)), R.max_pool2d_indices(cache_ref)
        )
    overlap = int(np.prod(kernel))
    if kind == "max":
        np.testing.assert_array_equal(to_numpy(y), y_ref)
    check_cuda(op, "y", y, yt, y_ref, overlap, amax_product(x))
    check_cuda(op, "dx", dx, dxt, dx_ref, overlap, amax_product(dy))


@pytest.mark.cuda
@settings(max_examples=examples(3, 50))
@given(seed=st.integers(0, 2**16), dtype=FLOATS, hw=st.tuples(st.integers(1, 5), st.integers(1, 5)))
def test_cuda_global_avg_pool_matches_torch(seed, dtype, hw):
    rng = np.random.default_rng(seed)
    x = rand(rng, (2, 3, *hw), dtype)
    y, cache = CK.global_avg_pool2d_forward(x)
    y_ref, cache_ref = R.global_avg_pool2d_forward(x)
    dy = rand(rng, (2, 3, 1, 1), dtype)
    dx = CK.global_avg_pool2d_backward(dy, cache)
    yt, dxt = torch_op(TF.adaptive_avg_pool2d, x, dy, output_size=1)
    r = hw[0] * hw[1]
    check_cuda("global_avg_pool2d", "y", y, yt, y_ref, r, amax_product(x))
    dx_ref = R.global_avg_pool2d_backward(dy, cache_ref)
    check_cuda("global_avg_pool2d", "dx", dx, dxt, dx_ref, 1, amax_product(dy))


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["avg", "max"])
@settings(max_examples=examples(3, 40))
@given(
    seed=st.integers(0, 2**16),
    dtype=FLOATS,
    hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    output_size=st.sampled_from([1, 3, (2, None), (4, 2)]),
)
def test_cuda_adaptive_pooling_matches_torch(kind, seed, dtype, hw, output_size):
    rng = np.random.default_rng(seed)
    x = np.round(rand(rng, (1, 2, *hw), dtype) * 2)  # ties: the first maximum wins
    op = f"adaptive_{kind}_pool2d"
    y, cache = getattr(CK, f"{op}_forward")(x, output_size)
    y_ref, cache_ref = getattr(R, f"{op}_forward")(x, output_size)
    dy = rand(rng, y_ref.shape, dtype)
    dx = getattr(CK, f"{op}_backward")(dy, cache)
    dx_ref = getattr(R, f"{op}_backward")(dy, cache_ref)
    if kind == "max":
        np.testing.assert_array_equal(to_numpy(cache.argmax), cache_ref.argmax)
    xt = t(x, True)
    yt = getattr(TF, op)(xt, output_size)
    (dxt,) = torch_grads(yt, [xt], dy)
    window = hw[0] * hw[1]  # a window is at most the whole plane
    check_cuda(op, "y", y, yt.detach().numpy(), y_ref, window, amax_product(x))
    check_cuda(op, "dx", dx, dxt, dx_ref, 4 * window, amax_product(dy))
