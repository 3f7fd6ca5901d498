"""Per-layer summary of a model: output shapes, parameters and multiply-adds (like torchinfo).

``summary(model, input_shape)`` runs the model's OWN forward once on the "meta" backend
(``scratchnets.profile.meta``: shapes only, no arithmetic), so what is counted is what the model
really executes, at any input resolution. Every module's ``forward`` is wrapped on the instance for
the duration of the call; each op the meta backend sees is attributed to the innermost module that
was running. Afterwards the backends, train/eval flags, forward caches and ``forward`` attributes
are exactly as before.

Conventions (printed in the footer):

* multiply-adds (MACs) count conv and FC layers only, per image (batch MACs / N):
    Conv2d: N * H_out * W_out * C_out * (C_in / groups) * kh * kw
    Linear: N * in_features * out_features
* BN, bias adds, activations, pooling, elementwise add/mul and resizing are reported separately as
  element counts per image (``Summary.other_ops``): BN, activations, bias, add/mul and resize count
  output elements; pooling counts the elements its windows read (output elements * kh * kw; global
  pooling: the input elements). Dropout, concat and slice only move data and are not counted.
* parameters: every ``Parameter`` once (torch's convention); the split into conv/FC weights,
  biases, BN gamma/beta and BN running statistics is in ``Summary.breakdown``, and
  ``scratchnets.profile.conventions`` turns it into each source's count.
* the model runs in eval mode (BatchNorm uses running statistics, Dropout is the identity).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from ..backends import OP_BY_NAME, OP_TABLE
from ..nn import Module
from ..reference.pooling import adaptive_windows
from . import meta
from .conventions import MACS, ParamBreakdown, param_breakdown
from .tables import markdown_table, millions, shape_text, text_table, thousands

#: op -> the category its non-MAC work is reported under (the op table's cost; the mult-adds of
#: conv / linear are counted apart, and ops that only move data have no other work)
OTHER_OP_CATEGORY = {
    op.name: op.cost for op in OP_TABLE if op.cost not in ("mult_adds", "data", "loss")
}

FOOTER = (
    "Mult-adds: " + MACS + ".\n"
    "Other ops (per image, not mult-adds): BN / activation / bias / add-mul / resize = output "
    "elements; pooling = elements read by its windows.\n"
    "Params: every Parameter once (BN gamma/beta included, running stats are buffers)."
)


def op_macs(record: meta.OpRecord) -> int:
    """Multiply-accumulates of one conv / linear op for its whole batch (0 for other ops).

    conv2d: out (N, C_out, OH, OW), w (C_out, C_in/groups, kh, kw):
        N * OH * OW * C_out  *  (C_in/groups) * kh * kw   (every output sums a C_in/groups*kh*kw window)
    linear: out (N, out), w (out, in):  N * out  *  in
    """
    if record.op not in OP_BY_NAME or OP_BY_NAME[record.op].cost != "mult_adds":
        return 0
    return math.prod(record.out_shape) * math.prod(record.weight_shape[1:])


def op_other_work(record: meta.OpRecord) -> dict[str, int]:
    """The non-MAC work of one op for its whole batch, by category (see the module docstring)."""
    out = math.prod(record.out_shape)
    work: dict[str, int] = {}
    if record.has_bias:
        work["bias"] = out
    category = OTHER_OP_CATEGORY.get(record.op)
    if record.op.startswith("adaptive_"):  # windows of varying size: sum their areas
        (N, C, H, W), (OH, OW) = record.in_shapes[0], record.out_shape[2:]
        rows, cols = (np.sum(e - s) for s, e in (adaptive_windows(H, OH), adaptive_windows(W, OW)))
        work[category] = N * C * int(rows) * int(cols)
    elif category == "pooling":
        work[category] = out * math.prod(record.window)
    elif category is not None:
        work[category] = out
    return work


def layer_kind(record: meta.OpRecord) -> str | None:
    """What kind of conv / FC layer an op is (the rows of [V1] Table 2); None for other ops."""
    if record.op == "linear":
        return "fully connected"
    if record.op != "conv2d":
        return None
    C_out, Cg, kh, kw = record.weight_shape
    C_in = record.in_shapes[0][1]
    if record.groups == 1:
        return "pointwise 1x1" if (kh, kw) == (1, 1) else f"conv {kh}x{kw}"
    if record.groups == C_in:
        return f"depthwise {kh}x{kw}"
    return f"grouped {kh}x{kw}"


@dataclass(frozen=True)
class LayerRow:
    """One line of the summary: a leaf module call, or an op a composite module ran itself.

    ``macs`` and ``other_ops`` are per image. ``params`` are the module's own parameters (0 on a
    repeated call of a shared module); ``weights`` their conv / FC weight part. ``kind`` is the
    ``layer_kind`` of the row's first conv / FC op ("" if none).
    """

    name: str
    type: str
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    params: int
    weights: int
    macs: int
    kind: str
    other_ops: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    """The result of ``summary``: rows plus totals (MACs and other ops per image)."""

    model: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None
    rows: tuple[LayerRow, ...]
    breakdown: ParamBreakdown
    total_macs: int
    other_ops: dict[str, int]

    @property
    def total_params(self) -> int:
        """Every parameter once (torchvision's ``num_params``)."""
        return self.breakdown.total_params

    @property
    def trainable_params(self) -> int:
        return self.breakdown.total_params - self.breakdown.frozen_params

    @property
    def bn_params(self) -> int:
        """BatchNorm gamma + beta."""
        return self.breakdown.bn_params

    @property
    def bn_buffers(self) -> int:
        """BatchNorm running mean + running variance."""
        return self.breakdown.bn_running_stats

    @property
    def bias_params(self) -> int:
        """Conv / FC biases."""
        return self.breakdown.conv_fc_biases

    def macs_by_kind(self) -> dict[str, int]:
        """Per-image MACs summed by ``layer_kind`` ("pointwise 1x1", "depthwise 3x3", ...)."""
        totals: Counter[str] = Counter()
        for row in self.rows:
            if row.kind:
                totals[row.kind] += row.macs
        return dict(totals)

    def weights_by_kind(self) -> dict[str, int]:
        """Conv / FC weight elements summed by ``layer_kind``."""
        totals: Counter[str] = Counter()
        for row in self.rows:
            if row.kind:
                totals[row.kind] += row.weights
        return dict(totals)

    # --------------------------------------------------------------------------- rendering

    def _cells(self) -> tuple[list[str], list[list[str]], set[int]]:
        headers = ["Layer", "Type", "Output shape", "Params", "Mult-adds"]
        rows = [
            [r.name, r.type, shape_text(r.output_shape), thousands(r.params), thousands(r.macs)]
            for r in self.rows
        ]
        return headers, rows, {3, 4}

    def _totals_lines(self) -> list[str]:
        b = self.breakdown
        other = ", ".join(f"{k} {thousands(v)}" for k, v in sorted(self.other_ops.items()))
        lines = [
            f"Input {shape_text(self.input_shape)} -> output {shape_text(self.output_shape)}",
            f"Total params: {thousands(self.total_params)} "
            f"(trainable {thousands(self.trainable_params)})",
            f"  conv/FC weights {thousands(b.conv_fc_weights)}, conv/FC biases "
            f"{thousands(b.conv_fc_biases)}, BN gamma+beta {thousands(b.bn_params)}, "
            f"other {thousands(b.other_params)}",
            f"  buffers: BN running mean+var {thousands(b.bn_running_stats)}, other "
            f"{thousands(b.other_buffers)}",
            f"Mult-adds per image (conv + FC): {thousands(self.total_macs)} "
            f"({millions(self.total_macs)})",
            f"Other ops per image (not mult-adds): {other or 'none'}",
        ]
        unattributed = self.total_params - sum(r.params for r in self.rows)
        if unattributed:
            lines.append(
                f"Note: {thousands(unattributed)} parameters belong to modules that the forward "
                "pass did not call"
            )
        return lines

    def to_text(self) -> str:
        """An aligned table like torchinfo's, totals and the conventions footer."""
        table = text_table(*self._cells())
        return "\n".join([f"{self.model}", table, *self._totals_lines(), "", FOOTER])

    def to_markdown(self) -> str:
        totals = "\n".join(f"- {line.strip()}" for line in self._totals_lines())
        return "\n\n".join(
            [
                f"### {self.model}",
                markdown_table(*self._cells()),
                totals,
                FOOTER.replace("\n", "  \n"),
            ]
        )

    def to_dict(self) -> dict:
        """Everything as plain JSON types (shapes as lists)."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "bn_params": self.bn_params,
            "bn_buffers": self.bn_buffers,
            "bias_params": self.bias_params,
            "breakdown": asdict(self.breakdown),
            "total_macs": self.total_macs,
            "other_ops": dict(self.other_ops),
            "macs_by_kind": self.macs_by_kind(),
            "conventions": FOOTER,
            "rows": [asdict(r) for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        return self.to_text()


# ------------------------------------------------------------------------------ tracing


@dataclass
class _Call:
    """One module forward call seen while tracing."""

    name: str
    module: Module
    leaf: bool
    first_call: bool
    start: int  # tape length when the call began
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None


def _shape_of(value) -> tuple[int, ...] | None:
    return tuple(int(n) for n in value.shape) if hasattr(value, "shape") else None


class ForwardSwap:
    """Every module of ``model`` switched to ``backend`` in eval mode, its ``forward`` replaced
    by ``wrap(name, module, forward)`` (a return of None keeps it); ``restore()`` puts back the
    backends, modes, caches and forwards. How the counter (backend "meta") and the receptive
    fields (backend "receptive") run a model's own forward without values."""

    def __init__(self, model: Module, backend: str, wrap):
        self.saved = []
        for name, module in model.named_modules():
            state = (module.backend, module.training, module._cache, module._out_shape)
            self.saved.append((module, state, module.__dict__.get("forward")))
            wrapped = wrap(name, module, module.forward)
            if wrapped is not None:
                module.forward = wrapped
            module.backend, module.training = backend, False

    def restore(self) -> None:
        for module, (backend, training, cache, out_shape), forward in self.saved:
            module.__dict__.pop("forward", None)
            if forward is not None:
                module.__dict__["forward"] = forward
            module.backend, module.training = backend, training
            module._cache, module._out_shape = cache, out_shape


class _Tracer(ForwardSwap):
    """Wraps every module's ``forward`` on the instance to see each call and the ops it emits."""

    def __init__(self, model: Module, tape: list[meta.OpRecord]):
        self.tape = tape
        self.calls: list[_Call] = []
        self.owner: list[_Call | None] = []  # owner[i]: the innermost call that emitted tape[i]
        self.called: set[int] = set()
        super().__init__(model, "meta", self._wrap)

    def _wrap(self, name: str, module: Module, forward):
        name = name or type(module).__name__  # the model itself
        leaf = not any(True for _ in module.children())

        def traced(*args, **kwargs):
            call = _Call(name, module, leaf, id(module) not in self.called, len(self.tape))
            self.called.add(id(module))
            call.input_shape = _shape_of(args[0]) if args else None
            self.calls.append(call)
            out = forward(*args, **kwargs)
            call.output_shape = _shape_of(out)
            # ops emitted during this call and not claimed by a deeper call are this call's own
            self.owner.extend([None] * (len(self.tape) - len(self.owner)))
            for i in range(call.start, len(self.tape)):
                if self.owner[i] is None:
                    self.owner[i] = call
            return out

        return traced


def _row(
    call: _Call, name: str, type_: str, in_shape, out_shape, records, params, batch
) -> LayerRow:
    """A summary line for ``records`` (ops of one call), with MACs and other work per image."""
    other: Counter[str] = Counter()
    for record in records:
        other.update(op_other_work(record))
    kinds = [kind for kind in map(layer_kind, records) if kind]
    weights = sum(math.prod(r.weight_shape) for r in records if r.weight_shape is not None)
    return LayerRow(
        name=name,
        type=type_,
        input_shape=in_shape,
        output_shape=out_shape,
        params=params,
        weights=weights if call.first_call else 0,
        macs=sum(map(op_macs, records)) // batch,
        kind=kinds[0] if kinds else "",
        other_ops={k: v // batch for k, v in other.items()},
    )


def _rows(tracer: _Tracer, batch: int) -> list[LayerRow]:
    """One row per leaf call, and one per op that a composite module ran itself, in the order
    they ran (sorted by their position on the op tape)."""
    own: dict[int, list[tuple[int, meta.OpRecord]]] = {}
    for position, (record, call) in enumerate(zip(tracer.tape, tracer.owner, strict=True)):
        own.setdefault(id(call), []).append((position, record))
    timeline = []  # (tape position, 0: leaf call / 1: composite op, call sequence, row)
    for seq, call in enumerate(tracer.calls):
        entries = own.get(id(call), [])
        params = (
            sum(math.prod(p.shape) for p in call.module._parameters.values() if p is not None)
            if call.first_call
            else 0
        )
        if call.leaf:
            records = [record for _, record in entries]
            row = _row(call, call.name, type(call.module).__name__, call.input_shape,
                       call.output_shape, records, params, batch)  # fmt: skip
            timeline.append((call.start, 0, seq, row))
            continue
        for k, (position, record) in enumerate(entries):
            in_shape = record.in_shapes[0] if record.in_shapes else None
            row = _row(call, call.name, record.op, in_shape, record.out_shape, [record],
                       params if k == 0 else 0, batch)  # fmt: skip
            timeline.append((position, 1, seq, row))
    timeline.sort(key=lambda item: item[:3])
    return [row for *_, row in timeline]


def summary(model: Module, input_shape=(1, 3, 224, 224), name: str | None = None) -> Summary:
    """Trace ``model`` on an input of ``input_shape`` (N, C, H, W) with the meta backend.

    Returns a ``Summary``: one ``LayerRow`` per leaf module call (name, type, output shape, own
    parameters, MACs per image) plus totals. Nothing is computed on real data; the model's
    backends, modes and caches are restored afterwards, even if the forward raises.
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary expects a scratchnets.nn.Module, got {type(model).__name__}")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
        raise ValueError(
            f"input_shape must be positive ints such as (1, 3, 224, 224), got {input_shape!r}"
        )
    shape = tuple(int(n) for n in shape)
    with meta.recording() as tape:
        tracer = _Tracer(model, tape)
        try:
            out = model(np.empty(shape, dtype=model.dtype))
        finally:
            tracer.restore()
    batch = shape[0]
    other: Counter[str] = Counter()
    for record in tape:
        other.update(op_other_work(record))
    return Summary(
        model=name or type(model).__name__,
        input_shape=shape,
        output_shape=_shape_of(out),
        rows=tuple(_rows(tracer, batch)),
        breakdown=param_breakdown(model),
        total_macs=sum(map(op_macs, tape)) // batch,
        other_ops={k: v // batch for k, v in sorted(other.items())},
    )
