"""``load_pretrained``: published weights as a ready model, with how their source preprocesses.

    model = sn.models.load_pretrained("mobilenet_v2-7ebf99e0.pth")       # torchvision's file
    model = sn.models.load_pretrained("ghostnet.safetensors", "ghostnet_100")
    model.pretrained_cfg   # {"source": "torchvision", "resize": 256, "crop": 224, ...}

The architecture, width multiplier and class count come from the tensor names and shapes (every
model uses torchvision / timm names), or from ``model=`` (a registered name or a built model)
and ``**kwargs`` for ``create``. Files: ``.pth`` / ``.pt`` / ``.bin`` / ``.pth.tar`` (torch, read
with ``weights_only=True``; a nested ``state_dict`` and ``module.`` prefixes are undone),
``.safetensors``, ``.npz`` (see ``checkpoint.read_state_dict``), also in another library's names
where the model translates them (timm's MobileNetV3: ``ModelCfg.foreign_names``); float ``.tflite`` graphs
(``tflite_import.model_from_tflite``) and uint8 ones (``quantized.quantized_model_from_tflite``:
a model taking uint8 pixels and returning TFLite's uint8 output, bit for bit); Keras files,
``.h5`` (the official keras.applications downloads, Keras 2 and 3 weights) and ``.keras``
archives, built with Keras' numerics (``keras_import``); ONNX graphs (``onnx_import``: one of
our layers per node, trainable).
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..formats.keras import read_keras
from ..formats.tflite import read_tflite
from .checkpoint import FORMATS, read_state_dict
from .keras_import import input_size, keras_architecture, keras_state_dict
from .onnx_import import model_from_onnx
from .quantized import quantized_model_from_tflite
from .registry import (
    Translated,
    WidthMisfit,
    create,
    fit_width,
    has_width,
    keras_preprocessing,
    list_models,
    model_cfg,
    models_where,
    resolve_name,
)
from .tflite_import import is_float_graph, model_from_tflite


def architectures() -> list[str]:
    """The registered models a weight file can be matched against: those with published
    weights (a ``preprocessing`` in their facts)."""
    return models_where(lambda cfg: cfg.preprocessing is not None)


@functools.cache
def _names(arch: str) -> frozenset[str]:
    """The state dict names of ``arch`` (they do not depend on the width or class count)."""
    sizes = {"width_mult": 0.25} if has_width(arch) else {}
    return frozenset(create(arch, num_classes=2, init=False, **sizes).state_dict())


def _weight_names(names) -> frozenset[str]:
    return frozenset(n for n in names if not n.endswith("num_batches_tracked"))


def infer_architecture(state: dict) -> str:
    """The registered model whose parameter names are exactly the file's."""
    names = _weight_names(state)
    matches = [arch for arch in architectures() if _weight_names(_names(arch)) == names]
    if not matches:
        closest = min(architectures(), key=lambda a: len(_weight_names(_names(a)) ^ names))
        differ = sorted(_weight_names(_names(closest)) ^ names)
        raise ValueError(
            f"the file's {len(names)} tensor names match no model ({', '.join(list_models())}); "
            f"closest {closest}, which differs in {len(differ)} names such as {differ[:3]}; "
            "pass model=NAME (and its options) if the file is one of ours under other names"
        )
    return matches[0]


def _names_differ(arch: str, state: dict) -> str:
    """Why the file's tensor names are not ``arch``'s: what it lacks and what it has besides."""
    ours, theirs = _weight_names(_names(arch)), _weight_names(state)
    lacks, extra = sorted(ours - theirs), sorted(theirs - ours)
    guess = next((a for a in architectures() if _weight_names(_names(a)) == theirs), None)
    translated = None if guess else translate_names(state)
    guess = guess or (translated and translated[0])
    hint = f"; it is a {guess} (leave model= out to load it as one)" if guess else ""
    return (
        f"the file's {len(theirs)} tensor names are not those of {arch}: it lacks "
        f"{len(lacks)} of {arch}'s (such as {lacks[:3]}) and has {len(extra)} others (such as "
        f"{extra[:3]}){hint}"
    )


def translate_names(state: dict, arch: str | None = None) -> tuple[str, Translated] | None:
    """``(architecture, Translated)`` for a state dict in another library's names that a
    registered model (``arch``, or any) can translate (``ModelCfg.foreign_names``), else None."""
    for name in architectures() if arch is None else [arch]:
        translate = model_cfg(name).foreign_names
        translated = translate(state) if translate is not None else None
        if translated is not None and _weight_names(translated.state) == _weight_names(
            _names(name)
        ):
            return name, translated
    return None


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


