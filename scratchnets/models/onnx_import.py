"""ONNX in: an ONNX graph as an ordinary scratchnets model (``load_pretrained("model.onnx")``).

Each node becomes one of our layers (named after the node, so ``summary``, ``explain --layer``
and checkpoints see ordinary named layers), its initializers the layer's parameters; the model
runs the layers in the graph's order and its backward walks them back, adding the gradients of a
tensor read by several nodes (a residual's input). So an exported torchvision or timm MobileNet
trains here like one built here.

    ONNX                                   layer
    Conv (pads, strides, dilations,        Conv2d (explicit padding; auto_pad SAME_UPPER:
          group, auto_pad)                 Conv2dSame, TF's "same"; VALID: no padding)
    BatchNormalization (inference)         BatchNorm2d (epsilon; momentum 1 - m)
    Relu / Sigmoid / HardSwish             ReLU / Sigmoid / Hardswish
    Clip [0, 6] / [0, inf) / other bounds  ReLU6 / ReLU / Hardtanh(min, max)
    Softmax (axis; before opset 13 over    Softmax(axis) / FlatSoftmax
      the dims from axis on)
    HardSigmoid alpha 1/6, beta 1/2 /      Hardsigmoid / Sequential(x * alpha, + beta,
      other alpha, beta                    Hardtanh(0, 1))
    GlobalAveragePool, ReduceMean(H, W)    AdaptiveAvgPool2d(1)
    AveragePool / MaxPool (pads, auto_pad, AvgPool2d / MaxPool2d; asymmetric or wide pads made
      ceil_mode, count_include_pad,        explicit first (a Sequential of pad, pool, and
      MaxPool's dilations)                 crop / rescale to ONNX Runtime's windows)
    Gemm (alpha, beta, transA, transB,     Linear (a transpose first for transA; a bias that is
      any bias shape), MatMul              not one per output added after it as a constant)
    Flatten (any axis), Reshape (constant  Flatten2d / Reshape / Axes (the axes worked out per
      shapes), Squeeze / Unsqueeze         input, negative ones from the end)
    Shape -> Gather -> Unsqueeze -> Concat (x.view(x.size(0), -1))  folded into the Reshape
    Add / Mul (broadcasting, constants)    Add / Mul
    Concat, Slice (constant, step 1)       Concat / Slice
    GlobalMaxPool                          AdaptiveMaxPool2d(1)
    Pad (constant, reflect, edge, wrap;    ConstantPad2d / ReflectionPad2d / ReplicationPad2d /
         H and W)                          CircularPad2d
    Resize nearest / linear, every         Upsample nearest / bilinear with the file's Sampling
      coordinate mode but crop-and-resize, (ONNX Runtime's placement of the samples), to sizes
      nearest_mode; Upsample (opsets 7-9) (constant, or the input's N, C + constant H, W:
                                           Shape -> Concat) or by constant scales
    Dropout, Identity                      (the same tensor)
    Constant                               (folded into the layers that read it)
    a Softmax on the graph's output        left out: models here return logits (cross-entropy
                                           takes them; predict applies the softmax), as a
                                           TFLite file's final SOFTMAX; recorded as "softmax"

Anything else, or an attribute value we do not implement, is a ValueError naming the node, its
op type and the attribute: never a silently different model. ``onnx`` is an optional dependency
(``pip install onnx``); the file is checked with ``onnx.checker`` first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ..formats.onnx import OnnxImportError, read_onnx
from ..nn import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm2d,
    CircularPad2d,
    ConstantPad2d,
    Conv2d,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    Linear,
    MaxPool2d,
    Module,
    ReflectionPad2d,
    ReLU,
    ReLU6,
    ReplicationPad2d,
    Sequential,
    Sigmoid,
    Softmax,
    Upsample,
)
from ..reference.upsample import COORDINATES, ROUNDINGS, Sampling
from .blocks import Conv2dSame

#: the largest image side a graph may declare, resize to or pad by: far above any image model's,
#: far below what would exhaust memory at the first forward
MAX_SIDE = 16384

# --------------------------------------------------------------- layers for multi-input nodes


class Binary(Module):
    """y = a + b or a * b (``kind``), broadcasting; either operand may be a constant (not
    trained, no gradient). backward -> the gradients of the dynamic operands, in order (the
    array itself when there is one)."""

    def __init__(self, kind: str, constants: tuple):
        super().__init__()
        self.kind, self.constants = kind, constants  # per operand: None (dynamic) or an array

    def forward(self, *dynamic):
        it = iter(dynamic)
        a, b = (next(it) if c is None else c.astype(dynamic[0].dtype) for c in self.constants)
        y, cache = getattr(F, f"{self.kind}_forward")(a, b, backend=self.backend)
        self._save(cache, y.shape)
        return y

    def backward(self, dy):
        grads = getattr(F, f"{self.kind}_backward")(dy, self._saved(dy), backend=self.backend)
        dynamic = tuple(g for g, c in zip(grads, self.constants, strict=True) if c is None)
        return dynamic[0] if len(dynamic) == 1 else dynamic  # one array inside a Sequential


class Concat(Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs):
        y, cache = F.concat_forward(list(xs), axis=self.axis, backend=self.backend)
        self._save(cache, y.shape)
        return y

    def backward(self, dy):
        return tuple(F.concat_backward(dy, self._saved(dy), backend=self.backend))


class Slice(Module):
    """x[start:stop] along ``axis`` (ONNX's clamped ends: INT64_MAX is "to the end")."""

    def __init__(self, start: int, stop: int, axis: int):
        super().__init__()
        self.start, self.stop, self.axis = start, stop, axis

    def forward(self, x):
        size = x.shape[self.axis]
        start, stop = (max(0, min(v + size if v < 0 else v, size)) for v in (self.start, self.stop))
        y, cache = F.slice_forward(x, start, stop, axis=self.axis, backend=self.backend)
        self._save(cache, y.shape)
        return y

    def backward(self, dy):
        return F.slice_backward(dy, self._saved(dy), backend=self.backend)


class Transpose2d(Module):
    """A matrix's transpose (Gemm's transA): (K, N) -> (N, K); backward transposes dy back."""

    def forward(self, x):
        if x.ndim != 2:
            raise ValueError(f"Gemm's transA needs a 2-D input, got shape {x.shape}")
        self._save((), (x.shape[1], x.shape[0]))
        return np.ascontiguousarray(x.T)

    def backward(self, dy):
        self._saved(dy)
        return np.ascontiguousarray(dy.T)


class Reshape(Module):
    """x reshaped to ``shape`` (ONNX's rules: 0 copies the input's dimension, -1 is inferred);
    backward reshapes dy back."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x):
        shape = tuple(x.shape[k] if s == 0 else s for k, s in enumerate(self.shape))
        y = x.reshape(shape)
        self._save(x.shape, y.shape)
        return y

    def backward(self, dy):
        return dy.reshape(self._saved(dy))


class Axes(Module):
    """Squeeze (drop the size-1 ``axes``, or every size-1 axis when None) or Unsqueeze (insert
    size-1 ``axes``, counted in the output), negative axes from the end, worked out per input;
    backward reshapes dy back."""

    def __init__(self, op: str, axes: list[int] | None):
        super().__init__()
        self.op, self.axes = op, axes

    def forward(self, x):
        shape = list(x.shape)
        if self.op == "Squeeze":
            axes = ([k for k, d in enumerate(shape) if d == 1] if self.axes is None
                    else sorted(a % x.ndim for a in self.axes))  # fmt: skip
            if any(shape[a] != 1 for a in axes):
                raise ValueError(f"Squeeze axes {self.axes} of an input of shape {x.shape}")
            shape = [d for k, d in enumerate(shape) if k not in axes]
        else:
            rank = x.ndim + len(self.axes)
            for a in sorted(a % rank for a in self.axes):
                shape.insert(a, 1)
        y = x.reshape(shape)
        self._save(x.shape, y.shape)
        return y

    def backward(self, dy):
        return dy.reshape(self._saved(dy))

    def extra_repr(self) -> str:
        return f"{self.op}, axes={self.axes}"


class Flatten2d(Reshape):
    """ONNX's Flatten: (d0, ..., dk-1, dk, ...) -> (d0 * ... * dk-1, dk * ...), k = ``axis``
    (axis 0: one row; a negative axis counts from the end)."""

    def __init__(self, axis: int):
        super().__init__(())
        self.axis = axis

    def forward(self, x):
        if not -x.ndim <= self.axis <= x.ndim:
            raise ValueError(f"Flatten axis {self.axis} for an input of {x.ndim} dimensions")
        axis = self.axis % x.ndim if self.axis < 0 else self.axis
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        y = x.reshape((rows, -1))
        self._save(x.shape, y.shape)
        return y


# ------------------------------------------------------------------------------ the graph


@dataclass(frozen=True)
class Step:
    """One node: the layer (a child of the model, by name) reading ``inputs``, writing
    ``output``."""

    layer: str
    inputs: tuple[str, ...]
    output: str


class OnnxModel(Module):
    """An ONNX graph of our layers: ``forward(x)`` runs the steps in order; ``backward(dy)``
    runs them back, summing the gradients of tensors read by several steps."""

    def __init__(self, layers: dict[str, Module], steps: list[Step], input_name: str,
                 output_name: str):  # fmt: skip
        super().__init__()
        for name, layer in layers.items():
            setattr(self, name, layer)
        self.steps, self.input_name, self.output_name = steps, input_name, output_name

    def forward(self, x):
        values = {self.input_name: x}
        for step in self.steps:
            values[step.output] = getattr(self, step.layer)(*(values[i] for i in step.inputs))
        y = values[self.output_name]
        self._save((), y.shape)
        return y

    def backward(self, dy):
        self._saved(dy)
        grads = {self.output_name: dy}
        for step in reversed(self.steps):
            g = grads.pop(step.output, None)
            if g is None:  # nothing downstream of it reaches the output
                continue
            back = getattr(self, step.layer).backward(g)
            for name, d in zip(step.inputs, back if isinstance(back, tuple) else (back,),
                               strict=True):  # fmt: skip
                grads[name] = d if name not in grads else F.add_forward(
                    grads[name], d, backend=self.backend)[0]  # fmt: skip
        return grads[self.input_name]


def _layer_name(node, index: int) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", node.name or node.op_type).strip("_") or node.op_type
    return f"n{index}_{base}"


class _Builder:
    def __init__(self, onnx, proto):
        self.onnx, self.numpy_helper = onnx, onnx.numpy_helper
        self.shapes = _inferred_shapes(onnx, proto)
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                          1)  # fmt: skip
        self.constants = {t.name: self.numpy_helper.to_array(t) for t in proto.graph.initializer}
        self.alias: dict[str, str] = {}
        self.layers: dict[str, Module] = {}
        self.steps: list[Step] = []
        self.sources: dict[str, str] = {}  # our state dict name -> the initializer it came from
        #: tensors known only by their role: "NC" (the first two dims of a Shape), ("HW", (h, w))
        #: (those followed by constant H, W: a Resize's sizes)
        self.symbolic: dict[str, object] = {}
        #: shape vectors computed in the graph (Shape -> Gather -> Unsqueeze -> Concat ...): their
        #: entries, each an int or the name of a symbolic dimension ("N")
        self.dims: dict[str, list] = {}

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def const(self, node, position: int, what: str, required: bool = True):
        names = node.input
        if position >= len(names) or names[position] == "":
            if required:
                self.fail(node, f"its {what} input is missing")
            return None
        name = self.resolve(names[position])
        if name not in self.constants:
            self.fail(node, f"its {what} ({name!r}) is computed in the graph, not a constant")
        return self.constants[name]

    def fail(self, node, why: str):
        raise OnnxImportError(f"node {node.name or '(unnamed)'!r} ({node.op_type}): {why}")

    def attributes(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def add(self, node, index: int, layer: Module, inputs: list[str], sources=()) -> None:
        """Layer ``layer`` for ``node`` reading ``inputs``; ``sources``: (its parameter or buffer
        name, the node input position it was loaded from)."""
        name = _layer_name(node, index)
        self.layers[name] = layer
        self.steps.append(Step(name, tuple(self.resolve(i) for i in inputs), node.output[0]))
        for key, position in sources:
            self.sources[f"{name}.{key}"] = self.resolve(node.input[position])


def _decimal(value: float) -> float:
    """A float attribute (ONNX stores them as float32) as the shortest decimal that float32
    stands for: BN's epsilon 1e-5 is stored as 9.99999975e-06 and read back as 1e-5, so a float64
    model computes what the exporting model computed."""
    return float(np.format_float_scientific(np.float32(value), unique=True))


def _inferred_shapes(onnx, proto) -> dict[str, list]:
    """Every tensor's shape that ONNX's shape inference finds: each dim an int or its
    symbolic name ("N"; "?" when unknown)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # a graph inference cannot follow: no shapes, the chains then fail by name
        return {}
    shapes = {}
    graph = inferred.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                 for d in info.type.tensor_type.shape.dim]  # fmt: skip
    return shapes


