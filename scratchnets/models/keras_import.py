"""Keras weight files as scratchnets models: ``keras.applications``' MobileNet, MobileNetV2 and
MobileNetV3 Large / Small, from the official legacy ``.h5`` downloads, Keras 3 ``.weights.h5`` or
``.keras`` archives (``formats.keras`` reads them), built with Keras' numerics
(``keras_style=True``: its channel rounding, TF "same" padding, BN epsilon 1e-3).

Each model registers the names Keras gives the layers holding its conv, BN and classifier
weights, in its own module order (``ModelCfg.keras_layers``). The architecture is the model
whose Keras names are exactly the file's weighted layers (with or without the classifier: a
``_no_top`` file), the width multiplier and classes come from the tensors' shapes, the input size
from the config or the official file name (``mobilenet_7_5_160_tf.h5``). Layouts convert as

    Conv2D kernel (kh, kw, in, out)       -> conv weight (out, in, kh, kw)
    DepthwiseConv2D kernel (kh, kw, C, 1) -> conv weight (C, 1, kh, kw)
    Dense kernel (in, out), or a 1x1 Conv2D on the pooled map (1, 1, in, out) -> linear (out, in)
    BatchNormalization gamma, beta, moving mean, moving variance -> weight, bias, running stats

A file without the classifier loads into a model whose classifier is freshly initialised.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from ..formats.keras import KerasFileError, KerasWeights
from ..nn import BatchNorm2d, Conv2d, Linear
from .registry import create, model_cfg, models_where

#: the official keras.applications file names, and where they say the input size
OFFICIAL_SIZE = (
    re.compile(r"mobilenet_\d_\d+_(\d+)_tf(_no_top)?\.h5"),  # mobilenet_7_5_160_tf.h5
    re.compile(r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_[\d.]+_(\d+)(_no_top)?\.h5"),
    re.compile(r"weights_mobilenet_v3_(?:large|small)_(\d+)_[\d.]+_float(_no_top.*)?\.h5"),
)


def keras_architectures() -> list[str]:
    """The registered models that know Keras' names for their layers."""
    return models_where(lambda cfg: cfg.keras_layers is not None)


def _weighted_modules(model) -> list[tuple[str, object]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (Conv2d, BatchNorm2d, Linear))]  # fmt: skip


@functools.cache
def _thin(arch: str):
    """A thin keras_style ``arch`` with no weights drawn: its layout and Keras names do not
    depend on the width, so one serves every file."""
    return create(arch, num_classes=2, width_mult=0.25, init=False, keras_style=True)


@functools.cache
def _layout(arch: str) -> tuple[tuple[str, str, object], ...]:
    """(Keras layer name, our module path, our module) of ``arch``, in module order."""
    model = _thin(arch)
    modules = _weighted_modules(model)
    names = model_cfg(arch).keras_layers(model)
    if len(names) != len(modules):
        raise AssertionError(f"{arch}: {len(names)} Keras names for {len(modules)} layers")
    return tuple(
        (keras, path, module) for keras, (path, module) in zip(names, modules, strict=True)
    )


def keras_architecture(weights: KerasWeights) -> tuple[str, bool]:
    """``(architecture, whether the file has the classifier)``: the model whose Keras layer
    names are the file's, with or without its classifier layers."""
    found = set(weights.layers)
    best = None
    for arch in keras_architectures():
        layout = _layout(arch)
        every = {keras for keras, _, _ in layout}
        body = {keras for keras, _, m in layout if not isinstance(m, Linear)}
        if found == every or found == body:
            return arch, found == every
        differ = sorted(found ^ every)
        if best is None or len(differ) < len(best[1]):
            best = (arch, differ)
    arch, differ = best
    raise ValueError(
        f"the file's {len(found)} Keras layers with weights match no model "
        f"({', '.join(keras_architectures())}); closest {arch}, which differs in {len(differ)} "
        f"layer names such as {differ[:3]} (MobileNetV3's minimalistic variants are not built here)"
    )


def keras_state_dict(weights: KerasWeights, arch: str) -> tuple[dict, dict]:
    """``(state dict in our names, {our name: Keras layer / weight it came from})`` of the
    Keras file ``weights`` for ``arch`` (layers the file lacks, its classifier, left out)."""
    state, origin = {}, {}
    for keras, path, module in _layout(arch):
        if keras not in weights.layers:
            continue
        arrays = weights.layers[keras]
        if isinstance(module, BatchNorm2d):
            targets, converted = ("weight", "bias", "running_mean", "running_var"), arrays
        else:
            has_bias = module.bias is not None
            targets = ("weight", "bias") if has_bias else ("weight",)
            converted = [_kernel(arrays[0], module, keras)] + list(arrays[1:])
        if len(arrays) != len(targets):
            raise KerasFileError(
                f"Keras layer {keras!r} holds {len(arrays)} weights; the {type(module).__name__} "
                f"it fills ({path}) has {len(targets)} ({', '.join(targets)})"
            )
        for target, array in zip(targets, converted, strict=True):
            state[f"{path}.{target}"] = np.ascontiguousarray(array, dtype=np.float32)
            origin[f"{path}.{target}"] = f"{keras} weight {targets.index(target)}"
    return state, origin


def _kernel(kernel: np.ndarray, module, keras: str) -> np.ndarray:
    """A Keras kernel in our layout (see the module docstring)."""
    if isinstance(module, Linear):
        if kernel.ndim == 4 and kernel.shape[:2] == (1, 1):  # a 1x1 Conv2D on the pooled map
            kernel = kernel[0, 0]
        if kernel.ndim != 2:
            raise KerasFileError(
                f"Keras layer {keras!r}: kernel {kernel.shape} is neither a Dense (in, out) nor "
                "a 1x1 Conv2D kernel"
            )
        return kernel.T
    if kernel.ndim != 4:
        raise KerasFileError(f"Keras layer {keras!r}: kernel {kernel.shape} is not 4-D")
    if module.groups > 1:  # DepthwiseConv2D (kh, kw, C, multiplier) -> (C * multiplier, 1, kh, kw)
        return kernel.transpose(2, 3, 0, 1).reshape(-1, 1, *kernel.shape[:2])
    return kernel.transpose(3, 2, 0, 1)


