"""Shared test setup: hypothesis profiles and float64 torch as the oracle.

Profiles: ``dev`` (default, quick), ``ci`` (what .ci/run uses), ``thorough`` (many examples).
Choose one with ``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("dev", max_examples=15, **_COMMON)
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def keras():
    """Keras 3 on its torch backend, the oracle of Keras numerics and files (the backend is read
    once, at Keras' first import)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"Keras runs on {keras.backend.backend()}, not torch")
    return keras


def pytest_terminal_summary(terminalreporter):
    """Print the largest relative error per op seen against torch (tests.helpers.record_error).

    Keys are float64 comparisons unless they name float32.
    """
    import sys

    helpers = sys.modules.get("tests.helpers") or sys.modules.get("helpers")
    if helpers is None or not helpers.MAX_ERRORS:
        return
    terminalreporter.section(
        "largest relative error vs torch, per op (float64 unless a key says float32)"
    )
    for key in sorted(helpers.MAX_ERRORS):
        terminalreporter.write_line(f"{key:48s} {helpers.MAX_ERRORS[key]:.3e}")


def _cuda_unavailable_reason() -> str | None:
    """None when numba.cuda can run kernels here (the simulator, enabled before numba was
    imported, or a real GPU), else why not."""
    from numba import config, cuda

    if config.ENABLE_CUDASIM:
        return None
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return (
            "NUMBA_ENABLE_CUDASIM=1 was set after numba had been imported in this process; run "
            "`NUMBA_ENABLE_CUDASIM=1 python -m pytest -m cuda tests/cuda tests/ops` in its own "
            "process"
        )
    if cuda.is_available():
        return None
    return (
        "no CUDA GPU available and the simulator is off: run `NUMBA_ENABLE_CUDASIM=1 python -m "
        "pytest -m cuda tests/cuda tests/ops -q` to test the kernels without a GPU"
    )


def pytest_collection_modifyitems(config, items):
    """The cuda tests (marked ``cuda``: tests/cuda and the cuda sections of tests/ops) are
    skipped where numba.cuda cannot run kernels."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_items:
        return
    reason = _cuda_unavailable_reason()
    if reason is not None:
        for item in cuda_items:
            item.add_marker(pytest.mark.skip(reason=reason))