def _fold_shape_op(builder, node, a: dict) -> bool:
    """Shape arithmetic the exporters write for ``x.view(x.size(0), -1)``: Shape, Gather of a
    constant index, Unsqueeze / Squeeze, Concat, Cast of shape vectors, kept as lists of dims
    (``builder.dims``) for a Reshape to read. Returns whether ``node`` was one."""
    op = node.op_type
    ins = [builder.resolve(i) for i in node.input]
    if op == "Shape" and (int(a.get("start", 0)), a.get("end")) != (0, 2):
        shape = builder.shapes.get(ins[0])
        if shape is None:
            builder.fail(node, "the shape of its input is not known to shape inference")
        builder.dims[node.output[0]] = shape[int(a.get("start", 0)) : a.get("end")]
        return True
    if not ins or ins[0] not in builder.dims:
        return False
    source = builder.dims[ins[0]]
    if op == "Gather":
        index = builder.const(node, 1, "indices")
        builder.dims[node.output[0]] = [source[int(i)] for i in np.atleast_1d(index)]
    elif op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        builder.dims[node.output[0]] = list(source)
    elif op == "Concat":
        parts = []
        for name in ins:
            if name in builder.dims:
                parts += builder.dims[name]
            elif name in builder.constants:
                parts += [int(v) for v in np.atleast_1d(builder.constants[name])]
            else:
                builder.fail(node, f"{name!r} is computed in the graph and no shape vector")
        builder.dims[node.output[0]] = parts
    else:
        builder.fail(node, "arithmetic on a shape vector is not supported")
    return True


