"""The backend table: "reference" | "cpu" | "cuda" -> the module that implements every op.

A backend is a plain module exporting the functions named in ``OP_NAMES`` with identical
signatures (``tests/test_backend_conformance.py`` checks this). Adding a backend is one call to
``register_backend``; modules are imported lazily so that ``import scratchnets`` stays cheap and
a machine without CUDA never imports numba.cuda.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Every op as a ``<op>_forward(...) -> (y, cache)`` / ``<op>_backward(dy, cache) -> grads`` pair.
OPS = (
    "conv2d",
    "pad2d",
    "batch_norm2d",
    "relu",
    "relu6",
    "sigmoid",
    "hard_sigmoid",
    "hard_swish",
    "silu",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool2d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "linear",
    "dropout",
    "upsample_nearest2d",
    "upsample_bilinear2d",
    "add",
    "mul",
    "concat",
    "slice",
    "cross_entropy",
)
OP_NAMES = tuple(f"{op}_{direction}" for op in OPS for direction in ("forward", "backward"))

_MODULE_PATHS: dict[str, str] = {
    "reference": "scratchnets.reference",
    "cpu": "scratchnets.kernels.cpu",
    "cuda": "scratchnets.kernels.cuda",
}
_LOADED: dict[str, ModuleType] = {}

DEFAULT_BACKEND = "cpu"  # Numba kernels; "reference" is the readable spec


def register_backend(name: str, module_path: str) -> None:
    """Make ``name`` resolve to the op module importable as ``module_path``."""
    _MODULE_PATHS[name] = module_path
    _LOADED.pop(name, None)


def available_backends() -> tuple[str, ...]:
    return tuple(_MODULE_PATHS)


def get_backend(name: str | None = None) -> ModuleType:
    """Return the op module of backend ``name`` (the default backend when None)."""
    name = DEFAULT_BACKEND if name is None else name
    if name not in _MODULE_PATHS:
        raise ValueError(
            f"unknown backend {name!r}; expected one of {', '.join(map(repr, _MODULE_PATHS))}"
        )
    if name not in _LOADED:
        _LOADED[name] = importlib.import_module(_MODULE_PATHS[name])
    return _LOADED[name]
