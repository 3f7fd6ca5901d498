"""reference.conv2d (im2col + GEMM, and the loop version) against torch.nn.functional.conv2d.

float64 oracle with a random dy; padding in all three forms (an explicit (top, bottom, left, right)
is checked against F.pad followed by an unpadded conv); groups drawn from the divisors of C_in,
depthwise with channel multipliers 1 and 2, pointwise; non-contiguous inputs; finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchnets.reference.conv import (
    conv2d_backward,
    conv2d_backward_loops,
    conv2d_forward,
    conv2d_forward_loops,
)
from scratchnets.reference.windows import normalize_padding, pair
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

GEMM = (conv2d_forward, conv2d_backward)
LOOPS = (conv2d_forward_loops, conv2d_backward_loops)


@dataclass
class ConvCase:
    n: int
    c_in: int
    c_out: int
    groups: int
    kernel: tuple[int, int]
    stride: tuple[int, int] | int
    dilation: tuple[int, int] | int
    padding: int | tuple  # int, (ph, pw) or (top, bottom, left, right)
    hw: tuple[int, int]
    bias: bool
    layout: str
    seed: int

    @property
    def pads(self) -> tuple[int, int, int, int]:
        return normalize_padding(self.padding)

    def out_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.pads
        (kh, kw), (sh, sw), (dh, dw) = (
            self.kernel,
            pair(self.stride, "stride"),
            pair(self.dilation, "dilation"),
        )
        return (
            (self.hw[0] + top + bottom - dh * (kh - 1) - 1) // sh + 1,
            (self.hw[1] + left + right - dw * (kw - 1) - 1) // sw + 1,
        )


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def conv_cases(draw, max_channels=6, max_extra=5, max_kernel=4, kind=None):
    """A random valid convolution. ``kind``: None (any), "depthwise" or "pointwise"."""
    kind = kind or draw(st.sampled_from(["general", "general", "depthwise", "pointwise"]))
    c_in = draw(st.integers(1, max_channels))
    if kind == "depthwise":
        groups, multiplier = c_in, draw(st.sampled_from([1, 2]))
    else:
        groups, multiplier = draw(st.sampled_from(_divisors(c_in))), draw(st.integers(1, 3))
    if kind == "pointwise":
        kernel = (1, 1)
    else:
        kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = draw(st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2), st.integers(1, 2))))
    form = draw(st.sampled_from(["int", "pair", "explicit"]))
    if form == "int":
        padding = draw(st.integers(0, 2))
    elif form == "pair":
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    else:
        padding = tuple(draw(st.integers(0, 3)) for _ in range(4))
    case = ConvCase(
        n=draw(st.integers(1, 3)),
        c_in=c_in,
        c_out=groups * multiplier,
        groups=groups,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding=padding,
        hw=(1, 1),
        bias=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    # smallest input the dilated kernel fits in, plus a drawn extra (odd and even sizes)
    top, bottom, left, right = case.pads
    (kh, kw), (dh, dw) = kernel, pair(dilation, "dilation")
    h_min = max(1, dh * (kh - 1) + 1 - top - bottom)
    w_min = max(1, dw * (kw - 1) + 1 - left - right)
    case.hw = (h_min + draw(st.integers(0, max_extra)), w_min + draw(st.integers(0, max_extra)))
    return case


def make_inputs(case: ConvCase, dtype):
    """x (in the case's memory layout), w (a transposed view: non-contiguous), b or None, dy."""
    rng = np.random.default_rng(case.seed)
    x = with_layout(rng.standard_normal((case.n, case.c_in, *case.hw)).astype(dtype), case.layout)
    kh, kw = case.kernel
    w_t = rng.standard_normal((kw, kh, case.c_in // case.groups, case.c_out)).astype(dtype)
    w = w_t.transpose(3, 2, 1, 0)  # (C_out, C_in/groups, kh, kw), not C-contiguous
    b = rng.standard_normal(case.c_out).astype(dtype) if case.bias else None
    dy = rng.standard_normal((case.n, case.c_out, *case.out_hw())).astype(dtype)
    return x, w, b, dy


def torch_conv(case: ConvCase, x, w, b, dy):
    """Oracle in float64: y and [dx, dw, db]. Explicit 4-tuples go through F.pad first."""
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if b is not None else None
    if isinstance(case.padding, tuple) and len(case.padding) == 4:
        top, bottom, left, right = case.padding
        inp, padding = F.pad(xt, (left, right, top, bottom)), 0
    else:
        inp, padding = xt, case.padding
    y = F.conv2d(inp, wt, bt, case.stride, padding, case.dilation, case.groups)
    grads = torch_grads(y, [xt, wt] + ([bt] if bt is not None else []), dy)
    return y.detach().numpy(), grads + ([None] if bt is None else [])


def run(case: ConvCase, impl, dtype):
    forward, backward = impl
    x, w, b, dy = make_inputs(case, dtype)
    before = [a.copy() for a in (x, w, dy)]
    y, cache = forward(x, w, b, case.stride, case.padding, case.dilation, case.groups)
    grads = backward(dy, cache)
    for a, a0 in zip((x, w, dy), before, strict=True):
        np.testing.assert_array_equal(a, a0, err_msg="inputs must not be modified")
    return (x, w, b, dy), y, grads


def check_f64(case, impl, tag):
    (x, w, b, dy), y, (dx, dw, db) = run(case, impl, np.float64)
    y_t, (dx_t, dw_t, db_t) = torch_conv(case, x, w, b, dy)
    for name, ours, theirs in (("y", y, y_t), ("dx", dx, dx_t), ("dw", dw, dw_t)):
        assert ours.dtype == np.float64
        record_error(f"reference/{tag} {name}", ours, theirs)
        assert_close_f64(ours, theirs, what=f"{name} {case}")
    if case.bias:
        record_error(f"reference/{tag} db", db, db_t)
        assert_close_f64(db, db_t, what=f"db {case}")
    else:
        assert db is None


@given(conv_cases())
def test_float64_matches_torch(case):
    check_f64(case, GEMM, "conv2d")


@settings(max_examples=10)
@given(conv_cases(max_channels=4, max_extra=2, max_kernel=3))
def test_loops_float64_match_torch(case):
    check_f64(case, LOOPS, "conv2d_loops")


@given(conv_cases())
def test_float32_against_float64_oracle(case):
    """float32 in, float32 out; errors bounded by eps32 * sqrt(terms summed) * term size."""
    (x, w, b, dy), y, (dx, dw, db) = run(case, GEMM, np.float32)
    assert all(a.dtype == np.float32 for a in (y, dx, dw) + ((db,) if case.bias else ()))
    y_t, (dx_t, dw_t, db_t) = torch_conv(case, x, w, b, dy)  # oracle on the float32 values
    (kh, kw), (oh, ow) = case.kernel, case.out_hw()
    cg, mg = case.c_in // case.groups, case.c_out // case.groups
    mx, mw, mdy = (float(np.abs(a).max()) for a in (x, w, dy))
    mb = float(np.abs(b).max()) if case.bias else 0.0
    assert_close_f32(y, y_t, cg * kh * kw + 1, mx * mw + mb, "y")
    assert_close_f32(dx, dx_t, mg * kh * kw, mdy * mw, "dx")
    assert_close_f32(dw, dw_t, case.n * oh * ow, mdy * mx, "dw")
    if case.bias:
        assert_close_f32(db, db_t, case.n * oh * ow, mdy, "db")


MOBILE_CASES = {
    # name: (c_in, c_out, groups, kernel, stride, padding, hw)
    "depthwise 3x3 s2": (4, 4, 4, (3, 3), 2, 1, (7, 7)),
    "depthwise x2 multiplier": (3, 6, 3, (3, 3), 1, 1, (5, 6)),
    "pointwise": (5, 7, 1, (1, 1), 1, 0, (4, 3)),
    "ghost cheap op 1x5": (4, 4, 4, (1, 5), 1, (0, 2), (5, 7)),
    "ghost cheap op 5x1": (4, 4, 4, (5, 1), 1, (2, 0), (7, 5)),
    "tf same s2 (0, 1, 0, 1)": (3, 4, 1, (3, 3), 2, (0, 1, 0, 1), (8, 8)),
    "even kernel 2x4 grouped": (6, 4, 2, (2, 4), (1, 2), (1, 0, 2, 1), (6, 9)),
}


@pytest.mark.parametrize("impl", [GEMM, LOOPS], ids=["gemm", "loops"])
@pytest.mark.parametrize("name", list(MOBILE_CASES))
def test_mobile_network_configurations(name, impl):
    c_in, c_out, groups, kernel, stride, padding, hw = MOBILE_CASES[name]
    case = ConvCase(2, c_in, c_out, groups, kernel, stride, 1, padding, hw, True, "C", 0)
    check_f64(case, impl, "conv2d" if impl is GEMM else "conv2d_loops")


@settings(max_examples=8)
@pytest.mark.parametrize("impl", [GEMM, LOOPS], ids=["gemm", "loops"])
@given(case=conv_cases(max_channels=3, max_extra=2, max_kernel=3))
def test_backward_matches_finite_differences(impl, case):
    """Central differences of L = sum(y * dy) w.r.t. x, w and b (float64)."""
    forward, backward = impl
    x, w, b, dy = make_inputs(case, np.float64)
    geometry = (case.stride, case.padding, case.dilation, case.groups)
    dx, dw, db = backward(dy, forward(x, w, b, *geometry)[1])

    def loss(x_, w_, b_):
        return np.sum(forward(x_, w_, b_, *geometry)[0] * dy)

    assert_close_f64(dx, numeric_grad(lambda v: loss(v, w, b), x), rtol=1e-7, what="dx")
    assert_close_f64(dw, numeric_grad(lambda v: loss(x, v, b), w), rtol=1e-7, what="dw")
    if case.bias:
        assert_close_f64(db, numeric_grad(lambda v: loss(x, w, v), b), rtol=1e-7, what="db")


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("forward", [conv2d_forward, conv2d_forward_loops])
def test_channel_mismatch_names_the_shapes(forward):
    x, w = np.zeros((2, 5, 8, 8)), np.zeros((4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"x has 5 channels.*\(2, 5, 8, 8\).*\(4, 2, 3, 3\)"):
        forward(x, w, groups=2)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((np.zeros((2, 4, 8, 8)), np.zeros((3, 2, 3, 3))), {"groups": 2}, ValueError, "divisible"),
        ((np.zeros((4, 8, 8)), np.zeros((3, 4, 3, 3))), {}, ValueError, r"\(4, 8, 8\)"),
        ((np.zeros((1, 4, 8, 8)), np.zeros((3, 4, 3))), {}, ValueError, r"\(3, 4, 3\)"),
        ((np.zeros((1, 2, 3, 3), int), np.zeros((1, 2, 1, 1))), {}, TypeError, "float32 or"),
        ((np.zeros((1, 2, 3, 3), np.float32), np.zeros((1, 2, 1, 1))), {}, TypeError, "float64"),
        ((np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 5, 5))), {}, ValueError, "does not fit"),
        ((np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 1, 1))), {"stride": 0}, ValueError, "stride"),
        (
            (np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 1, 1))),
            {"padding": (1, 2, 3)},
            TypeError,
            "pad",
        ),
        ((np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 1, 1))), {"padding": -1}, ValueError, "pad"),
        ((np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 1, 1))), {"groups": 0}, ValueError, "groups"),
        ((np.zeros((1, 2, 3, 3)), np.zeros((3, 2, 1, 1)), np.zeros(2)), {}, ValueError, r"\(3,\)"),
    ],
)
def test_invalid_arguments_raise_clear_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        conv2d_forward(*args, **kwargs)


def test_backward_rejects_dy_of_the_wrong_shape():
    _, cache = conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3)))
    with pytest.raises(
        ValueError, match=r"dy has shape \(1, 3, 5, 5\), y had shape \(1, 3, 3, 3\)"
    ):
        conv2d_backward(np.zeros((1, 3, 5, 5)), cache)
