"""``scratchnets explain MODEL --block NAME``: a whole block stepped through as the chain of ops it
runs (an inverted residual, a depthwise-separable pair, a ghost module, DFC attention,
squeeze-excite, a GhostNet bottleneck with its shortcut, GhostNetV3's branches ...).

The block runs, on the input it receives inside the model, on the "trace" backend (the
reference ops, every call recorded): forward, then backward with a seeded dy. That gives

* the chain of ops with their shapes, parameters and multiply-adds, whose sums are checked
  against the model counter's for the block;
* the backward chain: the ops the gradient passes through (the residual add that hands dy to
  both branches, BN, the ReLU6 mask, the gate's multiply, the upsample's scatter-add ...);
* an oracle: the same chain replayed in torch (float64, each op by torch's own function, on
  the same weights), whose output and input gradient must equal the block's own forward and
  backward; one output element and one input-gradient element are written out with both.
"""

from __future__ import annotations

import copy
import inspect
import math
import textwrap
from dataclasses import asdict, dataclass, field

import numpy as np

from .. import reference
from ..models.fuse import reparameterize_blocks
from ..reference.pooling import (
    adaptive_output_size,
    adaptive_windows,
    divisor_rule,
    pool_geometry,
)
from ..reference.upsample import nearest_taps
from ..reference.windows import normalize_padding, pair
from .activations import ACTIVATIONS
from .core import num
from .pooling import window_cells, window_divisor
from .trace import Call, recording

#: how close the torch replay must come (float64, same ops: rounding only)
RTOL = 1e-9


