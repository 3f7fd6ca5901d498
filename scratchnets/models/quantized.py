"""A uint8 TensorFlow Lite graph run with integer arithmetic only, bit for bit as TensorFlow Lite's
reference kernels run it (Google's quantization-aware-trained MobileNets, Jacob et al. 2018).

    model = quantized_model_from_tflite("mobilenet_v2_1.0_224_quant.tflite")
    probs = model(pixels)          # (N, 3, 224, 224) uint8 -> (N, 1001) uint8, TFLite's bytes
    model.layers[0]                # QuantizedLayer(name="Conv", op="quantized_conv2d", ...)
    float_model = model.dequantize()

Each graph op becomes one ``QuantizedLayer``: the integer op of ``reference/quantized.py`` that
computes it, the graph tensors it reads and writes, and its arguments (uint8 weights, int32 bias,
the ``QuantParams`` of its inputs and output, strides, TF "SAME" padding worked out for the
input's size). ``forward`` runs them in the graph's order over a table of tensors, so residual
additions (MobileNetV2) need nothing special. Tensors are NCHW like everywhere here: TFLite's
NHWC arrays are transposed once, on import.

An op or quantization scheme outside what these graphs use (per-axis scales, int8, other ops,
dilation) is a ValueError naming it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from ..formats.tflite import Operator, Tensor, TFLiteModel, read_tflite
from ..nn import Conv2d, Module
from ..reference import quantized as qops
from ..reference.quantized import QuantParams
from .blocks import tf_same_padding
from .fuse import PLANS_KEPT
from .registry import create, fit_width, model_cfg

#: the registered float model of each TF-slim graph, by the scope its weight names start with
TF_SLIM_ARCHITECTURES = {"MobilenetV1/": "tf_mobilenet_v1", "MobilenetV2/": "tf_mobilenet_v2"}
#: the TFLite ops mapped, to the integer op that computes each (RESHAPE moves no numbers)
SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D", "RESHAPE", "SOFTMAX")


@dataclass
class QuantizedLayer:
    """One integer op of the graph: ``tensors[output] = op(*tensors[inputs], **arguments)``
    (``op`` a function of ``reference/quantized.py``, or "reshape")."""

    name: str
    op: str
    inputs: tuple[int, ...]
    output: int
    arguments: dict = field(default_factory=dict, repr=False)
    same_padding: tuple[tuple[int, int], tuple[int, int]] | None = None  # (kernel, stride) per axis


def _params(tensor: Tensor, what: str) -> QuantParams:
    if tensor.dtype not in (np.uint8, np.int32):
        raise ValueError(
            f"{what} {tensor.name!r} is {np.dtype(tensor.dtype).name}: only uint8 graphs (int32 "
            "biases) are supported"
        )
    if len(tensor.scale) != 1 or len(tensor.zero_point) != 1:
        scheme = "no quantization" if not tensor.scale else f"{len(tensor.scale)} per-axis scales"
        raise ValueError(
            f"{what} {tensor.name!r} has {scheme}: only per-tensor (one scale, one zero point) "
            "quantization is supported"
        )
    return QuantParams(float(tensor.scale[0]), int(tensor.zero_point[0]))


def _layer_name(graph: TFLiteModel, op: Operator, index: int) -> str:
    """The op's scope in the weight's name ("MobilenetV2/expanded_conv_3/project/Conv2D_Fold;..."
    -> "expanded_conv_3/project"), else its kind and position ("add_12")."""
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        parts = graph.tensors[op.inputs[1]].name.split(";")[0].split("/")
        scope = [p for p in parts[1:-1] if p not in ("MobilenetV1", "MobilenetV2")]
        if scope:
            return "/".join(scope)
    return f"{op.op.lower()}_{index}"


def _conv_layer(graph: TFLiteModel, op: Operator, name: str) -> QuantizedLayer:
    """CONV_2D (weights O, kh, kw, I) or DEPTHWISE_CONV_2D (1, kh, kw, C * multiplier) as
    ``quantized_conv2d`` with NCHW weights (O, I / groups, kh, kw)."""
    x, w, b, y = (graph.tensors[i] for i in (*op.inputs[:3], op.outputs[0]))
    o = op.options
    if (o["dilation_h"], o["dilation_w"]) != (1, 1):
        raise ValueError(f"{name}: {op.op} with dilation {o['dilation_h'], o['dilation_w']}")
    depthwise = op.op == "DEPTHWISE_CONV_2D"
    weight = w.data.transpose(3, 0, 1, 2) if depthwise else w.data.transpose(0, 3, 1, 2)
    stride = (o["stride_h"], o["stride_w"])
    arguments = dict(
        x_q=_params(x, f"{name} input"),
        w=np.ascontiguousarray(weight),
        w_q=_params(w, f"{name} weights"),
        bias=None if b is None else b.data.astype(np.int32),
        y_q=_params(y, f"{name} output"),
        stride=stride,
        groups=x.shape[3] if depthwise else 1,
        activation=o["activation"],
    )
    qops.activation_range(o["activation"], arguments["y_q"])  # refuses an unsupported one now
    kernel = weight.shape[2:]
    same = (tuple(kernel), stride) if o["padding"] == "SAME" else None
    return QuantizedLayer(name, "quantized_conv2d", (op.inputs[0],), op.outputs[0], arguments, same)


def _layer(graph: TFLiteModel, op: Operator, index: int) -> QuantizedLayer:
    name = _layer_name(graph, op, index)
    tensors = graph.tensors
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return _conv_layer(graph, op, name)
    if op.op == "ADD":
        a, b, y = (tensors[i] for i in (*op.inputs, op.outputs[0]))
        arguments = dict(a_q=_params(a, f"{name} input"), b_q=_params(b, f"{name} input"),
                         y_q=_params(y, f"{name} output"), activation=op.options["activation"])  # fmt: skip
        return QuantizedLayer(name, "quantized_add", tuple(op.inputs), op.outputs[0], arguments)
    if op.op == "AVERAGE_POOL_2D":
        o = op.options
        x, y = tensors[op.inputs[0]], tensors[op.outputs[0]]
        if _params(x, f"{name} input") != _params(y, f"{name} output"):
            raise ValueError(f"{name}: an average pool that rescales ({x.scale} -> {y.scale})")
        kernel, stride = (o["filter_h"], o["filter_w"]), (o["stride_h"], o["stride_w"])
        clamp = qops.activation_range(o["activation"], _params(y, name))
        same = (kernel, stride) if o["padding"] == "SAME" else None
        arguments = dict(kernel_size=kernel, stride=stride, clamp=clamp)
        return QuantizedLayer(name, "quantized_avg_pool2d", (op.inputs[0],), op.outputs[0],
                              arguments, same)  # fmt: skip
    if op.op == "RESHAPE":
        shape = tensors[op.outputs[0]].shape
        return QuantizedLayer(name, "reshape", (op.inputs[0],), op.outputs[0], dict(shape=shape))
    if op.op == "SOFTMAX":
        x, y = tensors[op.inputs[0]], tensors[op.outputs[0]]
        arguments = dict(x_q=_params(x, f"{name} input"), beta=float(np.float32(op.options["beta"])),
                         y_q=_params(y, f"{name} output"))  # fmt: skip
        return QuantizedLayer(name, "quantized_softmax", (op.inputs[0],), op.outputs[0], arguments)
    raise ValueError(
        f"TFLite op {op.op} (operator {index}) is not supported in a uint8 graph; supported: "
        f"{', '.join(SUPPORTED_OPS)}"
    )


def _reshape_nchw(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """TFLite's RESHAPE (row-major over NHWC) of an NCHW tensor, any batch size."""
    nhwc = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    y = nhwc.reshape(x.shape[0], *shape[1:])
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def _cpu_ops():
    """The Numba kernels (imported on first use: they compile)."""
    from ..kernels.cpu import quantized

    return quantized


