"""scratchnets.nn against torch.nn: every layer's forward, dx and parameter gradients (float64,
random dy), BatchNorm's running statistics, the module system (names, state dicts, repr, modes,
backends, dtypes), weight initialisation and the error messages.

The ops themselves are tested in the per-op files; here the question is whether the layers wire
them like torch does: same parameter names and defaults, same argument handling, gradients
accumulated in the right place.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets.nn as nn
from scratchnets.nn import init
from tests.helpers import assert_close_f32, assert_close_f64, record_error, t, torch_grads

tnn = torch.nn


def to_torch_state(module) -> dict:
    return {name: torch.tensor(value) for name, value in module.state_dict().items()}


def assert_matches(actual, expected, what: str):
    record_error(f"reference/nn.{what}", actual, expected)
    assert_close_f64(actual, expected, what=what)


def check_against_torch(ours, theirs, x, what: str, rng, torch_forward=None):
    """Copy ours' state into ``theirs``, then compare y, dx and every parameter gradient.

    ``torch_forward(theirs, xt)`` replaces ``theirs(xt)`` where torch needs a detour (explicit
    asymmetric padding). Returns (our y, torch y) for further checks.
    """
    theirs.load_state_dict(to_torch_state(ours), strict=True)
    y = ours(x)
    xt = t(x, requires_grad=True)
    yt = theirs(xt) if torch_forward is None else torch_forward(theirs, xt)
    assert_matches(y, yt.detach().numpy(), f"{what} y")
    dy = rng.standard_normal(y.shape)
    dx = ours.backward(dy)
    names = [name for name, _ in theirs.named_parameters()]
    assert [name for name, _ in ours.named_parameters()] == names
    grads = torch_grads(yt, [xt, *theirs.parameters()], dy)
    assert_matches(dx, grads[0], f"{what} dx")
    ours_params = dict(ours.named_parameters())
    for name, expected in zip(names, grads[1:], strict=True):
        assert_matches(ours_params[name].grad, expected, f"{what} d{name}")
    return y, yt


# ------------------------------------------------------------------------------ layers vs torch


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding_kinds = ["int", "pair", "four"] + (["same", "valid"] if stride == (1, 1) else [])
    kind = draw(st.sampled_from(padding_kinds))
    padding = {
        "int": draw(st.integers(0, 2)),
        "pair": (draw(st.integers(0, 2)), draw(st.integers(0, 2))),
        "four": tuple(draw(st.integers(0, 2)) for _ in range(4)),
        "same": "same",
        "valid": "valid",
    }[kind]
    bias = draw(st.booleans())
    return c_in, c_out, kernel, stride, padding, dilation, groups, bias


@settings(max_examples=20)
@given(config=conv_configs(), seed=st.integers(0, 2**16))
def test_conv2d_matches_torch(config, seed):
    c_in, c_out, kernel, stride, padding, dilation, groups, bias = config
    rng = np.random.default_rng(seed)
    ours = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias, rng=rng)
    ours.to(dtype=np.float64)
    x = rng.standard_normal((2, c_in, 7, 6))
    if isinstance(padding, tuple) and len(padding) == 4:  # torch's Conv2d has no 4-sided padding
        top, bottom, left, right = padding
        theirs = tnn.Conv2d(c_in, c_out, kernel, stride, 0, dilation, groups, bias)
        y, _ = check_against_torch(
            ours, theirs, x, "Conv2d", rng, lambda m, xt: m(TF.pad(xt, (left, right, top, bottom)))
        )
    else:
        theirs = tnn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias)
        y, _ = check_against_torch(ours, theirs, x, "Conv2d", rng)
    if padding == "same":
        assert y.shape[2:] == x.shape[2:]


# (name, our layer, its torch twin, input shape): all float64 after .to(dtype=np.float64)
LAYER_CASES = [
    ("Linear", lambda: nn.Linear(5, 3), lambda: tnn.Linear(5, 3), (4, 5)),
    ("Linear-nobias", lambda: nn.Linear(5, 3, bias=False), lambda: tnn.Linear(5, 3, False), (4, 5)),
    ("MaxPool2d", lambda: nn.MaxPool2d(3, 2, 1), lambda: tnn.MaxPool2d(3, 2, 1), (2, 3, 7, 6)),
    ("MaxPool2d-default-stride", lambda: nn.MaxPool2d(2), lambda: tnn.MaxPool2d(2), (2, 3, 6, 5)),
    ("AvgPool2d", lambda: nn.AvgPool2d(3, 2, 1), lambda: tnn.AvgPool2d(3, 2, 1), (2, 3, 7, 6)),
    (
        "MaxPool2d-ceil-dilation",
        lambda: nn.MaxPool2d(3, 2, 1, dilation=(2, 1), ceil_mode=True),
        lambda: tnn.MaxPool2d(3, 2, 1, dilation=(2, 1), ceil_mode=True),
        (2, 3, 8, 6),
    ),
    (
        "AvgPool2d-ceil",
        lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True),
        lambda: tnn.AvgPool2d(3, 2, 1, ceil_mode=True),
        (2, 3, 8, 6),
    ),
    (
        "AvgPool2d-exclude-pad",
        lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
        lambda: tnn.AvgPool2d(3, 1, 1, count_include_pad=False),
        (2, 3, 5, 4),
    ),
    (
        "AdaptiveAvgPool2d",
        lambda: nn.AdaptiveAvgPool2d(1),
        lambda: tnn.AdaptiveAvgPool2d(1),
        (2, 3, 5, 4),
    ),
    (
        "AdaptiveAvgPool2d-pair",
        lambda: nn.AdaptiveAvgPool2d((1, 1)),
        lambda: tnn.AdaptiveAvgPool2d((1, 1)),
        (2, 3, 5, 4),
    ),
    ("Sigmoid", nn.Sigmoid, tnn.Sigmoid, (2, 3, 4, 5)),
    ("Flatten", nn.Flatten, tnn.Flatten, (2, 3, 4, 5)),
    ("Flatten-1-2", lambda: nn.Flatten(1, 2), lambda: tnn.Flatten(1, 2), (2, 3, 4, 5)),
    ("Identity", nn.Identity, tnn.Identity, (2, 3)),
    (
        "Upsample-nearest-x2",
        lambda: nn.Upsample(scale_factor=2),
        lambda: tnn.Upsample(scale_factor=2),
        (2, 3, 4, 5),
    ),
    (
        "Upsample-bilinear-x2",
        lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
        lambda: tnn.Upsample(scale_factor=2, mode="bilinear"),
        (2, 3, 4, 5),
    ),
    (
        "Upsample-nearest-size",
        lambda: nn.Upsample(size=(7, 11), mode="nearest"),
        lambda: tnn.Upsample(size=(7, 11), mode="nearest"),
        (2, 3, 4, 5),
    ),
    (
        "Upsample-bilinear-size",
        lambda: nn.Upsample(size=9, mode="bilinear"),
        lambda: tnn.Upsample(size=9, mode="bilinear"),
        (2, 3, 4, 5),
    ),
    (
        "Upsample-bilinear-x1.5",  # fractional scale: torch with recompute_scale_factor=True
        lambda: nn.Upsample(scale_factor=1.5, mode="bilinear"),
        lambda: tnn.Upsample(scale_factor=1.5, mode="bilinear", recompute_scale_factor=True),
        (2, 3, 5, 4),
    ),
    (
        "Upsample-bilinear-align-corners",
        lambda: nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True),
        lambda: tnn.Upsample(size=(7, 9), mode="bilinear", align_corners=True),
        (2, 3, 4, 5),
    ),
    (
        "Upsample-bilinear-align-corners-down",
        lambda: nn.Upsample(size=(3, 1), mode="bilinear", align_corners=True),
        lambda: tnn.Upsample(size=(3, 1), mode="bilinear", align_corners=True),
        (2, 3, 5, 4),
    ),
    ("Dropout-eval", lambda: nn.Dropout(0.3).eval(), lambda: tnn.Dropout(0.3).eval(), (2, 3, 4)),
    ("Softmax-dim1", lambda: nn.Softmax(1), lambda: tnn.Softmax(1), (2, 3, 4, 5)),
    ("Softmax-last", nn.Softmax, lambda: tnn.Softmax(-1), (3, 7)),
]


@pytest.mark.parametrize(
    "name, make_ours, make_theirs, shape", LAYER_CASES, ids=[case[0] for case in LAYER_CASES]
)
def test_layer_matches_torch(name, make_ours, make_theirs, shape):
    rng = np.random.default_rng(len(name))
    ours = make_ours().to(dtype=np.float64)
    check_against_torch(ours, make_theirs(), rng.standard_normal(shape), name, rng)


def hardsigmoid_by_definition(module, xt):
    """nn.Hardsigmoid as its formula relu6(x + 3) / 6: torch's own hardsigmoid backward multiplies
    by the float32 constant 1/6 even in float64 (3e-8 relative), the formula's autograd does not."""
    return TF.relu6(xt + 3) / 6