def _build(arch: str, state: dict, kwargs: dict):
    """``(model, width_mult)``: the model of ``arch`` whose every tensor shape is the file's
    (width and classes found by trying; ``kwargs`` fixes either)."""
    kwargs = dict(kwargs)
    classifier = state.get(model_cfg(arch).classifier)
    if classifier is not None:
        kwargs.setdefault("num_classes", int(classifier.shape[0]))
    return fit_width(arch, {name: value.shape for name, value in state.items()}, **kwargs)


#: suffixes read as Keras files (``.weights.h5`` ends in ``.h5``)
KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


def _load_keras(path: Path, model, kwargs: dict):
    """A Keras file's model (see ``keras_import``): ``model`` may name the architecture."""
    weights = read_keras(path)
    if model is not None and not isinstance(model, str):
        raise TypeError("a Keras file builds its own model: pass model= as a registered name")
    arch, has_top = keras_architecture(weights)
    if model is not None and resolve_name(model) != arch:
        raise ValueError(f"{path} holds a Keras {arch}, not a {resolve_name(model)}")
    state, origin = keras_state_dict(weights, arch)
    options = {"keras_style": True} | kwargs
    try:
        built, width = _build(arch, state, options)
    except WidthMisfit as misfit:
        raise ValueError(f"{misfit} (in the file: Keras layer {origin[misfit.key]})") from None
    if not has_top:  # no classifier in the file: a freshly initialised one
        built = create(arch, width_mult=width, rng=0, **options)
    built.load_state_dict(built.state_dict() | state)
    cfg = dict(keras_preprocessing(input_size(weights, path)), architecture=arch,
               width_mult=width, options={"keras_style": True}, file=str(path),
               include_top=has_top, layout=weights.layout)  # fmt: skip
    if has_top:
        cfg["num_classes"] = int(state[model_cfg(arch).classifier].shape[0])
    built.pretrained_cfg = cfg
    return built.eval()


def load_pretrained(path, model=None, **kwargs):
    """The model of the weight file ``path`` in eval mode, with ``model.pretrained_cfg``.

    ``model``: None (inferred from the file), a registered name, or a built model to load into;
    ``kwargs`` go to ``create`` (``width_mult``, ``num_classes``, ``keras_style`` ...). A file
    that fits neither is a ValueError naming what differs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {str(path)!r}")
    if path.suffix.lower() in KERAS_SUFFIXES:
        return _load_keras(path, model, kwargs)
    if path.suffix.lower() == ".onnx":
        if model is not None or kwargs:
            raise TypeError(
                "an .onnx file builds its own model from its graph: no model= / options"
            )
        return model_from_onnx(path)
    if path.suffix.lower() == ".tflite":
        if model is not None or kwargs:
            raise TypeError(
                "a .tflite file builds its own model from its graph: no model= / options"
            )
        graph = read_tflite(path)
        if not is_float_graph(graph):
            return quantized_model_from_tflite(path, graph)
        model = model_from_tflite(path, graph)
        model.pretrained_cfg |= _registered_twin(model.state_dict())
        return model
    if path.suffix.lower() not in FORMATS and not path.name.lower().endswith(".pth.tar"):
        raise ValueError(
            f"cannot tell the format of the weight file {str(path)!r} from its suffix "
            f"{path.suffix!r}; load_pretrained reads {', '.join(FORMATS)}, .pth.tar, .tflite, "
            f"{', '.join(KERAS_SUFFIXES)} (Keras, also .weights.h5), .onnx"
        )
    state = read_state_dict(path)
    preprocessing = None
    if model is None or isinstance(model, str):
        arch = None if model is None else resolve_name(model)
        own_names = arch is not None and _weight_names(state) == _weight_names(_names(arch))
        foreign = None if own_names else translate_names(state, arch)
        if foreign is not None:  # e.g. timm's MobileNetV3: renamed, with timm's BN epsilon
            arch, translated = foreign
            state, kwargs = translated.state, translated.options | kwargs
            preprocessing = translated.preprocessing
        if arch is None:
            arch = infer_architecture(state)
        elif foreign is None and not own_names:
            raise ValueError(_names_differ(arch, state))
        model, width = _build(arch, state, kwargs)
    elif kwargs:
        raise TypeError(
            f"options {sorted(kwargs)} only apply when load_pretrained builds the model"
        )
    else:
        arch = next((a for a in architectures() if _weight_names(_names(a)) ==
                     _weight_names(model.state_dict())), None)  # fmt: skip
        width = getattr(model, "width_mult", None)
    # files written before torch 0.4.1 lack BN's num_batches_tracked: keep the model's
    counters = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    model.load_state_dict(counters | state)
    facts = model_cfg(arch) if arch is not None else None
    classifier = state.get(facts.classifier if facts else "classifier.weight")
    preprocessing = preprocessing or (facts and facts.preprocessing) or {}
    cfg = dict(preprocessing, architecture=arch, width_mult=width, file=str(path))
    if classifier is not None:
        cfg["num_classes"] = int(classifier.shape[0])
    model.pretrained_cfg = cfg
    return model.eval()
