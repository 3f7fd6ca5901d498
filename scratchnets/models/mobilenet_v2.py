"""MobileNetV2 (Sandler et al. 2018, arXiv 1801.04381), laid out and named like torchvision's
``mobilenet_v2`` (``features.0.0.weight``, ``features.1.conv.0.0.weight``, ...,
``classifier.1.weight``), so torchvision checkpoints load unchanged.

Architecture ([V2] Table 2): a 3x3 stride-2 conv with 32 channels, 17 inverted-residual
bottlenecks given as (t, c, n, s) rows, a 1x1 conv to 1280 channels, global average pooling,
dropout 0.2 and a linear classifier. Bottleneck ([V2] Table 1), k -> k' channels, expansion t:

    1x1 conv k -> t*k, BN, ReLU6        (left out when t = 1)
    3x3 depthwise conv stride s, BN, ReLU6
    1x1 conv t*k -> k', BN              (linear bottleneck: no activation)
    + x                                 only when s = 1 and k = k'

Width multiplier alpha (torchvision): first conv and block outputs ``make_divisible(c * alpha, 8)``,
hidden width ``round(k * t)``, last conv ``make_divisible(1280 * max(1, alpha), 8)`` ([V2] §4: the
last conv is not thinned for alpha < 1). 3,504,872 parameters at alpha = 1.

``keras_style=True`` reproduces the numerics of ``keras.applications.MobileNetV2`` instead (the
parameter names stay torchvision's):

* block outputs ``make_divisible(int(c * alpha), 8)`` (truncation first), hidden width ``k * t``
  unrounded, last conv 1280 unless alpha > 1;
* TensorFlow "same" padding (``Conv2dSame``): a stride-2 3x3 conv on an even-sized map pads one
  row/column at the bottom/right only, where PyTorch pads one on each side;
* BN epsilon 1e-3 and moving-average momentum 0.999 (PyTorch convention: 0.001);
* no dropout before the classifier.
"""

from __future__ import annotations

import numpy as np

from ..nn import BatchNorm2d, Conv2d, Dropout, Linear, Sequential
from .blocks import (
    Conv2dSame,
    ConvBNAct,
    ResidualBlock,
    global_pool_flatten,
    make_divisible,
    torchvision_init,
)
from .fuse import EvalFastPath
from .registry import ModelCfg, register_model, torchvision_preprocessing

#: [V2] Table 2 bottleneck rows: expansion t, output channels c, repeats n, first stride s
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


class InvertedResidual(ResidualBlock):
    """The MobileNetV2 bottleneck (see the module docstring); children: ``conv`` (a Sequential).

    (N, in_channels, H, W) -> (N, out_channels, H/s, W/s). ``hidden_channels`` is the expanded
    width t * k (rounded by the caller's rule). ``bn`` holds BatchNorm2d keyword arguments and
    ``conv_type`` the class of the 3x3 depthwise conv.
    """

    branch = ("conv",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        hidden_channels: int,
        *,
        bn: dict,
        conv_type: type[Conv2d] = Conv2d,
        rng=None,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        bn_kw = {"bn_eps": bn["eps"], "bn_momentum": bn["momentum"], "rng": rng}
        layers = []
        if hidden_channels != in_channels:  # expansion t > 1: 1x1 conv k -> t*k
            layers.append(ConvBNAct(in_channels, hidden_channels, 1, **bn_kw))
        layers += [
            ConvBNAct(  # 3x3 depthwise, stride s
                hidden_channels,
                hidden_channels,
                3,
                stride,
                groups=hidden_channels,
                conv_type=conv_type,
                **bn_kw,
            ),
            Conv2d(hidden_channels, out_channels, 1, bias=False, rng=rng),  # linear projection
            BatchNorm2d(out_channels, **bn),
        ]
        self.conv = Sequential(*layers)
        self.bn_folds = ((f"conv.{len(layers) - 2}", f"conv.{len(layers) - 1}"),)
        self.use_residual = stride == 1 and in_channels == out_channels


class MobileNetV2(EvalFastPath, Sequential):
    """x (N, 3, H, W) -> logits (N, num_classes), any H, W >= 1 (the net downsamples by 32).

    Children: ``features`` (stem ConvBNAct, 17 InvertedResidual, 1x1 ConvBNAct), ``pool``
    (global average + flatten), ``classifier`` (Dropout, Linear). ``rng`` (a Generator or a
    seed) drives the initialisation; ``dropout=None`` means 0.2 (0 with ``keras_style``).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float | None = None,
        keras_style: bool = False,
        rng: np.random.Generator | int | None = None,
    ):
        rng = np.random.default_rng(rng)
        if keras_style:
            bn = {"eps": 1e-3, "momentum": 1e-3}
            conv_type = Conv2dSame

            def block_channels(c):
                return make_divisible(int(c * width_mult))

            def hidden(k, t):
                return k * t

            last = make_divisible(LAST_CHANNELS * width_mult) if width_mult > 1 else LAST_CHANNELS
        else:
            bn = {"eps": 1e-5, "momentum": 0.1}
            conv_type = Conv2d

            def block_channels(c):
                return make_divisible(c * width_mult)

            def hidden(k, t):
                return int(round(k * t))

            last = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        bn_kw = {"bn_eps": bn["eps"], "bn_momentum": bn["momentum"], "rng": rng}

        channels = make_divisible(STEM_CHANNELS * width_mult)
        features = [ConvBNAct(3, channels, 3, 2, conv_type=conv_type, **bn_kw)]  # (N, 32a, H/2)
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_channels = block_channels(c)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(
                    InvertedResidual(
                        channels,
                        out_channels,
                        stride,
                        hidden(channels, t),
                        bn=bn,
                        conv_type=conv_type,
                        rng=rng,
                    )
                )
                channels = out_channels
        features.append(ConvBNAct(channels, last, 1, **bn_kw))  # (N, 1280, H/32, W/32)
        dropout = (0.0 if keras_style else 0.2) if dropout is None else dropout
        super().__init__(
            {
                "features": Sequential(*features),
                "pool": global_pool_flatten(),  # (N, 1280)
                "classifier": Sequential(Dropout(dropout), Linear(last, num_classes, rng=rng)),
            }
        )
        self.num_features, self.keras_style = last, keras_style
        torchvision_init(self, rng, linear_std=0.01)


def keras_layer_names(model: MobileNetV2) -> list[str]:
    """The names ``keras.applications.MobileNetV2`` gives the layers that hold our conv, BN and
    classifier weights, in our module order."""
    names = ["Conv1", "bn_Conv1", "expanded_conv_depthwise", "expanded_conv_depthwise_BN",
             "expanded_conv_project", "expanded_conv_project_BN"]  # fmt: skip
    for i in range(1, len(model.features) - 2):
        for op in ("expand", "depthwise", "project"):
            names += [f"block_{i}_{op}", f"block_{i}_{op}_BN"]
    return [*names, "Conv_1", "Conv_1_bn", "predictions"]


@register_model("mobilenet_v2", aliases=("mobilenetv2",), cfg=ModelCfg(
    preprocessing=torchvision_preprocessing(), classifier="classifier.1.weight",
    twin=("torchvision", "mobilenet_v2"), paper="arXiv:1801.04381", benchmarked=True, mobile=True,
    keras_layers=keras_layer_names,
))  # fmt: skip
def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, **kwargs) -> MobileNetV2:
    """MobileNetV2 with width multiplier ``width_mult``; kwargs: ``dropout``, ``keras_style``,
    ``rng``."""
    return MobileNetV2(num_classes, width_mult, **kwargs)
