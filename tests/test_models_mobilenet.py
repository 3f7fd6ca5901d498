"""MobileNetV1 / MobileNetV2 against their genuine twins (timm ``mobilenetv1_100``, torchvision
``mobilenet_v2``): parameter counts, state dict layout, outputs and every gradient; BN folding;
the Keras-style variant of MobileNetV2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets as sn
from scratchnets.models.blocks import Conv2dSame, make_divisible, tf_same_padding
from scratchnets.nn import BatchNorm2d
from tests.helpers import assert_close_f64, record_error, t, torch_grads
from tests.model_twins import (
    BACKENDS,
    assert_same_layout,
    check_parity,
    load_into_twin,
    randomize_bn,
    torch_twin,
)

pytestmark = pytest.mark.torch_models

#: (name, width, input size, classes): small widths and odd sizes keep the float64 runs quick
PARITY_CASES = [("mobilenet_v1", 0.25, 49, 10), ("mobilenet_v2", 0.35, 48, 7)]


def make_model(name, width, num_classes, dtype, backend="reference", seed=0, **kwargs):
    if name == "mobilenet_v2":
        kwargs.setdefault("dropout", 0.0)  # torch's dropout masks cannot be replayed
    model = sn.models.create(name, num_classes, width, rng=seed, dtype=dtype, **kwargs)
    randomize_bn(model, np.random.default_rng(seed + 1))
    return model.to(backend)


@pytest.mark.parametrize(
    ("name", "expected"), [("mobilenet_v1", 4_231_976), ("mobilenet_v2", 3_504_872)]
)
def test_parameter_count_at_width_one(name, expected):
    model = sn.models.create(name, rng=0)
    assert sum(p.data.size for p in model.parameters()) == expected


@pytest.mark.parametrize(
    ("name", "width"),
    [("mobilenet_v1", w) for w in (0.25, 0.35, 0.75, 1.0, 1.25)]
    + [("mobilenet_v2", w) for w in (0.35, 0.5, 0.75, 1.0, 1.4)],
)
def test_state_dict_layout_equals_twin(name, width):
    assert_same_layout(sn.models.create(name, 1000, width, rng=0), torch_twin(name, 1000, width))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "width", "size", "classes"), PARITY_CASES)
def test_float64_parity_with_twin(name, width, size, classes, backend):
    model = make_model(name, width, classes, np.float64, backend)
    x = np.random.default_rng(2).standard_normal((2, 3, size, size))
    check_parity(
        model,
        torch_twin(name, classes, width),
        x,
        np.random.default_rng(3),
        f"{backend}/{name} f64",
    )


@pytest.mark.float32_parity
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "width", "size", "classes"), PARITY_CASES)
def test_float32_parity_with_float64_twin(name, width, size, classes, backend):
    model = make_model(name, width, classes, np.float32, backend)
    x = np.random.default_rng(4).standard_normal((2, 3, size, size))
    check_parity(
        model,
        torch_twin(name, classes, width),
        x,
        np.random.default_rng(5),
        f"{backend}/{name} f32",
    )


def test_mobilenet_v1_stride_plan_and_relu_option():
    """Table 1 with the typo fixed: strides 2 at the stem and the first block of stages 1-4 only;
    ``act="relu"`` gives the paper's ReLU."""
    model = sn.models.create("mobilenet_v1", rng=0, act="relu")
    strides = [model.conv_stem.stride[0]] + [
        block.conv_dw.stride[0] for stage in model.blocks for block in stage
    ]
    assert strides == [2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert type(model.bn1.act).__name__ == "ReLU"
    y = model.eval()(np.zeros((1, 3, 33, 47), np.float32))  # any input size
    assert y.shape == (1, 1000)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "width", "size", "classes"), PARITY_CASES)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_fuse_equals_eval_model(name, width, size, classes, backend, dtype, rtol):
    model = make_model(name, width, classes, dtype, backend).eval()
    model.fast_eval = False  # fuse against the training graph (whose caches are checked below)
    x = np.random.default_rng(6).standard_normal((2, 3, size, size)).astype(dtype)
    expected = model(x)
    before = model.state_dict()
    fused = sn.models.fuse(model)
    assert not any(isinstance(m, BatchNorm2d) for m in fused.modules())
    assert fused.backend == backend
    actual = fused(x)
    err = record_error(f"{backend}/{name} fuse {np.dtype(dtype).name}", actual, expected)
    assert err <= rtol * max(1.0, float(np.max(np.abs(expected)))), err
    assert sn.models.fuse(fused, inplace=True) is fused  # nothing left to fold: a no-op
    np.testing.assert_array_equal(fused(x), actual)
    after = model.state_dict()  # the original is untouched, its forward cache included
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert model.backward(np.ones_like(expected)).shape == x.shape


