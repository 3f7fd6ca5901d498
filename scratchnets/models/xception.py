"""Xception (Chollet 2017, arXiv 1610.02357), laid out and named like timm's ``legacy_xception``
(Cadene's port of the Keras model), so its checkpoints load unchanged.

Every 3x3 conv after the stem is depthwise separable: a 3x3 depthwise conv followed by a 1x1
pointwise conv, with no activation between the two (``SeparableConv2d``). Flows:

    entry:  conv 3x3 s2 (32) -> conv 3x3 (64), both unpadded, BN + ReLU
            block1 64->128, block2 128->256, block3 256->728: two separable convs each and a
            3x3 stride-2 max pool; shortcut = 1x1 stride-2 conv + BN
    middle: block4..block11, 728->728: three (ReLU, separable conv, BN); identity shortcut
    exit:   block12 728->1024 (728 then 1024, max pool, conv shortcut),
            separable conv 1536 + BN + ReLU, separable conv 2048 + BN + ReLU,
            global average pool, linear classifier ``fc``

22,855,952 parameters with 1000 classes. Keras documents 71x71 as the smallest input
(71 -> 35 -> 33 after the unpadded stem, then 17, 9, 5, 3 after the four stride-2 blocks); the
layers here run on anything from 7x7 up (the two unpadded 3x3 stem convs need 7 -> 3 -> 1).
"""

from __future__ import annotations

import numpy as np

from ..nn import BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d, ReLU, Sequential
from .blocks import ResidualBlock, global_pool_flatten, torchvision_init
from .fuse import EvalFastPath
from .registry import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    ModelCfg,
    register_model,
    timm_preprocessing,
)


class SeparableConv2d(Sequential):
    """3x3 depthwise conv (``conv1``) then 1x1 pointwise conv (``pointwise``), no bias, no
    activation in between: (N, C_in, H, W) -> (N, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, rng=None):
        super().__init__(
            {
                "conv1": Conv2d(
                    in_channels, in_channels, 3, 1, 1, groups=in_channels, bias=False, rng=rng
                ),
                "pointwise": Conv2d(in_channels, out_channels, 1, bias=False, rng=rng),
            }
        )


class Block(ResidualBlock):
    """``reps`` x (ReLU, SeparableConv2d, BN) [+ 3x3 max pool, stride s] + shortcut.

    The shortcut is ``skip`` (1x1 conv, stride s) + ``skipbn`` when the width or the size changes,
    the identity otherwise. ``grow_first``: the first separable conv widens to ``out_channels``
    (else the last one does). ``start_with_relu=False`` drops the leading ReLU (block1, whose
    input has just been through one).
    """

    branch = ("rep",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
        rng=None,
    ):
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip = Conv2d(in_channels, out_channels, 1, stride, bias=False, rng=rng)
            self.skipbn = BatchNorm2d(out_channels)
            self.shortcut = ("skip", "skipbn")
        widths = [in_channels] + [out_channels if grow_first else in_channels] * (reps - 1)
        widths.append(out_channels)  # widths[i] -> widths[i + 1] for separable conv i
        rep = []
        for i in range(reps):
            rep += [
                ReLU(),
                SeparableConv2d(widths[i], widths[i + 1], rng),
                BatchNorm2d(widths[i + 1]),
            ]
        if not start_with_relu:
            rep = rep[1:]
        if stride != 1:
            rep.append(MaxPool2d(3, stride, 1))
        self.rep = Sequential(*rep)
        self.bn_folds = tuple(
            (f"rep.{i}.pointwise", f"rep.{i + 1}")
            for i, layer in enumerate(rep)
            if isinstance(layer, SeparableConv2d)
        ) + ((("skip", "skipbn"),) if self.shortcut else ())


class Xception(EvalFastPath, Sequential):
    """x (N, 3, H, W) -> logits (N, num_classes), H, W >= 7 (Keras asks for >= 71).

    Children (timm's): ``conv1``, ``bn1``, ``act1``, ``conv2``, ``bn2``, ``act2``, ``block1`` ..
    ``block12``, ``conv3``, ``bn3``, ``act3``, ``conv4``, ``bn4``, ``act4``, ``global_pool``,
    optionally ``head_drop`` (when ``drop_rate > 0``), ``fc``.
    """

    bn_folds = (
        ("conv1", "bn1"),
        ("conv2", "bn2"),
        ("conv3.pointwise", "bn3"),
        ("conv4.pointwise", "bn4"),
    )

    def __init__(
        self,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        rng: np.random.Generator | int | None = None,
    ):
        rng = np.random.default_rng(rng)
        layers = {
            "conv1": Conv2d(3, 32, 3, 2, 0, bias=False, rng=rng),  # (N, 32, (H-3)//2+1, ...)
            "bn1": BatchNorm2d(32),
            "act1": ReLU(inplace=True),
            "conv2": Conv2d(32, 64, 3, bias=False, rng=rng),  # unpadded: -2 in H and W
            "bn2": BatchNorm2d(64),
            "act2": ReLU(inplace=True),
            "block1": Block(64, 128, 2, 2, start_with_relu=False, rng=rng),
            "block2": Block(128, 256, 2, 2, rng=rng),
            "block3": Block(256, 728, 2, 2, rng=rng),  # (N, 728, ~H/16, ~W/16)
        }
        for i in range(4, 12):  # the middle flow
            layers[f"block{i}"] = Block(728, 728, 3, 1, rng=rng)
        layers |= {
            "block12": Block(728, 1024, 2, 2, grow_first=False, rng=rng),  # (N, 1024, ~H/32)
            "conv3": SeparableConv2d(1024, 1536, rng),
            "bn3": BatchNorm2d(1536),
            "act3": ReLU(inplace=True),
            "conv4": SeparableConv2d(1536, 2048, rng),
            "bn4": BatchNorm2d(2048),
            "act4": ReLU(inplace=True),
            "global_pool": global_pool_flatten(),  # (N, 2048)
        }
        if drop_rate > 0:
            layers["head_drop"] = Dropout(drop_rate)
        layers["fc"] = Linear(2048, num_classes, rng=rng)  # torch's default Linear init
        super().__init__(layers)
        self.num_features = 2048
        torchvision_init(self, rng, linear_std=None)


@register_model("xception", aliases=("legacy_xception",), cfg=ModelCfg(
    preprocessing=timm_preprocessing(299, 0.8975, INCEPTION_MEAN, INCEPTION_STD),
    classifier="fc.weight", twin=("timm", "legacy_xception"), paper="arXiv:1610.02357",
    benchmarked=True,
))  # fmt: skip
def xception(num_classes: int = 1000, **kwargs) -> Xception:
    """Xception (timm ``legacy_xception``); kwargs: ``drop_rate``, ``rng``."""
    return Xception(num_classes, **kwargs)
