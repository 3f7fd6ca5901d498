"""MobileNetV1 (Howard et al. 2017, arXiv 1704.04861), laid out and named like timm's
``mobilenetv1_100`` so its checkpoints load unchanged.

Body ([V1] Table 1): a 3x3 stride-2 conv, then 13 depthwise-separable blocks (3x3 depthwise conv
-> BN -> act, 1x1 pointwise conv -> BN -> act), global average pooling and one linear layer.
timm groups the blocks into five stages by output width:

    stage  c_out  blocks  first stride   (feature map at 224)
    0        64     1       1            112 -> 112
    1       128     2       2            112 -> 56
    2       256     2       2            56 -> 28
    3       512     6       2            28 -> 14
    4      1024     2       2            14 -> 7

Table 1 prints "Conv dw / s2" for the second-to-last depthwise layer (input 7x7x1024). That is a
typo: the feature map is already 7x7 and the 7x7 average pool follows, the official TF/Keras code
uses stride 1 there, and only stride 1 reproduces the paper's 569 M mult-adds. Stage 4's second
block therefore has stride 1 here.

Width multiplier alpha: every channel count c becomes ``make_divisible(c * alpha, 8)`` (timm's
``round_channels``; alpha = 0.25 gives 8, 16, 32, ..., 256). Activation: ReLU6 as in timm and Keras
(the paper says ReLU; pass ``act="relu"`` for it). 4,231,976 parameters at alpha = 1 (with BN
gamma/beta and the FC bias; the paper's 4.2 M counts conv and FC weights only).

``keras_style=True`` reproduces the numerics of ``keras.applications.MobileNet`` (the parameter
names stay timm's):

* widths ``int(c * alpha)``, truncated, with no rounding to a multiple of 8 (alpha = 0.25 gives
  the same 8, 16, 32, ... as timm; alpha = 0.35 gives 11, 22, 44, ... where timm has 16, 24, ...);
* the stem conv pads TF's "same" way (``Conv2dSame``); a stride-2 depthwise conv pads one row and
  column at the bottom / right whatever the input size (Keras' ``ZeroPadding2D(((0, 1), (0, 1)))``
  then "valid": on odd sizes this is not TF's "same");
* BN epsilon 1e-3 and moving-average momentum 0.99 (PyTorch convention: 0.01); Keras' 1x1
  ``conv_preds`` with bias on the pooled map is the Linear classifier.
"""

from __future__ import annotations

import numpy as np

from ..nn import Conv2d, Dropout, Linear, Sequential
from .blocks import (
    BatchNormAct2d,
    Conv2dSame,
    global_pool_flatten,
    make_divisible,
    timm_efficientnet_init,
)
from .fuse import EvalFastPath
from .registry import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    ModelCfg,
    register_model,
    timm_preprocessing,
)

#: (output channels, number of blocks, stride of the first block) per stage, at alpha = 1
STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))
STEM_CHANNELS = 32


class DepthwiseSeparableConv(Sequential):
    """3x3 depthwise conv (stride s) -> BN -> act -> 1x1 pointwise conv -> BN -> act.

    (N, C_in, H, W) -> (N, C_out, H/s, W/s); children ``conv_dw``, ``bn1``, ``conv_pw``, ``bn2``
    (timm's ``DepthwiseSeparableConv``; MobileNetV1 has no skip connection).
    """

    bn_folds = (("conv_dw", "bn1"), ("conv_pw", "bn2"))

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, act: str, rng=None, *,
        dw_padding=1, bn: dict | None = None,
    ):  # fmt: skip
        bn = bn or {}
        super().__init__(
            {
                "conv_dw": Conv2d(
                    in_channels,
                    in_channels,
                    3,
                    stride,
                    dw_padding,
                    groups=in_channels,
                    bias=False,
                    rng=rng,
                ),  # fmt: skip
                "bn1": BatchNormAct2d(in_channels, act, **bn),
                "conv_pw": Conv2d(in_channels, out_channels, 1, bias=False, rng=rng),
                "bn2": BatchNormAct2d(out_channels, act, **bn),
            }
        )