def _reshape_target(builder, node, data: str, target: str) -> tuple[int, ...]:
    """A Reshape's target as constants, 0 standing for "the input's dimension here" where a
    shape vector copies the input's own symbolic dimension (the batch)."""
    if target in builder.constants:
        return tuple(int(v) for v in builder.constants[target])
    if target not in builder.dims:
        builder.fail(node, f"its shape ({target!r}) is computed in the graph, not a constant")
    own = builder.shapes.get(data, [])
    out = []
    for position, dim in enumerate(builder.dims[target]):
        if isinstance(dim, int):
            out.append(dim)
        elif position < len(own) and own[position] == dim and dim != "?":
            out.append(0)  # the input's own dimension, as many as it has at run time
        else:
            builder.fail(node, f"shape entry {position} is the dynamic dimension {dim!r}, not the "
                               "input's own at that position")  # fmt: skip
    return tuple(out)


def _check_attributes(builder, node, attributes: dict, allowed: dict) -> None:
    """Each attribute must be one we implement, with a value we implement."""
    for key, value in attributes.items():
        if key not in allowed:
            builder.fail(node, f"attribute {key} is not supported")
        accept = allowed[key]
        if accept is not None and not accept(value):
            builder.fail(node, f"attribute {key}={value!r} is not supported")