# boundary values of the piecewise activations: the gradient there is torch's (0 at 0 and 6, ...)
ACTIVATION_CASES = [
    ("ReLU", nn.ReLU, tnn.ReLU, None, [0.0]),
    ("ReLU6", nn.ReLU6, tnn.ReLU6, None, [0.0, 6.0]),
    ("Hardsigmoid", nn.Hardsigmoid, tnn.Hardsigmoid, hardsigmoid_by_definition, [-3.0, 3.0]),
    (
        "Hardtanh",
        lambda: nn.Hardtanh(-2.5, 1.5),
        lambda: tnn.Hardtanh(-2.5, 1.5),
        None,
        [-2.5, 1.5],
    ),
]


@pytest.mark.parametrize(
    "name, make_ours, make_theirs, torch_forward, kinks",
    ACTIVATION_CASES,
    ids=[c[0] for c in ACTIVATION_CASES],
)
def test_activation_matches_torch_at_kinks(name, make_ours, make_theirs, torch_forward, kinks):
    rng = np.random.default_rng(7)
    x = 4 * rng.standard_normal((2, 3, 4, 5))
    x.flat[: 2 * len(kinks)] = kinks * 2
    y, yt = check_against_torch(make_ours(), make_theirs(), x, name, rng, torch_forward)
    np.testing.assert_array_equal(y, yt.detach().numpy())  # selection: bit-exact


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm2d_matches_torch(training):
    rng = np.random.default_rng(3)
    ours = nn.BatchNorm2d(4, dtype=np.float64)
    # non-trivial affine parameters and running statistics, so that eval mode reads them
    for array in (ours.weight.data, ours.bias.data, ours.running_mean):
        array[...] = rng.standard_normal(4)
    ours.running_var[...] = rng.uniform(0.5, 2.0, 4)
    theirs = tnn.BatchNorm2d(4)
    ours.train(training)
    theirs.train(training)
    check_against_torch(ours, theirs, 3 + 2 * rng.standard_normal((3, 4, 5, 2)), "BatchNorm2d", rng)
    for name, value in theirs.state_dict().items():
        assert_matches(ours.state_dict()[name], value.numpy(), f"BatchNorm2d {name}")
    assert int(ours.num_batches_tracked) == int(training)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_batchnorm2d_running_stats_over_steps(momentum):
    rng = np.random.default_rng(4)
    ours = nn.BatchNorm2d(3, momentum=momentum, dtype=np.float64)
    theirs = tnn.BatchNorm2d(3, momentum=momentum)
    for _ in range(3):
        x = rng.uniform(-1, 5, (4, 3, 3, 3))
        ours(x)
        theirs(t(x))
    assert ours.num_batches_tracked.dtype == np.int64 and ours.num_batches_tracked.shape == ()
    assert int(ours.num_batches_tracked) == 3
    for name in ("running_mean", "running_var"):
        assert_matches(getattr(ours, name), getattr(theirs, name).numpy(), f"BatchNorm2d {name}")
    ours.eval()
    x = rng.standard_normal((2, 3, 3, 3))
    ours(x)
    assert int(ours.num_batches_tracked) == 3  # eval forwards do not count


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_loss_matches_torch(label_smoothing):
    rng = np.random.default_rng(5)
    logits, target = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    loss = ce(logits, target)
    assert isinstance(loss, float)
    logits_t = t(logits, requires_grad=True)
    loss_t = tnn.CrossEntropyLoss(label_smoothing=label_smoothing)(logits_t, torch.tensor(target))
    assert_matches(np.array(loss), loss_t.detach().numpy(), "CrossEntropyLoss loss")
    (expected,) = torch.autograd.grad(loss_t, logits_t)
    assert_matches(ce.backward(), expected.numpy(), "CrossEntropyLoss dlogits")
    assert_matches(ce.backward(0.37), 0.37 * expected.numpy(), "CrossEntropyLoss dlogits*0.37")


