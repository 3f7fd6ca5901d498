"""The model registry: each model's factory and its facts, behind ``scratchnets.models.create``.

A model file registers its factories with a decorator, with the model's facts beside it (as
timm's ``default_cfgs`` are)::

    @register_model("mobilenet_v1", aliases=("mobilenetv1_100",), cfg=ModelCfg(...))
    def mobilenet_v1(num_classes=1000, width_mult=1.0, **kwargs) -> MobileNetV1: ...

and a user builds any of them by name, like ``timm.create_model``::

    model = scratchnets.models.create("mobilenet_v2", num_classes=2, width_mult=0.5)

A factory that takes no ``width_mult`` argument (VGG16, Xception) has one fixed width; asking it
for another is a ValueError rather than a silent no-op. Loading published weights
(``pretrained``), the benchmarks and the sweeps read the facts with ``model_cfg(name)``;
``fit_width`` finds the width multiplier whose tensors have a file's shapes.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from ..nn.init import skip_init

#: ImageNet statistics of torchvision and most timm models
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: [-1, 1] inputs (TF-slim, Keras and timm's ports of them)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
#: width multipliers tried when a file does not say (the published ones and common others)
WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25, 1.3, 1.4, 1.25, 1.5, 1.6, 2.0)


def torchvision_preprocessing() -> dict:
    """torchvision's ImageNet weights: shorter side resized to 256, centre crop 224."""
    return dict(source="torchvision", size=224, resize=256, interpolation="bilinear",
                mean=IMAGENET_MEAN, std=IMAGENET_STD)  # fmt: skip


