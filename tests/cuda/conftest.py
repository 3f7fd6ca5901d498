"""Skip every test of tests/cuda unless numba.cuda can run kernels: under the simulator
(``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported) or on a real GPU."""

from __future__ import annotations

import os

import pytest
from numba import config, cuda


def _cuda_unavailable_reason() -> str | None:
    if config.ENABLE_CUDASIM:
        return None
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return (
            "NUMBA_ENABLE_CUDASIM=1 was set after numba had been imported in this process; run "
            "`NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda` in its own process"
        )
    if cuda.is_available():
        return None
    return (
        "no CUDA GPU available and the simulator is off: run "
        "`NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda -q` to test the kernels without a GPU"
    )


_REASON = _cuda_unavailable_reason()


def pytest_collection_modifyitems(config, items):
    if _REASON is None:
        return
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason=_REASON)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(skip)