def test_fold_bn_rejects_mismatched_pair():
    conv = sn.nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match="8 output channels"):
        sn.models.fold_bn(conv, BatchNorm2d(4))
    with pytest.raises(TypeError, match="Conv2d and a BatchNorm2d"):
        sn.models.fold_bn(BatchNorm2d(8), conv)


# ---------------------------------------------------------------------------- Keras style


@settings(max_examples=20)
@given(
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    kernel=st.sampled_from([1, 2, 3, 5]),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_conv2d_same_matches_tf_padding_in_torch(size, kernel, stride, dilation, seed):
    """Conv2dSame = torch's conv on the input zero-padded by TF's rule (odd pixel bottom/right);
    the output size is ceil(size / stride) as in TensorFlow."""
    rng = np.random.default_rng(seed)
    conv = Conv2dSame(3, 4, kernel, stride, dilation=dilation, rng=rng).to(dtype=np.float64)
    x = rng.standard_normal((2, 3, *size))
    y = conv(x)
    assert y.shape[2:] == tuple(-(-s // stride) for s in size)
    (top, bottom), (left, right) = (tf_same_padding(s, kernel, stride, dilation) for s in size)
    xt, wt, bt = t(x, True), t(conv.weight.data, True), t(conv.bias.data, True)
    yt = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, bt, stride, 0, dilation)
    dy = rng.standard_normal(y.shape)
    dx_t, dw_t, db_t = torch_grads(yt, [xt, wt, bt], dy)
    assert_close_f64(y, yt.detach().numpy(), what="y")
    assert_close_f64(conv.backward(dy), dx_t, what="dx")
    assert_close_f64(conv.weight.grad, dw_t, what="dw")
    assert_close_f64(conv.bias.grad, db_t, what="db")


def test_tf_same_padding_examples():
    assert tf_same_padding(224, 3, 2) == (0, 1)  # even size: the extra pixel goes after
    assert tf_same_padding(225, 3, 2) == (1, 1)
    assert tf_same_padding(7, 3, 1) == (1, 1)
    assert tf_same_padding(5, 1, 2) == (0, 0)


def test_keras_style_widths():
    """Keras rounds int(c * alpha) (truncated first) and keeps 1280 for alpha <= 1; its hidden
    width is in * t unrounded; BN has eps 1e-3."""
    model = sn.models.create("mobilenet_v2", width_mult=0.35, keras_style=True, rng=0)
    blocks = list(model.features)[1:-1]
    outs = [b.conv[len(b.conv) - 2].out_channels for b in blocks]
    assert outs[:2] == [make_divisible(int(16 * 0.35)), make_divisible(int(24 * 0.35))] == [8, 8]
    assert blocks[1].conv[0][0].out_channels == 8 * 6  # no rounding of the expansion
    assert model.features[-1][0].out_channels == 1280
    assert model.features[0][1].eps == 1e-3
    assert sn.models.create("mobilenet_v2", width_mult=1.4, keras_style=True).num_features == 1792


def _keras_twin(width_mult: float, num_classes: int) -> torch.nn.Module:
    """torchvision's MobileNetV2 turned into Keras' numerics: TF "same" padding on every 3x3
    conv, BN eps 1e-3 / momentum 0.001. At alpha = 0.5 and 1 Keras and torchvision round every
    width alike (int(c * alpha) truncates nothing), so the layouts agree."""
    twin = torch_twin("mobilenet_v2", num_classes, width_mult)
    for module in twin.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps, module.momentum = 1e-3, 1e-3
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3):

            def same_forward(x, conv=module):
                (top, bottom), (left, right) = (
                    tf_same_padding(s, 3, conv.stride[0]) for s in x.shape[2:]
                )
                x = F.pad(x, (left, right, top, bottom))
                return F.conv2d(x, conv.weight, None, conv.stride, 0, 1, conv.groups)

            module.forward = same_forward
    return twin


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype", [np.float64, pytest.param(np.float32, marks=pytest.mark.float32_parity)]
)
def test_keras_style_parity_with_padded_twin(dtype):
    model = make_model("mobilenet_v2", 0.5, 5, dtype, keras_style=True)
    x = np.random.default_rng(7).standard_normal((2, 3, 46, 46))  # 46 -> 23 -> 12: even and odd
    check_parity(
        model,
        _keras_twin(0.5, 5),
        x,
        np.random.default_rng(8),
        f"reference/mobilenet_v2 keras {np.dtype(dtype).name}",
    )


def test_twin_weights_really_are_shared():
    """Guard against a vacuous parity check: a changed weight changes torch's output."""
    model = make_model("mobilenet_v1", 0.25, 3, np.float64)
    twin = torch_twin("mobilenet_v1", 3, 0.25)
    load_into_twin(model, twin)
    x = np.random.default_rng(9).standard_normal((1, 3, 32, 32))
    twin.eval()
    model.eval()
    with torch.no_grad():
        before = twin(t(x)).numpy()
    assert_close_f64(model(x), before)
    model.classifier.weight.data[0, 0] += 1.0
    assert not np.allclose(model(x), before)