class QuantizedModel(Module):
    """A uint8 graph: ``forward(x)`` takes the uint8 NCHW input (TFLite's NHWC input
    transposed) and returns TFLite's uint8 output tensor. Inference only. ``to("reference")``
    runs ``reference/quantized.py``, ``to("cpu")`` (the default) its Numba kernels
    (``kernels/cpu/quantized.py``); both give the same bytes."""

    def __init__(self, layers: list[QuantizedLayer], graph: TFLiteModel, path: str):
        super().__init__()
        self.layers = layers
        self.graph = graph
        self.input_index, self.output_index = graph.inputs[0], graph.outputs[0]
        self.input_q = _params(graph.tensors[self.input_index], "the graph input")
        self.output_q = _params(graph.tensors[self.output_index], "the graph output")
        self.path = path
        self.training = False
        self._centred_weights = {}  # layer position -> (w, the cpu kernels' centred copy of it)

    def extra_repr(self) -> str:
        return f"{len(self.layers)} integer ops from {self.path!r}"

    def forward(self, x, return_all: bool = False):
        """``x`` (N, C, H, W) uint8 -> the output tensor (uint8); with ``return_all``, the table
        of every tensor computed, by graph tensor index (NCHW)."""
        x = np.asarray(x)
        expected = self.graph.tensors[self.input_index].shape
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != expected[3]:
            raise ValueError(
                f"a uint8 TFLite model takes uint8 pixels of shape (N, {expected[3]}, H, W) (its "
                f"NHWC input {expected} transposed); got {x.dtype} {x.shape}"
            )
        if self.backend == "reference":
            tensors = self._run_layers(x)
        else:
            tensors = self._run_plan(np.ascontiguousarray(x))
        return tensors if return_all else tensors[self.output_index]

    def _layer_arguments(self, layer: QuantizedLayer, inputs: list) -> dict:
        """A layer's keyword arguments for its inputs: TF "SAME" padding made explicit."""
        if layer.same_padding is None:
            return layer.arguments
        (kh, kw), (sh, sw) = layer.same_padding
        pads = (*tf_same_padding(inputs[0].shape[2], kh, sh),
                *tf_same_padding(inputs[0].shape[3], kw, sw))  # fmt: skip
        return layer.arguments | {"padding": pads}

    def _run_layers(self, x) -> dict:
        """Every tensor of the graph, by the reference ops, layer by layer."""
        tensors = {self.input_index: x}
        for layer in self.layers:
            inputs = [tensors[i] for i in layer.inputs]
            if layer.op == "reshape":
                tensors[layer.output] = _reshape_nchw(inputs[0], layer.arguments["shape"])
            else:
                arguments = self._layer_arguments(layer, inputs)
                tensors[layer.output] = getattr(qops, layer.op)(*inputs, **arguments)
        return tensors

    def _run_plan(self, x) -> dict:
        """Every tensor of the graph, by the cpu kernels through this input shape's plan: each
        layer a function prepared on the first input of the shape (a conv's geometry, padding,
        requantize constants, centred weights and tile plan: ``quantized_conv2d_prepared``),
        made again when a conv's ``w`` is replaced."""
        weights = [layer.arguments["w"] for layer in self.layers if layer.op == "quantized_conv2d"]
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(x.shape)
        tensors = {self.input_index: x}
        if plan is not None and all(a is b for a, b in zip(plan[0], weights, strict=True)):
            for step, inputs, output in plan[1]:
                tensors[output] = step(*[tensors[i] for i in inputs])
            return tensors
        ops, steps = _cpu_ops(), []
        for position, layer in enumerate(self.layers):
            inputs = [tensors[i] for i in layer.inputs]
            if layer.op == "reshape":
                step = functools.partial(_reshape_nchw, shape=layer.arguments["shape"])
            elif layer.op == "quantized_conv2d":
                arguments = self._layer_arguments(layer, inputs)
                step = ops.quantized_conv2d_prepared(
                    inputs[0].shape, **arguments, centred_w=self._centred(position, arguments)
                )
            else:
                step = functools.partial(
                    getattr(ops, layer.op), **self._layer_arguments(layer, inputs)
                )
            tensors[layer.output] = step(*inputs)
            steps.append((step, layer.inputs, layer.output))
        if len(plans) >= PLANS_KEPT:
            del plans[next(iter(plans))]
        plans[x.shape] = (weights, steps)
        return tensors

    def _centred(self, position: int, arguments: dict) -> np.ndarray:
        """The CPU kernels' ``centred_weights`` of a conv layer, prepared on its first forward and
        again whenever its ``w`` is replaced by another array (the file's weights are constants)."""
        w = arguments["w"]
        cached = self._centred_weights.get(position)
        if cached is None or cached[0] is not w:
            cached = (w, _cpu_ops().centred_weights(w, arguments["w_q"], arguments["x_q"]))
            self._centred_weights[position] = cached
        return cached[1]

    def real_output(self, q) -> np.ndarray:
        """The reals the uint8 output stands for, ``S (q - Z)`` in float64 (for the softmax of
        Google's MobileNets: probabilities in steps of 1/256)."""
        scale, zero_point = self.output_q
        return scale * (np.asarray(q, dtype=np.float64) - zero_point)

    def to(self, backend: str | None = None, dtype=None) -> QuantizedModel:
        if backend == "cuda" or dtype is not None:
            raise ValueError(
                "a uint8 model runs on the CPU, in integers: no cuda backend, no dtype "
                "(model.dequantize() gives a float model)"
            )
        return super().to(backend)

    def dequantize(self):
        """The float model of this graph: every constant as the real it stands for,
        ``W = S_w (q - Z_w)`` and ``b = S_b q_b``, in the registered TF-slim architecture the graph
        is (``tf_mobilenet_v1`` / ``tf_mobilenet_v2``: folded-BN convs, TF "SAME" padding), in
        eval mode. It takes float NCHW inputs in the reals of the uint8 input (``S (p - Z)``,
        [-1, 1) for Google's files: ``pretrained_cfg`` says how) and returns logits; it trains
        and fine-tunes like any model."""
        convs = [layer for layer in self.layers if layer.op == "quantized_conv2d"]
        first_weight = self.graph.tensors[self.graph.operators[0].inputs[1]].name
        arch = next(
            (
                arch
                for prefix, arch in TF_SLIM_ARCHITECTURES.items()
                if first_weight.startswith(prefix)
            ),
            None,
        )
        if arch is None:
            raise ValueError(
                f"{self.path}: no float architecture for this graph (its first weight is "
                f"{first_weight!r}; known: {', '.join(TF_SLIM_ARCHITECTURES)})"
            )
        shapes = [layer.arguments["w"].shape for layer in convs]
        # the graph's convs in order are the model's (their names do not depend on the width)
        names = [f"{name}.weight" for name, m in create(arch, init=False).named_modules()
                 if isinstance(m, Conv2d)]  # fmt: skip
        if len(names) != len(shapes):
            raise ValueError(
                f"{self.path}: its {len(shapes)} convolutions fit no {arch} ({len(names)} convs)"
            )
        num_classes = shapes[-1][0]
        try:
            model, width = fit_width(arch, dict(zip(names, shapes, strict=True)),
                                     num_classes=num_classes)  # fmt: skip
        except ValueError as error:
            raise ValueError(f"{self.path}: its convolutions fit no {arch}: {error}") from None
        model_convs = [m for m in model.modules() if isinstance(m, Conv2d)]
        for layer, conv in zip(convs, model_convs, strict=True):
            a = layer.arguments
            conv.weight.data[...] = a["w_q"].scale * (
                a["w"].astype(np.float64) - a["w_q"].zero_point
            )
            bias_scale = float(np.float32(a["x_q"].scale) * np.float32(a["w_q"].scale))
            conv.bias.data[...] = bias_scale * a["bias"].astype(np.float64)
        scale, zero_point = self.input_q
        model.pretrained_cfg = dict(
            model_cfg(arch).preprocessing,
            # the uint8 input's reals S (p - Z) = (p / 255 - mean) / std
            mean=(zero_point / 255,) * 3,
            std=(1 / (255 * scale),) * 3,
            source="tflite (dequantized uint8)",
            architecture=arch,
            width_mult=width,
            num_classes=num_classes,
            file=self.path,
        )
        return model.eval()

    def train(self, mode: bool = True) -> QuantizedModel:
        if mode:
            raise RuntimeError(
                "a uint8 model is inference only: model.dequantize() gives a float model to train"
            )
        return self


def quantized_model_from_tflite(path, graph: TFLiteModel | None = None) -> QuantizedModel:
    """The uint8 TFLite model at ``path`` as a ``QuantizedModel`` (``graph``: already read)."""
    graph = read_tflite(path) if graph is None else graph
    layers = [_layer(graph, op, index) for index, op in enumerate(graph.operators)]
    model = QuantizedModel(layers, graph, str(path))
    height = graph.tensors[graph.inputs[0]].shape[1]
    model.pretrained_cfg = dict(
        source="tflite",
        size=height,
        crop="centre square",
        interpolation="bilinear",
        dtype="uint8",  # the raw pixels, no scaling (the input's quantization does it)
        num_classes=graph.tensors[graph.outputs[0]].shape[-1],
        softmax=graph.operators[-1].op == "SOFTMAX",
        file=str(path),
    )
    return model
