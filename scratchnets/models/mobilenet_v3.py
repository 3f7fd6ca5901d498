"""MobileNetV3 Large and Small (Howard et al. 2019, arXiv 1905.02244), laid out and named like
torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small`` (``features.0.0.weight``,
``features.4.block.2.fc1.weight``, ..., ``classifier.3.weight``), so torchvision checkpoints load
unchanged; timm's ``mobilenetv3_large_100`` / ``mobilenetv3_small_100`` files load too, their
names translated (``timm_state_dict``).

Architecture ([V3] Tables 1 and 2): a 3x3 stride-2 conv to 16 channels with h-swish, a list of
bottlenecks ("bneck" rows: kernel k, expansion width, output width, SE, nonlinearity NL, stride
s), a 1x1 conv to 6x the last width with h-swish, global average pooling, then the head: a 1x1
conv (a Linear on the pooled vector) to 1280 (Large) / 1024 (Small) with h-swish, dropout 0.2 and
the classifier. A bneck, k -> k' channels, expansion width e:

    1x1 conv k -> e, BN, NL              (left out when e = k)
    kxk depthwise conv stride s, BN, NL
    squeeze-excite(e)                    (SE rows: x * hard_sigmoid(W2 relu(W1 mean(x))),
                                          W1: e -> make_divisible(e / 4, 8))
    1x1 conv e -> k', BN                 (linear bottleneck)
    + x                                  only when s = 1 and k = k'

NL is ReLU ("RE") or h-swish ("HS": x * relu6(x + 3) / 6, [V3] §5.2); the SE gate is the hard
sigmoid relu6(x + 3) / 6. Parameters at alpha = 1: Large 5,483,032, Small 2,542,856.

The three sources build the same network at alpha = 1 and differ in their numerics and in how a
width multiplier alpha scales it; ``style`` picks one (the parameter names stay torchvision's):

* "torchvision" (default): every bneck's input, expansion and output width, the stem and the
  head's 1280 / 1024 become ``make_divisible(c * alpha, 8)``; PyTorch's symmetric padding; BN
  epsilon 1e-3, momentum 0.01.
* "keras" (``keras_style=True``, as for MobileNetV2): ``keras.applications.MobileNetV3Large`` /
  ``Small``, and the TensorFlow models of the paper's Table 3. TF's width rule: the stem stays
  16; a bneck's expansion is ``make_divisible(k * ratio)`` with k its (scaled) input width and
  ratio the table's expansion / input at width 1 (4.5 for 72 / 16, 2.3 for 184 / 80); the head
  keeps 1280 / 1024 unless alpha > 1 (TF's ``finegrain_classification_mode``). At 0.75 Large has
  3,993,528 parameters against torchvision's 3,377,576. TensorFlow "same" padding
  (``Conv2dSame``) on the stem and the depthwise convs (a stride-2 conv on an even-sized map pads
  the bottom / right only); BN epsilon 1e-3, moving-average momentum 0.999 (PyTorch convention:
  0.001). Keras' preprocessing layer (x / 127.5 - 1) is not part of the model.
* "timm": timm's ``mobilenetv3_*`` (``load_pretrained`` picks it for a timm file): TF's width
  rule (the stem scaled only for alpha > 1), symmetric padding, BN epsilon 1e-5, momentum 0.1.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from ..nn import Conv2d, Dropout, Hardswish, Linear, Sequential
from .blocks import (
    Conv2dSame,
    ConvBNAct,
    ResidualBlock,
    SqueezeExcite,
    global_pool_flatten,
    make_divisible,
    torchvision_init,
)
from .fuse import EvalFastPath
from .registry import (
    ModelCfg,
    Translated,
    register_model,
    timm_preprocessing,
    torchvision_preprocessing,
)

#: [V3] Table 1 (Large) and Table 2 (Small) bneck rows, grouped in stages of one output width as
#: timm groups them: (kernel, expansion width, output width, SE, nonlinearity, stride)
LARGE_STAGES = (
    ((3, 16, 16, False, "relu", 1),),
    ((3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1)),
    ((5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1)),
    (
        (3, 240, 80, False, "hardswish", 2),
        (3, 200, 80, False, "hardswish", 1),
        (3, 184, 80, False, "hardswish", 1),
        (3, 184, 80, False, "hardswish", 1),
    ),
    ((3, 480, 112, True, "hardswish", 1), (3, 672, 112, True, "hardswish", 1)),
    (
        (5, 672, 160, True, "hardswish", 2),
        (5, 960, 160, True, "hardswish", 1),
        (5, 960, 160, True, "hardswish", 1),
    ),
)
SMALL_STAGES = (
    ((3, 16, 16, True, "relu", 2),),
    ((3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1)),
    (
        (5, 96, 40, True, "hardswish", 2),
        (5, 240, 40, True, "hardswish", 1),
        (5, 240, 40, True, "hardswish", 1),
    ),
    ((5, 120, 48, True, "hardswish", 1), (5, 144, 48, True, "hardswish", 1)),
    (
        (5, 288, 96, True, "hardswish", 2),
        (5, 576, 96, True, "hardswish", 1),
        (5, 576, 96, True, "hardswish", 1),
    ),
)
STEM_CHANNELS = 16
#: the head's hidden width (the Linear after pooling), scaled by alpha
HEAD_CHANNELS = {"large": 1280, "small": 1024}
STAGES = {"large": LARGE_STAGES, "small": SMALL_STAGES}


@dataclass(frozen=True)
class Numerics:
    """What a source's build of MobileNetV3 changes: its width rule (TF's, or torchvision's
    everything-scaled), its padding (``Conv2dSame``: TF's "same") and its BN."""

    tf_widths: bool
    conv_type: type[Conv2d]
    bn_eps: float
    bn_momentum: float  # PyTorch's convention: the weight of the new batch statistic


STYLES = {
    "torchvision": Numerics(False, Conv2d, 1e-3, 0.01),
    "keras": Numerics(True, Conv2dSame, 1e-3, 1e-3),
    "timm": Numerics(True, Conv2d, 1e-5, 0.1),
}


class SqueezeExcitation(SqueezeExcite):
    """torchvision's ``SqueezeExcitation`` as MobileNetV3 configures it: ``blocks.SqueezeExcite``
    under the child names ``fc1``, ``activation``, ``fc2``, ``scale_activation``, with
    R = ``make_divisible(C // 4, 8)`` channels inside."""

    child_names = ("fc1", "activation", "fc2", "scale_activation")

    def __init__(self, channels: int, *, rng=None):
        super().__init__(channels, make_divisible(channels // 4, 8), rng=rng)


class InvertedResidual(ResidualBlock):
    """The MobileNetV3 bneck (see the module docstring); children: ``block`` (a Sequential of
    ConvBNAct layers and the SqueezeExcitation), named like torchvision's.

    (N, in_channels, H, W) -> (N, out_channels, H/s, W/s).
    """

    branch = ("block",)

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
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
        if expanded_channels != in_channels:  # 1x1 expansion k -> e
            layers.append(ConvBNAct(in_channels, expanded_channels, 1, act=activation, **bn_kw))
        layers.append(  # kxk depthwise, stride s
            ConvBNAct(expanded_channels, expanded_channels, kernel_size, stride,
                      groups=expanded_channels, act=activation, conv_type=conv_type, **bn_kw)
        )  # fmt: skip
        if use_se:
            layers.append(SqueezeExcitation(expanded_channels, rng=rng))
        layers.append(ConvBNAct(expanded_channels, out_channels, 1, act=None, **bn_kw))  # linear
        self.block = Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels


class MobileNetV3(EvalFastPath, Sequential):
    """x (N, 3, H, W) -> logits (N, num_classes), any H, W >= 1 (the net downsamples by 32).

    ``arch``: "large" or "small". Children: ``features`` (stem ConvBNAct, the bnecks, 1x1
    ConvBNAct), ``avgpool`` (global average + flatten), ``classifier`` (Linear, Hardswish,
    Dropout, Linear: ``classifier.0`` / ``classifier.3`` as in torchvision). ``rng`` (a Generator
    or a seed) drives the initialisation (torchvision's). ``style``: whose widths, padding and
    BN ("torchvision", "keras", "timm": see the module docstring); ``keras_style=True`` is
    ``style="keras"`` whatever ``style`` says.
    """

    def __init__(
        self,
        arch: str = "large",
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        style: str = "torchvision",
        keras_style: bool = False,
        rng: np.random.Generator | int | None = None,
    ):
        if arch not in STAGES:
            raise ValueError(f"arch must be one of {sorted(STAGES)}, got {arch!r}")
        style = "keras" if keras_style else style
        if style not in STYLES:
            raise ValueError(f"style must be one of {list(STYLES)}, got {style!r}")
        numerics, rng = STYLES[style], np.random.default_rng(rng)
        bn = {"eps": numerics.bn_eps, "momentum": numerics.bn_momentum}
        conv_type = numerics.conv_type
        bn_kw = {"bn_eps": bn["eps"], "bn_momentum": bn["momentum"], "rng": rng}

        def scaled(c: int) -> int:
            return make_divisible(c * width_mult)

        def expansion(in_channels: int, base_in: int, expanded: int) -> int:
            if numerics.tf_widths:  # the ratio to the block's input, applied to the scaled input
                return make_divisible(in_channels * (expanded / base_in))
            return scaled(expanded)

        fixed_stem = numerics.tf_widths and (style == "keras" or width_mult <= 1)
        channels = STEM_CHANNELS if fixed_stem else scaled(STEM_CHANNELS)
        features = [ConvBNAct(3, channels, 3, 2, act="hardswish", conv_type=conv_type, **bn_kw)]
        base_in = STEM_CHANNELS  # the block's input width at alpha = 1
        for stage in STAGES[arch]:
            for k, expanded, out, use_se, activation, stride in stage:
                features.append(
                    InvertedResidual(channels, k, expansion(channels, base_in, expanded),
                                     scaled(out), use_se, activation, stride, bn=bn,
                                     conv_type=conv_type, rng=rng)
                )  # fmt: skip
                channels, base_in = scaled(out), out
        last_conv = 6 * channels
        features.append(ConvBNAct(channels, last_conv, 1, act="hardswish", **bn_kw))  # (N, 6k)
        head = HEAD_CHANNELS[arch]
        head = scaled(head) if width_mult > 1 or not numerics.tf_widths else head
        super().__init__(
            {
                "features": Sequential(*features),
                "avgpool": global_pool_flatten(),  # (N, 6k)
                "classifier": Sequential(
                    Linear(last_conv, head, rng=rng),  # (N, 1280a) Large / (N, 1024a) Small
                    Hardswish(),
                    Dropout(dropout),
                    Linear(head, num_classes, rng=rng),
                ),
            }
        )
        self.arch, self.num_features, self.style = arch, last_conv, style
        torchvision_init(self, rng, linear_std=0.01)


def timm_state_dict(state: dict, arch: str) -> dict | None:
    """A state dict of timm's ``mobilenetv3_{arch}_*`` (``conv_stem``, ``blocks.S.B.conv_pw``,
    ``conv_head``, ``classifier``) under torchvision's names, or None when ``state`` is not one.

    Both list the same tensors in the same order within a block: timm's ``conv_dw`` / ``bn1`` /
    ``se.conv_reduce`` / ``se.conv_expand`` / ``conv_pw`` / ``bn2`` (the first, depthwise-
    separable block) and ``conv_pw`` / ``bn1`` / ``conv_dw`` / ``bn2`` / ``se`` / ``conv_pwl`` /
    ``bn3`` are torchvision's ``block.0.0`` / ``block.0.1`` / ... in turn; timm's stage S, block B
    is torchvision's ``features.{1 + blocks before stage S + B}``; the 1x1 ``conv_head`` on the
    pooled map is ``classifier.0``, a Linear (its weight reshaped)."""
    if "conv_stem.weight" not in state or arch not in STAGES:
        return None
    stage_sizes = [len(stage) for stage in STAGES[arch]] + [1]  # the last stage: the 1x1 conv
    firsts = np.cumsum([1, *stage_sizes])  # feature index of each stage's first block
    block_key = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)")
    renamed = {}
    for key, value in state.items():
        top = key.split(".", 1)
        if top[0] in ("conv_stem", "bn1"):
            renamed[f"features.0.{int(top[0] == 'bn1')}.{top[1]}"] = value
        elif top[0] == "conv_head":
            renamed[f"classifier.0.{top[1]}"] = value.reshape(value.shape[:2])
        elif top[0] == "classifier":
            renamed[f"classifier.3.{top[1]}"] = value
        elif (match := block_key.fullmatch(key)) and int(match[1]) < len(stage_sizes):
            stage, rest = int(match[1]), match[3]
            name = _timm_block_key(state, stage, int(match[2]), rest, int(firsts[stage]))
            if name is None:
                return None
            renamed[name] = value
        else:
            return None
    return renamed


def _timm_block_key(state: dict, stage: int, index: int, rest: str, first: int) -> str | None:
    """torchvision's name of ``blocks.{stage}.{index}.{rest}`` (its stage's first block is
    feature ``first``), or None for a layer name MobileNetV3 does not have (another timm
    model's: GhostNet's ``ghost1`` ...)."""
    prefix, feature = f"blocks.{stage}.{index}.", first + index
    layer, _, tail = rest.partition(".")
    if f"{prefix}conv.weight" in state:  # the last stage's ConvBnAct: conv, bn1
        sub = {"conv": 0, "bn1": 1}.get(layer)
        return None if sub is None else f"features.{feature}.{sub}.{tail}"
    has_se = f"{prefix}se.conv_reduce.weight" in state
    if f"{prefix}conv_pwl.weight" not in state:  # the depthwise-separable first block
        order = {"conv_dw": 0, "bn1": 0, "se": 1, "conv_pw": 1 + has_se, "bn2": 1 + has_se}
    else:
        order = {"conv_pw": 0, "bn1": 0, "conv_dw": 1, "bn2": 1, "se": 2,
                 "conv_pwl": 2 + has_se, "bn3": 2 + has_se}  # fmt: skip
    if layer == "se":
        se_layer, _, se_tail = tail.partition(".")
        fc = {"conv_reduce": "fc1", "conv_expand": "fc2"}.get(se_layer)
        return None if fc is None else f"features.{feature}.block.{order['se']}.{fc}.{se_tail}"
    if layer not in order:
        return None
    sub = 1 if layer.startswith("bn") else 0
    return f"features.{feature}.block.{order[layer]}.{sub}.{tail}"


def _from_timm(arch: str, state: dict) -> Translated | None:
    """A timm file, renamed, built in timm's style, with timm's preprocessing."""
    renamed = timm_state_dict(state, arch)
    if renamed is None:
        return None
    return Translated(renamed, {"style": "timm"}, timm_preprocessing())


def keras_layer_names(model: MobileNetV3) -> list[str]:
    """The names ``keras.applications.MobileNetV3Large`` / ``Small`` give the layers that hold
    our conv, BN and classifier weights, in our module order (block b's are prefixed
    ``expanded_conv_{b}_``, the first block's ``expanded_conv_``)."""
    names = ["conv", "conv_bn"]
    for b, block in enumerate(list(model.features)[1:-1]):
        prefix = f"expanded_conv_{b}_" if b else "expanded_conv_"
        layers = list(block.block)
        if layers[0][0].groups == 1:  # a 1x1 expansion before the depthwise conv
            names += [prefix + "expand", prefix + "expand_bn"]
        names += [prefix + "depthwise", prefix + "depthwise_bn"]
        if any(isinstance(layer, SqueezeExcite) for layer in layers):
            names += [prefix + "squeeze_excite_conv", prefix + "squeeze_excite_conv_1"]
        names += [prefix + "project", prefix + "project_bn"]
    return [*names, "conv_1", "conv_1_bn", "conv_2", "logits"]


def _cfg(arch: str) -> ModelCfg:
    return ModelCfg(preprocessing=torchvision_preprocessing(), classifier="classifier.3.weight",
                    twin=("torchvision", f"mobilenet_v3_{arch}"), paper="arXiv:1905.02244",
                    benchmarked=True, mobile=True,
                    foreign_names=functools.partial(_from_timm, arch),
                    keras_layers=keras_layer_names)  # fmt: skip


@register_model("mobilenet_v3_large", aliases=("mobilenetv3_large_100",), cfg=_cfg("large"))
def mobilenet_v3_large(num_classes: int = 1000, width_mult: float = 1.0, **kwargs) -> MobileNetV3:
    """MobileNetV3-Large with width ``width_mult``; kwargs: ``dropout`` (0.2), ``style``
    ("torchvision", "keras", "timm"), ``keras_style``, ``rng``."""
    return MobileNetV3("large", num_classes, width_mult, **kwargs)


@register_model("mobilenet_v3_small", aliases=("mobilenetv3_small_100",), cfg=_cfg("small"))
def mobilenet_v3_small(num_classes: int = 1000, width_mult: float = 1.0, **kwargs) -> MobileNetV3:
    """MobileNetV3-Small with width ``width_mult``; kwargs: ``dropout`` (0.2), ``style``
    ("torchvision", "keras", "timm"), ``keras_style``, ``rng``."""
    return MobileNetV3("small", num_classes, width_mult, **kwargs)
