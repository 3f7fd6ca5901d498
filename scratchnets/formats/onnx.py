"""ONNX files: ``read_onnx`` (a checked ``ModelProto``; ``models.onnx_import`` turns its graph
into a model of our layers) and, out, any model built from scratchnets' layers as a standard ONNX
graph (``export_onnx``, ``scratchnets export onnx``) that ONNX Runtime runs.

The graph is read off the model's own forward pass, not written per architecture: the model runs
once in eval mode on the "trace" backend (the reference ops, each call recorded with its
arguments and result, ``explain/trace.py``), and each recorded op becomes ONNX nodes, arrays
being told apart by identity: the input, every parameter and buffer (by its state dict name, an
initializer), and each op's result. So whatever a model's Python does between ops, the graph
holds exactly the ops the model ran (a reshape between them, ``Flatten``, is recognised as a
view of a known array and becomes a Reshape; any other array made outside the ops is refused by
name, never baked in as a constant).

    op (scratchnets)                ONNX
    conv2d                          Conv (pads, strides, dilations, group)
    batch_norm2d (eval)             BatchNormalization
    relu / relu6 / clip / sigmoid   Relu / Clip(0, 6) / Clip(low, high) / Sigmoid
    softmax                         Softmax (axis)
    hard_sigmoid / hard_swish       HardSigmoid(alpha 1/6, beta 1/2) / HardSwish
    silu                            Mul(x, Sigmoid(x))
    global / adaptive avg pool      GlobalAveragePool (adaptive: output 1x1 only)
    avg_pool2d / max_pool2d         AveragePool / MaxPool
    linear                          Gemm (transB)
    add / mul / concat / slice      Add / Mul / Concat / Slice
    upsample_nearest2d / bilinear   Resize (asymmetric + floor / half_pixel linear; a Sampling's
                                    coordinate mode, rounding and scales)
    pad2d                           Pad (constant, reflect, edge; circular refused)
    dropout (eval)                  nothing: the identity

The input's batch dimension is symbolic ("N"); H and W are those of ``input_shape`` (TF "same"
padding depends on them). Opset 17. ``onnx`` is an optional dependency (``pip install onnx``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..reference.windows import normalize_padding, pair

OPSET = 17
#: the largest file read (external data included): far above any mobile model
MAX_FILE_BYTES = 1 << 30


class OnnxImportError(ValueError):
    """An ONNX file or graph we cannot turn into a model, naming what stops it (the node and
    attribute, for a graph)."""


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX files need the onnx package: pip install onnx") from exc
    return onnx


def read_onnx(path):
    """The checked ``ModelProto`` of ``path`` (external data only from the model's folder)."""
    onnx = _onnx()
    path = Path(path)
    if path.stat().st_size > MAX_FILE_BYTES:
        raise OnnxImportError(f"{path} is {path.stat().st_size:,} bytes, more than any model here")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        external = {}
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                location = {e.key: e.value for e in tensor.external_data}.get("location", "")
                target = (path.parent / location).resolve()
                if path.parent.resolve() not in target.parents or not target.is_file():
                    raise OnnxImportError(
                        f"{path}: initializer {tensor.name!r} points at external data "
                        f"{location!r}, outside the model's folder or missing"
                    )
                external[target] = target.stat().st_size
        if path.stat().st_size + sum(external.values()) > MAX_FILE_BYTES:
            raise OnnxImportError(
                f"{path}: with its external data files it is "
                f"{path.stat().st_size + sum(external.values()):,} bytes, more than any model here"
            )
        onnx.load_external_data_for_model(proto, str(path.parent))
        onnx.checker.check_model(proto)
    except OnnxImportError:
        raise
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError ...
        raise OnnxImportError(f"{path} is not a valid ONNX model: {exc}") from exc
    return proto


class _Graph:
    """The ONNX graph under construction: tensor names by array identity, nodes, initializers."""

    def __init__(self, onnx, model):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.initializers = [], {}
        self.names: dict[int, str] = {}
        self.arrays: dict[int, np.ndarray] = {}  # what the names refer to, kept alive
        self.known: dict[int, tuple[str, np.ndarray]] = {}  # parameters and buffers
        for name, param in model.named_parameters():
            self.known[id(param.data)] = (name, param.data)
        for name, buffer in model.named_buffers():
            if isinstance(buffer, np.ndarray):
                self.known[id(buffer)] = (name, buffer)
        self.counter = 0

    def fresh(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}_{self.counter}"

    def bind(self, array, name: str) -> None:
        self.names[id(array)], self.arrays[id(array)] = name, array

    def viewed(self, array) -> np.ndarray | None:
        """The named array that ``array`` is a reshape of: the same memory (first element and
        size) and both C-contiguous; numpy's ``base`` points at the memory's owner, which may be
        no named array, so the memory is compared instead."""
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
            return None
        start = array.__array_interface__["data"][0]
        for named in reversed(self.arrays.values()):
            if (isinstance(named, np.ndarray) and named.size == array.size
                    and named.flags.c_contiguous
                    and named.__array_interface__["data"][0] == start):  # fmt: skip
                return named
        return None

    def constant(self, value, hint: str, dtype=np.int64) -> str:
        name = self.fresh(hint)
        self.initializers[name] = self.onnx.numpy_helper.from_array(np.asarray(value, dtype), name)
        return name

    def name_of(self, array, where: str) -> str:
        """The tensor name of an op's argument: a known result, a parameter / buffer (added as an
        initializer), or a reshaped view of a known result (a Reshape node)."""
        if id(array) in self.names:
            return self.names[id(array)]
        if id(array) in self.known:
            name, value = self.known[id(array)]
            self.initializers[name] = self.onnx.numpy_helper.from_array(
                np.asarray(value, np.float32), name
            )
            self.bind(array, name)
            return name
        base = self.viewed(array)
        if base is not None:
            source = self.names[id(base)]
            if base.shape == array.shape:  # the same tensor
                self.bind(array, source)
                return source
            shape = self.constant([-1, *array.shape[1:]], "shape")  # the batch stays symbolic
            out = self.fresh("reshape")
            self.nodes.append(self.helper.make_node("Reshape", [source, shape], [out]))
            self.bind(array, out)
            return out
        shape = getattr(array, "shape", None)
        raise ValueError(
            f"{where}: an argument of shape {shape} was computed outside scratchnets' ops (not "
            "the input, a parameter, a buffer or an op's result): the model cannot be exported"
        )

    def node(self, op_type: str, inputs: list[str], result, hint: str, **attributes) -> str:
        out = self.fresh(hint)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attributes))
        self.bind(result, out)
        return out


