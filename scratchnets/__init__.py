"""scratchnets: from-scratch CNN layers for MobileNetV1/V2/V3 and GhostNet V1/V2/V3.

Every op exists three times with one signature: ``scratchnets.reference`` (readable NumPy, the
spec), ``scratchnets.kernels.cpu`` (Numba) and ``scratchnets.kernels.cuda`` (numba.cuda). Layers
in ``scratchnets.nn`` have an explicit ``backward``; ``scratchnets.models`` composes them.
Submodules are imported on first use, so ``import scratchnets`` is cheap.
"""

from __future__ import annotations

import importlib

from .arrays import to_numpy
from .backends import available_backends, get_backend, register_backend

__version__ = "0.1.0"

_LAZY_SUBMODULES = {
    "reference",
    "kernels",
    "functional",
    "nn",
    "models",
    "profile",
    "data",
    "optim",
    "train",
    "formats",
}

__all__ = [
    "to_numpy",
    "get_backend",
    "register_backend",
    "available_backends",
    "export_onnx",
    *sorted(_LAZY_SUBMODULES),
]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name == "export_onnx":  # sn.export_onnx(model, path, input_shape)
        return importlib.import_module(".formats.onnx", __name__).export_onnx
    raise AttributeError(f"module 'scratchnets' has no attribute {name!r}")