def _build(builder: _Builder, node, index: int, float_dtype) -> None:
    op, a = node.op_type, builder.attributes(node)
    x = node.input[0] if node.input else None
    if _fold_shape_op(builder, node, a):
        return
    if op in ("Identity", "Dropout"):
        builder.alias[node.output[0]] = builder.resolve(x)
    elif op == "Constant":
        _check_attributes(builder, node, a, {"value": None})
        builder.constants[node.output[0]] = builder.numpy_helper.to_array(a["value"])
    elif op == "Conv":
        _check_attributes(builder, node, a, {"kernel_shape": None, "strides": None, "pads": None,
                                             "dilations": None, "group": None,
                                             "auto_pad": lambda v: v in (b"NOTSET", b"SAME_UPPER",
                                                                         b"SAME_LOWER", b"VALID")})  # fmt: skip
        w = builder.const(node, 1, "weight")
        b = builder.const(node, 2, "bias", required=False)
        if w.ndim != 4:
            builder.fail(node, f"a {w.ndim - 2}-D convolution; only 2-D ones are supported")
        groups = int(a.get("group", 1))
        top, left, bottom, right = a.get("pads", [0, 0, 0, 0])
        auto = a.get("auto_pad", b"NOTSET")
        conv_type = Conv2dSame if auto == b"SAME_UPPER" else Conv2d
        if auto == b"SAME_LOWER":  # the odd pixel first: needs the input's H and W
            top, bottom, left, right = _same_pads(builder, node, builder.resolve(x), w.shape[2:],
                                                  a.get("strides", [1, 1]),
                                                  a.get("dilations", [1, 1]), lower=True)  # fmt: skip
        layer = conv_type(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]),
                          tuple(a.get("strides", [1, 1])), (top, bottom, left, right),
                          tuple(a.get("dilations", [1, 1])), groups, bias=b is not None,
                          dtype=float_dtype)  # fmt: skip
        layer.weight.data[...] = w
        if b is not None:
            layer.bias.data[...] = b
        builder.add(node, index, layer, [x], [("weight", 1)] + ([("bias", 2)] if b is not None
                                                                 else []))  # fmt: skip
    elif op == "BatchNormalization":
        _check_attributes(builder, node, a, {"epsilon": None, "momentum": None,
                                             "training_mode": lambda v: v == 0})  # fmt: skip
        scale, bias, mean, var = (builder.const(node, k, w) for k, w in
                                  ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var")))  # fmt: skip
        layer = BatchNorm2d(len(scale), eps=_decimal(a.get("epsilon", 1e-5)),
                            momentum=1.0 - _decimal(a.get("momentum", 0.9)), dtype=float_dtype)  # fmt: skip
        layer.weight.data[...], layer.bias.data[...] = scale, bias
        layer.running_mean[...], layer.running_var[...] = mean, var
        builder.add(node, index, layer, [x], [("weight", 1), ("bias", 2), ("running_mean", 3),
                                              ("running_var", 4)])  # fmt: skip
    elif op in ("Relu", "Sigmoid", "HardSwish"):
        builder.add(node, index, {"Relu": ReLU, "Sigmoid": Sigmoid, "HardSwish": Hardswish}[op](),
                    [x])  # fmt: skip
    elif op == "HardSigmoid":
        alpha, beta = _decimal(a.get("alpha", 0.2)), _decimal(a.get("beta", 0.5))
        if abs(alpha - 1 / 6) <= 1e-6 and beta == 0.5:  # torch's: the fused op
            builder.add(node, index, Hardsigmoid(), [x])
        else:  # max(0, min(1, alpha x + beta)), in ONNX Runtime's order
            affine = [Binary("mul", (None, np.array(alpha)))] + (
                [Binary("add", (None, np.array(beta)))] if beta else [])  # fmt: skip
            builder.add(node, index, Sequential(*affine, Hardtanh(0.0, 1.0)), [x])
    elif op == "Clip":
        low = builder.const(node, 1, "min", required=False)
        high = builder.const(node, 2, "max", required=False)
        low = float(a.get("min", -np.inf)) if low is None else float(low)
        high = float(a.get("max", np.inf)) if high is None else float(high)
        if low > high:
            builder.fail(node, f"bounds [{low}, {high}]: min above max")
        layer = {(0.0, 6.0): ReLU6, (0.0, np.inf): ReLU}.get((low, high))  # the fused forms
        builder.add(node, index, layer() if layer else Hardtanh(low, high), [x])
    elif op == "Softmax":
        builder.add(node, index, _softmax(builder, node, a), [x])
    elif op == "GlobalAveragePool":
        builder.add(node, index, AdaptiveAvgPool2d(1), [x])
    elif op == "GlobalMaxPool":
        builder.add(node, index, AdaptiveMaxPool2d(1), [x])
    elif op == "Shape":
        if (int(a.get("start", 0)), a.get("end")) != (0, 2):
            builder.fail(node, "only the shape's first two dimensions (start 0, end 2) are "
                               "supported, as a Resize's sizes")  # fmt: skip
        builder.symbolic[node.output[0]] = "NC"
    elif op == "Pad":
        mode = a.get("mode", b"constant").decode()
        if "pads" in a:  # opsets before 11: pads and value are attributes
            pads, value = list(a["pads"]), a.get("value")
        else:
            pads = builder.const(node, 1, "pads").tolist()
            value = builder.const(node, 2, "constant_value", required=False)
        if len(pads) != 8 or any(pads[k] for k in (0, 1, 4, 5)):
            builder.fail(node, f"pads={pads}: only H and W of an NCHW tensor are supported")
        if not all(0 <= int(v) <= MAX_SIDE for v in pads):
            builder.fail(node, f"pads={pads}: each must be 0 to {MAX_SIDE:,} (negative pads, "
                               "crops, are not supported)")  # fmt: skip
        top, left, bottom, right = pads[2], pads[3], pads[6], pads[7]
        layers = {"constant": lambda p: ConstantPad2d(p, 0.0 if value is None else float(value)),
                  "reflect": ReflectionPad2d, "edge": ReplicationPad2d,
                  "wrap": CircularPad2d}  # fmt: skip
        if mode not in layers:
            builder.fail(node, f"attribute mode={mode!r} is not supported")
        builder.add(node, index, layers[mode]((left, right, top, bottom)), [x])
    elif op in ("Resize", "Upsample"):
        builder.add(node, index, _resize(builder, node, a), [x])
    elif op == "ReduceMean":
        axes = a.get("axes")
        if axes is None and len(node.input) > 1:
            axes = builder.const(node, 1, "axes").tolist()
        if sorted(int(v) % 4 for v in (axes or [])) != [2, 3] or not a.get("keepdims", 1):
            builder.fail(node, f"axes={axes}, keepdims={a.get('keepdims', 1)}: only the mean over "
                               "H and W keeping them is supported")  # fmt: skip
        builder.add(node, index, AdaptiveAvgPool2d(1), [x])
    elif op in ("AveragePool", "MaxPool"):
        builder.add(node, index, _pool(builder, node, a, builder.resolve(x)), [x])
    elif op in ("Gemm", "MatMul"):
        layer, sources = _gemm(builder, node, a, float_dtype)
        builder.add(node, index, layer, [x], sources)
    elif op == "Flatten":
        builder.add(node, index, Flatten2d(int(a.get("axis", 1))), [x])
    elif op == "Reshape":
        target = _reshape_target(builder, node, builder.resolve(x), builder.resolve(node.input[1]))
        builder.add(node, index, Reshape(target), [x])
    elif op in ("Squeeze", "Unsqueeze"):
        axes = a.get("axes")
        if axes is None:
            axes = builder.const(node, 1, "axes", required=op == "Unsqueeze")
        builder.add(node, index, Axes(op, None if axes is None else np.ravel(axes).tolist()), [x])
    elif op in ("Add", "Mul"):
        constants = []
        for position in (0, 1):
            name = builder.resolve(node.input[position])
            constants.append(builder.constants.get(name))
        if all(c is not None for c in constants):
            builder.fail(node, "both operands are constants (fold them before exporting)")
        dynamic = [n for n, c in zip(node.input, constants, strict=True) if c is None]
        builder.add(node, index, Binary(op.lower(), tuple(constants)), dynamic)
    elif op == "Concat" and builder.resolve(node.input[0]) in builder.symbolic:
        hw = builder.const(node, 1, "H, W") if len(node.input) == 2 else None
        if builder.symbolic[builder.resolve(node.input[0])] != "NC" or hw is None or len(hw) != 2:
            builder.fail(node, "only (N, C) of a Shape followed by a constant (H, W) is supported")
        builder.symbolic[node.output[0]] = ("HW", tuple(int(v) for v in hw))
    elif op == "Concat":
        if any(builder.resolve(n) in builder.constants for n in node.input):
            builder.fail(node, "a constant operand is not supported")
        builder.add(node, index, Concat(int(a["axis"])), list(node.input))
    elif op == "Slice":
        if "starts" in a:  # opsets before 10: starts, ends, axes are attributes
            starts, ends = np.array(a["starts"]), np.array(a["ends"])
            axes, steps = (np.array(a["axes"]) if "axes" in a else None), None
        else:
            starts, ends = builder.const(node, 1, "starts"), builder.const(node, 2, "ends")
            axes = builder.const(node, 3, "axes", required=False)
            steps = builder.const(node, 4, "steps", required=False)
        if len(starts) != 1 or (steps is not None and int(steps[0]) != 1):
            builder.fail(node, "only a single axis with step 1 is supported")
        axis = int(axes[0]) if axes is not None else 0
        stop = int(min(ends[0], 2**62))
        builder.add(node, index, Slice(int(starts[0]), stop, axis), [x])
    else:
        builder.fail(node, "this op type is not supported")


class FlatSoftmax(Module):
    """ONNX's Softmax before opset 13: the input coerced to 2-D at ``axis`` (dims from ``axis``
    on flattened into one) and the softmax taken over that flattened axis."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        axis = self.axis % x.ndim
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        y, cache = F.softmax_forward(x.reshape(rows, -1), -1, backend=self.backend)
        self._save((cache, rows), x.shape)
        return y.reshape(x.shape)

    def backward(self, dy):
        cache, rows = self._saved(dy)
        dx = F.softmax_backward(dy.reshape(rows, -1), cache, backend=self.backend)
        return dx.reshape(dy.shape)


def _softmax(builder, node, a: dict) -> Module:
    """Softmax along one axis (opset >= 13); before 13, over the dims from ``axis`` on, which is
    one axis when it is the last or the dims after it are 1 (shape inference), else
    ``FlatSoftmax``."""
    _check_attributes(builder, node, a, {"axis": None})
    opset = builder.opset
    axis = int(a.get("axis", -1 if opset >= 13 else 1))
    if opset >= 13:
        return Softmax(axis)
    shape = builder.shapes.get(builder.resolve(node.input[0]), [])
    if shape and (axis % len(shape) == len(shape) - 1 or all(d == 1 for d in shape[axis + 1 :])):
        return Softmax(axis)
    return FlatSoftmax(axis)


def _static_hw(builder, node, x: str, why: str) -> tuple[int, int]:
    """The input's H and W from shape inference; a dynamic one fails by name, saying ``why``."""
    shape = builder.shapes.get(x, [])
    if len(shape) != 4 or not all(isinstance(v, int) and v > 0 for v in shape[2:]):
        builder.fail(node, f"{why} needs the input's H and W, which shape inference leaves "
                           f"{shape[2:] or 'unknown'}")  # fmt: skip
    return shape[2], shape[3]


def _gemm(builder, node, a: dict, float_dtype) -> tuple[Module, list]:
    """Gemm (y = alpha A' B' + beta C, A' = A or A^T, B' = B or B^T) and MatMul with a constant
    2-D B as a Linear: alpha folded into its weight, beta C into its bias when C is one value per
    output (a scalar, (out,), (1, out)); a C of another broadcastable shape ((N, out), (N, 1)) is
    added after it as a constant; transA transposes the input first. Returns the layer and the
    (parameter, node input) pairs it was loaded from."""
    op = node.op_type
    if op == "Gemm":
        _check_attributes(builder, node, a, {"alpha": None, "beta": None, "transA": None,
                                             "transB": None})  # fmt: skip
    w = builder.const(node, 1, "weight")
    if w.ndim != 2:
        builder.fail(node, f"a weight of shape {w.shape}: only 2-D weights are supported")
    w = w if a.get("transB", 0) else w.T  # (out, in)
    c = builder.const(node, 2, "bias", required=False) if op == "Gemm" else None
    beta = _decimal(a.get("beta", 1.0))
    per_output = None
    if c is not None and c.ndim <= 2 and (c.ndim < 2 or c.shape[0] == 1):
        try:
            per_output = np.broadcast_to(c, (1, w.shape[0])).reshape(w.shape[0])
        except ValueError:
            per_output = None
    linear = Linear(w.shape[1], w.shape[0], bias=per_output is not None, dtype=float_dtype)
    linear.weight.data[...] = _decimal(a.get("alpha", 1.0)) * w
    if per_output is not None:
        linear.bias.data[...] = beta * per_output
    layers = [Transpose2d(), linear] if a.get("transA", 0) else [linear]
    if c is not None and per_output is None:
        if c.ndim > 2 or c.shape[-1] not in (1, w.shape[0]):
            builder.fail(node, f"a bias of shape {c.shape} for {w.shape[0]} outputs")
        layers.append(Binary("add", (None, beta * c)))
    sources = [("weight", 1)] + ([("bias", 2)] if per_output is not None else [])
    if len(layers) == 1:
        return linear, sources
    child = layers.index(linear)
    return Sequential(*layers), [(f"{child}.{key}", position) for key, position in sources]


def _same_pads(builder, node, x: str, kernel, strides, dilations, lower: bool
               ) -> tuple[int, int, int, int]:  # fmt: skip
    """auto_pad SAME_UPPER / SAME_LOWER's (top, bottom, left, right): TF's "same" total padding,
    the odd pixel at the end (upper) or first (lower), for the input's static H and W (shape
    inference)."""
    from .blocks import tf_same_padding

    hw = _static_hw(
        builder, node, x, f"attribute auto_pad={'SAME_LOWER' if lower else 'SAME_UPPER'}"
    )
    pads = [
        tf_same_padding(size, k, s, d)[:: -1 if lower else 1]  # (fewer, more): upper
        for size, k, s, d in zip(hw, kernel, strides, dilations, strict=True)
    ]
    return (*pads[0], *pads[1])


def _pool(builder, node, a: dict, x: str) -> Module:
    """AveragePool / MaxPool. Symmetric pads within half the kernel: our AvgPool2d / MaxPool2d
    as they are. Asymmetric pads (given, or auto_pad SAME_*), or wider ones: the pads made
    explicit (-inf for max, 0 for average) and the pooling run without padding; an average that
    excludes the pads is then rescaled per output position by (pixels the window covers) /
    (real pixels it covers), a constant of the input's static H and W."""
    op = node.op_type
    _check_attributes(builder, node, a, {
        "kernel_shape": None, "strides": None, "pads": None, "ceil_mode": None,
        "count_include_pad": None, "storage_order": lambda v: v == 0,
        "dilations": (lambda v: all(d == 1 for d in v)) if op == "AveragePool" else None,
        "auto_pad": lambda v: v in (b"NOTSET", b"SAME_UPPER", b"SAME_LOWER", b"VALID")})  # fmt: skip
    kernel = tuple(int(k) for k in a["kernel_shape"])
    if len(kernel) != 2:
        builder.fail(node, f"a {len(kernel)}-D pooling; only 2-D ones are supported")
    stride = tuple(int(v) for v in a.get("strides", [1, 1]))
    dilation = tuple(int(v) for v in a.get("dilations", [1, 1]))
    ceil, auto = bool(a.get("ceil_mode", 0)), a.get("auto_pad", b"NOTSET")
    include_pad = bool(a.get("count_include_pad", 0))
    if auto in (b"SAME_UPPER", b"SAME_LOWER"):
        top, bottom, left, right = _same_pads(builder, node, x, kernel, stride, dilation,
                                              lower=auto == b"SAME_LOWER")  # fmt: skip
    elif auto == b"VALID":
        top = bottom = left = right = 0
    else:
        top, left, bottom, right = (int(v) for v in a.get("pads", [0, 0, 0, 0]))

    def pooling(padding):
        if op == "AveragePool":
            return AvgPool2d(kernel, stride, padding, ceil, include_pad)
        return MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil)

    if (top, left) == (bottom, right) and top <= kernel[0] // 2 and left <= kernel[1] // 2:
        return pooling((top, left))
    layers = [ConstantPad2d((left, right, top, bottom), -np.inf if op == "MaxPool" else 0.0),
              pooling(0)]  # fmt: skip
    kept = None
    if ceil:  # the last window is dropped when it starts past the input and its *leading* pads
        hw = _static_hw(builder, node, x, "ceil_mode with asymmetric pads")
        kept = [_ceil_windows(n, k, s, d, before, before + after)
                for n, k, s, d, before, after in zip(hw, kernel, stride, dilation, (top, left),
                                                     (bottom, right), strict=True)]  # fmt: skip
        for axis, (keep, made) in zip((2, 3), kept, strict=True):
            if keep < made:
                layers.append(Slice(0, keep, axis))
    if op == "AveragePool" and not include_pad:
        h, w = _static_hw(builder, node, x, "an average pooling that excludes asymmetric pads")
        real = np.pad(np.ones((1, 1, h, w)), ((0, 0), (0, 0), (top, bottom), (left, right)))
        fraction = F.avg_pool2d_forward(real, kernel, stride, 0, ceil, True, backend="reference")[0]
        if kept is not None:
            fraction = fraction[:, :, : kept[0][0], : kept[1][0]]
        layers.append(Binary("mul", (None, 1.0 / fraction)))  # (1, 1, OH, OW)
    return Sequential(*layers)