def _pads(padding) -> list[int]:
    """Any scratchnets padding (``normalize_padding``: int, pair or (top, bottom, left, right))
    as ONNX's [top, left, bottom, right]."""
    top, bottom, left, right = normalize_padding(padding)
    return [top, left, bottom, right]


def _pair(value, name: str) -> list[int]:
    return list(pair(value, name))


def _emit(graph: _Graph, call, index: int) -> None:
    """The ONNX nodes of one recorded forward call."""
    op, args, kwargs = call.op, call.args, call.kwargs
    y = call.result[0]
    where = f"op {index} ({op})"

    def arg(position, name, default=None):
        return args[position] if len(args) > position else kwargs.get(name, default)

    x = graph.name_of(args[0], where) if op not in ("concat",) else None
    if op == "conv2d":
        from ..reference.conv import conv_geometry

        w, b = args[1], arg(2, "b")
        g = conv_geometry(args[0].shape, w.shape, arg(3, "stride", 1), arg(4, "padding", 0),
                          arg(5, "dilation", 1), arg(6, "groups", 1))  # fmt: skip
        inputs = [x, graph.name_of(w, where)] + ([graph.name_of(b, where)] if b is not None else [])
        graph.node("Conv", inputs, y, "conv", kernel_shape=list(g.kernel), strides=list(g.stride),
                   dilations=list(g.dilation), group=g.groups, pads=_pads(g.pads))  # fmt: skip
    elif op == "batch_norm2d":
        if arg(5, "training", True):
            raise ValueError(f"{where}: a train-mode BatchNorm; export the model in eval mode")
        names = [graph.name_of(args[k], where) for k in (1, 2, 3, 4)]
        graph.node("BatchNormalization", [x, *names], y, "bn", epsilon=float(arg(7, "eps", 1e-5)))
    elif op in ("relu", "sigmoid"):
        graph.node(op.title(), [x], y, op)
    elif op in ("relu6", "clip"):
        bounds = (0.0, 6.0) if op == "relu6" else (float(arg(1, "low", -1.0)),
                                                    float(arg(2, "high", 1.0)))  # fmt: skip
        low, high = (graph.constant(v, k, np.float32)
                     for k, v in zip(("min", "max"), bounds, strict=True))  # fmt: skip
        graph.node("Clip", [x, low, high], y, op)
    elif op == "softmax":
        graph.node("Softmax", [x], y, "softmax", axis=int(arg(1, "axis", -1)))
    elif op == "hard_sigmoid":
        graph.node("HardSigmoid", [x], y, "hard_sigmoid", alpha=1.0 / 6.0, beta=0.5)
    elif op == "hard_swish":
        graph.node("HardSwish", [x], y, "hard_swish")
    elif op == "silu":
        gate = graph.fresh("sigmoid")
        graph.nodes.append(graph.helper.make_node("Sigmoid", [x], [gate]))
        graph.node("Mul", [x, gate], y, "silu")
    elif op == "global_avg_pool2d" or (op == "adaptive_avg_pool2d" and y.shape[2:] == (1, 1)):
        graph.node("GlobalAveragePool", [x], y, "pool")
    elif op in ("avg_pool2d", "max_pool2d"):
        kernel = _pair(arg(1, "kernel_size"), "kernel_size")
        stride = _pair(arg(2, "stride") or kernel, "stride")
        attributes = dict(kernel_shape=kernel, strides=stride, pads=_pads(arg(3, "padding", 0)),
                          ceil_mode=int(bool(arg(5 if op == "max_pool2d" else 4, "ceil_mode"))))  # fmt: skip
        if op == "avg_pool2d":
            if arg(6, "divisor_override") is not None:
                raise ValueError(f"{where}: divisor_override has no ONNX AveragePool attribute")
            attributes["count_include_pad"] = int(bool(arg(5, "count_include_pad", True)))
            graph.node("AveragePool", [x], y, "avg_pool", **attributes)
        else:
            attributes["dilations"] = _pair(arg(4, "dilation", 1), "dilation")
            graph.node("MaxPool", [x], y, "max_pool", **attributes)
    elif op == "linear":
        w, b = args[1], arg(2, "b")
        inputs = [x, graph.name_of(w, where)] + ([graph.name_of(b, where)] if b is not None else [])
        graph.node("Gemm", inputs, y, "linear", transB=1)
    elif op in ("add", "mul"):
        graph.node(op.title(), [x, graph.name_of(args[1], where)], y, op)
    elif op == "concat":
        parts = [graph.name_of(part, where) for part in args[0]]
        graph.node("Concat", parts, y, "concat", axis=int(arg(1, "axis", 1)))
    elif op == "slice":
        start, stop, axis = int(args[1]), int(args[2]), int(arg(3, "axis", 1))
        inputs = [x, graph.constant([start], "start"), graph.constant([stop], "stop"),
                  graph.constant([axis], "axis")]  # fmt: skip
        graph.node("Slice", inputs, y, "slice")
    elif op in ("upsample_nearest2d", "upsample_bilinear2d"):
        sampling = arg(2, "sampling")
        nearest = op == "upsample_nearest2d"
        if sampling is None:  # torch's: nearest asymmetric + floor, bilinear half-pixel
            mode = ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
                    if nearest else {"coordinate_transformation_mode": "half_pixel"})  # fmt: skip
        elif sampling.rounding == "simple":
            raise ValueError(f"{where}: an opset-10 Upsample's rounding has no opset-17 form")
        else:
            mode = {"coordinate_transformation_mode": sampling.coordinates}
            mode |= {"nearest_mode": sampling.rounding} if nearest else {}
        mode["mode"] = "nearest" if nearest else "linear"
        if sampling is not None and sampling.scales is not None:
            scales = graph.constant([1.0, 1.0, *sampling.scales], "scales", np.float32)
            graph.node("Resize", [x, "", scales], y, "resize", **mode)
            return
        shape = graph.fresh("shape")  # sizes: N and C from the input, H and W the traced ones
        graph.nodes.append(graph.helper.make_node("Shape", [x], [shape], start=0, end=2))
        full = graph.fresh("sizes")
        graph.nodes.append(graph.helper.make_node(
            "Concat", [shape, graph.constant(list(y.shape[2:]), "hw")], [full], axis=0))  # fmt: skip
        graph.node("Resize", [x, "", "", full], y, "resize", **mode)
    elif op == "pad2d":
        mode = arg(2, "mode", "constant")
        onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}.get(mode)
        if onnx_mode is None:
            raise ValueError(f"{where}: pad2d mode {mode!r} has no ONNX Pad mode")
        top, left, bottom, right = _pads(args[1])
        pads = graph.constant([0, 0, top, left, 0, 0, bottom, right], "pads")
        value = graph.constant(float(arg(3, "value", 0.0)), "value", np.float32)
        graph.node("Pad", [x, pads, value], y, "pad", mode=onnx_mode)
    elif op == "dropout":
        graph.bind(y, x)  # eval: the identity
    else:
        raise ValueError(f"{where}: op {op!r} has no ONNX export here")


