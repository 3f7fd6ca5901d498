"""Step through the math: ``scratchnets explain`` for one op call or a model (see docs/explain.md).

``explain_op(op, ...)`` returns an ``Explanation`` of one concrete call of a reference op: the
arithmetic with the case's numbers, the reference code's lines, and single elements of the result
and the gradients written out and checked against the op (and torch).
"""

from .core import Element, Explanation, Source
from .ops import EXPLAINERS, explain_op

__all__ = ["EXPLAINERS", "Element", "Explanation", "Source", "explain_op"]
