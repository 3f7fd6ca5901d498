"""Fast implementations of the reference ops: ``kernels.cpu`` (Numba) and ``kernels.cuda``."""

from __future__ import annotations

import importlib


def __getattr__(name: str):
    if name in ("cpu", "cuda"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'scratchnets.kernels' has no attribute {name!r}")