#: metadata_props keys: how the model's input is prepared, and its class names (JSON)
META_PREPROCESSING, META_CLASSES = "scratchnets.preprocessing", "scratchnets.class_names"


def export_onnx(model, path, input_shape=(1, 3, 224, 224), fold: bool = True,
                preprocessing: dict | None = None, class_names=None) -> dict:  # fmt: skip
    """Write ``model`` (eval mode, any scratchnets model) as an ONNX graph at ``path``, traced at
    ``input_shape`` (N symbolic in the file); returns ``{"nodes", "initializers", "ops"}``.

    ``fold``: the inference form, as the eval fast path computes it (every declared BN folded
    into its conv, GhostNetV3's branches re-parameterised: ``models.fuse.folded_copy``);
    ``fold=False`` keeps each BN as a BatchNormalization node. ``preprocessing`` (a
    ``pretrained_cfg``-style dict: size, crop, interpolation, mean, std) and ``class_names`` go
    into the file's metadata as JSON, for ``load_pretrained`` and ``predict`` to read back. The
    model's mode, backend and eval fast path are restored afterwards. The file is checked with
    ``onnx.checker`` and written atomically."""
    onnx = _onnx()
    from ..explain import trace
    from ..models.fuse import folded_copy

    if fold:
        model = folded_copy(model)

    backend, training = model.backend, model.training
    fast = getattr(model, "fast_eval", None)
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    try:
        if fast is not None:
            model.fast_eval = False  # the training graph in eval mode: BN as its own op
        model.eval().to("trace")
        with trace.recording() as tape:
            y = model(x)
    finally:
        model.to(backend).train(training)
        if fast is not None:
            model.fast_eval = fast
    graph = _Graph(onnx, model)
    graph.bind(x, "input")
    for index, call in enumerate(tape):
        if call.function.endswith("_forward"):
            _emit(graph, call, index)
    helper = onnx.helper
    last = graph.name_of(y, "the output")
    graph.nodes.append(helper.make_node("Identity", [last], ["logits"]))
    elem = onnx.TensorProto.FLOAT
    graph_proto = helper.make_graph(
        graph.nodes, type(model).__name__,
        [helper.make_tensor_value_info("input", elem, ["N", *input_shape[1:]])],
        [helper.make_tensor_value_info("logits", elem, ["N", *np.shape(y)[1:]])],
        list(graph.initializers.values()),
    )  # fmt: skip
    proto = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="scratchnets")  # fmt: skip
    metadata = {META_PREPROCESSING: preprocessing, META_CLASSES: class_names}
    helper.set_model_props(proto, {k: json.dumps(v) for k, v in metadata.items() if v})
    onnx.checker.check_model(proto)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        onnx.save(proto, partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    ops = sorted({node.op_type for node in graph.nodes})
    return {"nodes": len(graph.nodes), "initializers": len(graph.initializers), "ops": ops}