def test_dropout_train_mode_masks_and_seeds():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 50)) + 5.0  # no zeros: y / x recovers the multiplier
    drop = nn.Dropout(0.25, seed=11)
    y = drop(x)
    multiplier = y / x
    assert set(np.round(np.unique(multiplier), 12)) <= {0.0, round(1 / 0.75, 12)}
    assert 0.15 < np.mean(multiplier == 0) < 0.35
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(drop.backward(dy), dy * multiplier, rtol=1e-12)
    assert not np.array_equal(drop(x), y)  # a fresh mask per forward
    np.testing.assert_array_equal(nn.Dropout(0.25, seed=11)(x), y)  # a seed replays the masks
    np.testing.assert_array_equal(drop.eval()(x), x)


def test_sequential_matches_torch_end_to_end():
    """Conv-BN-ReLU6-Conv in train mode: outputs, gradients and running stats over two steps."""
    rng = np.random.default_rng(8)
    ours = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False, rng=rng),
        nn.BatchNorm2d(6),
        nn.ReLU6(),
        nn.Conv2d(6, 4, 1, rng=rng),
    ).to(dtype=np.float64)
    theirs = tnn.Sequential(
        tnn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False),
        tnn.BatchNorm2d(6),
        tnn.ReLU6(),
        tnn.Conv2d(6, 4, 1),
    )
    theirs.load_state_dict(to_torch_state(ours), strict=True)
    for step in (1, 2):  # .grad accumulates over the two steps in both libraries
        x = 3 * rng.standard_normal((2, 3, 9, 8))
        y, xt = ours(x), t(x, requires_grad=True)
        yt = theirs(xt)
        dy = rng.standard_normal(y.shape)
        dx = ours.backward(dy)
        (yt * t(dy)).sum().backward()
        assert_matches(y, yt.detach().numpy(), f"Sequential step-{step} y")
        assert_matches(dx, xt.grad.numpy(), f"Sequential step-{step} dx")
        for (name, p), (_, pt) in zip(
            ours.named_parameters(), theirs.named_parameters(), strict=True
        ):
            assert_matches(p.grad, pt.grad.numpy(), f"Sequential step-{step} d{name}")
    for name, value in theirs.state_dict().items():
        assert_matches(ours.state_dict()[name], value.numpy(), f"Sequential {name}")
    x = rng.standard_normal((2, 3, 9, 8))
    assert_matches(ours.eval()(x), theirs.eval()(t(x)).detach().numpy(), "Sequential eval y")


