"""MobileNetV1 as Google exports it from TF-slim to TensorFlow Lite: BatchNorm folded into the
conv biases, TF "SAME" padding, ReLU6, a 1x1 conv as the classifier, 1001 classes (0 is
"background").

The layers are named like the graph's weight tensors (``MobilenetV1/Conv2d_3_pointwise/weights``
-> ``Conv2d_3_pointwise``), which is also what ``load_pretrained`` gives a ``.tflite`` file of it
(``tflite_import.model_from_tflite``). Registering the architecture lets a model fine-tuned from
such a file be saved and rebuilt like any other (``train --init mobilenet_v1_0.25_224.tflite``).

Channels: TF-slim's ``depth(d) = max(int(d * width_mult), 8)``; the 14 convs of [V1] Table 1 (the
13th depthwise layer at stride 1, see ``mobilenet_v1.py``). Inputs in [-1, 1]; any H, W (the
global average pool equals the graph's 7x7 VALID pool at 224 px).
"""

from __future__ import annotations

import numpy as np

from ..nn import AdaptiveAvgPool2d, Flatten, ReLU6, Sequential
from .blocks import Conv2dSame
from .registry import ModelCfg, register_model, tflite_preprocessing

#: (stride, output channels) of the 13 depthwise-separable layers at width 1
SEPARABLE_LAYERS = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024),
)  # fmt: skip
STEM_CHANNELS = 32
MIN_DEPTH = 8


def depth(channels: int, width_mult: float) -> int:
    """TF-slim's channel count: ``max(int(channels * width_mult), 8)``."""
    return max(int(channels * width_mult), MIN_DEPTH)


def _conv(c_in: int, c_out: int, kernel: int, stride: int, groups: int, rng) -> Conv2dSame:
    """A biased TF-"SAME" conv, weights ~ N(0, 2 / fan_in) (He init; a fine-tuned model loads
    its weights over them)."""
    conv = Conv2dSame(c_in, c_out, kernel, stride, groups=groups, bias=True, rng=rng)
    fan_in = (c_in // groups) * kernel * kernel
    conv.weight.data[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), conv.weight.shape)
    conv.bias.data[...] = 0.0
    return conv


@register_model("tf_mobilenet_v1", cfg=ModelCfg(
    preprocessing=tflite_preprocessing(), classifier="Conv2d_1c_1x1.weight", paper="arXiv:1704.04861",
))  # fmt: skip
def tf_mobilenet_v1(
    num_classes: int = 1001, width_mult: float = 1.0, rng: np.random.Generator | int | None = None
) -> Sequential:
    """x (N, 3, H, W) in [-1, 1] -> logits (N, num_classes): TF-slim's folded-BN MobileNetV1.

    The classifier ``Conv2d_1c_1x1`` starts at weights ~ N(0, 0.01^2), bias 0 (torchvision's
    classifier initialisation).
    """
    rng = np.random.default_rng(rng)
    c_prev = depth(STEM_CHANNELS, width_mult)
    layers = {"Conv2d_0": _conv(3, c_prev, 3, 2, 1, rng), "Conv2d_0_relu6": ReLU6()}
    for index, (stride, channels) in enumerate(SEPARABLE_LAYERS, start=1):
        c_out = depth(channels, width_mult)
        layers[f"Conv2d_{index}_depthwise"] = _conv(c_prev, c_prev, 3, stride, c_prev, rng)
        layers[f"Conv2d_{index}_depthwise_relu6"] = ReLU6()
        layers[f"Conv2d_{index}_pointwise"] = _conv(c_prev, c_out, 1, 1, 1, rng)
        layers[f"Conv2d_{index}_pointwise_relu6"] = ReLU6()
        c_prev = c_out
    return with_tf_slim_head(layers, c_prev, num_classes, width_mult, rng)


def with_tf_slim_head(layers: dict, c_in: int, num_classes: int, width_mult: float, rng):
    """``layers`` followed by TF-slim's head, global average pool, ``Conv2d_1c_1x1`` (a biased
    1x1 conv, weights ~ N(0, 0.01^2)) and flatten, as a Sequential recording ``width_mult``."""
    classifier = _conv(c_in, num_classes, 1, 1, 1, rng)
    classifier.weight.data[...] = rng.normal(0.0, 0.01, classifier.weight.shape)
    layers |= {"pool": AdaptiveAvgPool2d(1), "Conv2d_1c_1x1": classifier, "flatten": Flatten()}
    model = Sequential(layers)
    model.width_mult = width_mult
    return model
