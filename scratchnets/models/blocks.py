"""Building blocks shared by the models.

* ``make_divisible``: the channel rounding of torchvision, timm, slim and Keras.
* ``make_activation``: "relu" / "relu6" / "hardswish" / None -> a layer.
* ``ConvBNAct``: conv -> BN -> activation, named "0", "1", "2" like torchvision's
  ``Conv2dNormActivation`` (state dict keys ``<name>.0.weight``, ``<name>.1.running_mean``).
* ``BatchNormAct2d``: BN followed by an activation in one module, timm's layout (the BN arrays
  sit directly under the module's name, the activation is a parameter-free child ``act``).
* ``ResidualBlock``: y = branch(x) + shortcut(x), with the gradient split in backward.
* ``SqueezeExcite``: channel attention x * gate(expand(act(reduce(mean_hw x)))), under timm's or
  torchvision's child names.
* ``Conv2dSame``: TensorFlow/Keras "SAME" padding worked out per input size.
* ``torchvision_init`` / ``timm_efficientnet_init``: the weight initialisations of the sources.
* ``global_pool_flatten``: (N, C, H, W) -> (N, C).

BN folding: a block lists the (conv, BN) pairs that ``scratchnets.models.fuse`` may fold in its
``bn_folds`` attribute, as dotted paths relative to the block (see ``fuse.py``).
"""

from __future__ import annotations

import math

import numpy as np

from .. import functional as F
from ..backends import get_backend
from ..nn import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Hardsigmoid,
    Hardswish,
    Identity,
    Linear,
    Module,
    ReLU,
    ReLU6,
    Sequential,
    init,
)
from ..nn.module import chain_plans, channels_last_convs

#: (conv path, BN path) pairs, relative to the block that declares them
BnFolds = tuple[tuple[str, str], ...]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``, default the
    divisor), going one step up when rounding down would lose more than 10 %:

        v' = max(min_value, floor(v + d / 2) // d * d);  v' += d  if v' < 0.9 v

    The rule of torchvision's ``_make_divisible``, timm's ``make_divisible`` and slim/Keras;
    e.g. 32 * 0.35 = 11.2 -> 8 < 0.9 * 11.2, so 16.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


_ACTIVATIONS = {"relu": ReLU, "relu6": ReLU6, "hardswish": Hardswish}


def make_activation(act: str | None) -> Module | None:
    """A fresh activation layer for "relu", "relu6" or "hardswish"; None for no activation."""
    if act is None:
        return None
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)} or None"
        )
    return _ACTIVATIONS[act]()


class ConvBNAct(Sequential):
    """conv (no bias) -> BatchNorm2d -> activation: children "0", "1" and "2" (when ``act``).

    ``padding=None`` means torchvision's symmetric ``dilation * (k - 1) // 2``; any Conv2d padding
    (int, pair, (top, bottom, left, right)) may be given instead. ``conv_type`` swaps in another
    Conv2d class (``Conv2dSame`` for Keras-style models).
    """

    bn_folds: BnFolds = (("0", "1"),)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu6",
        *,
        padding=None,
        dilation: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        conv_type: type[Conv2d] = Conv2d,
        rng: np.random.Generator | None = None,
    ):
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        layers = [
            conv_type(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation,
                groups,
                bias=False,
                rng=rng,
            ),
            BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        ]
        activation = make_activation(act)
        super().__init__(*layers, *([activation] if activation is not None else []))


class BatchNormAct2d(BatchNorm2d):
    """y = act(BN(x)) in one module (timm's ``BatchNormAct2d``): the state dict keys are the BN's
    own (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), the
    activation is the child ``act`` (``Identity`` for ``act=None``), run in BN's own passes
    where the backend can (``BatchNorm2d.absorbable_activation``). Backward:
    dx = BN^T (act^T dy)."""

    def __init__(
        self, num_features: int, act: str | None = "relu6", eps: float = 1e-5, momentum=0.1
    ):
        super().__init__(num_features, eps=eps, momentum=momentum)
        activation = make_activation(act)
        self.act = Identity() if activation is None else activation

    def forward(self, x):
        absorbed = self.absorbable_activation(self.act) is not None
        self.__dict__["_act_absorbed"] = absorbed
        return self.forward_absorbing(x, self.act) if absorbed else self.act(super().forward(x))

    def backward(self, dy):
        absorbed = self.__dict__.get("_act_absorbed", False)
        return super().backward(dy if absorbed else self.act.backward(dy))


