"""Weight initialisation, with PyTorch's formulas and a NumPy ``Generator`` as the only source of
randomness (``rng=None`` draws from a fresh ``np.random.default_rng()``).

Every function fills its target in place and returns it, like ``torch.nn.init.*_``. The target is a
host NumPy array or a :class:`~scratchnets.nn.Parameter` holding one: initialise a model before
moving it to a device with ``.to("cuda")``. Values are drawn in float64 and then stored in the
target's dtype, so a float32 and a float64 layer built from the same seed hold the same numbers
(up to float32 rounding).

Fans follow ``torch.nn.init._calculate_fan_in_and_fan_out`` for a weight of shape
``(out, in, *kernel)``::

    fan_in  = in  * prod(kernel)        # inputs summed into one output (in = C_in / groups)
    fan_out = out * prod(kernel)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

__all__ = [
    "calculate_gain",
    "fan_in_and_fan_out",
    "kaiming_uniform_",
    "kaiming_normal_",
    "uniform_",
    "normal_",
    "constant_",
    "zeros_",
    "ones_",
    "skip_init",
]


def _host_array(target) -> np.ndarray:
    """The writable NumPy array behind ``target`` (an ndarray or a Parameter holding one)."""
    array = target if isinstance(target, np.ndarray) else getattr(target, "data", target)
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"init functions fill host NumPy arrays, got {type(array).__name__}; "
            "initialise the module before moving it to a device with .to('cuda')"
        )
    return array


def _fill(target, values):
    """Write ``values`` (float64, broadcastable) into the target's array; return the target."""
    array = _host_array(target)
    array[...] = np.asarray(values).astype(array.dtype, copy=False)
    return target


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return np.random.default_rng() if rng is None else rng


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain torch recommends for a nonlinearity (``torch.nn.init.calculate_gain``).

    linear / conv / sigmoid: 1; tanh: 5/3; relu: sqrt(2); selu: 3/4;
    leaky_relu with slope ``a`` (default 0.01): sqrt(2 / (1 + a^2)).
    """
    unit_gain = ("linear", "conv1d", "conv2d", "conv3d", "sigmoid")
    if nonlinearity in unit_gain:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "selu":
        return 0.75
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1.0 + slope**2))
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def fan_in_and_fan_out(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of shape ``(out, in, *kernel)`` (see module docstring)."""
    if len(shape) < 2:
        raise ValueError(
            f"fan in and fan out need a weight with at least 2 dims, got shape {shape}"
        )
    receptive_field = math.prod(shape[2:])  # kh * kw for a conv, 1 for a linear layer
    return shape[1] * receptive_field, shape[0] * receptive_field


def _kaiming_std(shape, a: float, mode: str, nonlinearity: str) -> float:
    """std = gain / sqrt(fan), the He et al. (2015) scale that keeps activations' variance."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fan_in_and_fan_out(tuple(shape))
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(
    target, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", rng=None
):
    """U(-bound, bound) with bound = sqrt(3) * gain / sqrt(fan)  (``torch.nn.init.kaiming_uniform_``).

    ``a=sqrt(5)`` (the default of ``nn.Conv2d`` / ``nn.Linear``) gives gain = sqrt(1/3), hence
    bound = 1 / sqrt(fan_in).
    """
    array = _host_array(target)
    bound = math.sqrt(3.0) * _kaiming_std(array.shape, a, mode, nonlinearity)
    return _fill(target, _rng(rng).uniform(-bound, bound, size=array.shape))


def kaiming_normal_(
    target, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu", rng=None
):
    """N(0, std^2) with std = gain / sqrt(fan)  (``torch.nn.init.kaiming_normal_``).

    torchvision's MobileNetV2 uses ``mode="fan_out"`` (with the default ``a=0``: std = sqrt(2 / fan_out)).
    """
    array = _host_array(target)
    std = _kaiming_std(array.shape, a, mode, nonlinearity)
    return _fill(target, _rng(rng).normal(0.0, std, size=array.shape))


def uniform_(target, a: float = 0.0, b: float = 1.0, rng=None):
    """U(a, b)  (``torch.nn.init.uniform_``)."""
    return _fill(target, _rng(rng).uniform(a, b, size=_host_array(target).shape))


def normal_(target, mean: float = 0.0, std: float = 1.0, rng=None):
    """N(mean, std^2)  (``torch.nn.init.normal_``)."""
    return _fill(target, _rng(rng).normal(mean, std, size=_host_array(target).shape))


def constant_(target, val: float):
    """Every element set to ``val``  (``torch.nn.init.constant_``)."""
    return _fill(target, val)


def zeros_(target):
    return constant_(target, 0.0)


def ones_(target):
    return constant_(target, 1.0)


@contextmanager
def skip_init() -> Iterator[None]:
    """Build models without initialising their weights (like building on torch's "meta" device;
    ``scratchnets.models.create(..., init=False)`` is the usual way in).

    Inside the block every in-place initialiser of this module (the public names ending in
    ``_``: ``kaiming_uniform_``, ``normal_``, ``zeros_``, ...) returns its target untouched, so
    parameters keep the uninitialised memory of ``np.empty``. Counting never reads a weight, and
    this turns building VGG16 (138 M parameters) from seconds of random draws into
    milliseconds. Do not train or evaluate a model built this way.
    """
    module = globals()
    names = [n for n in __all__ if n.endswith("_")]
    saved = {n: module[n] for n in names}

    def untouched(target, *args, **kwargs):
        return target

    for name in names:
        module[name] = untouched
    try:
        yield
    finally:
        module.update(saved)
