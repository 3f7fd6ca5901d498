"""Tests of the numba.cuda backend (``scratchnets.kernels.cuda``).

Run in their own process: ``NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q`` without a GPU
(numba reads the variable when it is imported), plain ``python -m pytest tests/cuda -q`` on a GPU.
``conftest.py`` skips the directory when neither is available.
"""

from __future__ import annotations

from numba import config

#: kernels run in numba's Python simulator: keep shapes tiny and examples few
SIMULATED = bool(config.ENABLE_CUDASIM)


def examples(simulated: int, gpu: int = 50) -> int:
    """Hypothesis ``max_examples``: few under the simulator, more on a real GPU."""
    return simulated if SIMULATED else gpu
