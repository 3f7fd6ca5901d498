"""``load_pretrained``: published weights as a ready model, with how their source preprocesses.

    model = sn.models.load_pretrained("mobilenet_v2-7ebf99e0.pth")       # torchvision's file
    model = sn.models.load_pretrained("ghostnet.safetensors", "ghostnet_100")
    model.pretrained_cfg   # {"source": "torchvision", "resize": 256, "crop": 224, ...}

The architecture, width multiplier and class count come from the tensor names and shapes (every
model uses torchvision / timm names), or from ``model=`` (a registered name or a built model)
and ``**kwargs`` for ``create``. Files: ``.pth`` / ``.pt`` / ``.bin`` / ``.pth.tar`` (torch, read
with ``weights_only=True``; a nested ``state_dict`` and ``module.`` prefixes are undone),
``.safetensors``, ``.npz`` (see ``checkpoint.read_state_dict``); float ``.tflite`` graphs
(``tflite_import.model_from_tflite``) and uint8 ones (``quantized.quantized_model_from_tflite``:
a model taking uint8 pixels and returning TFLite's uint8 output, bit for bit).
"""

from __future__ import annotations

import functools
from pathlib import Path

from .checkpoint import read_state_dict
from .registry import create, list_models, resolve_name

#: ImageNet statistics of torchvision and most timm models
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: [-1, 1] inputs (TF-slim, Keras and timm's ports of them)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
#: how each architecture's published weights expect their input: torchvision resizes the shorter
#: side to 256 and centre-crops 224; timm resizes to size / crop_pct and centre-crops (its
#: ``pretrained_cfg`` of each model's default tag)
PREPROCESSING = {
    "mobilenet_v2": dict(source="torchvision", size=224, resize=256, interpolation="bilinear",
                         mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "vgg16": dict(source="torchvision", size=224, resize=256, interpolation="bilinear",
                  mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "vgg16_bn": dict(source="torchvision", size=224, resize=256, interpolation="bilinear",
                     mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "mobilenet_v1": dict(source="timm", size=224, crop_pct=0.875, interpolation="bicubic",
                         mean=INCEPTION_MEAN, std=INCEPTION_STD),
    "ghostnet_100": dict(source="timm", size=224, crop_pct=0.875, interpolation="bicubic",
                         mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "ghostnetv2_100": dict(source="timm", size=224, crop_pct=0.875, interpolation="bicubic",
                           mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "ghostnetv3_100": dict(source="timm", size=224, crop_pct=0.875, interpolation="bicubic",
                           mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "xception": dict(source="timm", size=299, crop_pct=0.8975, interpolation="bicubic",
                     mean=INCEPTION_MEAN, std=INCEPTION_STD),
    "tf_mobilenet_v1": dict(source="tflite", size=224, crop="centre square",
                            interpolation="bilinear", mean=INCEPTION_MEAN, std=INCEPTION_STD),
    "tf_mobilenet_v2": dict(source="tflite", size=224, crop="centre square",
                            interpolation="bilinear", mean=INCEPTION_MEAN, std=INCEPTION_STD),
}  # fmt: skip
#: width multipliers tried when a file does not say (the published ones and common others)
WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4, 1.25, 1.5, 1.6, 2.0)
#: the final classifier weight of each architecture (its rows are the classes)
CLASSIFIER = {
    "mobilenet_v2": "classifier.1.weight",
    "xception": "fc.weight",
    "tf_mobilenet_v1": "Conv2d_1c_1x1.weight",
    "tf_mobilenet_v2": "Conv2d_1c_1x1.weight",
} | {name: "classifier.6.weight" for name in ("vgg16", "vgg16_bn")}


def _uninitialised(name: str, **kwargs):
    """``create(name, ...)`` without drawing weights (they are overwritten by the file)."""
    from ..profile.summary import skip_init

    with skip_init():
        return create(name, **kwargs)


@functools.cache
def _names(arch: str) -> frozenset[str]:
    """The state dict names of ``arch`` (they do not depend on the width or class count)."""
    sizes = {"width_mult": 0.25} if arch not in ("vgg16", "vgg16_bn", "xception") else {}
    return frozenset(_uninitialised(arch, num_classes=2, **sizes).state_dict())


def _weight_names(names) -> frozenset[str]:
    return frozenset(n for n in names if not n.endswith("num_batches_tracked"))


def infer_architecture(state: dict) -> str:
    """The registered model whose parameter names are exactly the file's."""
    names = _weight_names(state)
    matches = [arch for arch in PREPROCESSING if _weight_names(_names(arch)) == names]
    if not matches:
        closest = min(PREPROCESSING, key=lambda a: len(_weight_names(_names(a)) ^ names))
        differ = sorted(_weight_names(_names(closest)) ^ names)
        raise ValueError(
            f"the file's {len(names)} tensor names match no model ({', '.join(list_models())}); "
            f"closest {closest}, which differs in {len(differ)} names such as {differ[:3]}; "
            "pass model=NAME (and its options) if the file is one of ours under other names"
        )
    return matches[0]


def _registered_twin(state: dict) -> dict:
    """``{"architecture", "width_mult"}`` of the registered model whose tensors are exactly
    ``state``'s (an imported TF-slim MobileNetV1 is our ``tf_mobilenet_v1``), or ``{}``: the
    same inference as for a weight file."""
    try:
        arch = infer_architecture(state)
        _, width = _build(arch, state, {})
    except ValueError:
        return {}
    return {"architecture": arch, "width_mult": width}


def _misfit(model, state: dict) -> tuple[str, tuple, tuple] | None:
    """``(name, the file's shape, the model's shape)`` of the first tensor that does not fit
    ``model``, or None when every one does."""
    for name, value in model.state_dict().items():
        if name in state and tuple(state[name].shape) != tuple(value.shape):
            return name, tuple(state[name].shape), tuple(value.shape)
    return None


def _build(arch: str, state: dict, kwargs: dict):
    """``(model, width_mult)``: the model of ``arch`` whose every tensor shape is the file's
    (width and classes found by trying; ``kwargs`` fixes either)."""
    kwargs = dict(kwargs)
    classifier = state.get(CLASSIFIER.get(arch, "classifier.weight"))
    if classifier is not None:
        kwargs.setdefault("num_classes", int(classifier.shape[0]))
    fixed_width = arch in ("vgg16", "vgg16_bn", "xception") or "width_mult" in kwargs
    first_misfit = None
    for width in [None] if fixed_width else WIDTHS:
        options = kwargs if width is None else kwargs | {"width_mult": width}
        model = _uninitialised(arch, **options)
        misfit = _misfit(model, state)
        if misfit is None:
            return model, options.get("width_mult", 1.0)
        first_misfit = first_misfit or (options, *misfit)
    options, name, theirs, ours = first_misfit
    tried = f"{options}" if fixed_width else f"any width multiplier in {WIDTHS}"
    raise ValueError(
        f"the file is a {arch} whose tensors fit no model with {tried}: {name} is {theirs} in "
        f"the file but {ours} in a {arch} with {options}; pass width_mult=... / num_classes=..."
    )


def load_pretrained(path, model=None, **kwargs):
    """The model of the weight file ``path`` in eval mode, with ``model.pretrained_cfg``.

    ``model``: None (inferred from the file), a registered name, or a built model to load into;
    ``kwargs`` go to ``create`` (``width_mult``, ``num_classes``, ``keras_style`` ...). A file
    that fits neither is a ValueError naming what differs.
    """
    path = Path(path)
    if path.suffix.lower() == ".tflite":
        if model is not None or kwargs:
            raise TypeError(
                "a .tflite file builds its own model from its graph: no model= / options"
            )
        from ..formats.tflite import read_tflite
        from .quantized import quantized_model_from_tflite
        from .tflite_import import is_float_graph, model_from_tflite

        graph = read_tflite(path)
        if not is_float_graph(graph):
            return quantized_model_from_tflite(path, graph)
        model = model_from_tflite(path, graph)
        model.pretrained_cfg |= _registered_twin(model.state_dict())
        return model
    state = read_state_dict(path)
    if model is None or isinstance(model, str):
        arch = infer_architecture(state) if model is None else resolve_name(model)
        model, width = _build(arch, state, kwargs)
    elif kwargs:
        raise TypeError(
            f"options {sorted(kwargs)} only apply when load_pretrained builds the model"
        )
    else:
        arch = next((a for a in PREPROCESSING if _weight_names(_names(a)) ==
                     _weight_names(model.state_dict())), None)  # fmt: skip
        width = getattr(model, "width_mult", None)
    # files written before torch 0.4.1 lack BN's num_batches_tracked: keep the model's
    counters = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    model.load_state_dict(counters | state)
    classifier = state.get(CLASSIFIER.get(arch, "classifier.weight"))
    cfg = dict(PREPROCESSING.get(arch, {}), architecture=arch, width_mult=width, file=str(path))
    if classifier is not None:
        cfg["num_classes"] = int(classifier.shape[0])
    model.pretrained_cfg = cfg
    return model.eval()