def bn_activation_net(rng):
    """Conv -> BN -> ReLU6 -> conv -> BN -> Hardswish -> BN -> ReLU, float32: three BN -> act
    pairs a Sequential runs in BN's passes on the cpu backend."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False, rng=rng), nn.BatchNorm2d(6),
        nn.ReLU6(), nn.Conv2d(6, 5, 1, rng=rng), nn.BatchNorm2d(5), nn.Hardswish(),
        nn.BatchNorm2d(5), nn.ReLU(),
    )  # fmt: skip


def test_sequential_bn_activation_pairs_equal_the_layers_in_turn(monkeypatch):
    """On the cpu backend a Sequential runs each BN -> ReLU / ReLU6 / Hardswish pair as one op
    (``BatchNorm2d.absorbs``): the same output and running statistics bit for bit, the same
    gradients to float32 rounding, as the layers one after another (absorbing switched off);
    the absorbed activation keeps no cache of its own."""
    rng = np.random.default_rng(5)
    fused = bn_activation_net(rng)
    apart = copy.deepcopy(fused)
    x = (3 * rng.standard_normal((4, 3, 10, 9))).astype(np.float32)
    dy = rng.standard_normal((4, 5, 5, 5)).astype(np.float32)
    y, dx = fused(x), fused.backward(dy)
    with pytest.raises(RuntimeError, match=r"ReLU6: backward\(\) called before forward"):
        fused[2].backward(np.zeros((4, 6, 5, 5), np.float32))
    monkeypatch.setattr(nn.BatchNorm2d, "absorbs", lambda self, following: False)
    y_apart, dx_apart = apart(x), apart.backward(dy)
    np.testing.assert_array_equal(y, y_apart)
    np.testing.assert_allclose(dx, dx_apart, rtol=1e-5, atol=1e-5 * np.abs(dx_apart).max())
    for (name, p), (_, q) in zip(fused.named_parameters(), apart.named_parameters(), strict=True):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-5, atol=1e-5 * np.abs(q.grad).max(),
                                   err_msg=name)  # fmt: skip
    for (name, a), (_, b) in zip(fused.named_buffers(), apart.named_buffers(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_sequential_leaves_replaced_activations_apart():
    """An activation whose forward is replaced on the instance (a profiler's wrapper) or that
    runs on another backend is called as itself, not absorbed into the BN before it."""
    rng = np.random.default_rng(6)
    net = bn_activation_net(rng)
    calls = []
    relu6 = net[2]
    relu6.forward = lambda x: calls.append(x.shape) or type(relu6).forward(relu6, x)
    net[5].to("reference")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = net(x)
    assert calls == [(2, 6, 4, 4)]
    dy = np.ones_like(y)
    net.backward(dy)  # each activation's own backward ran: their caches are there
    assert net[2]._out_shape == (2, 6, 4, 4) and net[5]._out_shape == (2, 5, 4, 4)


# ------------------------------------------------------------------------------ gradients


def small_net(rng=None):
    rng = np.random.default_rng(0) if rng is None else rng
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=rng), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
        nn.Linear(3 * 4 * 4, 2, rng=rng),
    ).to(dtype=np.float64)  # fmt: skip


def test_grads_accumulate_over_two_backward_calls():
    rng = np.random.default_rng(9)
    net = small_net()
    x = rng.standard_normal((2, 2, 4, 4))
    dy = rng.standard_normal((2, 2))
    net(x)
    dx_once = net.backward(dy)
    once = {name: p.grad.copy() for name, p in net.named_parameters()}
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net(x)
    net.backward(dy)
    dx_twice = net.backward(dy)  # the cache of the one forward is kept: a second backward adds
    np.testing.assert_array_equal(dx_twice, dx_once)
    for name, p in net.named_parameters():
        np.testing.assert_array_equal(p.grad, 2 * once[name], err_msg=name)


def test_frozen_parameter_gets_no_grad():
    rng = np.random.default_rng(10)
    conv = nn.Conv2d(2, 3, 3, rng=rng).to(dtype=np.float64)
    conv.weight.requires_grad = False
    y = conv(rng.standard_normal((1, 2, 5, 5)))
    conv.backward(rng.standard_normal(y.shape))
    assert conv.weight.grad is None and conv.bias.grad is not None


# ------------------------------------------------------------------------------ module system


def torch_twin_of_small_net():
    return tnn.Sequential(
        tnn.Conv2d(2, 3, 3, padding=1), tnn.BatchNorm2d(3), tnn.ReLU(), tnn.Flatten(),
        tnn.Linear(3 * 4 * 4, 2),
    )  # fmt: skip


def test_names_match_torch():
    ours, theirs = small_net(), torch_twin_of_small_net()
    for method in ("named_parameters", "named_buffers", "named_modules"):
        assert [n for n, _ in getattr(ours, method)()] == [n for n, _ in getattr(theirs, method)()]
    assert [type(m).__name__ for m in ours.children()] == [
        type(m).__name__ for m in theirs.children()
    ]
    assert len(list(ours.parameters())) == len(list(theirs.parameters())) == 6
    assert len(list(ours.buffers())) == 3


def test_state_dict_round_trip_with_torch():
    rng = np.random.default_rng(12)
    ours, theirs = small_net(), torch_twin_of_small_net()
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    assert state["1.num_batches_tracked"].dtype == np.int64
    assert state["1.num_batches_tracked"].shape == ()
    theirs.load_state_dict(to_torch_state(ours), strict=True)
    for name, value in theirs.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), state[name], err_msg=name)
    # and back: torch's values (BN statistics made non-trivial) into ours, as tensors
    with torch.no_grad():
        theirs[1].running_mean.copy_(torch.tensor(rng.standard_normal(3)))
        theirs[1].num_batches_tracked.fill_(7)
    result = ours.load_state_dict(theirs.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for name, value in ours.state_dict().items():
        np.testing.assert_array_equal(value, theirs.state_dict()[name].numpy(), err_msg=name)
    assert int(ours[1].num_batches_tracked) == 7


def test_state_dict_is_a_copy_and_loading_casts_in_place():
    net = small_net().to(dtype=np.float32)
    weight = net[0].weight.data
    state = net.state_dict()
    state["0.weight"] += 1.0
    assert not np.array_equal(net[0].weight.data, state["0.weight"])
    net.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})  # float64 in
    assert net[0].weight.data is weight and weight.dtype == np.float32  # same array, cast
    np.testing.assert_array_equal(weight, state["0.weight"])
    net.load_state_dict({k: v.tolist() for k, v in state.items()})  # anything np.asarray takes


def test_load_state_dict_errors():
    net = small_net()
    before = net.state_dict()
    state = net.state_dict()
    del state["4.bias"]
    state["4.extra"] = np.zeros(2)
    state["0.weight"] = np.zeros((3, 2, 5, 5))
    with pytest.raises(ValueError) as info:
        net.load_state_dict(state)
    message = str(info.value)
    for needle in ("Missing", "'4.bias'", "Unexpected", "'4.extra'", "0.weight", "(3, 2, 5, 5)", "(3, 2, 3, 3)"):  # fmt: skip
        assert needle in message
    for name, value in net.state_dict().items():  # nothing was written
        np.testing.assert_array_equal(value, before[name])
    state["0.weight"] = before["0.weight"]
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["4.bias"] and result.unexpected_keys == ["4.extra"]
    with pytest.raises(ValueError, match=r"size mismatch for 1\.weight.*\(4,\).*\(3,\)"):
        net.load_state_dict({"1.weight": np.ones(4)}, strict=False)  # shapes matter even then


def test_repr_matches_torch():
    ours = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(8, 8, (1, 5), padding="same", dilation=2, groups=4),
        nn.ReLU6(inplace=True),
        nn.Sequential(nn.ReLU(), nn.Sigmoid(), nn.Hardsigmoid()),
        nn.AvgPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Upsample(scale_factor=2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(8, 2),
        nn.Identity(),
        nn.CrossEntropyLoss(),
    )
    theirs = tnn.Sequential(
        tnn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        tnn.Conv2d(8, 8, (1, 5), padding="same", dilation=2, groups=4),
        tnn.ReLU6(inplace=True),
        tnn.Sequential(tnn.ReLU(), tnn.Sigmoid(), tnn.Hardsigmoid()),
        tnn.AvgPool2d(2),
        tnn.AdaptiveAvgPool2d(1),
        tnn.Upsample(scale_factor=2),
        tnn.Flatten(),
        tnn.Dropout(0.2),
        tnn.Linear(8, 2),
        tnn.Identity(),
        tnn.CrossEntropyLoss(),
    )
    assert repr(ours) == repr(theirs)
    for options in ({}, {"affine": False}, {"bias": False}, {"track_running_stats": False}):
        assert repr(nn.BatchNorm2d(4, **options)) == repr(tnn.BatchNorm2d(4, **options))
    assert repr(nn.Hardswish()) == repr(tnn.Hardswish())
    assert repr(nn.SiLU()) == repr(tnn.SiLU())
    assert repr(nn.MaxPool2d(3, 2, 1)) == repr(tnn.MaxPool2d(3, 2, 1))  # dilation, ceil_mode shown
    assert repr(nn.MaxPool2d(3, 2, 1, 2, ceil_mode=True)) == repr(
        tnn.MaxPool2d(3, 2, 1, 2, ceil_mode=True)
    )


def test_sequential_container_and_registration():
    a, b, c = nn.ReLU(), nn.Sigmoid(), nn.Identity()
    seq = nn.Sequential(a, b, c)
    assert len(seq) == 3 and list(seq) == [a, b, c] and seq[-1] is c and seq[0] is a
    assert list(seq[1:]) == [b, c] and [n for n, _ in seq[1:].named_children()] == ["1", "2"]
    with pytest.raises(IndexError):
        seq[3]
    named = nn.Sequential(OrderedDict(first=a, second=b))
    assert [n for n, _ in named.named_children()] == ["first", "second"]
    # attribute assignment registers, None keeps a declared slot, wrong types are refused
    layer = nn.Linear(2, 2, bias=False)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    layer.bias = nn.Parameter(np.zeros(2, np.float32))
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    with pytest.raises(TypeError, match="bias"):
        layer.bias = np.zeros(2)
    del layer.bias
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    # a shared module's parameters are listed once
    shared = nn.Sequential(layer, layer)
    assert len(list(shared.parameters())) == 1
    assert list(shared.state_dict()) == [
        "0.weight",
        "1.weight",
    ]  # state dicts list both, like torch
    # a deep copy owns its arrays (what an EMA copy of a model relies on)
    original = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm2d(2))
    twin = copy.deepcopy(original)
    twin[0].weight.data += 1.0
    twin[1].running_mean += 1.0
    assert not np.array_equal(twin[0].weight.data, original[0].weight.data)
    assert not np.array_equal(twin[1].running_mean, original[1].running_mean)
    assert [n for n, _ in twin.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    # train / eval reach every submodule
    net = small_net().eval()
    assert not any(m.training for m in net.modules())
    assert all(m.training for m in net.train().modules())


def test_to_reference_and_dtype_conversion():
    rng = np.random.default_rng(13)
    net = small_net().to("cpu")
    x = rng.standard_normal((2, 2, 4, 4))
    y = net(x)
    assert net.to("reference") is net
    assert all(m.backend == "reference" for m in net.modules())
    with pytest.raises(RuntimeError, match="before forward"):  # .to drops the caches
        net.backward(np.ones_like(y))
    assert_close_f64(net(x), y, what="reference vs cpu backend")
    net.to(dtype=np.float32)
    assert all(m.dtype == np.float32 for m in net.modules())
    assert all(p.data.dtype == np.float32 for p in net.parameters())
    assert net[1].running_var.dtype == np.float32 and net[1].num_batches_tracked.dtype == np.int64
    with pytest.raises(ValueError, match="unknown backend"):
        net.to("tpu")
    with pytest.raises(ValueError, match="int32"):
        net.to(dtype=np.int32)


CUDA_ROUND_TRIP = """
import numpy as np
import scratchnets.nn as nn
from scratchnets.arrays import is_device_array

net = nn.Sequential(nn.Conv2d(2, 3, 3, rng=np.random.default_rng(0)), nn.BatchNorm2d(3))
host_state = net.state_dict()
net.to("cuda")
assert all(m.backend == "cuda" for m in net.modules())
assert all(is_device_array(p.data) for p in net.parameters())
assert is_device_array(net[1].running_var) and isinstance(net[1].num_batches_tracked, np.ndarray)
state = net.state_dict()  # host copies
assert all(isinstance(v, np.ndarray) for v in state.values())
assert all(np.array_equal(state[k], host_state[k]) for k in state)
state["0.weight"] += 1.0
net.load_state_dict(state)  # copied into the device arrays
assert np.array_equal(net[0].weight.data.copy_to_host(), state["0.weight"])
try:
    net(np.zeros((1, 2, 5, 5), np.float32))
    raise AssertionError("a host array was accepted on 'cuda'")
except TypeError as error:
    assert "device array" in str(error)
net.to("reference", dtype=np.float64)
assert all(isinstance(p.data, np.ndarray) and p.data.dtype == np.float64 for p in net.parameters())
assert np.array_equal(net[0].weight.data, state["0.weight"])
"""


def test_to_cuda_moves_arrays_under_the_simulator():
    """.to("cuda") / state dicts / .to("reference") with device arrays, in a fresh process with
    NUMBA_ENABLE_CUDASIM=1 (it must be set before numba is imported)."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", CUDA_ROUND_TRIP], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", ["Conv2d", "Linear"])
