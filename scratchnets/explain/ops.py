"""``explain_op(op, ...)``: one concrete call of a reference op, stepped through with its numbers.

Each explainer builds the case (seeded inputs rounded to two decimals so the printed products can
be followed by hand, and a seeded upstream gradient dy), validates the arguments by building the
layer a user would (so bad arguments get the layer's own errors), runs the reference op forward
and backward, and then writes single elements of y and of the gradients out as the equation says,
each summed here independently and checked against the op's result at that index and torch's.
One module per family (``explain/<family>.py``, the op table's family names) registers its
explainers (``_common.explainer``).
"""

from __future__ import annotations

from . import (  # noqa: F401  (each family's module registers its explainers)
    activations,
    batchnorm,
    conv,
    dropout,
    elementwise,
    linear,
    loss,
    pad,
    pooling,
    quantized,
    upsample,
)
from ._common import EXPLAINERS
from .core import Explanation


def explain_op(op: str, **arguments) -> Explanation:
    """The explanation of ``op`` (e.g. "conv2d") for the case ``arguments`` describe."""
    if op not in EXPLAINERS:
        raise ValueError(f"unknown op {op!r}; expected one of: {', '.join(sorted(EXPLAINERS))}")
    return EXPLAINERS[op](**arguments)
