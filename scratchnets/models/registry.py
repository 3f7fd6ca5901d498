"""The model registry: a name -> factory table behind ``scratchnets.models.create``.

A model file registers its factories with a decorator::

    @register_model("mobilenet_v1", aliases=("mobilenetv1_100",))
    def mobilenet_v1(num_classes=1000, width_mult=1.0, **kwargs) -> MobileNetV1: ...

and a user builds any of them by name, like ``timm.create_model``::

    model = scratchnets.models.create("mobilenet_v2", num_classes=2, width_mult=0.5)

A factory that takes no ``width_mult`` argument (VGG16, Xception) has one fixed width; asking it
for another is a ValueError rather than a silent no-op.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
from collections.abc import Callable

#: canonical name -> factory
_FACTORIES: dict[str, Callable] = {}
#: alias -> canonical name
_ALIASES: dict[str, str] = {}


def register_model(name: str | None = None, *, aliases: tuple[str, ...] = ()):
    """Decorator: register a factory under ``name`` (default: the function's name) and ``aliases``.

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


def _accepts(factory: Callable, argument: str) -> bool:
    """Whether ``factory`` declares ``argument`` by name (``**kwargs`` does not count)."""
    return argument in inspect.signature(factory).parameters


def create(name: str, num_classes: int = 1000, width_mult: float = 1.0, *, dtype=None, **kwargs):
    """Build the registered model ``name`` (or an alias) with freshly initialised weights.

    ``num_classes`` sizes the classifier, ``width_mult`` scales the channel counts (only for
    models that have a width multiplier), ``dtype`` converts the model (float32 by default);
    other keyword arguments go to the factory (for example ``rng=0`` to seed the initialisation,
    or ``keras_style=True`` for MobileNetV2). To start from saved weights, follow with
    ``scratchnets.models.load_checkpoint(model, path)``.
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
    model = factory(num_classes=num_classes, **kwargs)
    return model if dtype is None else model.to(dtype=dtype)