@dataclass
class BlockExplanation:
    """The chain of ops of one block, its counts, and the checked elements."""

    block: str
    type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    ops: list[dict]
    backward: list[str]
    counts: dict
    checks: list[dict] = field(default_factory=list)
    #: GhostNetV3: the ops of the re-parameterised block (each conv's branches folded into one)
    reparameterized: list[dict] | None = None
    #: one output element followed back to the block's input, shown from the input forward
    path: list[dict] = field(default_factory=list)

    @property
    def all_checked(self) -> bool:
        followed = bool(self.path) and all(s["ok"] and s["grad_ok"] for s in self.path)
        return all(c["ok"] for c in self.checks) and followed

    def text(self) -> str:
        shape = lambda s: "x".join(map(str, s[1:]))  # noqa: E731
        out = [f"== block {self.block} ({self.type}): {shape(self.input_shape)} -> "
               f"{shape(self.output_shape)}", "", "-- the ops it runs (forward, in order)"]  # fmt: skip
        names = [f"{o['op']} {o['detail']}".strip() for o in self.ops]
        width = max(map(len, names))
        for k, (o, op) in enumerate(zip(self.ops, names, strict=True), 1):
            ins = ", ".join(shape(s) for s in o["inputs"])
            cost = f"  params {o['params']:,}, mult-adds {o['mult_adds']:,}" if o["params"] else ""
            out.append(f"  {k:2d}. {op:<{width}}  {ins} -> {shape(o['output'])}{cost}")
            fraction = _resolution_fraction(o["output"], self.output_shape)
            if o["mult_adds"] and fraction is not None:
                out.append(f"      at {shape(o['output'])[shape(o['output']).index('x') + 1:]}, "
                           f"1/{fraction} of the block's {self.output_shape[2]}x"
                           f"{self.output_shape[3]} map: 1/{fraction} of what this conv would "
                           "cost on the full-resolution map")  # fmt: skip
        c = self.counts
        out += ["", "-- counts",
                f"  params: {c['params']:,} in the ops above, {c['counter_params']:,} by the "
                f"counter: {'equal' if c['params'] == c['counter_params'] else 'DIFFERENT'}",
                f"  mult-adds: {c['mult_adds']:,} in the ops above, {c['counter_mult_adds']:,} "
                f"by the counter: "
                f"{'equal' if c['mult_adds'] == c['counter_mult_adds'] else 'DIFFERENT'}"]  # fmt: skip
        if self.reparameterized is not None:
            folded = [f"{o['op']} {o['detail']}".strip() for o in self.reparameterized]
            out += ["", f"-- re-parameterised for inference (each conv's training branches "
                    f"folded into one): {len(self.ops)} ops -> {len(folded)}",
                    *textwrap.wrap(" -> ".join(folded), 96, initial_indent="  ",
                                   subsequent_indent="  ")]  # fmt: skip
        out += ["", "-- backward: the ops dy passes through, in order",
                *textwrap.wrap(" -> ".join(self.backward), 96, initial_indent="  ",
                               subsequent_indent="  ")]  # fmt: skip
        if not self.path:
            out += ["", "-- MISMATCH: the output element could not be followed back to the "
                    "block's input through the recorded ops"]  # fmt: skip
        else:
            out += ["", "-- one output element followed from the block's input (back from the "
                    "output, at each op the input that contributes most)",
                    f"  x{list(self.path[0]['from'])} = {num(self.path[0]['from_value'])}"]  # fmt: skip
            for k, step in enumerate(self.path, 1):
                verdict = "checked" if step["ok"] else "MISMATCH"
                out.append(f"  {k:2d}. {step['op']}: {step['how']}  -> {list(step['index'])} = "
                           f"{num(step['value'])}    [{verdict}]")  # fmt: skip
        if self.path:
            out += ["", "-- its gradient traced back: dL/d(each op's output) at that element "
                    "(ours: the dy the op's backward received, every consumer's share summed)"]  # fmt: skip
            for step in reversed(self.path):
                verdict = (
                    ("checked" if step["grad_ok"] else "MISMATCH")
                    if step["grad"] is not None
                    else "a sum the block differentiates itself: dy goes to every term"
                )
                ours = "-" if step["grad"] is None else num(step["grad"])
                out.append(f"  after {step['op']} {list(step['index'])}: ours {ours}, torch "
                           f"{num(step['torch_grad'])}    [{verdict}]")  # fmt: skip
            first = self.path[0]
            out.append(f"  the block's input {list(first['from'])}: dx = ours "
                       f"{num(first['from_grad'])}, torch {num(first['from_torch_grad'])}")  # fmt: skip
        out += ["", "-- checked against the same chain replayed in torch (float64)"]
        for check in self.checks:
            verdict = "checked" if check["ok"] else "MISMATCH"
            out.append(f"  {check['what']}: ours {num(check['ours'])}, torch "
                       f"{num(check['torch'])}    [{verdict}]")  # fmt: skip
        out.append("")
        out.append("every element checked" if self.all_checked else "MISMATCH: see above")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return asdict(self) | {"all_checked": self.all_checked}


def _resolution_fraction(shape, block_shape) -> int | None:
    """n where an op's map has 1/n of the block output's pixels (None: the same or more)."""
    if len(shape) != 4 or len(block_shape) != 4:
        return None
    pixels, full = shape[2] * shape[3], block_shape[2] * block_shape[3]
    return full // pixels if pixels < full and full % pixels == 0 else None


def _bound(call: Call) -> dict:
    """The call's arguments by name (the reference function's signature)."""
    signature = inspect.signature(getattr(reference, call.function))
    arguments = signature.bind(*call.args, **call.kwargs)
    arguments.apply_defaults()
    return dict(arguments.arguments)


def _cost(call: Call, a: dict) -> tuple[int, int, list]:
    """(params, mult-adds, the parameter arrays) of one forward call (N = 1)."""
    y = call.result[0]
    if call.op in ("conv2d", "linear"):
        arrays = [v for v in (a["w"], a["b"]) if v is not None]
        macs = math.prod(y.shape[1:]) * math.prod(a["w"].shape[1:])
        return sum(v.size for v in arrays), macs, arrays
    if call.op == "batch_norm2d":
        arrays = [v for v in (a["weight"], a["bias"]) if v is not None]
        return sum(v.size for v in arrays), 0, arrays
    return 0, 0, []


