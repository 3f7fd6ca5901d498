"""Channels-last inference (``kernels.cpu.channels_last`` and the plan's channels-last stretch):
the depthwise and pointwise kernels with their BN / activation epilogue against float64 torch,
the pooled mean, and where a chain of plans turns channels-last and back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scratchnets as sn
from scratchnets.arrays import to_channels_first, to_channels_last
from scratchnets.kernels.cpu import conv2d_bias_act_prepared, fused, global_avg_pool2d_channels_last
from scratchnets.nn import module as nn_module
from scratchnets.reference.conv import prepare_conv
from tests.helpers import assert_close_f32, assert_close_f64, t

ACTIVATIONS = {
    None: lambda y: y,
    "relu": torch.relu,
    "relu6": lambda y: torch.clamp(y, 0, 6),
    "hard_swish": torch.nn.functional.hardswish,
}


def oracle(x, w, b, bn, stride, pads, dilation, groups, activation):
    """act(BN(conv(x) + b)) in float64 torch, NCHW; ``bn`` (weight, bias, mean, var, eps)."""
    top, bottom, left, right = pads
    y = torch.nn.functional.conv2d(
        torch.nn.functional.pad(t(x), (left, right, top, bottom)), t(w),
        None if b is None else t(b), stride, 0, dilation, groups,
    )  # fmt: skip
    if bn is not None:
        weight, bias, mean, var, eps = bn
        y = torch.nn.functional.batch_norm(y, t(mean), t(var), t(weight), t(bias), False, 0, eps)
    return ACTIVATIONS[activation](y).numpy()


@st.composite
def channels_last_convs(draw):
    """A depthwise conv (any kernel, stride, dilation, padding) or a stride-1 pointwise one."""
    batch, channels = draw(st.integers(1, 3)), draw(st.integers(1, 40))
    if draw(st.booleans()):
        kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
        out_channels, groups = channels, channels
    else:
        kernel, stride, dilation, pads = (1, 1), (1, 1), (1, 1), (0, 0, 0, 0)
        out_channels, groups = draw(st.integers(1, 70)), 1
    height, width = draw(st.integers(9, 14)), draw(st.integers(9, 14))  # >= a dilated 5x5
    return batch, channels, out_channels, height, width, kernel, stride, dilation, pads, groups


@given(channels_last_convs(), st.sampled_from(list(ACTIVATIONS)), st.booleans(), st.booleans(),
       st.integers(0, 2**31 - 1))  # fmt: skip
def test_channels_last_convs_equal_float64_torch(conv, activation, with_bn, with_bias, seed):
    """float64: the function itself (1e-10); float32 against the float64 oracle within the
    rounding of a sum of KH KW (depthwise) or C_in (pointwise) terms."""
    batch, c_in, c_out, height, width, kernel, stride, dilation, pads, groups = conv
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c_in, height, width))
    w = rng.standard_normal((c_out, c_in // groups, *kernel))
    b = rng.standard_normal(c_out) if with_bias else None
    bn = None
    if with_bn:
        bn = (rng.standard_normal(c_out), rng.standard_normal(c_out), rng.standard_normal(c_out),
              rng.uniform(0.5, 2, c_out), 1e-5)  # fmt: skip
    expected = oracle(x, w, b, bn, stride, pads, dilation, groups, activation)
    for dtype in (np.float64, np.float32):
        cast = [None if a is None else np.asarray(a, dtype) for a in (x, w, b)]
        _, _, _, g = prepare_conv(*cast, stride, pads, dilation, groups)
        run = conv2d_bias_act_prepared(cast[1], cast[2], g, activation, bn, channels_last=True)
        y = to_channels_first(run(to_channels_last(cast[0])))
        if dtype == np.float64:
            assert_close_f64(y, expected, what="float64")
            continue
        terms = c_in // groups * kernel[0] * kernel[1]
        gain = 1.0 if bn is None else np.max(np.abs(bn[0]) / np.sqrt(bn[3] + bn[4]))
        assert_close_f32(y, expected, terms, np.max(np.abs(x)) * np.max(np.abs(w)) * gain * 4,
                         what="float32")  # fmt: skip


@pytest.mark.parametrize("kernel", [1, 3])
def test_a_channels_last_call_reads_weights_and_statistics_on_every_call(kernel):
    """Prepared once, the call still sees changes in place of w, b and the BN's statistics."""
    rng = np.random.default_rng(3)
    channels = 16
    x = rng.standard_normal((2, channels, 7, 7)).astype(np.float32)
    groups = channels if kernel == 3 else 1
    w = rng.standard_normal((channels, channels // groups, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    bn = (rng.standard_normal(channels), rng.standard_normal(channels),
          rng.standard_normal(channels), rng.uniform(0.5, 2, channels), 1e-5)  # fmt: skip
    _, _, _, g = prepare_conv(x, w, b, 1, kernel // 2, 1, groups)
    run = conv2d_bias_act_prepared(w, b, g, "relu6", bn, channels_last=True)
    xl = to_channels_last(x)
    w *= 0.5
    b += 1
    bn[2][...] += 0.25
    bn[3][...] *= 2
    again = conv2d_bias_act_prepared(w, b, g, "relu6", bn, channels_last=True)
    np.testing.assert_array_equal(run(xl), again(xl))
    expected = oracle(x, w, b, bn, (1, 1), (kernel // 2,) * 4, (1, 1), groups, "relu6")
    assert_close_f32(to_channels_first(run(xl)), expected, kernel * kernel * channels // groups,
                     16 * np.max(np.abs(x)) * np.max(np.abs(w)))  # fmt: skip


def test_a_channels_last_call_refuses_a_conv_it_has_no_kernel_for():
    x, w = np.zeros((1, 4, 6, 6), np.float32), np.zeros((8, 4, 3, 3), np.float32)
    _, _, _, g = prepare_conv(x, w, None, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="no channels-last kernel"):
        conv2d_bias_act_prepared(w, None, g, None, channels_last=True)


@given(st.integers(1, 3), st.integers(1, 50), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))  # fmt: skip
def test_the_channels_last_mean_is_the_planes_mean(batch, channels, height, width, dtype, seed):
    x = np.random.default_rng(seed).standard_normal((batch, channels, height, width))
    y = global_avg_pool2d_channels_last(to_channels_last(x.astype(dtype)))
    expected = t(x).mean(dim=(2, 3), keepdim=True).numpy()
    if dtype == np.float64:
        assert_close_f64(y, expected)
    else:
        assert_close_f32(y, expected, 1, np.max(np.abs(x)))


def separable(channels: int, out_channels: int) -> sn.nn.Sequential:
    """A depthwise -> pointwise pair as the eval fast path's copy holds it (inference only)."""
    rng = np.random.default_rng(0)
    layers = sn.nn.Sequential(
        sn.nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, rng=rng),
        sn.nn.ReLU6(),
        sn.nn.Conv2d(channels, out_channels, 1, rng=rng),
    ).eval()
    for layer in layers.modules():
        layer.forward_only = True
    return layers


#: the channels-last call's builder, before any test patches it
CHANNELS_LAST = fused.conv2d_bias_act_channels_last_prepared


@pytest.mark.parametrize("size", [28, 29])
def test_a_chain_turns_channels_last_on_small_planes_and_returns_nchw(monkeypatch, size):
    """A chain whose modules can all run channels-last, with two convs among them, turns
    channels-last where the plane has at most ``CHANNELS_LAST_PIXELS`` pixels (one transpose
    in, one out: NCHW in and out either way); the values are the NCHW forward's."""
    calls = []
    monkeypatch.setattr(fused, "conv2d_bias_act_channels_last_prepared",
                        lambda *a: calls.append(a) or CHANNELS_LAST(*a))  # fmt: skip
    layers = separable(8, 12)
    x = np.random.default_rng(1).standard_normal((2, 8, size, size)).astype(np.float32)
    with nn_module.planned_layout(True) as layout:
        run, y = layers.inference_plan(x)
    turned = size * size <= nn_module.CHANNELS_LAST_PIXELS
    assert layout.turns == turned and len(calls) == 2 * turned
    assert y.shape == (2, 12, size, size) and y.flags.c_contiguous
    np.testing.assert_array_equal(run(x), y)
    expected = layers.forward(x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_a_chain_with_a_module_that_cannot_follow_stays_nchw():
    """A max pool (no channels-last plan) after the pair keeps the whole chain NCHW; a chain
    with one conv left does not turn either (a transpose each way for one conv does not pay);
    nothing turns unless the plans are built with ``planned_layout(True)``."""
    layers = separable(8, 8)
    x = np.random.default_rng(1).standard_normal((1, 8, 10, 10)).astype(np.float32)
    assert nn_module.channels_last_convs(list(layers)) == 2
    assert not nn_module._turns_channels_last(x, list(layers))  # outside planned_layout(True)
    pooled = [*layers, sn.nn.MaxPool2d(2)]
    with nn_module.planned_layout(True):
        assert nn_module._turns_channels_last(x, list(layers))
        assert nn_module.channels_last_convs(pooled) is None
        assert not nn_module._turns_channels_last(x, pooled)
        assert not nn_module._turns_channels_last(x, list(layers)[1:])
