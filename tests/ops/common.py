"""Shared by the op-family tests (tests/ops/test_<family>.py): dtypes and strategies, magnitudes
for the float32 bounds, and one comparison helper per backend against the float64 torch oracle:

* ``compare`` (reference): float64 ~1e-10 against torch (recorded), float32 within the bound;
* ``check_cpu``: the same, and agreement with the reference backend's result (bit-exact for
  selection ops);
* ``check_cuda``: a device array, compared as ``check_cpu`` does.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from scratchnets import to_numpy
from scratchnets.arrays import is_device_array
from tests.helpers import (
    LAYOUTS,
    assert_close_f32,
    assert_close_f64,
    numeric_grad,
    record_error,
    t,
    torch_grads,
)

DTYPES = (np.float32, np.float64)

seeds = st.integers(0, 2**32 - 1)

layouts = st.sampled_from(LAYOUTS)

FLOATS = st.sampled_from([np.float32, np.float64])


def amax(*arrays) -> float:
    """max |a| over the given arrays (None and empty arrays count as 0)."""
    return max(
        (float(np.max(np.abs(a))) for a in arrays if a is not None and np.size(a)), default=0.0
    )


def amax_product(*arrays) -> float:
    """Product of the largest magnitudes of ``arrays`` (bounds the size of one product term)."""
    return float(np.prod([np.max(np.abs(to_numpy(a)), initial=0.0) for a in arrays]))


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def with_boundaries(rng, shape, scale, boundaries):
    """Normal values of the given scale with the boundary values written at random positions."""
    x = scale * rng.standard_normal(shape)
    positions = rng.permutation(x.size)[: min(x.size, 2 * len(boundaries))]
    x.flat[positions] = np.resize(boundaries, len(positions))
    return x


def torch_op(fn, x, dy, **kwargs):
    """torch's ``fn(x, **kwargs)`` in float64 and its dx for the upstream gradient dy."""
    xt = t(x, True)
    y = fn(xt, **kwargs)
    return y.detach().numpy(), torch_grads(y, [xt], dy)[0]


# ------------------------------------------------------------------------ per backend: comparisons


def compare(op, what, actual, expected, dtype, reduction_size, magnitude):
    """Same dtype as the inputs; float64: ~1e-10 against torch (recorded); float32: scaled bound."""
    assert actual.dtype == dtype, f"{op} {what}: dtype {actual.dtype}, inputs were {dtype}"
    if actual.dtype == np.float64:
        record_error(f"reference/{op} {what}", actual, expected)
        assert_close_f64(actual, expected, what=f"{op} {what}")
    else:
        assert_close_f32(actual, expected, reduction_size, magnitude, what=f"{op} {what}")


def check_grads_numerically(fn, inputs, grads, rtol=1e-6, atol=1e-8):
    """Finite differences of the scalar fn(*inputs) w.r.t. each input, against ``grads``."""
    for i, (x, g) in enumerate(zip(inputs, grads, strict=True)):

        def fn_i(v, i=i):
            args = list(inputs)
            args[i] = v
            return fn(*args)

        np.testing.assert_allclose(g, numeric_grad(fn_i, x), rtol=rtol, atol=atol, err_msg=str(i))


def check_cpu(op, what, got, reference, oracle, terms=1, magnitude=None, exact=False):
    """``got`` (cpu) against the torch float64 ``oracle`` and the reference backend's result."""
    oracle = np.asarray(oracle)
    label = f"cpu/{op} {what}"
    assert got.shape == oracle.shape, f"{label}: shape {got.shape} != {oracle.shape}"
    assert reference is None or got.dtype == reference.dtype, f"{label}: dtype {got.dtype}"
    if exact:
        np.testing.assert_array_equal(got, oracle.astype(got.dtype), err_msg=f"{label} vs torch")
        if reference is not None:
            np.testing.assert_array_equal(got, reference, err_msg=f"{label} vs reference")
    if got.dtype == np.float64:
        record_error(label, got, oracle)
        assert_close_f64(got, oracle, what=f"{label} vs torch")
        if reference is not None:
            assert_close_f64(got, reference, what=f"{label} vs reference")
    else:
        bound = amax(oracle) if magnitude is None else magnitude
        assert_close_f32(got, oracle, terms, bound, what=f"{label} vs float64 oracle")


def check_cuda(op: str, name: str, actual, expected, ref=None, reduction: int = 1, magnitude=1.0):
    """One output of the cuda op vs the float64 torch value (and the reference's, if given).

    float64 results: ~1e-10 relative, recorded as "cuda/<op> <name>"; float32 results: the f32
    error bound for sums of ``reduction`` terms of size ``magnitude``.
    """
    assert is_device_array(actual), f"{op} {name}: expected a device array, got {type(actual)}"
    if np.dtype(actual.dtype) == np.float64:
        record_error(f"cuda/{op} {name}", actual, expected)
        assert_close_f64(actual, expected, what=f"{op} {name} vs torch")
        if ref is not None:
            assert_close_f64(actual, to_numpy(ref), what=f"{op} {name} vs reference")
    else:
        assert_close_f32(actual, expected, reduction, magnitude, what=f"{op} {name} f32")
