"""The dispatching functional API that ``scratchnets.nn`` calls: no math here.

Every op of ``backends.OP_NAMES`` is exposed as ``functional.<op>_<direction>(..., backend=None)``
and forwarded, unchanged, to the module of that backend. ``backend=None`` means the default one.
"""

from __future__ import annotations

from .backends import OP_NAMES, get_backend


def _dispatcher(op_name: str):
    def dispatch(*args, backend: str | None = None, **kwargs):
        return getattr(get_backend(backend), op_name)(*args, **kwargs)

    dispatch.__name__ = dispatch.__qualname__ = op_name
    dispatch.__doc__ = f"``{op_name}`` of the chosen backend (see ``scratchnets.reference``)."
    return dispatch


for _name in OP_NAMES:
    globals()[_name] = _dispatcher(_name)

__all__ = list(OP_NAMES)