def timm_preprocessing(size=224, crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict:
    """timm's ``pretrained_cfg``: resize to size / crop_pct, centre crop ``size``, bicubic."""
    return dict(source="timm", size=size, crop_pct=crop_pct, interpolation="bicubic", mean=mean,
                std=std)  # fmt: skip


def keras_preprocessing(size: int = 224) -> dict:
    """keras.applications' MobileNets: the whole photo resized to ``size x size`` (Keras'
    ``load_img(target_size=...)``, nearest neighbour, no crop), then [-1, 1] (their
    ``preprocess_input``; MobileNetV3's in-model ``Rescaling`` does the same)."""
    return dict(source="keras", size=size, crop="none", interpolation="nearest",
                mean=INCEPTION_MEAN, std=INCEPTION_STD)  # fmt: skip


def tflite_preprocessing() -> dict:
    """Google's TF-slim / TFLite files: the centre square, resized to 224, [-1, 1]."""
    return dict(source="tflite", size=224, crop="centre square", interpolation="bilinear",
                mean=INCEPTION_MEAN, std=INCEPTION_STD)  # fmt: skip


@dataclass(frozen=True)
class ModelCfg:
    """A registered model's facts.

    ``preprocessing``: how its published weights expect their input (None: no published
    weights map onto it; only models with one are matched against a weight file's names).
    ``classifier``: the final classifier weight (its rows are the classes). ``twin``:
    ``("torchvision" | "timm", name)`` of the model with the same names and computation.
    ``paper``: the paper its ``verify`` rows come from (arXiv id). ``benchmarked``: a row of
    ``scratchnets bench models``; ``mobile``: one of the mobile architectures (the float32
    sweep's models). ``foreign_names``: translates a state dict of another library's layout of
    the same network (timm's MobileNetV3) into ours, as a ``Translated``; None when the state
    dict is not one. ``keras_layers``: the names ``keras.applications`` gives the layers holding
    a built model's conv / BN / linear weights, in the model's module order (Keras files:
    ``models.keras_import``).
    """

    preprocessing: dict | None = None
    classifier: str = "classifier.weight"
    twin: tuple[str, str] | None = None
    paper: str | None = None
    benchmarked: bool = False
    mobile: bool = False
    foreign_names: Callable[[dict], Translated | None] | None = None
    keras_layers: Callable | None = None


@dataclass(frozen=True)
class Translated:
    """A state dict renamed to ours by a model's ``foreign_names``: ``options`` for ``create``
    that reproduce its source's numerics (BN epsilon ...) and that source's ``preprocessing``."""

    state: dict
    options: dict
    preprocessing: dict


#: canonical name -> factory
_FACTORIES: dict[str, Callable] = {}
#: canonical name -> its facts
_CFGS: dict[str, ModelCfg] = {}
#: alias -> canonical name
_ALIASES: dict[str, str] = {}


def register_model(
    name: str | None = None, *, aliases: tuple[str, ...] = (), cfg: ModelCfg | None = None
):
    """Decorator: register a factory under ``name`` (default: the function's name) and ``aliases``,
    with its facts ``cfg``.

    A name already taken by another factory is an error: two modules must not silently shadow
    each other.
    """

    def decorator(factory: Callable) -> Callable:
        canonical = name or factory.__name__
        for key in (canonical, *aliases):
            owner = _ALIASES.get(key, key if key in _FACTORIES else None)
            if owner is not None and _FACTORIES[owner] is not factory:
                raise ValueError(f"model name {key!r} is already registered (by {owner!r})")
        _FACTORIES[canonical] = factory
        _CFGS[canonical] = cfg or ModelCfg()
        for alias in aliases:
            _ALIASES[alias] = canonical
        return factory

    return decorator


def resolve_name(name: str) -> str:
    """The canonical name of ``name`` (itself or the model it is an alias of)."""
    if name in _FACTORIES:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = sorted({*_FACTORIES, *_ALIASES})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    raise ValueError(f"unknown model {name!r}{hint}; known models: {', '.join(list_models())}")


def list_models(pattern: str = "*", include_aliases: bool = False) -> list[str]:
    """Sorted registered names matching the shell-style ``pattern`` (e.g. ``"mobilenet*"``)."""
    names = set(_FACTORIES) | (set(_ALIASES) if include_aliases else set())
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def model_cfg(name: str) -> ModelCfg:
    """The facts registered with model ``name`` (or an alias)."""
    return _CFGS[resolve_name(name)]


def models_where(predicate: Callable[[ModelCfg], bool]) -> list[str]:
    """The registered names whose facts satisfy ``predicate``, in the order of their papers
    (arXiv ids are chronological; models without one last), then by name."""
    chosen = [name for name, cfg in _CFGS.items() if predicate(cfg)]
    return sorted(chosen, key=lambda name: (_CFGS[name].paper or "~", name))


def _accepts(factory: Callable, argument: str) -> bool:
    """Whether ``factory`` declares ``argument`` by name (``**kwargs`` does not count)."""
    return argument in inspect.signature(factory).parameters


def has_width(name: str) -> bool:
    """Whether model ``name`` takes a width multiplier."""
    return _accepts(_FACTORIES[resolve_name(name)], "width_mult")


def create(
    name: str, num_classes: int = 1000, width_mult: float = 1.0, *, dtype=None, init: bool = True,
    **kwargs,
):  # fmt: skip
    """Build the registered model ``name`` (or an alias) with freshly initialised weights.

    ``num_classes`` sizes the classifier, ``width_mult`` scales the channel counts (only for
    models that have a width multiplier), ``dtype`` converts the model (float32 by default);
    other keyword arguments go to the factory (for example ``rng=0`` to seed the initialisation,
    or ``keras_style=True`` for MobileNetV2). To start from saved weights, follow with
    ``scratchnets.models.load_checkpoint(model, path)``. ``init=False`` draws no weights (they
    hold whatever memory held: for counting, or to be overwritten by a file; torch's "meta"
    device is the analogue).
    """
    canonical = resolve_name(name)
    factory = _FACTORIES[canonical]
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if not isinstance(width_mult, numbers.Real) or isinstance(width_mult, bool):
        raise TypeError(f"width_mult must be a number, got {width_mult!r}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be positive, got {width_mult!r}")
    if _accepts(factory, "width_mult"):
        kwargs["width_mult"] = width_mult
    elif width_mult != 1.0:
        raise ValueError(f"{canonical} has a fixed width; width_mult={width_mult} is not supported")
    with nullcontext() if init else skip_init():
        model = factory(num_classes=num_classes, **kwargs)
    if dtype is None:
        return model
    # without init the arrays hold whatever memory held: casting it may meet NaN bit patterns
    with nullcontext() if init else np.errstate(invalid="ignore", over="ignore"):
        return model.to(dtype=dtype)


def fit_width(name: str, shapes: dict, widths: tuple[float, ...] = WIDTHS, **kwargs):
    """``(model, width_mult)``: the uninitialised model ``name`` (built with ``kwargs``) whose
    tensors have the ``shapes`` given ({state dict name: shape}), trying ``widths`` in order
    unless the model has a fixed width or ``kwargs`` names one. When none fits, ``WidthMisfit``
    names the first tensor that does not fit the closest model (the width with the fewest
    misfits), with both shapes."""
    fixed = not has_width(name) or "width_mult" in kwargs
    closest = None  # (misfits, options, first misfit)
    for width in [None] if fixed else widths:
        options = kwargs if width is None else kwargs | {"width_mult": width}
        model = create(name, init=False, **options)
        misfits = [(key, tuple(shapes[key]), tuple(value.shape))
                   for key, value in model.state_dict().items()
                   if key in shapes and tuple(shapes[key]) != tuple(value.shape)]  # fmt: skip
        if not misfits:
            return model, options.get("width_mult", 1.0)
        if closest is None or len(misfits) < closest[0]:
            closest = (len(misfits), options, misfits[0])
    count, options, (key, theirs, ours) = closest
    tried = f"{options}" if fixed else f"any width multiplier in {widths}"
    raise WidthMisfit(
        f"the file is a {name} whose tensors fit no model with {tried}: {key} is {theirs} in "
        f"the file but {ours} in a {name} with {options} (the closest: {count} tensors differ); "
        "pass width_mult=... / num_classes=...",
        key,
    )


class WidthMisfit(ValueError):
    """``fit_width`` found no width: ``key`` names the first tensor that did not fit."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key