def _ceil_windows(size: int, kernel: int, stride: int, dilation: int, before: int, pads: int
                  ) -> tuple[int, int]:  # fmt: skip
    """(windows ONNX Runtime keeps, windows a pooling of the explicitly padded input makes) along
    one axis in ceil mode: both ceil((size + pads - span) / stride) + 1, less the last window if it
    starts at or past ``size + before`` (ONNX Runtime, as torch) or ``size + pads`` (padded)."""
    span = dilation * (kernel - 1) + 1
    windows = -(-(size + pads - span) // stride) + 1
    keep = windows - ((windows - 1) * stride >= size + before)
    made = windows - ((windows - 1) * stride >= size + pads)
    return keep, made


def _resize(builder, node, a: dict) -> Upsample:
    """Resize (and opsets 7-9's Upsample) as our Upsample with the file's ``Sampling``: nearest
    (its four roundings; opsets before 11 "simple") or linear, in every coordinate mode but
    tf_crop_and_resize; to sizes given (constants, or the input's N, C with constant H, W) or
    by constant scales (N and C kept)."""
    old = node.op_type == "Upsample" or builder.opset < 11  # scales only, asymmetric, "simple"
    _check_attributes(builder, node, a, {
        "mode": lambda v: v in (b"nearest", b"linear", b"bilinear"),
        "coordinate_transformation_mode": lambda v: v.decode() in COORDINATES,
        "nearest_mode": lambda v: v.decode() in ROUNDINGS, "cubic_coeff_a": None,
        "exclude_outside": lambda v: v == 0, "extrapolation_value": None,
        "antialias": lambda v: v == 0, "keep_aspect_ratio_policy": lambda v: v == b"stretch",
        "axes": lambda v: list(v) in ([2, 3], [-2, -1]), "scales": None})  # fmt: skip
    mode = a.get("mode", b"nearest")
    if old:
        sampling = Sampling("asymmetric", "simple")
        scales = a.get("scales")
        if scales is None:
            scales = builder.const(node, 1, "scales")
    else:
        sampling = Sampling(a.get("coordinate_transformation_mode", b"half_pixel").decode(),
                            a.get("nearest_mode", b"round_prefer_floor").decode())  # fmt: skip
        scales = builder.const(node, 2, "scales", required=False)
        if scales is not None and np.size(scales) == 0:
            scales = None
    axes = len(a["axes"]) if "axes" in a else 4
    if scales is not None:
        scales = [float(v) for v in np.ravel(scales)]
        if len(scales) != axes or (axes == 4 and scales[:2] != [1.0, 1.0]):
            builder.fail(node, f"scales {scales}: only H and W of an NCHW tensor are resized here")
        if not all(0 < v <= MAX_SIDE for v in scales[-2:]):
            builder.fail(node, f"scales {scales[-2:]}: each must be above 0 and at most "
                               f"{MAX_SIDE:,}")  # fmt: skip
        sampling = Sampling(sampling.coordinates, sampling.rounding, tuple(scales[-2:]))
        return Upsample(scale_factor=tuple(scales[-2:]), mode=_UPSAMPLE_MODES[mode],
                        sampling=sampling)  # fmt: skip
    sizes = builder.resolve(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if sizes in builder.symbolic and builder.symbolic[sizes][0] == "HW":
        size = builder.symbolic[sizes][1]
    elif sizes in builder.constants and len(builder.constants[sizes]) in (2, axes):
        size = tuple(int(v) for v in builder.constants[sizes][-2:])
    else:
        builder.fail(node, "neither constant scales nor sizes (constants, or the input's N, C "
                           "with constant H, W) are given")  # fmt: skip
    if not all(0 < v <= MAX_SIDE for v in size):
        builder.fail(node, f"sizes {list(size)}: each side must be 1 to {MAX_SIDE:,} pixels")
    return Upsample(size=size, mode=_UPSAMPLE_MODES[mode], sampling=sampling)


_UPSAMPLE_MODES = {b"nearest": "nearest", b"linear": "bilinear", b"bilinear": "bilinear"}


def model_from_onnx(path, dtype=np.float32) -> OnnxModel:
    """The model of the ONNX file ``path``: one named layer per node (see the module docstring);
    ``model.pretrained_cfg`` records the file, its input size and classes, and
    ``model.onnx_sources`` maps each parameter and buffer to the initializer it came from (a torch
    export names them after the torch model's own parameters)."""
    proto = read_onnx(path)  # ImportError naming pip install onnx when it is absent
    import onnx

    graph = proto.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise OnnxImportError(
            f"{path}: {len(inputs)} inputs and {len(graph.output)} outputs; a model here has one "
            "image input and one output"
        )
    builder = _Builder(onnx, proto)
    nodes, softmax = list(graph.node), False
    last = nodes[-1] if nodes else None
    if (last is not None and last.op_type == "Softmax" and last.output[0] == graph.output[0].name
            and builder.attributes(last).get("axis", -1 if builder.opset >= 13 else 1) in (-1, 1)
            and len(builder.shapes.get(last.input[0], [0, 0])) == 2):  # fmt: skip
        builder.alias[last.output[0]] = last.input[0]  # the class logits it reads
        nodes, softmax = nodes[:-1], True
    for index, node in enumerate(nodes):
        if len(node.output) != 1 and node.op_type not in ("Dropout", "BatchNormalization"):
            builder.fail(
                node, f"{len(node.output)} outputs; only single-output nodes are supported"
            )
        _build(builder, node, index, dtype)
    output = builder.resolve(graph.output[0].name)
    model = OnnxModel(builder.layers, builder.steps, inputs[0].name, output)
    model.onnx_sources = builder.sources
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim]
    if any(d is not None and d > MAX_SIDE for d in dims[2:]):
        raise OnnxImportError(f"{path}: its input is declared {dims}, sides above {MAX_SIDE:,} "
                              "pixels: no image model here takes that")  # fmt: skip
    classes = [d.dim_value or None for d in graph.output[0].type.tensor_type.shape.dim]
    size = dims[2] if len(dims) == 4 and dims[2] == dims[3] and dims[2] else 224
    model.pretrained_cfg = {"source": "onnx", "file": str(path), "size": size,
                            "architecture": None, "width_mult": None}  # fmt: skip
    if len(classes) == 2 and classes[1]:
        model.pretrained_cfg["num_classes"] = classes[1]
    model.pretrained_cfg |= _metadata(proto, path) | ({"softmax": True} if softmax else {})
    return model.eval()


#: what a scratchnets export writes in metadata_props (formats.onnx): JSON of a preprocessing
#: dict and of the class names
_PREPROCESSING_KEYS = ("size", "resize", "crop", "crop_pct", "interpolation", "mean", "std")


def _metadata(proto, path) -> dict:
    """The preprocessing and class names a scratchnets export recorded (plain JSON: checked
    field by field, anything else ignored)."""
    import json

    props = {p.key: p.value for p in proto.metadata_props}
    found = {}
    try:
        pre = json.loads(props.get("scratchnets.preprocessing", "null")) or {}
        names = json.loads(props.get("scratchnets.class_names", "null"))
    except json.JSONDecodeError as exc:
        raise OnnxImportError(f"{path}: its scratchnets metadata is not JSON: {exc}") from exc
    if isinstance(pre, dict):
        found |= {k: pre[k] for k in _PREPROCESSING_KEYS if k in pre}
        if "source" in pre:
            found["exported_from"] = pre["source"]
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        found["class_names"] = names
    return found