def input_size(weights: KerasWeights, path: Path) -> int:
    """The model's input size: from the config, else the official file name, else 224."""
    size = weights.input_size()
    if size is not None:
        return size
    for pattern in OFFICIAL_SIZE:
        match = pattern.fullmatch(path.name)
        if match:
            return int(match[1])
    return 224


# ----------------------------------------------------------------- our models in Keras' layout

#: the keras.applications function of each architecture
KERAS_APPLICATIONS = {"mobilenet_v1": "MobileNet", "mobilenet_v2": "MobileNetV2",
                      "mobilenet_v3_large": "MobileNetV3Large",
                      "mobilenet_v3_small": "MobileNetV3Small"}  # fmt: skip
#: the one keras.applications classifier that is a Dense layer (MobileNetV2's); the others are
#: 1x1 Conv2D layers on the pooled map, kernel (1, 1, in, out)
KERAS_DENSE = ("predictions",)


def keras_layers_of(model) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """The weights of a keras_style ``model`` of a registered Keras architecture as Keras holds
    them: (layer name, [(weight name, array)]) in model order (``formats.keras.write_legacy_h5``
    writes them; the inverse of ``keras_state_dict``)."""
    arch = keras_architecture_of(model)
    layers = []
    for keras, (_, module) in zip(model_cfg(arch).keras_layers(model), _weighted_modules(model),
                                  strict=True):  # fmt: skip
        if isinstance(module, BatchNorm2d):
            weights = [("gamma", module.weight.data), ("beta", module.bias.data),
                       ("moving_mean", module.running_mean),
                       ("moving_variance", module.running_var)]  # fmt: skip
        elif isinstance(module, Linear):
            kernel = module.weight.data.T  # (in, out)
            weights = [("kernel", kernel if keras in KERAS_DENSE else kernel[None, None])]
            weights.append(("bias", module.bias.data))
        elif module.groups > 1:  # (C, 1, kh, kw) -> DepthwiseConv2D (kh, kw, C, 1)
            weights = [("depthwise_kernel", module.weight.data.transpose(2, 3, 0, 1))]
        else:  # (out, in, kh, kw) -> Conv2D (kh, kw, in, out)
            weights = [("kernel", module.weight.data.transpose(2, 3, 1, 0))]
            if module.bias is not None:
                weights.append(("bias", module.bias.data))
        layers.append((keras, [(name, np.asarray(a, np.float32)) for name, a in weights]))
    return layers


def keras_architecture_of(model) -> str:
    """The registered Keras architecture ``model`` is (MobileNetV3's Large / Small by its
    ``arch``); another model, or one without Keras' numerics, is a ValueError."""
    for arch in keras_architectures():
        thin = _thin(arch)
        if type(thin) is type(model) and getattr(thin, "arch", None) == getattr(
            model, "arch", None
        ):
            break
    else:
        name = getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        raise ValueError(
            f"a {name} has no Keras counterpart here: Keras' layouts exist for "
            f"{', '.join(keras_architectures())} (and TF-slim's MobileNetV1 .tflite files)"
        )
    if not getattr(model, "keras_style", False) and getattr(model, "style", None) != "keras":
        raise ValueError(
            f"this {arch} is not keras_style: Keras' layers would compute another function (TF "
            "'same' padding, Keras' BN epsilon and widths); build or load it with keras_style=True"
        )
    return arch


def unfold_tf_mobilenet_v1(folded, drop_background: bool = True):
    """TF-slim's folded-BN MobileNetV1 (``tf_mobilenet_v1``: a ``.tflite`` file's graph) as a
    keras_style ``mobilenet_v1``: each biased conv becomes the conv and a BN that adds the bias
    (gamma 1, beta the bias, moving mean 0, moving variance 1 - eps: the identity plus the
    bias); TF-slim's 1001-class head loses its "background" output 0 for Keras' 1000 classes.
    The same network: Keras' MobileNet was converted from TF-slim's checkpoints."""
    state = folded.state_dict()
    classes = state["Conv2d_1c_1x1.weight"].shape[0] - int(drop_background)
    width = getattr(folded, "width_mult", None) or folded.pretrained_cfg["width_mult"]
    model = create("mobilenet_v1", num_classes=classes, width_mult=width, keras_style=True, rng=0)
    convs = [name[: -len(".weight")] for name in state if name.endswith(".weight")]
    targets = [m for _, m in _weighted_modules(model)]
    pairs = list(zip(targets[:-1:2], targets[1:-1:2], strict=True))  # (conv, BN) in order
    if len(convs) != len(pairs) + 1:
        raise ValueError(f"{len(convs)} convs do not unfold into {len(pairs)} conv + BN pairs")
    for name, (conv, bn) in zip(convs[:-1], pairs, strict=True):
        conv.weight.data[...] = state[f"{name}.weight"]
        bn.weight.data[...], bn.bias.data[...] = 1.0, state[f"{name}.bias"]
        bn.running_mean[...], bn.running_var[...] = 0.0, 1.0 - bn.eps
    head = slice(int(drop_background), None)
    model.classifier.weight.data[...] = state["Conv2d_1c_1x1.weight"][head, :, 0, 0]
    model.classifier.bias.data[...] = state["Conv2d_1c_1x1.bias"][head]
    return model.eval()
