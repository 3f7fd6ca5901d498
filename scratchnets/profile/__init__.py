"""Parameter and multiply-add counting, the paper tables as data, and their verification.

    summary(model, input_shape=(1, 3, 224, 224)) -> Summary   # per-layer rows + totals
    verify_all() -> list of VerifiedRow                           # every published number, recomputed

Shapes are propagated by running the model's own forward on the "meta" backend
(``scratchnets.profile.meta``): no arithmetic, so counting is instant at any
resolution. ``conventions`` holds the parameter-count conventions of each source, ``papers`` the
published tables.
"""

from .conventions import CONVENTIONS, ParamBreakdown, count_params, param_breakdown
from .summary import LayerRow, Summary, summary

__all__ = [
    "CONVENTIONS",
    "LayerRow",
    "ParamBreakdown",
    "Summary",
    "count_params",
    "param_breakdown",
    "summary",
]