def test_float32_layer_matches_float64_oracle(kind):
    """After .to(dtype=np.float32) the layer computes in float32 (its own weights, copied into the
    float64 oracle); errors stay within the float32 bound of each sum."""
    rng = np.random.default_rng(14)
    if kind == "Conv2d":
        ours, theirs = nn.Conv2d(4, 6, 3, padding=1, rng=rng), tnn.Conv2d(4, 6, 3, padding=1)
        x, dw_terms = rng.standard_normal((2, 4, 6, 5)), 2 * 6 * 5
        y_terms, dx_terms = 4 * 9, 6 * 9
    else:
        ours, theirs = nn.Linear(20, 7, rng=rng), tnn.Linear(20, 7)
        x, dw_terms, y_terms, dx_terms = rng.standard_normal((5, 20)), 5, 20, 7
    ours.to(dtype=np.float64).to(dtype=np.float32)
    assert ours.weight.data.dtype == np.float32
    theirs.load_state_dict(to_torch_state(ours))
    x32 = x.astype(np.float32)
    y = ours(x32)
    assert y.dtype == np.float32
    xt = t(x32, requires_grad=True)
    yt = theirs(xt)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = ours.backward(dy)
    dx_t, dw_t, db_t = torch_grads(yt, [xt, theirs.weight, theirs.bias], dy)
    w_max, x_max, dy_max = np.abs(ours.weight.data).max(), np.abs(x32).max(), np.abs(dy).max()
    assert_close_f32(y, yt.detach().numpy(), y_terms, x_max * w_max + 1, what=f"{kind} y")
    assert_close_f32(dx, dx_t, dx_terms, dy_max * w_max, what=f"{kind} dx")
    assert_close_f32(ours.weight.grad, dw_t, dw_terms, dy_max * x_max, what=f"{kind} dw")
    assert_close_f32(ours.bias.grad, db_t, dw_terms, dy_max, what=f"{kind} db")


