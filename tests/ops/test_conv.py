"""conv2d against float64 torch on every backend (every kernel path of cpu and cuda)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np
import pytest
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import cuda

import scratchnets.kernels.cuda as CK
import scratchnets.reference as ref
from scratchnets import reference as R
from scratchnets import to_numpy
from scratchnets.kernels.cpu import conv as cpu_conv
from scratchnets.kernels.cpu.conv import depthwise_flat, im2col
from scratchnets.kernels.cuda import _gemm
from scratchnets.kernels.cuda import conv as cuda_conv
from scratchnets.reference.conv import (
    conv2d_backward,
    conv2d_backward_loops,
    conv2d_forward,
    conv2d_forward_loops,
)
from scratchnets.reference.windows import normalize_padding, pair
from tests.cuda import SIMULATED, examples
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
    FLOATS,
    amax_product,
    check_cuda,
    rand,
)

# ===============================================================================================
# the reference backend
#
# reference.conv2d (im2col + GEMM, and the loop version) against torch.nn.functional.conv2d.
#
# float64 oracle with a random dy; padding in all three forms (an explicit (top, bottom, left, right)
# is checked against F.pad followed by an unpadded conv); groups drawn from the divisors of C_in,
# depthwise with channel multipliers 1 and 2, pointwise; non-contiguous inputs; finite differences.
# ===============================================================================================

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


def torch_conv(x, w, b, dy, stride=1, padding=0, dilation=1, groups=1):
    """The family's oracle, in float64: y and [dx, dw, db] (db None without a bias). Explicit
    (top, bottom, left, right) paddings go through F.pad first."""
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if b is not None else None
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        inp, padding = F.pad(xt, (left, right, top, bottom)), 0
    else:
        inp = xt
    y = F.conv2d(inp, wt, bt, stride, padding, dilation, groups)
    grads = torch_grads(y, [xt, wt] + ([bt] if bt is not None else []), dy)
    return y.detach().numpy(), grads + ([None] if bt is None else [])


def torch_conv_case(case: ConvCase, x, w, b, dy):
    return torch_conv(x, w, b, dy, case.stride, case.padding, case.dilation, case.groups)


def run(case: ConvCase, impl, dtype):
    forward, backward = impl
    x, w, b, dy = make_inputs(case, dtype)
    before = [a.copy() for a in (x, w, dy)]
    y, cache = forward(x, w, b, case.stride, case.padding, case.dilation, case.groups)
    grads = backward(dy, cache)
    for a, a0 in zip((x, w, dy), before, strict=True):
        np.testing.assert_array_equal(a, a0, err_msg="inputs must not be modified")
    return (x, w, b, dy), y, grads


def check_f64(case, impl, tag, backend="reference"):
    """float64 ``impl`` vs the float64 torch oracle (random dy), ~1e-10 relative; the errors
    recorded as "<backend>/<tag> <result>"."""
    (x, w, b, dy), y, (dx, dw, db) = run(case, impl, np.float64)
    y_t, (dx_t, dw_t, db_t) = torch_conv_case(case, x, w, b, dy)
    results = [("y", y, y_t), ("dx", dx, dx_t), ("dw", dw, dw_t)]
    results += [("db", db, db_t)] if case.bias else []
    for name, ours, theirs in results:
        assert ours.dtype == np.float64, name
        record_error(f"{backend}/{tag} {name}", ours, theirs)
        assert_close_f64(ours, theirs, what=f"{name} {case}")
    if not case.bias:
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
    check_f32(case, GEMM)


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


# ===============================================================================================
# the cpu backend
#
# kernels.cpu.conv2d (Numba + BLAS) against torch.nn.functional.conv2d and the reference backend.
#
# The shapes come from the reference tests' strategy (kernels incl. asymmetric and even, strides,
# paddings as int / pair / explicit (top, bottom, left, right), dilation, groups drawn from the
# divisors of C_in, depthwise multipliers 1 and 2, pointwise, non-contiguous x and w). On top of
# that: each of the three implementations (depthwise, pointwise, general) is pinned by cases that
# must take it, including the batch-stacking and batch-chunking edge cases of the kernels. The
# depthwise conv has two kernels (flat shifts with masked weights for small planes in "same"
# style padding, polyphase planes otherwise): the depthwise cases run through both where the
# geometry allows, whatever the size threshold says.
# ===============================================================================================

CPU = (cpu_conv.conv2d_forward, cpu_conv.conv2d_backward)


REFERENCE = (ref.conv2d_forward, ref.conv2d_backward)


def check_f32(case: ConvCase, impl=None):
    """float32 ``impl`` (default the cpu kernels) vs the float64 oracle on the same values:
    eps32 * sqrt(terms) * size."""
    (x, w, b, dy), y, (dx, dw, db) = run(case, CPU if impl is None else impl, np.float32)
    assert all(a.dtype == np.float32 for a in (y, dx, dw) + ((db,) if case.bias else ()))
    y_t, (dx_t, dw_t, db_t) = torch_conv_case(case, x, w, b, dy)  # oracle on the float32 values
    (kh, kw), (oh, ow) = case.kernel, case.out_hw()
    cg, mg = case.c_in // case.groups, case.c_out // case.groups
    mx, mw, mdy = (float(np.abs(a).max()) for a in (x, w, dy))
    mb = float(np.abs(b).max()) if case.bias else 0.0
    assert_close_f32(y, y_t, cg * kh * kw + 1, mx * mw + mb, "y")
    assert_close_f32(dx, dx_t, mg * kh * kw, mdy * mw, "dx")
    assert_close_f32(dw, dw_t, case.n * oh * ow, mdy * mx, "dw")
    if case.bias:
        assert_close_f32(db, db_t, case.n * oh * ow, mdy, "db")


def kind_of(case: ConvCase) -> str:
    """The implementation ``case`` takes (the wrapper's dispatch, on the validated geometry)."""
    return cpu_conv.conv_kind(geometry_of(case))


def geometry_of(case: ConvCase):
    x, w, b, _ = make_inputs(case, np.float64)
    return cpu_conv.prepare_conv(x, w, b, case.stride, case.padding, case.dilation, case.groups)[3]


@contextmanager
def depthwise_path(path: str):
    """Force the depthwise kernel: "flat" (where its geometry condition holds) or "polyphase"."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("_FLAT_MAX_HW", "_FLAT_COPY_MAX_HW", "_FLAT_FORWARD_MAX_HW"):
            mp.setattr(depthwise_flat, name, 10**9 if path == "flat" else -1)
        yield


DEPTHWISE_PATHS = ("flat", "polyphase")


@given(conv_cases())
def test_cpu_float64_matches_torch(case):
    check_f64(case, CPU, "conv2d", "cpu")


@given(conv_cases(kind="depthwise", max_kernel=5), st.sampled_from(DEPTHWISE_PATHS))
def test_cpu_depthwise_float64_matches_torch(case, path):
    assert kind_of(case) == "depthwise"
    with depthwise_path(path):
        check_f64(case, CPU, "conv2d", "cpu")


@given(conv_cases(kind="depthwise", max_kernel=5), st.sampled_from(DEPTHWISE_PATHS))
def test_cpu_depthwise_float32_against_float64_oracle(case, path):
    with depthwise_path(path):
        check_f32(case)


@st.composite
def same_padded_depthwise_cases(draw):
    """Depthwise convs padded "same"-style (TF "SAME" and up to one pixel more per dimension,
    split unevenly at random): the geometry of the flat kernels, with many channels."""
    c_in = draw(st.integers(1, 40))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    hw = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    pads = []
    for size, k, s, d in zip(hw, kernel, stride, dilation, strict=True):
        total = max(0, (-(-size // s) - 1) * s + d * (k - 1) + 1 - size) + draw(st.integers(0, 1))
        before = draw(st.integers(0, total))
        pads += [before, total - before]
    multiplier = draw(st.sampled_from([1, 1, 2, 3]))
    return ConvCase(
        n=draw(st.integers(1, 3)),
        c_in=c_in,
        c_out=c_in * multiplier,
        groups=c_in,
        kernel=kernel,
        stride=stride,
        dilation=dilation,
        padding=(pads[0], pads[1], pads[2], pads[3]),
        hw=hw,
        bias=draw(st.booleans()),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@given(same_padded_depthwise_cases())
def test_cpu_flat_depthwise_matches_torch(case):
    assert depthwise_flat._flat_applies(geometry_of(case))
    check_f64(case, CPU, "conv2d", "cpu")
    check_f32(case)


@given(conv_cases())
def test_cpu_float32_against_float64_oracle(case):
    check_f32(case)


@settings(max_examples=10)
@given(conv_cases())
def test_cpu_equals_reference_backend(case):
    """Both backends in float64 on the same inputs: agree to rounding (different summation order)."""
    _, y, grads = run(case, CPU, np.float64)
    _, y_ref, grads_ref = run(case, REFERENCE, np.float64)
    assert_close_f64(y, y_ref, rtol=1e-12, what="y")
    for name, ours, theirs in zip(("dx", "dw", "db"), grads, grads_ref, strict=True):
        if theirs is None:
            assert ours is None, name
        else:
            assert_close_f64(ours, theirs, rtol=1e-12, what=name)


#: name: (kind, n, c_in, c_out, groups, kernel, stride, dilation, padding, hw)
PATH_CASES = {
    "depthwise 3x3 s1": ("depthwise", 2, 4, 4, 4, (3, 3), 1, 1, 1, (8, 8)),
    "depthwise 3x3 s2": ("depthwise", 2, 4, 4, 4, (3, 3), 2, 1, 1, (9, 8)),
    "depthwise 5x5 s2 tf-same": ("depthwise", 2, 3, 3, 3, (5, 5), 2, 1, (1, 2, 1, 2), (8, 9)),
    "depthwise 1x5 (ghost)": ("depthwise", 2, 4, 4, 4, (1, 5), 1, 1, (0, 2), (5, 7)),
    "depthwise 5x1 (ghost)": ("depthwise", 2, 4, 4, 4, (5, 1), 1, 1, (2, 0), (7, 5)),
    "depthwise x2 multiplier dilated": ("depthwise", 2, 3, 6, 3, (3, 3), 1, 2, 2, (7, 6)),
    "depthwise 3x3 s3 no padding": ("depthwise", 2, 2, 2, 2, (3, 3), 3, 1, 0, (10, 11)),
    # stride 2 on even widths: the polyphase copy splits float32 rows as uint64 pairs, with the
    # even columns in either phase (left padding 0 or 1)
    "depthwise 3x3 s2 even width": ("depthwise", 2, 3, 6, 3, (3, 3), 2, 1, 0, (10, 12)),
    "depthwise 3x3 s2 even width padded": ("depthwise", 3, 4, 4, 4, (3, 3), 2, 1, 1, (12, 14)),
    # 11 images of 10x10: stacked 6 + 5 per buffer (uneven last run)
    "depthwise batch stacked in runs": ("depthwise", 11, 3, 3, 3, (3, 3), 1, 1, 1, (10, 10)),
    # 1x1 kernel with stride 2 and a single channel: still the depthwise kernel
    "depthwise 1x1 s2": ("depthwise", 3, 1, 2, 1, (1, 1), 2, 1, 0, (5, 4)),
    "pointwise": ("pointwise", 2, 5, 7, 1, (1, 1), 1, 1, 0, (4, 3)),
    # > 64 pixels per plane: dw as one GEMM per image (smaller planes: one GEMM over the batch)
    "pointwise 9x9": ("pointwise", 3, 5, 7, 1, (1, 1), 1, 1, 0, (9, 9)),
    "pointwise strided (2, 3)": ("pointwise", 2, 5, 7, 1, (1, 1), (2, 3), 1, 0, (9, 8)),
    "1x1 padded": ("general", 2, 5, 3, 1, (1, 1), 1, 1, 1, (4, 4)),
    "stem 3x3 s2": ("general", 2, 3, 8, 1, (3, 3), 2, 1, 1, (16, 16)),
    "tf same s2 (0, 1, 0, 1)": ("general", 2, 3, 4, 1, (3, 3), 2, 1, (0, 1, 0, 1), (8, 8)),
    "dense 1x7 / 7x1 style": ("general", 2, 4, 5, 1, (1, 7), 1, 1, (0, 3), (6, 9)),
    "grouped 2x4": ("general", 2, 6, 4, 2, (2, 4), (1, 2), 1, (1, 0, 2, 1), (6, 9)),
    "grouped 3x3 dilated": ("general", 3, 6, 9, 3, (3, 3), 1, 2, 2, (7, 7)),
}


def _path_case(name: str, bias: bool = True, layout: str = "C") -> ConvCase:
    _, n, c_in, c_out, groups, kernel, stride, dilation, padding, hw = PATH_CASES[name]
    return ConvCase(n, c_in, c_out, groups, kernel, stride, dilation, padding, hw, bias, layout, 7)


@pytest.mark.parametrize("name", list(PATH_CASES))
def test_cpu_each_implementation_matches_torch(name):
    case = _path_case(name)
    assert kind_of(case) == PATH_CASES[name][0]
    check_f64(case, CPU, "conv2d", "cpu")
    check_f32(case)


DEPTHWISE_CASES = [name for name, spec in PATH_CASES.items() if spec[0] == "depthwise"]


@pytest.mark.parametrize("path", DEPTHWISE_PATHS)
@pytest.mark.parametrize("name", DEPTHWISE_CASES)
def test_cpu_both_depthwise_kernels_match_torch(name, path):
    with depthwise_path(path):
        check_f64(_path_case(name), CPU, "conv2d", "cpu")
        check_f32(_path_case(name, bias=False))


#: the flat kernels on many channels (several blocks, an uneven last block), each stride and
#: multiplier it takes; name: (n, c_in, c_out, kernel, stride, dilation, padding, hw)
FLAT_CASES = {
    "150 ch 3x3 s1 (no copy)": (3, 150, 150, (3, 3), 1, 1, 1, (7, 6)),
    "150 ch 3x3 s2 from 9x10": (2, 150, 150, (3, 3), 2, 1, 1, (9, 10)),
    "96 ch x2 5x5 s2 tf-same": (2, 96, 192, (5, 5), 2, 1, (1, 2, 1, 2), (8, 8)),
    "40 ch 1x5": (2, 40, 40, (1, 5), 1, 1, (0, 2), (5, 7)),
    "40 ch 5x1 x3": (2, 40, 120, (5, 1), 1, 1, (2, 0), (7, 5)),
    "70 ch 3x3 dilated (2, 1) s(1, 2)": (2, 70, 70, (3, 3), (1, 2), (2, 1), (2, 1), (6, 8)),
    "30 ch 3x3 s3 over-padded": (2, 30, 30, (3, 3), 3, 1, 2, (7, 5)),
    "960 ch 3x3 @4 (mobilenet)": (2, 960, 960, (3, 3), 1, 1, 1, (4, 4)),
    "576 ch 3x3 s2 @8 (mobilenet)": (2, 576, 576, (3, 3), 2, 1, 1, (8, 8)),
}


def _flat_case(name: str, bias: bool, layout: str = "C") -> ConvCase:
    n, c_in, c_out, kernel, stride, dilation, padding, hw = FLAT_CASES[name]
    return ConvCase(n, c_in, c_out, c_in, kernel, stride, dilation, padding, hw, bias, layout, 3)


@pytest.mark.parametrize("name", list(FLAT_CASES))
def test_cpu_flat_depthwise_many_channels(name):
    case = _flat_case(name, bias=True)
    assert depthwise_flat._flat_applies(geometry_of(case))  # small planes: the default dispatch
    check_f64(case, CPU, "conv2d", "cpu")
    check_f32(_flat_case(name, bias=False, layout="F"))


def test_cpu_depthwise_dispatch():
    """ "Same"-style padding takes the flat kernels up to a plane size (smaller where they copy
    x into phase planes), the rest polyphase."""
    most, most_copied = depthwise_flat._FLAT_MAX_HW, depthwise_flat._FLAT_COPY_MAX_HW

    def flat(hw, padding=1, stride=1, c_out=2):
        case = ConvCase(1, 2, c_out, 2, (3, 3), stride, 1, padding, hw, False, "C", 0)
        return depthwise_flat._flat_applies(geometry_of(case))

    assert flat((1, most)) and not flat((1, most + 1))  # output (1, most): x as it lies
    assert flat((1, most_copied), c_out=4) and not flat((1, most_copied + 1), c_out=4)  # M = 2
    assert flat((2, 2 * most_copied), stride=2) and not flat((2, 2 * most_copied + 2), stride=2)
    assert not flat((8, 8), padding=0)  # output 6x6 < the 8x8 input
    assert not flat((9, 9), padding=0, stride=2)  # output 4x4, phase planes 5x5
    forward_most = depthwise_flat._FLAT_FORWARD_MAX_HW  # the forward, on x as it lies
    for hw, forward_flat in (((1, forward_most), True), ((1, forward_most + 1), False)):
        case = ConvCase(1, 2, 2, 2, (3, 3), 1, 1, 1, hw, False, "C", 0)
        assert depthwise_flat._flat_forward_applies(geometry_of(case)) == forward_flat


def test_cpu_flat_dw_is_deterministic():
    """dw sums over the batch in a fixed order: the same bits with 1 thread or all of them."""
    case = _flat_case("150 ch 3x3 s2 from 9x10", bias=False)
    x, w, _, dy = make_inputs(case, np.float32)
    threads = numba.get_num_threads()
    results = []
    for count in (1, threads):
        numba.set_num_threads(count)
        try:
            _, cache = cpu_conv.conv2d_forward(x, w, None, 2, 1, groups=case.groups)
            results.append(cpu_conv.conv2d_backward(dy, cache)[1])
        finally:
            numba.set_num_threads(threads)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("name", ["stem 3x3 s2", "grouped 3x3 dilated"])
def test_cpu_general_path_in_batch_chunks(monkeypatch, name):
    """A tiny im2col budget forces one image per chunk (and buffer reuse across chunks)."""
    monkeypatch.setattr(im2col, "_COLS_BUDGET", 1)
    check_f64(_path_case(name, bias=False), CPU, "conv2d", "cpu")


@pytest.mark.parametrize("layout", ["F", "strided"])
def test_cpu_non_contiguous_dy(layout):
    case = _path_case("depthwise 3x3 s2")
    x, w, b, dy = make_inputs(case, np.float64)
    _, cache = cpu_conv.conv2d_forward(x, w, b, case.stride, case.padding, groups=case.groups)
    grads = cpu_conv.conv2d_backward(with_layout(dy, layout), cache)
    expected = cpu_conv.conv2d_backward(np.ascontiguousarray(dy), cache)
    for ours, theirs in zip(grads, expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_cpu_same_errors_as_reference():
    x, w = np.zeros((2, 5, 8, 8)), np.zeros((4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"x has 5 channels.*\(2, 5, 8, 8\).*\(4, 2, 3, 3\)"):
        cpu_conv.conv2d_forward(x, w, groups=2)
    with pytest.raises(TypeError, match="float32 or float64"):
        cpu_conv.conv2d_forward(np.zeros((1, 2, 3, 3), int), np.zeros((1, 2, 1, 1)))
    _, cache = cpu_conv.conv2d_forward(np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3)))
    with pytest.raises(
        ValueError, match=r"dy has shape \(1, 3, 5, 5\), y had shape \(1, 3, 3, 3\)"
    ):
        cpu_conv.conv2d_backward(np.zeros((1, 3, 5, 5)), cache)


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


@st.composite
def cuda_conv_cases(draw):
    groups = draw(st.integers(1, 2))
    cg, mg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 1), (2, 2)]))
    h, w = draw(st.integers(2, 5)), draw(st.integers(2, 5))
    stride = draw(st.sampled_from([1, 2, (1, 2)]))
    dilation = draw(st.sampled_from([1, 2]))
    padding = draw(st.sampled_from([0, 1, (1, 0), (0, 1, 1, 0)]))
    pads = R.windows.normalize_padding(padding)
    span_h, span_w = dilation * (kh - 1) + 1, dilation * (kw - 1) + 1
    assume(h + pads[0] + pads[1] >= span_h and w + pads[2] + pads[3] >= span_w)
    return dict(
        n=draw(st.integers(1, 2)),
        c_in=cg * groups,
        c_out=mg * groups,
        groups=groups,
        kernel=(kh, kw),
        hw=(h, w),
        stride=stride,
        dilation=dilation,
        padding=padding,
        bias=draw(st.booleans()),
        dtype=draw(FLOATS),
        seed=draw(st.integers(0, 2**16)),
    )


def run_conv(case):
    """cuda, reference and torch results of one conv forward + backward; asserts them all."""
    rng = np.random.default_rng(case["seed"])
    dtype, groups = case["dtype"], case["groups"]
    x = rand(rng, (case["n"], case["c_in"], *case["hw"]), dtype)
    w = rand(rng, (case["c_out"], case["c_in"] // groups, *case["kernel"]), dtype)
    b = rand(rng, (case["c_out"],), dtype) if case["bias"] else None
    args = (case["stride"], case["padding"], case["dilation"], groups)
    y, cache = CK.conv2d_forward(x, w, b, *args)
    y_ref, cache_ref = R.conv2d_forward(x, w, b, *args)
    dy = rand(rng, y_ref.shape, dtype)
    dx, dw, db = CK.conv2d_backward(dy, cache)
    dx_ref, dw_ref, db_ref = R.conv2d_backward(dy, cache_ref)

    pads = R.windows.normalize_padding(case["padding"])  # (top, bottom, left, right)
    yt, grads = torch_conv(x, w, b, dy, case["stride"], pads, case["dilation"], groups)
    kh, kw = case["kernel"]
    taps = kh * kw
    m = y_ref.shape[0] * y_ref.shape[2] * y_ref.shape[3]
    check_cuda("conv2d", "y", y, yt, y_ref, w.shape[1] * taps + 1, amax_product(x, w) + 1)
    check_cuda("conv2d", "dx", dx, grads[0], dx_ref, w.shape[0] * taps, amax_product(dy, w))
    check_cuda("conv2d", "dw", dw, grads[1], dw_ref, m, amax_product(dy, x))
    if b is None:
        assert db is None
    else:
        check_cuda("conv2d", "db", db, grads[2], db_ref, m, amax_product(dy))
    return dx, dw


@pytest.mark.cuda
@settings(max_examples=examples(6, 100))
@given(case=cuda_conv_cases())
def test_cuda_conv2d_matches_torch(case):
    run_conv(case)


@pytest.mark.cuda
@pytest.mark.parametrize("pointwise", cuda_conv.POINTWISE_VARIANTS)
@pytest.mark.parametrize("gemm", _gemm.VARIANTS)
def test_cuda_pointwise_conv_variants(monkeypatch, pointwise, gemm):
    """1x1 convs through each path; K = 5 input channels spans two simulator tiles."""
    monkeypatch.setattr(cuda_conv, "POINTWISE_CONV", pointwise)
    monkeypatch.setattr(_gemm, "GEMM", gemm)
    base = dict(groups=1, kernel=(1, 1), stride=1, dilation=1, padding=0, bias=True, seed=3)
    run_conv(dict(base, n=2, c_in=5, c_out=3, hw=(3, 2), dtype=np.float64))
    run_conv(dict(base, n=1, c_in=6, c_out=5, hw=(2, 3), dtype=np.float32))


@pytest.mark.cuda
@pytest.mark.parametrize("variant", cuda_conv.DW_VARIANTS)
def test_cuda_conv_weight_gradient_variants(monkeypatch, variant):
    """Depthwise and grouped dense convs with each dw kernel; the sums span several threads."""
    monkeypatch.setattr(cuda_conv, "CONV_DW", variant)
    base = dict(n=2, hw=(4, 5), stride=1, dilation=1, padding=1, bias=False, seed=5)
    run_conv(dict(base, c_in=3, c_out=3, groups=3, kernel=(3, 3), dtype=np.float64))
    run_conv(dict(base, c_in=2, c_out=4, groups=2, kernel=(1, 3), dtype=np.float32))


@pytest.mark.cuda
def test_cuda_conv_backward_is_deterministic():
    case = dict(n=2, c_in=2, c_out=2, groups=2, kernel=(3, 3), hw=(4, 4), stride=1, dilation=1)
    case.update(padding=1, bias=True, dtype=np.float32, seed=11)
    first, second = run_conv(case), run_conv(case)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.cuda
def test_cuda_conv_accepts_device_arrays_and_layouts():
    """Device inputs give the same result as host ones; non-contiguous host inputs work."""
    rng = np.random.default_rng(0)
    x, w = rand(rng, (1, 2, 4, 4), np.float64), rand(rng, (2, 1, 3, 3), np.float64)
    expected, _ = R.conv2d_forward(x, w, None, 1, 1, 1, 2)
    y_dev, _ = CK.conv2d_forward(cuda.to_device(x), cuda.to_device(w), None, 1, 1, 1, 2)
    y_strided, _ = CK.conv2d_forward(with_layout(x, "strided"), w, None, 1, 1, 1, 2)
    assert_close_f64(y_dev, expected)
    assert_close_f64(y_strided, expected)


@pytest.mark.cuda
def test_cuda_conv_errors_name_the_shapes():
    x, w = np.zeros((1, 3, 4, 4)), np.zeros((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\)"):
        CK.conv2d_forward(cuda.to_device(x), w)
    with pytest.raises(TypeError, match="int64"):
        CK.conv2d_forward(np.zeros((1, 2, 4, 4), np.int64), w)
    _, cache = CK.conv2d_forward(np.zeros((1, 2, 4, 4)), w)
    with pytest.raises(ValueError, match=r"dy has shape \(1, 2, 3, 3\)"):
        CK.conv2d_backward(np.zeros((1, 2, 3, 3)), cache)


@pytest.mark.cuda
@pytest.mark.skipif(SIMULATED, reason="realistic sizes take hours under the simulator")
@pytest.mark.parametrize(
    "case",
    [
        dict(n=8, c_in=96, c_out=24, groups=1, kernel=(1, 1), hw=(28, 28), stride=1, padding=0),
        dict(n=8, c_in=144, c_out=144, groups=144, kernel=(3, 3), hw=(28, 28), stride=2, padding=1),
        dict(n=4, c_in=3, c_out=32, groups=1, kernel=(3, 3), hw=(112, 112), stride=2, padding=1),
    ],
)
def test_cuda_conv_realistic_sizes_on_gpu(case):
    run_conv(dict(case, dilation=1, bias=False, dtype=np.float32, seed=0))
    run_conv(dict(case, dilation=1, bias=True, dtype=np.float64, seed=1))