def residual_add(block: Module, y, shortcut, x):
    """``y + shortcut`` for a residual ``block`` whose input was ``x``: in the eval fast path's
    copy (``block.forward_only``) added into ``y`` in place when ``y`` is a buffer the branch
    made (not ``x``'s memory: an all-Identity branch returns ``x`` itself), saving an array the
    size of the block's output per block; otherwise the backend's add."""
    if (block.forward_only and isinstance(y, np.ndarray) and y.shape == np.shape(shortcut)
            and y.flags.writeable and not np.may_share_memory(y, x)):  # fmt: skip
        return np.add(y, shortcut, out=y)
    return F.add_forward(y, shortcut, backend=block.backend)[0]


class ResidualBlock(Module):
    """y = branch(x) + shortcut(x) when ``use_residual``, else y = branch(x).

    Subclasses register their children, then set ``branch`` and ``shortcut`` to tuples of child
    names that run in order (an empty ``shortcut`` is the identity). Backward splits dy: it runs
    back through both paths and adds the two input gradients,

        dx = branch^T(dy) + shortcut^T(dy)      (shortcut^T(dy) = dy for the identity).
    """

    branch: tuple[str, ...] = ()
    shortcut: tuple[str, ...] = ()
    use_residual: bool = True

    def _run(self, names: tuple[str, ...], x):
        for name in names:
            x = getattr(self, name)(x)
        return x

    def _run_backward(self, names: tuple[str, ...], dy):
        for name in reversed(names):
            dy = getattr(self, name).backward(dy)
        return dy

    def forward(self, x):
        y = self._run(self.branch, x)
        if self.use_residual:
            y = residual_add(self, y, self._run(self.shortcut, x), x)
        self._save((), y.shape)
        return y

    def inference_plan(self, x, channels_last=False):
        """The branch's and the shortcut's plans, and the residual add."""
        if not self.planned_as(ResidualBlock, "_run"):
            return super().inference_plan(x, channels_last)
        branch, y = chain_plans(self._children(self.branch), x, channels_last)
        if not self.use_residual:
            return branch, y
        shortcut, s = chain_plans(self._children(self.shortcut), x, channels_last)

        def run(x):
            return residual_add(self, branch(x), shortcut(x), x)

        return run, residual_add(self, y, s, x)

    def _children(self, names: tuple[str, ...]) -> list[Module]:
        return [getattr(self, name) for name in names]

    def channels_last_convs(self):
        if not self.planned_as(ResidualBlock, "_run"):
            return None
        paths = self.branch + (self.shortcut if self.use_residual else ())
        return channels_last_convs(self._children(paths))

    def backward(self, dy):
        self._saved(dy)
        dx = self._run_backward(self.branch, dy)
        if self.use_residual:
            dx, _ = F.add_forward(dx, self._run_backward(self.shortcut, dy), backend=self.backend)
        return dx


