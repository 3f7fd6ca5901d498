"""pad2d in its four modes (and Conv2d's padding_mode) against float64 torch on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets as sn
import scratchnets.kernels.cuda as CK
from scratchnets import reference as R
from scratchnets import to_numpy
from scratchnets.kernels import cpu as K
from scratchnets.reference.pad import PAD_MODES, pad_source_index
from tests.cuda import examples
from tests.helpers import (
    LAYOUTS,
    assert_close_f32,
    assert_close_f64,
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
# every backend
#
# pad2d (constant / reflect / replicate / circular) and Conv2d's padding_mode against torch.
#
# The forward is a selection: bit-exact against ``F.pad`` in float32 and float64. The backward
# sums the gradients of the border copies into the pixels they copied: float64 within 1e-10 of
# torch; float32 against the float64 oracle with the bound for sums of as many terms as the most
# copied pixel has copies; the cpu kernel's backward equals the reference's bit for bit (same
# association). torch's ``F.pad`` orders pads (left, right, top, bottom); ours (top, bottom,
# left, right), like conv2d's explicit padding.
# ===============================================================================================

BACKENDS = {"reference": R, "cpu": K}


@st.composite
def pad_cases(draw):
    mode = draw(st.sampled_from(PAD_MODES))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    # torch's limits: reflect pads < size, circular pads <= size; constant / replicate any
    limit_h, limit_w = {"reflect": (h - 1, w - 1), "circular": (h, w)}.get(mode, (7, 7))
    pads = tuple(draw(st.integers(0, limit)) for limit in (limit_h, limit_h, limit_w, limit_w))
    return dict(
        mode=mode,
        shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
        pads=pads,
        value=draw(st.sampled_from([0.0, 1.5])),
        layout=draw(st.sampled_from(LAYOUTS)),
        seed=draw(st.integers(0, 2**16)),
    )


def torch_pad(x, pads, mode, value):
    """The family's oracle: ``F.pad`` of the torch tensor x with our (top, bottom, left, right)."""
    top, bottom, left, right = pads
    kwargs = {"value": value} if mode == "constant" else {}
    return TF.pad(x, (left, right, top, bottom), mode=mode, **kwargs)


def most_copies(case) -> int:
    """The largest number of output pixels that read one input pixel (terms of a dx sum)."""
    top, bottom, left, right = case["pads"]
    h, w = case["shape"][2:]
    rows = pad_source_index(h, top, bottom, case["mode"])
    cols = pad_source_index(w, left, right, case["mode"])
    count = lambda s: max(np.bincount(s[s >= 0], minlength=1).max(), 1)  # noqa: E731
    return int(count(rows) * count(cols))


@pytest.mark.parametrize("backend", list(BACKENDS))
@given(case=pad_cases())
def test_float64_matches_torch(backend, case):
    ops, rng = BACKENDS[backend], np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"])
    y, cache = ops.pad2d_forward(with_layout(x, case["layout"]), case["pads"], case["mode"],
                                 case["value"])  # fmt: skip
    xt = t(x, True)
    yt = torch_pad(xt, case["pads"], case["mode"], case["value"])
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape)
    dx = ops.pad2d_backward(with_layout(dy, case["layout"]), cache)
    (dx_t,) = torch_grads(yt, [xt], dy)
    record_error(f"{backend}/pad2d dx", dx, dx_t)
    assert_close_f64(dx, dx_t, what=f"{case['mode']} dx")


@given(case=pad_cases())
def test_float32_against_float64_oracle_and_cpu_equals_reference(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"]).astype(np.float32)
    xt = t(x, True)
    yt = torch_pad(xt, case["pads"], case["mode"], case["value"])
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    (dx_t,) = torch_grads(yt, [xt], dy)
    results = {}
    for backend, ops in BACKENDS.items():
        y, cache = ops.pad2d_forward(x, case["pads"], case["mode"], case["value"])
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, yt.detach().numpy().astype(np.float32))
        results[backend] = dx = ops.pad2d_backward(dy, cache)
        assert_close_f32(dx, dx_t, most_copies(case), 1.0 + float(np.abs(dy).max()), backend)
    np.testing.assert_array_equal(results["cpu"], results["reference"])


def test_source_indices_read_like_the_modes():
    # input a b c d (indices 0..3), two pads before and three after
    assert pad_source_index(4, 2, 3, "reflect").tolist() == [2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert pad_source_index(4, 2, 3, "replicate").tolist() == [0, 0, 0, 1, 2, 3, 3, 3, 3]
    assert pad_source_index(4, 2, 3, "circular").tolist() == [2, 3, 0, 1, 2, 3, 0, 1, 2]
    assert pad_source_index(4, 2, 3, "constant").tolist() == [-1, -1, 0, 1, 2, 3, -1, -1, -1]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize(
    "shape, pads, mode, message",
    [
        ((1, 1, 3, 3), 1, "mirror", "pad mode must be one of 'constant', 'reflect'"),
        ((1, 1, 3, 3), (0, 0, 3, 0), "reflect", "smaller than the input along each axis"),
        ((1, 1, 3, 3), (4, 0, 0, 0), "circular", "must not exceed the input"),
        ((1, 3, 3), 1, "constant", "expects x of shape (N, C, H, W)"),
        ((1, 1, 3, 3), -1, "constant", "padding must be >= 0"),
        ((1, 1, 0, 3), (1, 0, 0, 0), "replicate", "empty axis H"),
    ],
)
def test_invalid_arguments_raise_clear_errors(backend, shape, pads, mode, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BACKENDS[backend].pad2d_forward(np.zeros(shape), pads, mode)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_backward_rejects_dy_of_the_wrong_shape(backend):
    _, cache = BACKENDS[backend].pad2d_forward(np.zeros((1, 1, 3, 3)), 1, "reflect")
    with pytest.raises(ValueError, match=r"dy has shape \(1, 1, 4, 5\), expected \(1, 1, 5, 5\)"):
        BACKENDS[backend].pad2d_backward(np.zeros((1, 1, 4, 5)), cache)


@st.composite
def conv_cases(draw):
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    kernel = draw(st.sampled_from([(3, 3), (1, 3), (3, 1), (2, 2), (5, 5)]))
    h, w = draw(st.integers(3, 7)), draw(st.integers(3, 7))
    padding = draw(st.sampled_from([1, (1, 2), (2, 0), "same"]))
    stride = 1 if padding == "same" else draw(st.sampled_from([1, 2, (2, 1)]))
    return dict(mode=mode, kernel=kernel, hw=(h, w), padding=padding, stride=stride,
                dilation=draw(st.sampled_from([1, 2])) if padding == "same" else 1,
                groups=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 2**16)))  # fmt: skip


