"""Every backend module exports every op of ``OP_NAMES`` with the reference's exact signature.

The nn layers call ops by name through ``scratchnets.functional``, positionally and by keyword,
so a backend whose parameter names, kinds or defaults drift from the reference would break (or
silently change) a layer only when that backend is selected. Checked for every backend that can
be imported here; "cuda" is skipped with the import error as the reason where numba.cuda (or a
device/simulator) is unavailable.
"""

from __future__ import annotations

import inspect

import pytest

import scratchnets.profile  # noqa: F401  (registers the "meta" backend)
from scratchnets.backends import OP_NAMES, available_backends, get_backend

#: backends whose import failure is an environment matter, not a bug
OPTIONAL = {"cuda"}

#: the shape-only backend (registered by ``scratchnets.profile``, imported above so that it is
#: always tested): it must export every op, but some of its forwards take the reference's
#: arguments as ``*args`` by design; that it runs every layer is shown by tests/test_profile.py
SHAPES_ONLY = "meta"


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


@pytest.mark.parametrize("backend", available_backends())
def test_backend_exports_every_op(backend):
    module = load(backend)
    missing = [name for name in OP_NAMES if not callable(getattr(module, name, None))]
    assert not missing, f"backend {backend!r} lacks {missing}"


@pytest.mark.parametrize(
    "backend", [b for b in available_backends() if b not in ("reference", SHAPES_ONLY)]
)
@pytest.mark.parametrize("op", OP_NAMES)
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