# ------------------------------------------------------------------------------ errors


def test_backward_before_forward_names_the_module():
    with pytest.raises(RuntimeError, match=r"Conv2d: backward\(\) called before forward\(\)"):
        nn.Conv2d(1, 1, 1).backward(np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(RuntimeError, match=r"CrossEntropyLoss: backward\(\) called before"):
        nn.CrossEntropyLoss().backward()


def test_input_errors_name_layer_and_shapes():
    x = np.zeros((2, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 8.*\(N, 3, H, W\).*\(2, 4, 5, 5\)"):
        nn.Conv2d(3, 8, 3)(x)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) or \(3, H, W\), got \(4, 5, 5\)"):
        nn.Conv2d(3, 8, 3)(x[0])
    assert nn.Conv2d(3, 8, 3)(x[0, :3]).shape == (8, 3, 3)  # unbatched, as in torch
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3.*\(N, 3, H, W\).*\(2, 4, 5, 5\)"):
        nn.BatchNorm2d(3)(x)
    with pytest.raises(ValueError, match=r"Linear.*\(\*, 6\).*\(2, 5\)"):
        nn.Linear(6, 2)(x[:, 0, 0])
    with pytest.raises(ValueError, match=r"MaxPool2d.*\(N, C, H, W\) or \(C, H, W\).*\(2, 4\)"):
        nn.MaxPool2d(2)(x[:, :, 0, 0])
    conv = nn.Conv2d(4, 8, 3)
    y = conv(x)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 8, 3, 4\).*\(2, 8, 3, 3\)"):
        conv.backward(np.zeros((2, 8, 3, 4), np.float32))
    assert y.shape == (2, 8, 3, 3)


def test_dtype_errors():
    with pytest.raises(TypeError, match="int64"):
        nn.Conv2d(4, 8, 3)(np.zeros((2, 4, 5, 5), np.int64))
    with pytest.raises(TypeError, match="int32"):
        nn.ReLU()(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match=r"float64 input.*\.to\(dtype=np\.float64\)"):
        nn.Conv2d(4, 8, 3)(np.zeros((2, 4, 5, 5)))
    with pytest.raises(TypeError, match="NumPy array"):
        nn.ReLU()([1.0, 2.0])
    with pytest.raises(TypeError, match="integer class indices"):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), np.zeros(2))


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="stride 1"):
        nn.Conv2d(4, 6, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match=r"output_size must be an int >= 1 .* got 0"):
        nn.AdaptiveAvgPool2d(0)
    with pytest.raises(ValueError, match=r"dilation must be at least 1, got 0"):
        nn.MaxPool2d(2, dilation=0)
    with pytest.raises(ValueError, match="exactly one"):
        nn.Upsample()
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        nn.Dropout(1.5)


