"""Layers with an explicit backward, named and built like ``torch.nn``.

``Module`` (parameters, submodules, buffers, state dicts, train/eval, backends), ``Sequential``,
``Identity`` and one layer per op. ``scratchnets.nn.init`` holds torch's weight initialisers.

    m = Conv2d(3, 16, 3, padding=1)
    y = m(x)             # forward, caches what backward needs
    dx = m.backward(dy)  # returns dL/dx, adds dL/dweight to m.weight.grad
"""

from . import init, layers
from .layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm2d,
    CircularPad2d,
    ConstantPad2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    Linear,
    MaxPool2d,
    ReflectionPad2d,
    ReLU,
    ReLU6,
    ReplicationPad2d,
    Sigmoid,
    SiLU,
    Softmax,
    Upsample,
    ZeroPad2d,
)
from .module import Identity, IncompatibleKeys, Module, Parameter, Sequential

__all__ = [
    "init",
    "Module",
    "Parameter",
    "Sequential",
    "Identity",
    "IncompatibleKeys",
    *layers.__all__,  # one layer per op (tests/test_nn.py: each is importable from here)
]
