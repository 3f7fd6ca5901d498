"""The "trace" backend: the reference ops, each call recorded while a ``recording()`` is open.

A block run on this backend computes exactly what it computes on "reference" (the same
functions are called), and ``recording()`` hands back the calls in order, each with its
arguments and result: the chain of ops a block is made of, forward and backward, with the arrays
that flowed through it (``explain.block`` prints and checks it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .. import reference
from ..backends import exported_names


@dataclass
class Call:
    """One op call: ``function`` (e.g. "conv2d_forward") with its arguments and its result."""

    function: str
    args: tuple
    kwargs: dict
    result: Any

    @property
    def op(self) -> str:
        return self.function.rsplit("_", 1)[0]


_TAPES: list[list[Call]] = []  # the open recordings, innermost last


@contextmanager
def recording() -> Iterator[list[Call]]:
    """The calls made on this backend inside the block, in order."""
    tape: list[Call] = []
    _TAPES.append(tape)
    try:
        yield tape
    finally:
        _TAPES.remove(tape)


def _recorded(name: str):
    def call(*args, **kwargs):
        result = getattr(reference, name)(*args, **kwargs)  # looked up at call time
        for tape in _TAPES:
            tape.append(Call(name, args, kwargs, result))
        return result

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``reference.{name}``, recorded."
    return call


for _name in exported_names("trace"):
    globals()[_name] = _recorded(_name)

__all__ = list(exported_names("trace"))