# ------------------------------------------------------------------------------ initialisation


def test_default_init_like_torch():
    """Conv2d / Linear: U(+-1/sqrt(fan_in)) weights and biases; BN: ones, zeros, 0, 1."""
    conv = nn.Conv2d(32, 64, 3, groups=2, rng=np.random.default_rng(0), dtype=np.float64)
    bound = 1 / math.sqrt(16 * 9)  # fan_in = C_in / groups * kh * kw
    for array in (conv.weight.data, conv.bias.data):
        assert np.abs(array).max() <= bound
    assert np.abs(conv.weight.data).max() > 0.99 * bound
    np.testing.assert_allclose(conv.weight.data.std(), bound / math.sqrt(3), rtol=0.03)
    # the same statistics as torch's own initialisation of the twin layer
    torch_std = tnn.Conv2d(32, 64, 3, groups=2).weight.detach().numpy().std()
    np.testing.assert_allclose(conv.weight.data.std(), torch_std, rtol=0.06)
    linear = nn.Linear(50, 30, rng=np.random.default_rng(1))
    assert linear.weight.data.dtype == np.float32
    assert np.abs(linear.weight.data).max() <= 1 / math.sqrt(50)
    bn = nn.BatchNorm2d(5)
    for array, value in zip(
        (bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var), (1, 0, 0, 1), strict=True
    ):
        np.testing.assert_array_equal(array, np.full(5, value, np.float32))


