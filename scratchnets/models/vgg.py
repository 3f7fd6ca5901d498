"""VGG16 (Simonyan & Zisserman 2014, configuration "D"), laid out and named like torchvision's
``vgg16`` / ``vgg16_bn`` (``features.<i>.weight``, ``classifier.<i>.weight``).

    features:   13 3x3 convs (padding 1, with bias) + ReLU in five groups
                64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M   (M = 2x2 max pool)
    avgpool:    adaptive average pool to 7x7 (identity at 224x224 input)
    classifier: Linear(512*7*7, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout,
                Linear(4096, num_classes)

138,357,544 parameters with 1000 classes (``vgg16_bn``, with a BN after every conv:
138,365,992). The adaptive pool lets any input of at least 32x32 through: a 32x32 input leaves
1x1 maps, which the pool repeats to 7x7 as torch does.
"""

from __future__ import annotations

import numpy as np

from ..nn import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
)
from .blocks import torchvision_init
from .fuse import EvalFastPath
from .registry import ModelCfg, register_model, torchvision_preprocessing

#: configuration "D": conv output channels, "M" for a 2x2 stride-2 max pool
VGG16_CONFIG = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class VGG(EvalFastPath, Sequential):
    """x (N, 3, H, W) -> logits (N, num_classes), H, W >= 32.

    Children: ``features``, ``avgpool``, ``flatten``, ``classifier``. ``batch_norm`` inserts a
    BatchNorm2d after every conv (torchvision's ``vgg16_bn``; those pairs fold with ``fuse``).
    """

    def __init__(
        self,
        config=VGG16_CONFIG,
        num_classes: int = 1000,
        batch_norm: bool = False,
        dropout: float = 0.5,
        rng: np.random.Generator | int | None = None,
    ):
        rng = np.random.default_rng(rng)
        layers, channels = [], 3
        for item in config:
            if item == "M":
                layers.append(MaxPool2d(2, 2))  # (N, C, H, W) -> (N, C, H/2, W/2)
                continue
            layers.append(Conv2d(channels, item, 3, padding=1, rng=rng))
            if batch_norm:
                layers.append(BatchNorm2d(item))
            layers.append(ReLU(inplace=True))
            channels = item
        features = Sequential(*layers)
        features.bn_folds = tuple(
            (str(i - 1), str(i)) for i, layer in enumerate(layers) if isinstance(layer, BatchNorm2d)
        )
        super().__init__(
            {
                "features": features,  # (N, 512, H/32, W/32)
                "avgpool": AdaptiveAvgPool2d((7, 7)),  # (N, 512, 7, 7)
                "flatten": Flatten(),  # (N, 25088)
                "classifier": Sequential(
                    Linear(channels * 7 * 7, 4096, rng=rng),
                    ReLU(inplace=True),
                    Dropout(dropout),
                    Linear(4096, 4096, rng=rng),
                    ReLU(inplace=True),
                    Dropout(dropout),
                    Linear(4096, num_classes, rng=rng),
                ),
            }
        )
        torchvision_init(self, rng, linear_std=0.01)


@register_model("vgg16", cfg=ModelCfg(
    preprocessing=torchvision_preprocessing(), classifier="classifier.6.weight",
    twin=("torchvision", "vgg16"), paper="arXiv:1409.1556", benchmarked=True,
))  # fmt: skip
def vgg16(num_classes: int = 1000, **kwargs) -> VGG:
    """VGG16 (torchvision ``vgg16``); kwargs: ``dropout``, ``rng``."""
    return VGG(VGG16_CONFIG, num_classes, batch_norm=False, **kwargs)


@register_model("vgg16_bn", cfg=ModelCfg(
    preprocessing=torchvision_preprocessing(), classifier="classifier.6.weight",
    twin=("torchvision", "vgg16_bn"),
))  # fmt: skip
def vgg16_bn(num_classes: int = 1000, **kwargs) -> VGG:
    """VGG16 with BatchNorm after every conv (torchvision ``vgg16_bn``); kwargs: ``dropout``, ``rng``."""
    return VGG(VGG16_CONFIG, num_classes, batch_norm=True, **kwargs)