class SqueezeExcite(Module):
    """Squeeze-and-excitation (Hu et al. 2018) with a hard-sigmoid gate, as GhostNet and
    MobileNetV3 use it, (N, C, H, W) -> (N, C, H, W):

        s = mean_{h,w} x                          (N, C, 1, 1)
        g = hard_sigmoid(W2 relu(W1 s + b1) + b2)  W1: (R, C, 1, 1), W2: (C, R, 1, 1)
        y = x * g                                  g broadcast over H, W

    ``reduced_channels`` is R (each model rounds C / 4 its own way). The children (reduce conv,
    ReLU, expand conv, gate) are named by ``child_names``: timm's here, torchvision's
    ``fc1`` / ``activation`` / ``fc2`` / ``scale_activation`` in a subclass. Backward (product
    rule): dx = dy * g + (1 / HW) * W1^T(...(sum_{h,w} dy * x)...), the feature path plus the gate
    path back through the pooling.
    """

    child_names = ("conv_reduce", "act1", "conv_expand", "gate")

    def __init__(self, channels: int, reduced_channels: int, *, rng=None):
        super().__init__()
        layers = (
            Conv2d(channels, reduced_channels, 1, bias=True, rng=rng),
            ReLU(inplace=True),
            Conv2d(reduced_channels, channels, 1, bias=True, rng=rng),
            Hardsigmoid(),
        )
        for name, layer in zip(self.child_names, layers, strict=True):
            setattr(self, name, layer)

    def _excitation(self) -> list[Module]:
        return [getattr(self, name) for name in self.child_names]

    def forward(self, x):
        s, pool_cache = F.global_avg_pool2d_forward(x, backend=self.backend)  # (N, C, 1, 1)
        g = s
        for layer in self._excitation():  # (N, R, 1, 1), then (N, C, 1, 1)
            g = layer(g)
        y, mul_cache = F.mul_forward(x, g, backend=self.backend)  # (N, C, H, W)
        self._save((pool_cache, mul_cache), y.shape)
        return y

    def inference_plan(self, x, channels_last=False):
        """The pooling, the excitation's plans and the product, as one function. Channels-last:
        the pooled (N, C, 1, 1) is the same array in either layout, so the excitation runs as
        it is; the gate multiplies along the last axis."""
        if not self.planned_as(SqueezeExcite, "_excitation"):
            return super().inference_plan(x, channels_last)
        ops = get_backend(self.backend)
        if channels_last:
            pool = ops.global_avg_pool2d_channels_last

            def multiply(x, g):  # x (N, H, W, C), g (N, C, 1, 1)
                return np.multiply(x, g.reshape(len(g), 1, 1, -1))
        else:

            def pool(x):
                return ops.global_avg_pool2d_forward(x)[0]

            def multiply(x, g):
                return ops.mul_forward(x, g)[0]

        excite, g = chain_plans(self._excitation(), pool(x))

        def run(x):
            return multiply(x, excite(pool(x)))

        return run, multiply(x, g)

    def channels_last_convs(self):
        """0 where the cpu backend has the channels-last pool (the excitation's convs run on
        (N, C, 1, 1), a layout of its own)."""
        ready = self.planned_as(SqueezeExcite, "_excitation") and self.backend == "cpu"
        return 0 if ready else None

    def backward(self, dy):
        pool_cache, mul_cache = self._saved(dy)
        dx_feature, dg = F.mul_backward(dy, mul_cache, backend=self.backend)  # dy*g, sum(dy*x)
        for layer in reversed(self._excitation()):
            dg = layer.backward(dg)
        dx_pool = F.global_avg_pool2d_backward(dg, pool_cache, backend=self.backend)
        return F.add_forward(dx_feature, dx_pool, backend=self.backend)[0]


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "SAME" padding along one axis: output ceil(size / stride), total padding

        total = max((ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0),

    split as (total // 2, total - total // 2): the odd pixel goes at the bottom/right, unlike
    PyTorch's symmetric padding. E.g. 3x3 stride 2 on an even size pads (0, 1), on an odd (1, 1).
    """
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(Conv2d):
    """Conv2d with TensorFlow/Keras ``padding="same"`` for every stride: the explicit
    (top, bottom, left, right) padding is worked out from each input's H and W
    (``tf_same_padding``). The ``padding`` argument is accepted for signature compatibility with
    Conv2d and ignored."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, padding=0, *args, **kwargs
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, *args, **kwargs)
        self.padding = "same"

    def forward(self, x):
        self._check_input(x, ("N", self.in_channels, "H", "W"), match_dtype=True)
        sizes = tuple(x.shape[2:])
        pads = [
            tf_same_padding(*args)
            for args in zip(sizes, self.kernel_size, self.stride, self.dilation, strict=True)
        ]
        self._op_padding = (*pads[0], *pads[1])  # (top, bottom, left, right) for this input
        return super().forward(x)


def torchvision_init(model: Module, rng: np.random.Generator, linear_std: float | None = 0.01):
    """torchvision's initialisation (MobileNetV2, VGG; Cadene's Xception without ``linear_std``):

    conv weight ~ N(0, 2 / fan_out), fan_out = C_out * kh * kw (``kaiming_normal_(mode="fan_out")``),
    conv bias = 0; BN weight = 1, bias = 0; linear weight ~ N(0, linear_std^2), bias = 0
    (``linear_std=None`` keeps torch's default Linear initialisation).
    """
    for module in model.modules():
        if isinstance(module, Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", rng=rng)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, Linear) and linear_std is not None:
            init.normal_(module.weight, 0.0, linear_std, rng=rng)
            init.zeros_(module.bias)


def timm_efficientnet_init(model: Module, rng: np.random.Generator):
    """timm's initialisation of its EfficientNet-family models (``_init_weight_goog``), which
    ``mobilenetv1_100`` uses:

    conv weight ~ N(0, 2 / fan_out) with fan_out = kh * kw * C_out / groups (so a 3x3 depthwise
    conv has fan_out 9), conv bias = 0; BN weight = 1, bias = 0; linear weight ~
    U(-1/sqrt(out_features), 1/sqrt(out_features)), bias = 0.
    """
    for module in model.modules():
        if isinstance(module, Conv2d):
            fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
            init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out), rng=rng)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, Linear):
            bound = 1.0 / math.sqrt(module.out_features)
            init.uniform_(module.weight, -bound, bound, rng=rng)
            init.zeros_(module.bias)


def global_pool_flatten() -> Sequential:
    """(N, C, H, W) -> (N, C): global average pooling then flatten, as timm's
    ``SelectAdaptivePool2d`` (children ``pool`` and ``flatten``; no parameters)."""
    return Sequential({"pool": AdaptiveAvgPool2d(1), "flatten": Flatten()})