def test_init_is_reproducible_across_dtypes():
    a = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(42))
    b = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(42), dtype=np.float64)
    np.testing.assert_array_equal(a.weight.data, b.weight.data.astype(np.float32))
    np.testing.assert_array_equal(a.bias.data, b.bias.data.astype(np.float32))
    c = nn.Conv2d(3, 4, 3, rng=np.random.default_rng(43))
    assert not np.array_equal(a.weight.data, c.weight.data)


def test_init_functions():
    rng = np.random.default_rng(15)
    w = np.empty((256, 64, 3, 3))
    assert init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", rng=rng) is w
    np.testing.assert_allclose(w.std(), math.sqrt(2 / (256 * 9)), rtol=0.02)
    assert abs(w.mean()) < 0.02 * w.std()  # ~8 standard errors of the mean
    init.kaiming_uniform_(w, rng=rng)  # a=0, leaky_relu gain ~ sqrt(2), fan_in = 64 * 9
    assert np.abs(w).max() <= math.sqrt(3) * init.calculate_gain("leaky_relu", 0) / math.sqrt(576)
    p = nn.Parameter(np.empty((1000, 20), np.float32))
    assert init.normal_(p, mean=2.0, std=0.5, rng=rng) is p
    np.testing.assert_allclose([p.data.mean(), p.data.std()], [2.0, 0.5], rtol=0.02)
    init.uniform_(p, -3.0, -2.0, rng=rng)
    assert -3.0 <= p.data.min() and p.data.max() < -2.0
    np.testing.assert_array_equal(init.zeros_(np.ones(3)), np.zeros(3))
    np.testing.assert_array_equal(init.ones_(np.zeros(3)), np.ones(3))
    np.testing.assert_array_equal(init.constant_(np.zeros(2), 0.5), [0.5, 0.5])
    for name, param in [("linear", None), ("relu", None), ("tanh", None), ("leaky_relu", 0.2)]:
        assert init.calculate_gain(name, param) == pytest.approx(
            torch.nn.init.calculate_gain(name, param)
        )
    with pytest.raises(ValueError, match="at least 2 dims"):
        init.kaiming_normal_(np.empty(5))
    with pytest.raises(TypeError, match="host NumPy"):
        init.zeros_([0.0, 1.0])


def test_every_layer_is_exported_by_nn():
    """``scratchnets.nn`` exports every public layer class of ``nn.layers`` (no hand list)."""
    import inspect

    from scratchnets.nn import layers

    classes = {name for name, value in vars(layers).items()
               if inspect.isclass(value) and issubclass(value, nn.Module)
               and value.__module__ == layers.__name__ and not name.startswith("_")}  # fmt: skip
    assert classes <= set(nn.__all__)
    assert all(getattr(nn, name) is getattr(layers, name) for name in classes)
    assert {"Hardswish", "SiLU", "AdaptiveMaxPool2d", "ZeroPad2d"} <= classes
