"""Tests of the numba.cuda backend (``scratchnets.kernels.cuda``).

Every cuda test (this directory, and the cuda sections of tests/ops) is marked ``cuda`` and runs
in its own process: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cuda tests/cuda tests/ops -q``
without a GPU (numba reads the variable when it is imported), the same without the variable on a
GPU. tests/conftest.py skips them when neither is available.
"""

from __future__ import annotations

from numba import config

#: kernels run in numba's Python simulator: keep shapes tiny and examples few
SIMULATED = bool(config.ENABLE_CUDASIM)


def examples(simulated: int, gpu: int = 50) -> int:
    """Hypothesis ``max_examples``: few under the simulator, more on a real GPU."""
    return simulated if SIMULATED else gpu
