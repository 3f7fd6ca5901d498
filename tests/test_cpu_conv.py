"""kernels.cpu.conv2d (Numba + BLAS) against torch.nn.functional.conv2d and the reference backend.

The shapes come from the reference tests' strategy (kernels incl. asymmetric and even, strides,
paddings as int / pair / explicit (top, bottom, left, right), dilation, groups drawn from the
divisors of C_in, depthwise multipliers 1 and 2, pointwise, non-contiguous x and w). On top of
that: each of the three implementations (depthwise, pointwise, general) is pinned by cases that
must take it, including the batch-stacking and batch-chunking edge cases of the kernels. The
depthwise conv has two kernels (flat shifts with masked weights for small planes in "same"
style padding, polyphase planes otherwise): the depthwise cases run through both where the
geometry allows, whatever the size threshold says.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets.reference as ref
from scratchnets.kernels.cpu import conv as cpu_conv
from scratchnets.kernels.cpu.conv import depthwise_flat, im2col
from tests.helpers import (
    LAYOUTS,
    assert_close_f32,
    assert_close_f64,
    record_error,
    with_layout,
)
from tests.test_reference_conv import ConvCase, conv_cases, make_inputs, run, torch_conv

CPU = (cpu_conv.conv2d_forward, cpu_conv.conv2d_backward)
REFERENCE = (ref.conv2d_forward, ref.conv2d_backward)


def check_f64(case: ConvCase):
    """float64 kernels vs the float64 torch oracle (random dy), ~1e-10 relative."""
    (x, w, b, dy), y, (dx, dw, db) = run(case, CPU, np.float64)
    y_t, (dx_t, dw_t, db_t) = torch_conv(case, x, w, b, dy)
    results = [("y", y, y_t), ("dx", dx, dx_t), ("dw", dw, dw_t)]
    results += [("db", db, db_t)] if case.bias else []
    for name, ours, theirs in results:
        assert ours.dtype == np.float64, name
        record_error(f"cpu/conv2d {name}", ours, theirs)
        assert_close_f64(ours, theirs, what=f"{name} {case}")
    if not case.bias:
        assert db is None


def check_f32(case: ConvCase):
    """float32 kernels vs the float64 oracle on the same values: eps32 * sqrt(terms) * size."""
    (x, w, b, dy), y, (dx, dw, db) = run(case, CPU, np.float32)
    assert all(a.dtype == np.float32 for a in (y, dx, dw) + ((db,) if case.bias else ()))
    y_t, (dx_t, dw_t, db_t) = torch_conv(case, x, w, b, dy)
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
        for name in ("_FLAT_MAX_HW", "_FLAT_COPY_MAX_HW"):
            mp.setattr(depthwise_flat, name, 10**9 if path == "flat" else -1)
        yield


DEPTHWISE_PATHS = ("flat", "polyphase")


@given(conv_cases())
def test_float64_matches_torch(case):
    check_f64(case)


@given(conv_cases(kind="depthwise", max_kernel=5), st.sampled_from(DEPTHWISE_PATHS))
def test_depthwise_float64_matches_torch(case, path):
    assert kind_of(case) == "depthwise"
    with depthwise_path(path):
        check_f64(case)


@given(conv_cases(kind="depthwise", max_kernel=5), st.sampled_from(DEPTHWISE_PATHS))
def test_depthwise_float32_against_float64_oracle(case, path):
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
def test_flat_depthwise_matches_torch(case):
    assert depthwise_flat._flat_applies(geometry_of(case))
    check_f64(case)
    check_f32(case)


@given(conv_cases())
def test_float32_against_float64_oracle(case):
    check_f32(case)


@settings(max_examples=10)
@given(conv_cases())
def test_equals_reference_backend(case):
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
def test_each_implementation_matches_torch(name):
    case = _path_case(name)
    assert kind_of(case) == PATH_CASES[name][0]
    check_f64(case)
    check_f32(case)


DEPTHWISE_CASES = [name for name, spec in PATH_CASES.items() if spec[0] == "depthwise"]


@pytest.mark.parametrize("path", DEPTHWISE_PATHS)
@pytest.mark.parametrize("name", DEPTHWISE_CASES)
def test_both_depthwise_kernels_match_torch(name, path):
    with depthwise_path(path):
        check_f64(_path_case(name))
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
def test_flat_depthwise_many_channels(name):
    case = _flat_case(name, bias=True)
    assert depthwise_flat._flat_applies(geometry_of(case))  # small planes: the default dispatch
    check_f64(case)
    check_f32(_flat_case(name, bias=False, layout="F"))


def test_depthwise_dispatch():
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


def test_flat_dw_is_deterministic():
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
def test_general_path_in_batch_chunks(monkeypatch, name):
    """A tiny im2col budget forces one image per chunk (and buffer reuse across chunks)."""
    monkeypatch.setattr(im2col, "_COLS_BUDGET", 1)
    check_f64(_path_case(name, bias=False))


@pytest.mark.parametrize("layout", ["F", "strided"])
def test_non_contiguous_dy(layout):
    case = _path_case("depthwise 3x3 s2")
    x, w, b, dy = make_inputs(case, np.float64)
    _, cache = cpu_conv.conv2d_forward(x, w, b, case.stride, case.padding, groups=case.groups)
    grads = cpu_conv.conv2d_backward(with_layout(dy, layout), cache)
    expected = cpu_conv.conv2d_backward(np.ascontiguousarray(dy), cache)
    for ours, theirs in zip(grads, expected, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_same_errors_as_reference():
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
