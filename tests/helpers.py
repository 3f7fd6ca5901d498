"""Oracle helpers: run torch in float64 and compare with tolerances that say where they come from."""

from __future__ import annotations

import numpy as np
import torch

from scratchnets import to_numpy
from scratchnets.gradcheck import numeric_grad  # noqa: F401  (re-exported for the tests)

torch.set_default_dtype(torch.float64)

#: float64 reference vs float64 torch: the two sum in different orders, nothing more.
F64_RTOL = 1e-10
#: unit roundoff of float32
F32_UNIT = float(np.finfo(np.float32).eps)


def t(a, requires_grad: bool = False) -> torch.Tensor:
    """A float64 torch tensor holding ``a`` (an array of any backend)."""
    return torch.tensor(np.asarray(to_numpy(a), dtype=np.float64), requires_grad=requires_grad)


def torch_grads(y: torch.Tensor, inputs, dy: np.ndarray):
    """Gradients of ``sum(y * dy)`` w.r.t. ``inputs``: the vector-Jacobian product with a random dy."""
    grads = torch.autograd.grad((y * t(dy)).sum(), inputs, allow_unused=True)
    return [None if g is None else g.numpy() for g in grads]


def assert_close_f64(actual, expected, rtol: float = F64_RTOL, what: str = ""):
    """float64 agreement relative to the size of the expected values."""
    actual, expected = to_numpy(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale, err_msg=what)


def assert_close_f32(actual, expected, reduction_size: int, magnitude: float, what: str = ""):
    """float32 work against the float64 oracle: error bound ``eps32 * sqrt(R) * magnitude``.

    ``reduction_size`` R is the number of terms summed into one output element and ``magnitude``
    bounds the size of each term (e.g. ``max|x| * max|w|``). A factor 8 covers the rounding of the
    inputs themselves and of the final store.
    """
    actual, expected = to_numpy(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    atol = 8 * F32_UNIT * np.sqrt(max(reduction_size, 1)) * max(magnitude, 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=4 * F32_UNIT, atol=atol, err_msg=what)


def rel_err(actual, expected) -> float:
    """max |a - e| / max(1, max |e|): the number the closing notes report."""
    actual, expected = np.asarray(to_numpy(actual), np.float64), np.asarray(expected, np.float64)
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


#: largest float64 relative error seen per (backend, op, quantity), printed at the end of the run
MAX_ERRORS: dict[str, float] = {}


def record_error(key: str, actual, expected) -> float:
    """Remember ``rel_err(actual, expected)`` under ``key`` (e.g. "reference/conv2d dx")."""
    err = rel_err(actual, expected)
    MAX_ERRORS[key] = max(err, MAX_ERRORS.get(key, 0.0))
    return err


#: memory layouts for ``with_layout``: the same values, different strides
LAYOUTS = ("C", "F", "strided")


def with_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """The values of ``a`` in a C-contiguous, Fortran-ordered or every-other-element strided array."""
    if layout == "C":
        return np.ascontiguousarray(a)
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":  # a view taking every second element of a wider buffer
        buffer = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        buffer[..., ::2] = a
        return buffer[..., ::2]
    raise ValueError(f"unknown layout {layout!r}, expected one of {LAYOUTS}")