def _detail(op: str, a: dict) -> str:
    """What kind of conv or pooling a call is: kernel, stride, depthwise / grouped."""
    if op == "conv2d":
        kh, kw = a["w"].shape[2:]
        groups, c_in = a["groups"], a["x"].shape[1]
        kind = "depthwise" if groups == c_in and groups > 1 else (
            f"groups {groups}" if groups > 1 else "")  # fmt: skip
        stride = pair(a["stride"], "stride")
        return " ".join(t for t in (f"{kh}x{kw}", kind,
                                    f"stride {stride[0]}" if stride != (1, 1) else "") if t)  # fmt: skip
    if op in ("avg_pool2d", "max_pool2d"):
        k = pair(a["kernel_size"], "kernel")
        return f"{k[0]}x{k[1]}"
    return ""


def _shapes(value) -> list:
    if isinstance(value, np.ndarray):
        return [tuple(value.shape)]
    if isinstance(value, (list, tuple)):
        return [tuple(v.shape) for v in value if isinstance(v, np.ndarray)]
    return []


def torch_replay(forward: list[Call], x: np.ndarray, y: np.ndarray, dy: np.ndarray,
                 constants: set[int] | None = None):  # fmt: skip
    """torch's output and dx of the recorded forward chain (float64, every op by torch's own
    function on the same arrays; weights and buffers are constants). ``constants``: the ids of
    the arrays an op may read without an op having produced them (the block's parameters and
    buffers); any other is an op the chain did not record, a ValueError."""
    import torch
    import torch.nn.functional as F

    known: dict[int, torch.Tensor] = {}
    x_t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    known[id(x)] = x_t

    def tensor(v):
        if v is None:
            return None
        if id(v) not in known:
            if constants is not None and id(v) not in constants and np.ndim(v) == 4:
                raise ValueError(
                    f"an op reads a {np.shape(v)} array that no recorded op produced: the chain "
                    "is incomplete (an op outside the backend?)"
                )
            known[id(v)] = torch.tensor(np.asarray(v), dtype=torch.float64)
        return known[id(v)]

    for call in forward:
        a = _bound(call)
        op = call.op
        if op == "conv2d":
            top, bottom, left, right = normalize_padding(a["padding"])
            out = F.conv2d(F.pad(tensor(a["x"]), (left, right, top, bottom)), tensor(a["w"]),
                           tensor(a["b"]), a["stride"], 0, a["dilation"], a["groups"])  # fmt: skip
        elif op == "batch_norm2d":
            if a["training"]:
                raise ValueError("a block is replayed in eval mode (its running statistics)")
            out = F.batch_norm(tensor(a["x"]), tensor(a["running_mean"]),
                               tensor(a["running_var"]), tensor(a["weight"]), tensor(a["bias"]),
                               training=False, eps=a["eps"])  # fmt: skip
        elif op in ("relu", "relu6", "hard_sigmoid", "hard_swish", "silu"):
            name = {"hard_sigmoid": "hardsigmoid", "hard_swish": "hardswish"}.get(op, op)
            out = getattr(F, name)(tensor(a["x"]))
        elif op == "sigmoid":
            out = torch.sigmoid(tensor(a["x"]))
        elif op in ("add", "mul"):
            out = getattr(torch, op)(tensor(a["a"]), tensor(a["b"]))
        elif op == "concat":
            out = torch.cat([tensor(v) for v in a["xs"]], dim=a["axis"])
        elif op == "slice":
            out = tensor(a["x"]).narrow(a["axis"], a["start"], a["stop"] - a["start"])
        elif op == "pad2d":
            top, bottom, left, right = normalize_padding(a["padding"])
            extra = {"value": a["value"]} if a["mode"] == "constant" else {}
            out = F.pad(tensor(a["x"]), (left, right, top, bottom), mode=a["mode"], **extra)
        elif op == "max_pool2d":
            out = F.max_pool2d(tensor(a["x"]), a["kernel_size"], a["stride"], a["padding"],
                               a["dilation"], a["ceil_mode"])  # fmt: skip
        elif op == "avg_pool2d":
            out = F.avg_pool2d(tensor(a["x"]), a["kernel_size"], a["stride"], a["padding"],
                               a["ceil_mode"], a["count_include_pad"], a["divisor_override"])  # fmt: skip
        elif op == "global_avg_pool2d":
            out = F.adaptive_avg_pool2d(tensor(a["x"]), 1)
        elif op in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
            out = getattr(F, op)(tensor(a["x"]), a["output_size"])
        elif op in ("upsample_nearest2d", "upsample_bilinear2d"):
            mode = "nearest" if op == "upsample_nearest2d" else "bilinear"
            extra = {"align_corners": False} if mode == "bilinear" else {}
            out = F.interpolate(tensor(a["x"]), size=pair(a["size"], "size"), mode=mode, **extra)
        elif op == "linear":
            out = F.linear(tensor(a["x"]), tensor(a["w"]), tensor(a["b"]))
        elif op == "dropout":
            if a["training"] and a["p"] > 0:
                raise ValueError("a block is replayed in eval mode (dropout is the identity)")
            out = tensor(a["x"])
        else:
            raise ValueError(f"the torch replay does not know the op {op!r}")
        if out.requires_grad:
            out.retain_grad()  # the gradient at every op's output, for the followed element
        known[id(call.result[0])] = out
    if id(y) not in known:
        raise ValueError("the block's output is not the result of one of its ops")
    y_t = known[id(y)]
    y_t.backward(torch.tensor(dy, dtype=torch.float64))
    grads = {key: t.grad.numpy() for key, t in known.items() if t.grad is not None}
    return y_t.detach().numpy(), x_t.grad.numpy(), grads


