"""MobileNetV2 as Google exports it from TF-slim to TensorFlow Lite: BatchNorm folded into the
conv biases, TF "SAME" padding, ReLU6, a 1x1 conv as the classifier, 1001 classes (0 is
"background"). The float model of Google's uint8 ``mobilenet_v2_1.0_224_quant.tflite``
(``QuantizedModel.dequantize``), registered so that a model fine-tuned from it is saved and
rebuilt like any other.

Layers are named like the graph's scopes: ``Conv`` (the stem), ``expanded_conv``,
``expanded_conv_1`` ... ``expanded_conv_16`` (the 17 bottlenecks of [V2] Table 2, children
``expand`` (absent when t = 1), ``depthwise``, ``project`` and their ReLU6s), ``Conv_1`` (1x1 to
1280) and ``Conv2d_1c_1x1`` (the classifier). Channels: TF-slim's ``make_divisible(c * width, 8)``
for every layer, the expansion ``make_divisible(c_in * t, 8)``. A block adds its input when its
stride is 1 and its width does not change. Inputs in [-1, 1]; any H, W.
"""

from __future__ import annotations

import numpy as np

from ..nn import ReLU6, Sequential
from .blocks import ResidualBlock, make_divisible
from .mobilenet_v2 import INVERTED_RESIDUAL_SETTING, LAST_CHANNELS, STEM_CHANNELS
from .registry import ModelCfg, register_model, tflite_preprocessing
from .tf_mobilenet_v1 import _conv, with_tf_slim_head


class FoldedInvertedResidual(ResidualBlock):
    """[V2]'s bottleneck with BN folded into biased convs: ``expand`` (1x1, ReLU6, left out when
    t = 1), ``depthwise`` (3x3, stride s, ReLU6), ``project`` (1x1, linear), ``+ x`` when s = 1 and
    the width is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int, rng):
        super().__init__()
        hidden = make_divisible(c_in * expansion) if expansion > 1 else c_in
        branch = []
        if expansion > 1:
            self.expand = _conv(c_in, hidden, 1, 1, 1, rng)
            self.expand_relu6 = ReLU6()
            branch += ["expand", "expand_relu6"]
        self.depthwise = _conv(hidden, hidden, 3, stride, hidden, rng)
        self.depthwise_relu6 = ReLU6()
        self.project = _conv(hidden, c_out, 1, 1, 1, rng)
        self.branch = (*branch, "depthwise", "depthwise_relu6", "project")
        self.use_residual = stride == 1 and c_in == c_out


@register_model("tf_mobilenet_v2", cfg=ModelCfg(
    preprocessing=tflite_preprocessing(), classifier="Conv2d_1c_1x1.weight", paper="arXiv:1801.04381",
))  # fmt: skip
def tf_mobilenet_v2(
    num_classes: int = 1001, width_mult: float = 1.0, rng: np.random.Generator | int | None = None
) -> Sequential:
    """x (N, 3, H, W) in [-1, 1] -> logits (N, num_classes): TF-slim's folded-BN MobileNetV2.

    The classifier ``Conv2d_1c_1x1`` starts at weights ~ N(0, 0.01^2), bias 0.
    """
    rng = np.random.default_rng(rng)
    c_prev = make_divisible(STEM_CHANNELS * width_mult)
    layers = {"Conv": _conv(3, c_prev, 3, 2, 1, rng), "Conv_relu6": ReLU6()}
    index = 0
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        c_out = make_divisible(c * width_mult)
        for i in range(n):
            name = "expanded_conv" if index == 0 else f"expanded_conv_{index}"
            layers[name] = FoldedInvertedResidual(c_prev, c_out, s if i == 0 else 1, t, rng)
            c_prev, index = c_out, index + 1
    last = make_divisible(LAST_CHANNELS * width_mult)  # TF-slim thins it too, by default
    layers |= {"Conv_1": _conv(c_prev, last, 1, 1, 1, rng), "Conv_1_relu6": ReLU6()}
    return with_tf_slim_head(layers, last, num_classes, width_mult, rng)