class MobileNetV1(EvalFastPath, Sequential):
    """x (N, 3, H, W) -> logits (N, num_classes), any H, W >= 1 (the net downsamples by 32).

    Children: ``conv_stem``, ``bn1``, ``blocks`` (stages of DepthwiseSeparableConv),
    ``global_pool``, optionally ``head_drop`` (dropout before the classifier when
    ``drop_rate > 0``), ``classifier``. ``rng`` (a Generator or a seed) drives the initialisation.
    ``keras_style``: Keras' widths, padding and BN (see the module docstring).
    """

    bn_folds = (("conv_stem", "bn1"),)

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        act: str = "relu6",
        drop_rate: float = 0.0,
        keras_style: bool = False,
        rng: np.random.Generator | int | None = None,
    ):
        rng = np.random.default_rng(rng)

        def width(c: int) -> int:
            return int(c * width_mult) if keras_style else make_divisible(c * width_mult)

        bn = {"eps": 1e-3, "momentum": 0.01} if keras_style else {}
        stem = Conv2dSame if keras_style else Conv2d
        channels = width(STEM_CHANNELS)
        layers = {
            "conv_stem": stem(3, channels, 3, 2, 1, bias=False, rng=rng),  # (N, 32a, H/2, W/2)
            "bn1": BatchNormAct2d(channels, act, **bn),
        }
        stages = []
        for c, n, s in STAGES:
            out_channels = width(c)
            blocks = []
            for i in range(n):
                stride = s if i == 0 else 1
                # Keras: stride 2 pads (top, bottom, left, right) = (0, 1, 0, 1), then "valid"
                dw_padding = (0, 1, 0, 1) if keras_style and stride == 2 else 1
                blocks.append(DepthwiseSeparableConv(channels, out_channels, stride, act, rng,
                                                     dw_padding=dw_padding, bn=bn))  # fmt: skip
                channels = out_channels
            stages.append(Sequential(*blocks))
        layers["blocks"] = Sequential(*stages)  # (N, 1024a, H/32, W/32)
        layers["global_pool"] = global_pool_flatten()  # (N, 1024a)
        if drop_rate > 0:
            layers["head_drop"] = Dropout(drop_rate)
        layers["classifier"] = Linear(channels, num_classes, rng=rng)  # (N, num_classes)
        super().__init__(layers)
        self.num_features, self.keras_style = channels, keras_style
        timm_efficientnet_init(self, rng)


def keras_layer_names(model: MobileNetV1) -> list[str]:
    """The names ``keras.applications.MobileNet`` gives the layers that hold our conv, BN and
    classifier weights, in our module order (its 1x1 ``conv_preds`` is our classifier)."""
    blocks = [block for stage in model.blocks for block in stage]
    names = ["conv1", "conv1_bn"]
    for i in range(1, len(blocks) + 1):
        names += [f"conv_dw_{i}", f"conv_dw_{i}_bn", f"conv_pw_{i}", f"conv_pw_{i}_bn"]
    return [*names, "conv_preds"]


@register_model("mobilenet_v1", aliases=("mobilenetv1_100", "mobilenetv1"), cfg=ModelCfg(
    preprocessing=timm_preprocessing(mean=INCEPTION_MEAN, std=INCEPTION_STD),
    twin=("timm", "mobilenetv1_100"), paper="arXiv:1704.04861", benchmarked=True, mobile=True,
    keras_layers=keras_layer_names,
))  # fmt: skip
def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0, **kwargs) -> MobileNetV1:
    """MobileNetV1 with width multiplier ``width_mult``; kwargs: ``act``, ``drop_rate``,
    ``keras_style``, ``rng``."""
    return MobileNetV1(num_classes, width_mult, **kwargs)
