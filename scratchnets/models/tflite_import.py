"""A float TensorFlow Lite graph as an ordinary, trainable scratchnets model.

TF-slim's exported MobileNets are a chain of convolutions with BatchNorm already folded into
their biases, TF "SAME" padding and ReLU6 fused into each conv; this maps each op onto our
layers (NHWC weights transposed to NCHW) in a ``Sequential`` whose layer names follow the
graph's tensor names. The final SOFTMAX is dropped: the model returns logits, like every other
model here (``pretrained_cfg["softmax"]`` records it). An op we do not map is a ValueError naming
it.

    model = model_from_tflite("mobilenet_v1_0.25_224_float.tflite")   # NCHW float32 in [-1, 1]
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..formats.tflite import Operator, TFLiteModel, read_tflite
from ..nn import AvgPool2d, Conv2d, Flatten, ReLU, ReLU6, Sequential
from .blocks import Conv2dSame

#: the fused activations we map, by TFLite name
ACTIVATION_LAYERS = {"RELU6": ReLU6, "RELU": ReLU}


def _layer_name(graph: TFLiteModel, op: Operator, index: int, taken) -> str:
    """A state-dict-safe layer name: a conv's from its weight tensor
    ("MobilenetV1/Conv2d_1_depthwise/depthwise_weights" -> "Conv2d_1_depthwise"), other ops
    from their kind and position ("average_pool_2d_27")."""
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        parts = graph.tensors[op.inputs[1]].name.split("/")
        name = "".join(c if c.isalnum() else "_" for c in parts[-2 if len(parts) > 1 else -1])
        if name and name not in taken:
            return name
    return f"{op.op.lower()}_{index}"


def _convolution(graph: TFLiteModel, op: Operator, depthwise: bool) -> Conv2d:
    """CONV_2D (weights O, kh, kw, I) or DEPTHWISE_CONV_2D (weights 1, kh, kw, C * multiplier)
    with its bias, as a Conv2d (TF "SAME": Conv2dSame) holding the file's values."""
    x, w, b = (graph.tensors[i] for i in op.inputs[:3])
    options = op.options
    if (options["dilation_h"], options["dilation_w"]) != (1, 1):
        raise ValueError(f"{op.op} with dilation {options['dilation_h'], options['dilation_w']}")
    weight = w.data.transpose(3, 0, 1, 2) if depthwise else w.data.transpose(0, 3, 1, 2)
    in_channels = x.shape[3]
    groups = in_channels if depthwise else 1
    layer = Conv2dSame if options["padding"] == "SAME" else Conv2d
    conv = layer(
        in_channels,
        weight.shape[0],
        weight.shape[2:],
        (options["stride_h"], options["stride_w"]),
        groups=groups,
        bias=True,
        rng=np.random.default_rng(0),  # overwritten below
    )
    conv.weight.data[...] = weight  # (C_out, C_in / groups, kh, kw)
    conv.bias.data[...] = b.data
    return conv


def _input_dtypes(graph: TFLiteModel) -> set[np.dtype]:
    return {np.dtype(graph.tensors[i].dtype) for op in graph.operators for i in op.inputs}


def is_float_graph(graph: TFLiteModel) -> bool:
    """Whether every tensor the graph's ops read is float32 (else a quantized graph)."""
    return _input_dtypes(graph) == {np.dtype(np.float32)}


def model_from_tflite(path, graph: TFLiteModel | None = None) -> Sequential:
    """The float TFLite model at ``path`` (``graph``: already read) as a scratchnets
    ``Sequential`` in eval mode."""
    graph = read_tflite(path) if graph is None else graph
    if not is_float_graph(graph):
        dtypes = sorted(d.name for d in _input_dtypes(graph))
        raise ValueError(
            f"{path}: a quantized TFLite graph (tensor types {dtypes}); only float32 graphs "
            "import as a float model (load_pretrained gives a uint8 model for it)"
        )
    layers: OrderedDict = OrderedDict()
    current, softmax = graph.inputs[0], False
    for index, op in enumerate(graph.operators):
        if op.inputs[0] != current:
            raise ValueError(f"{op.op} does not continue a chain: branching graphs are not mapped")
        name = _layer_name(graph, op, index, layers)
        if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            layers[name] = _convolution(graph, op, op.op == "DEPTHWISE_CONV_2D")
            activation = op.options["activation"]
            if activation is not None:
                if activation not in ACTIVATION_LAYERS:
                    raise ValueError(f"{op.op} with fused activation {activation} is not mapped")
                layers[f"{name}_{activation.lower()}"] = ACTIVATION_LAYERS[activation]()
        elif op.op == "AVERAGE_POOL_2D" and op.options["padding"] == "VALID":
            o = op.options
            layers[name] = AvgPool2d((o["filter_h"], o["filter_w"]), (o["stride_h"], o["stride_w"]))
        elif op.op in ("SQUEEZE", "RESHAPE") and graph.tensors[op.outputs[0]].shape[0] == 1:
            layers[name] = Flatten()  # (N, C, 1, 1) -> (N, C)
        elif op.op == "SOFTMAX" and op is graph.operators[-1]:
            softmax = True
        else:
            raise ValueError(f"TFLite op {op.op} {op.options} is not mapped to a scratchnets layer")
        current = op.outputs[0]
    model = Sequential(layers).eval()
    height, width, _ = graph.tensors[graph.inputs[0]].shape[1:]
    model.pretrained_cfg = dict(
        source="tflite",
        size=height,
        crop="centre square",
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),  # [-1, 1]: (pixel / 255 - 0.5) / 0.5 = (pixel - 127.5) / 127.5
        std=(0.5, 0.5, 0.5),
        num_classes=graph.tensors[graph.outputs[0]].shape[-1],
        softmax=softmax,
        file=str(path),
    )
    return model
