"""Every backend module exports exactly the op table's names, with the reference's signatures.

The nn layers call ops by name through ``scratchnets.functional``, positionally and by keyword,
so a backend whose parameter names, kinds or defaults drift from the reference would break (or
silently change) a layer only when that backend is selected. Checked for every backend that can
be imported here; "cuda" is skipped with the import error as the reason where numba.cuda (or a
device/simulator) is unavailable.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from scratchnets.backends import (
    COMPUTE_BACKENDS,
    OP_NAMES,
    OP_TABLE,
    available_backends,
    exported_names,
    get_backend,
)

#: backends whose import failure is an environment matter, not a bug
OPTIONAL = {"cuda"}

#: the values-free backends (shapes; receptive fields) and the trace of the reference's calls:
#: they must export every op, but their functions take the reference's arguments as ``*args`` by
#: design; that they run every layer is shown by tests/test_profile.py,
#: tests/test_receptive_fields.py and tests/test_explain_block.py
VALUES_FREE = set(available_backends()) - set(COMPUTE_BACKENDS)
INDICES = [f"{op.name}_indices" for op in OP_TABLE if op.indices]


def load(name: str):
    if name not in OPTIONAL:
        return get_backend(name)
    try:
        return get_backend(name)
    except Exception as error:  # numba.cuda raises various errors without a driver or simulator
        pytest.skip(f"backend {name!r} is not importable here: {type(error).__name__}: {error}")


def parameters(fn) -> list[tuple]:
    """(name, kind, default) of each parameter: what a caller relies on."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_backend_is_known_without_importing_its_package_first():
    """meta and receptive resolve by name alone (they used to register on their package's
    import, so ``model.to("meta")`` failed unless scratchnets.profile had been imported)."""
    assert {"reference", "cpu", "cuda", "meta", "receptive", "trace"} <= set(available_backends())


@pytest.mark.parametrize("backend", available_backends())
def test_backend_exports_exactly_the_op_tables_names(backend):
    module = load(backend)
    expected = exported_names(backend)
    missing = [name for name in expected if not callable(getattr(module, name, None))]
    assert not missing, f"backend {backend!r} lacks {missing}"
    assert sorted(module.__all__) == sorted(expected), (
        f"backend {backend!r} exports names outside the op table: "
        f"{sorted(set(module.__all__) - set(expected))}"
    )


@pytest.mark.parametrize("backend", [b for b in COMPUTE_BACKENDS if b != "reference"])
@pytest.mark.parametrize("op", OP_NAMES + tuple(INDICES))
def test_signature_equals_the_reference(backend, op):
    module, reference = load(backend), get_backend("reference")
    assert parameters(getattr(module, op)) == parameters(getattr(reference, op)), (
        f"{backend}.{op}{inspect.signature(getattr(module, op))} differs from "
        f"reference.{op}{inspect.signature(getattr(reference, op))}"
    )


def test_reference_signatures_are_the_documented_ones():
    """A few anchors from the reference docstring, so that the comparison target is itself right."""
    reference = get_backend("reference")
    sig = inspect.signature
    assert str(sig(reference.conv2d_forward)) == (
        "(x, w, b=None, stride=1, padding=0, dilation=1, groups=1)"
    )
    assert str(sig(reference.batch_norm2d_forward)) == (
        "(x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-05)"
    )
    assert str(sig(reference.avg_pool2d_forward)) == (
        "(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, "
        "divisor_override=None)"
    )
    assert str(sig(reference.dropout_forward)) == "(x, p=0.5, training=True, seed=None)"
    assert str(sig(reference.cross_entropy_forward)) == "(logits, target, label_smoothing=0.0)"
    for name in OP_NAMES:
        if name.endswith("_backward"):
            first = "dloss" if name == "cross_entropy_backward" else "dy"
            assert str(sig(getattr(reference, name))) == f"({first}, cache)", name


# ------------------------------------------------------------------ the cpu backend's errors

#: op -> (forward arguments, the shape of a wrong dy)
_ERROR_CASES = {
    "relu": ((np.zeros((2, 3)),), (3, 2)),
    "relu6": ((np.zeros((2, 3)),), (3, 2)),
    "sigmoid": ((np.zeros((2, 3)),), (3, 2)),
    "hard_sigmoid": ((np.zeros((2, 3)),), (3, 2)),
    "clip": ((np.zeros((2, 3)), -0.5, 2.0), (3, 2)),
    "softmax": ((np.zeros((2, 3)), 0), (3, 2)),
    "batch_norm2d": ((np.zeros((2, 3, 2, 2)), None, None, None, None), (2, 3, 2, 3)),
    "max_pool2d": ((np.zeros((1, 2, 4, 4)), 2), (1, 2, 3, 2)),
    "avg_pool2d": ((np.zeros((1, 2, 4, 4)), 2), (1, 2, 3, 2)),
    "global_avg_pool2d": ((np.zeros((1, 2, 4, 4)),), (1, 2, 2, 1)),
    "upsample_nearest2d": ((np.zeros((1, 2, 3, 3)), (5, 6)), (1, 2, 5, 5)),
    "upsample_bilinear2d": ((np.zeros((1, 2, 3, 3)), (5, 6)), (1, 2, 5, 5)),
    "dropout": ((np.zeros((2, 3)), 0.5, True, 0), (3, 2)),
    "mul": ((np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 1, 1))), (2, 3, 4, 3)),
}


@pytest.mark.parametrize("op", list(_ERROR_CASES))
def test_errors_name_the_problem(op):
    """Integer input: TypeError naming the dtypes; dy of the wrong shape: ValueError naming it."""
    args, wrong_dy = _ERROR_CASES[op]
    cpu = get_backend("cpu")
    forward, backward = getattr(cpu, f"{op}_forward"), getattr(cpu, f"{op}_backward")
    with pytest.raises(TypeError, match="float32 or float64"):
        forward(args[0].astype(np.int64), *args[1:])
    _, cache = forward(*args)
    with pytest.raises(ValueError, match=r"dy has shape \(" + ", ".join(map(str, wrong_dy))):
        backward(np.zeros(wrong_dy), cache)