@pytest.mark.parametrize("backend", list(BACKENDS))
@given(case=conv_cases())
def test_conv2d_padding_modes_match_torch(backend, case):
    torch.manual_seed(case["seed"])
    args = dict(kernel_size=case["kernel"], stride=case["stride"], padding=case["padding"],
                dilation=case["dilation"], groups=case["groups"], padding_mode=case["mode"])  # fmt: skip
    theirs = torch.nn.Conv2d(4, 2, **args).double()
    ours = sn.nn.Conv2d(4, 2, **args, dtype=np.float64).to(backend)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((2, 4, *case["hw"]))
    xt = t(x, True)
    try:
        yt = theirs(xt)
    except RuntimeError:  # torch refuses (a reflect pad >= the input, a kernel > it): so do we
        with pytest.raises(ValueError, match="padding must|does not fit"):
            ours(x)
        return
    y = ours(x)
    assert_close_f64(y, yt.detach().numpy(), what="y")
    dy = rng.standard_normal(y.shape)
    dx = ours.backward(dy)
    dx_t, dw_t, db_t = torch_grads(yt, [xt, theirs.weight, theirs.bias], dy)
    record_error(f"{backend}/conv2d padding_mode dx", dx, dx_t)
    assert_close_f64(dx, dx_t, what="dx")
    assert_close_f64(ours.weight.grad, dw_t, what="dw")
    assert_close_f64(ours.bias.grad, db_t, what="db")


def test_conv2d_padding_mode_in_eval_fast_path_and_repr():
    conv = sn.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect", dtype=np.float64)
    assert "padding_mode='reflect'" in repr(conv)
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 6))
    expected = conv(x)
    conv.eval()
    conv.fused_activation = "relu"
    np.testing.assert_allclose(conv(x), np.maximum(expected, 0), rtol=0, atol=1e-12)


def test_unknown_padding_mode_names_the_allowed_ones():
    with pytest.raises(
        ValueError, match="'zeros', 'reflect', 'replicate', 'circular', got 'mirror'"
    ):
        sn.nn.Conv2d(3, 4, 3, padding_mode="mirror")


LAYERS = [
    ("ZeroPad2d", ((1, 2, 3, 0),)),
    ("ConstantPad2d", (2, 1.5)),
    ("ReflectionPad2d", ((1, 2, 0, 3),)),
    ("ReplicationPad2d", (3,)),
    ("CircularPad2d", ((1, 0, 2, 3),)),
]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("name, args", LAYERS)
def test_pad_layers_match_torchs(backend, name, args):
    """torch's pad layers: same constructor (pads ordered left, right, top, bottom), same repr."""
    ours, theirs = getattr(sn.nn, name)(*args).to(backend), getattr(torch.nn, name)(*args)
    assert repr(ours) == repr(theirs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    xt = t(x, True)
    yt = theirs(xt)
    y = ours(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape)
    assert_close_f64(ours.backward(dy), torch_grads(yt, [xt], dy)[0], what=f"{name} dx")


def test_pad_layer_rejects_bad_padding():
    with pytest.raises(
        ValueError, match=r"\(left, right, top, bottom\) of ints >= 0, got \(1, 2\)"
    ):
        sn.nn.ReflectionPad2d((1, 2))


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
@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@settings(max_examples=examples(3, 40))
@given(seed=st.integers(0, 2**16), dtype=FLOATS, hw=st.tuples(st.integers(2, 4), st.integers(2, 4)))
def test_cuda_pad2d_matches_torch(mode, seed, dtype, hw):
    rng = np.random.default_rng(seed)
    pads = tuple(int(p) for p in rng.integers(0, min(hw), size=4))  # < size: valid in every mode
    x = rand(rng, (1, 2, *hw), dtype)
    y, cache = CK.pad2d_forward(x, pads, mode, 0.5)
    y_ref, cache_ref = R.pad2d_forward(x, pads, mode, 0.5)
    dy = rand(rng, y_ref.shape, dtype)
    dx = CK.pad2d_backward(dy, cache)
    np.testing.assert_array_equal(to_numpy(y), y_ref)  # a selection
    np.testing.assert_array_equal(to_numpy(dx), R.pad2d_backward(dy, cache_ref))  # same sums
    xt = t(x, True)
    (dxt,) = torch_grads(torch_pad(xt, pads, mode, 0.5), [xt], dy)
    check_cuda("pad2d", "dx", dx, dxt, None, 4 * max(pads) + 4, amax_product(dy))
