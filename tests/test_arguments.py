"""Bad constructor arguments fail where they are given: a ValueError naming the argument and the
value for an out-of-range number, a TypeError for a non-integer where an integer is meant."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import scratchnets as sn
from scratchnets import nn

below_one = st.integers(-5, 0)
negative = st.integers(-5, -1)
not_int = st.sampled_from([1.0, 2.5, "2", None, True])


def raises_naming(error, name: str, value):
    """pytest.raises(error) whose message names the argument and shows the value."""
    return pytest.raises(error, match=rf"{re.escape(name)}.*{re.escape(repr(value))}")


@given(value=below_one, argument=st.sampled_from(["kernel_size", "stride", "dilation"]))
def test_conv_kernel_stride_dilation_below_one(value, argument):
    kwargs = dict(kernel_size=3) | {argument: value}
    with raises_naming(ValueError, argument, value):
        nn.Conv2d(3, 8, **kwargs)


@given(value=below_one, argument=st.sampled_from(["in_channels", "out_channels", "groups"]))
def test_conv_channels_and_groups_below_one(value, argument):
    kwargs = dict(in_channels=4, out_channels=8, kernel_size=3) | {argument: value}
    with raises_naming(ValueError, argument, value):
        nn.Conv2d(**kwargs)


@given(value=negative, four=st.booleans())
def test_conv_negative_padding(value, four):
    padding = (0, value, 1, 1) if four else (value, 1)
    with raises_naming(ValueError, "padding", padding):
        nn.Conv2d(3, 8, 3, padding=padding)


@given(groups=st.integers(2, 9).filter(lambda g: 12 % g))
def test_conv_groups_that_do_not_divide_the_channels(groups):
    with pytest.raises(ValueError, match=rf"divisible by groups \({groups}\)"):
        nn.Conv2d(12, 12, 3, groups=groups)


def test_conv_unknown_padding_mode():
    with raises_naming(ValueError, "padding", "full"):
        nn.Conv2d(3, 8, 3, padding="full")


@given(value=not_int, argument=st.sampled_from(["stride", "kernel_size", "groups", "in_channels"]))
def test_conv_non_integer_is_a_type_error(value, argument):
    kwargs = dict(in_channels=4, out_channels=8, kernel_size=3) | {argument: value}
    with raises_naming(TypeError, argument, value):
        nn.Conv2d(**kwargs)


@given(value=below_one, argument=st.sampled_from(["kernel_size", "stride"]))
def test_pool_kernel_and_stride_below_one(value, argument):
    kwargs = dict(kernel_size=3) | {argument: value}
    for pool in (nn.MaxPool2d, nn.AvgPool2d):
        with raises_naming(ValueError, argument, value):
            pool(**kwargs)


@given(padding=st.integers(-3, -1) | st.integers(2, 5))
def test_pool_padding_negative_or_over_half_the_kernel(padding):
    with raises_naming(ValueError, "padding", padding):
        nn.MaxPool2d(3, padding=padding)


def test_pool_float_stride_is_a_type_error():
    with raises_naming(TypeError, "stride", 1.5):
        nn.AvgPool2d(3, stride=1.5)


@given(p=st.floats(-10, -1e-6) | st.floats(1.000001, 10))
def test_dropout_p_outside_unit_interval(p):
    with raises_naming(ValueError, "p", p):
        nn.Dropout(p)


@given(momentum=st.floats(-10, -1e-6) | st.floats(1.000001, 10))
def test_batch_norm_momentum_outside_unit_interval(momentum):
    with raises_naming(ValueError, "momentum", momentum):
        nn.BatchNorm2d(8, momentum=momentum)


@given(eps=st.floats(-1.0, 0.0))
def test_batch_norm_eps_not_positive(eps):
    with raises_naming(ValueError, "eps", eps):
        nn.BatchNorm2d(8, eps=eps)


def test_batch_norm_and_linear_sizes():
    with raises_naming(ValueError, "num_features", 0):
        nn.BatchNorm2d(0)
    with raises_naming(TypeError, "num_features", 8.0):
        nn.BatchNorm2d(8.0)
    with raises_naming(ValueError, "out_features", -2):
        nn.Linear(4, -2)
    with raises_naming(TypeError, "in_features", "4"):
        nn.Linear("4", 2)


@given(width=st.floats(-2.0, 0.0), name=st.sampled_from(["mobilenet_v2", "ghostnet_100"]))
def test_model_width_multiplier_not_positive(width, name):
    with raises_naming(ValueError, "width_mult", width):
        sn.models.create(name, width_mult=width)


def test_model_num_classes():
    with raises_naming(ValueError, "num_classes", 0):
        sn.models.create("mobilenet_v1", 0)
    with raises_naming(TypeError, "num_classes", 10.0):
        sn.models.create("mobilenet_v1", 10.0)
    with raises_naming(TypeError, "width_mult", "0.5"):
        sn.models.create("mobilenet_v1", width_mult="0.5")