# ------------------------------------------------------------------ one element, followed


def _broadcast_index(index, shape):
    """The element of an operand of ``shape`` that broadcasting reads for output ``index``."""
    offset = len(index) - len(shape)
    return tuple(0 if size == 1 else i for i, size in zip(index[offset:], shape, strict=True))


def _step(call: Call, a: dict, index, block_input) -> tuple[object, tuple, str, float]:
    """For the output element ``index`` of one op: (the input array followed, its element, the
    element's computation written with its numbers, the value recomputed here). An add whose
    other operand is the block's own input (a shortcut) is followed into the branch."""
    op, y = call.op, call.result[0]
    if op == "conv2d":
        x, w, b = a["x"], a["w"], a["b"]
        n, co, p, q = index
        groups, (kh, kw) = a["groups"], w.shape[2:]
        cg, mg = w.shape[1], w.shape[0] // groups
        top, _, left, _ = normalize_padding(a["padding"])
        stride, dilation = pair(a["stride"], "stride"), pair(a["dilation"], "dilation")
        terms = []
        for ci in range(cg):
            channel = (co // mg) * cg + ci
            for i in range(kh):
                for j in range(kw):
                    r, s = (
                        p * stride[0] - top + i * dilation[0],
                        q * stride[1] - left + j * dilation[1],
                    )
                    if 0 <= r < x.shape[2] and 0 <= s < x.shape[3]:
                        terms.append(((n, channel, r, s), x[n, channel, r, s] * w[co, ci, i, j],
                                      w[co, ci, i, j]))  # fmt: skip
        bias = 0.0 if b is None else float(b[co])
        value = bias + float(sum(t[1] for t in terms))
        at, product, weight = max(terms, key=lambda t: abs(t[1]))
        how = (f"{'b + ' if b is not None else ''}sum of {len(terms)} products = {num(value)}; "
               f"the largest: {num(x[at])} * {num(weight)} = {num(product)}")  # fmt: skip
        return x, at, how, value
    if op == "batch_norm2d":
        x, c = a["x"], index[1]
        mean, var = float(a["running_mean"][c]), float(a["running_var"][c])
        gamma = 1.0 if a["weight"] is None else float(a["weight"][c])
        beta = 0.0 if a["bias"] is None else float(a["bias"][c])
        value = (float(x[index]) - mean) / math.sqrt(var + a["eps"]) * gamma + beta
        how = (f"({num(x[index])} - {num(mean)}) / sqrt({num(var)} + eps) * {num(gamma)} + "
               f"{num(beta)} = {num(value)}")  # fmt: skip
        return x, index, how, value
    if op in ACTIVATIONS or op == "dropout":  # each activation's formula, from its explainer
        x = a["x"]
        value = float(x[index]) if op == "dropout" else ACTIVATIONS[op].value(float(x[index]))
        return x, index, f"{op}({num(x[index])}) = {num(value)}", value
    if op in ("add", "mul"):
        operands = [(v, _broadcast_index(index, v.shape)) for v in (a["a"], a["b"])]
        values = [float(v[i]) for v, i in operands]
        value = values[0] + values[1] if op == "add" else values[0] * values[1]
        sign = "+" if op == "add" else "*"
        full = [k for k, (v, _) in enumerate(operands) if v.shape == y.shape]
        branch = [k for k in full if operands[k][0] is not block_input]
        k = max(branch or full or [0, 1], key=lambda k: abs(values[k]))  # the one that matters
        how = f"{num(values[0])} {sign} {num(values[1])} = {num(value)}"
        return operands[k][0], operands[k][1], how, value
    if op == "concat":
        axis = a["axis"] % y.ndim
        start = 0
        for part in a["xs"]:
            if index[axis] < start + part.shape[axis]:
                at = tuple(i - start if d == axis else i for d, i in enumerate(index))
                return part, at, "copied", float(part[at])
            start += part.shape[axis]
    if op == "slice":
        axis = a["axis"] % y.ndim
        at = tuple(i + a["start"] if d == axis else i for d, i in enumerate(index))
        return a["x"], at, "copied", float(a["x"][at])
    if op in ("avg_pool2d", "max_pool2d", "global_avg_pool2d", "adaptive_avg_pool2d",
              "adaptive_max_pool2d"):  # fmt: skip
        x = a["x"]
        n, c, p, q = index
        if op in ("avg_pool2d", "max_pool2d"):  # the op's own geometry and its window
            extra = dict(dilation=a["dilation"]) if op == "max_pool2d" else {}
            g = pool_geometry(x.shape, a["kernel_size"], a["stride"], a["padding"], op,
                              ceil_mode=a["ceil_mode"], **extra)  # fmt: skip
            cells = [(n, c, r, s) for _, _, r, s, v in window_cells(x, n, c, p, q, g)
                     if v is not None]  # fmt: skip
        else:
            out = (1, 1) if op == "global_avg_pool2d" else adaptive_output_size(
                a["output_size"], x.shape[2:])  # fmt: skip
            (r0, r1), (c0, c1) = adaptive_windows(x.shape[2], out[0]), adaptive_windows(
                x.shape[3], out[1])  # fmt: skip
            cells = [(n, c, r, s) for r in range(r0[p], r1[p]) for s in range(c0[q], c1[q])]
        values = [float(x[cell]) for cell in cells]
        if "max" in op:
            value = max(values)
            at = cells[values.index(value)]
            return x, at, f"max of {len(cells)} cells = {num(value)}", value
        divisor = len(cells)
        if op == "avg_pool2d":  # torch's divisor rule, as the avg_pool2d explainer applies it
            rule = divisor_rule(a["padding"], a["count_include_pad"], a["divisor_override"])
            divisor = window_divisor(g, *rule, p, q)
        value = sum(values) / divisor
        at = max(cells, key=lambda cell: abs(x[cell]))
        return x, at, f"sum of {len(cells)} cells / {num(divisor)} = {num(value)}", value
    if op in ("upsample_nearest2d", "upsample_bilinear2d"):
        x = a["x"]
        n, c, p, q = index
        sampling = a.get("sampling")
        rows = nearest_taps(x.shape[2], y.shape[2], sampling, 0)[0][0]
        cols = nearest_taps(x.shape[3], y.shape[3], sampling, 1)[0][0]
        at = (n, c, int(rows[p]), int(cols[q]))
        if op == "upsample_nearest2d":
            return x, at, f"copied from {list(at)}", float(x[at])
        return x, at, "interpolated from its neighbours", float(y[index])
    raise ValueError(f"cannot follow an element through {op}")


def explain_block(block, name: str, x: np.ndarray, seed: int = 0, at=None) -> BlockExplanation:
    """The chain of ops of ``block`` (a module of a float64 model on the reference backend, in
    eval mode) on its input ``x``, counted and checked against torch (see the module doc)."""
    from ..profile.summary import summary

    block.to("trace")
    try:
        with recording() as forward:
            y = block(x)
        dy = np.round(np.random.default_rng(seed).standard_normal(y.shape), 2)
        with recording() as backward:
            dx = block.backward(dy)
    finally:
        block.to("reference")
        block.zero_grad()
    forward = [c for c in forward if c.function.endswith("_forward")]
    ops, total_params, total_macs = _chain(forward)
    counted = summary(block, tuple(x.shape))
    counts = dict(params=total_params, mult_adds=total_macs,
                  counter_params=counted.total_params, counter_mult_adds=counted.total_macs)  # fmt: skip
    arrays = [*(q.data for q in block.parameters()), *block.buffers()]
    y_t, dx_t, torch_grads = torch_replay(
        forward, x, y, dy, {id(v) for v in arrays if v is not None}
    )
    n, c, p, q = at if at is not None else (0, y.shape[1] - 1, y.shape[2] // 2, y.shape[3] // 2)
    h, w = p * x.shape[2] // y.shape[2], q * x.shape[3] // y.shape[3]
    index_x = (n, min(c, x.shape[1] - 1), h, w)

    def check(what: str, ours: np.ndarray, theirs: np.ndarray, index) -> dict:
        ok = bool(np.allclose(ours, theirs, rtol=RTOL, atol=RTOL * float(np.max(np.abs(theirs)))))
        return dict(what=f"{what}{list(index)}", ours=float(ours[index]),
                    torch=float(theirs[index]), ok=ok)  # fmt: skip

    checks = [
        check("y", y, y_t, (n, c, p, q)),
        check("dx (every op's backward, in reverse)", dx, dx_t, index_x),
    ]
    path = follow(forward, x, y, (n, c, p, q))
    _gradients_along(path, forward, backward, x, dx, dy, torch_grads)
    for step in path:
        del step["array"]  # the op's output: only its element is kept
    folded = None
    if any(callable(getattr(type(m), "reparameterize", None)) for m in block.modules()):
        fused = reparameterize_blocks(copy.deepcopy(block))
        if callable(getattr(type(fused), "reparameterize", None)):
            fused.reparameterize()
        fused.to("trace").eval()
        with recording() as tape:
            y_fused = fused(x)
        folded, _, _ = _chain([c for c in tape if c.function.endswith("_forward")])
        checks.append(check("y of the re-parameterised block (vs torch's y of the branches)",
                            y_fused, y_t, (n, c, p, q)))  # fmt: skip
    return BlockExplanation(
        block=name, type=type(block).__name__, input_shape=tuple(x.shape),
        output_shape=tuple(y.shape), ops=ops,
        backward=[call.op if call.function.endswith("_backward") else f"{call.op} (of gradients)"
                  for call in backward],  # a branch's dx summed with the shortcut's, ...
        counts=counts, checks=checks, reparameterized=folded, path=path,
    )  # fmt: skip


def _gradients_along(path, forward, backward, x, dx, dy, torch_grads) -> None:
    """Adds to each step of ``path`` the gradient dL/d(its output) at its element, ours (the dy
    its backward received: every consumer's share summed) and torch's, and to the first step the
    gradient at the block's input element; a step agrees when the two are within ``RTOL``."""
    received = {}  # id(forward cache) -> the dy its backward got
    for call in backward:
        if call.function.endswith("_backward") and call.args[1] is not None:
            received[id(call.args[1])] = call.args[0]
    output_of = {id(c.result[0]): c for c in forward}
    for k, step in enumerate(path):
        call = output_of[id(step["array"])]
        ours = received.get(id(call.result[1])) if call.result[1] is not None else None
        if ours is None and k == len(path) - 1:
            ours = dy  # the block's output: the dy it was given
        # else a sum the module differentiates itself, handing dy to every term: no op's
        # backward receives the gradient of that sum, so there is nothing of ours to show
        theirs = torch_grads.get(id(step["array"]))
        step["grad"] = None if ours is None else float(np.asarray(ours)[step["index"]])
        step["torch_grad"] = None if theirs is None else float(theirs[step["index"]])
        step["grad_ok"] = step["grad"] is None or (step["torch_grad"] is not None and abs(
            step["grad"] - step["torch_grad"]) <= RTOL * max(1.0, abs(step["torch_grad"])))  # fmt: skip
    if path:
        first = path[0]
        theirs = torch_grads.get(id(x))
        first["from_grad"] = float(dx[first["from"]])
        first["from_torch_grad"] = None if theirs is None else float(theirs[first["from"]])


def follow(forward: list[Call], x: np.ndarray, y: np.ndarray, index) -> list[dict]:
    """The output element ``index`` followed back through the recorded chain to the block's
    input ``x``: at each op, the element of the input that contributes most (the largest product
    of a conv, the larger operand of an add, the feature of a gate's multiply, the winner of a
    max, ...). Each step's value is recomputed from its inputs and compared with the op's own
    result. Returned in forward order; empty where the element cannot be followed."""
    producer = {id(call.result[0]): call for call in forward}
    steps, array, at = [], y, tuple(int(i) for i in index)
    for _ in range(len(forward)):
        call = producer.get(id(array))
        if call is None or id(array) == id(x):
            break
        a = _bound(call)
        source, source_at, how, value = _step(call, a, at, x)
        actual = float(array[at])
        steps.append(dict(op=f"{call.op} {_detail(call.op, a)}".strip(), array=array, index=at,
                          value=actual,
                          how=how, ok=abs(value - actual) <= 1e-9 * max(1.0, abs(actual)),
                          **{"from": tuple(int(i) for i in source_at)},
                          from_value=float(source[source_at])))  # fmt: skip
        array, at = source, tuple(int(i) for i in source_at)
    return steps[::-1] if id(array) == id(x) else []


def _chain(forward: list[Call]) -> tuple[list[dict], int, int]:
    """(the ops as rows, params counted once each, mult-adds) of a recorded forward chain."""
    ops, seen, total_params, total_macs = [], set(), 0, 0
    for call in forward:
        a = _bound(call)
        params, macs, arrays = _cost(call, a)
        fresh = [v for v in arrays if id(v) not in seen]
        seen.update(id(v) for v in arrays)
        total_params += sum(v.size for v in fresh)
        total_macs += macs
        inputs = [s for key, value in a.items() if key in ("x", "a", "b", "xs")
                  for s in _shapes(value)]  # fmt: skip
        ops.append(dict(op=call.op, detail=_detail(call.op, a), inputs=inputs,
                        output=tuple(call.result[0].shape), params=params, mult_adds=macs))  # fmt: skip
    return ops, total_params, total_macs
