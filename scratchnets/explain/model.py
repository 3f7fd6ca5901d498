"""``explain_model(name, ...)``: a model's layers with their shapes, params, multiply-adds and
receptive fields, and, for one ``layer``, the op walk-through on that layer's real weights and
real input (``explain_op`` with the arrays the model hands it)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import models, nn
from ..backends import OP_BY_NAME, get_backend
from ..models.blocks import tf_same_padding
from ..models.quantized import QuantizedModel
from ..nn.init import skip_init
from ..profile.summary import summary
from .block import BlockExplanation, explain_block
from .core import Explanation, jsonable, num
from .ops import explain_op
from .receptive import receptive_fields


@dataclass
class ModelExplanation:
    """The table of layers (``rows``: name, type, output shape, params, mult-adds, receptive
    field) and, with ``layer``, that layer's op explanation."""

    model: str
    input_shape: tuple[int, ...]
    rows: list[dict]
    layer: Explanation | None = None
    block: BlockExplanation | None = None
    notes: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)  # files written by --save-maps

    @property
    def all_checked(self) -> bool:
        return all(part.all_checked for part in (self.layer, self.block) if part is not None)

    def text(self) -> str:
        if self.block is not None:  # the block's own chain instead of the model's table
            return "\n".join([f"== {self.model}, input {self.input_shape}", "",
                              self.block.text()])  # fmt: skip
        out = [f"== {self.model}, input {self.input_shape}", ""]
        header = ["layer", "type", "output", "params", "mult-adds", "RF (rows x cols)", "jump",
                  "start"]  # fmt: skip
        rows = self.rows
        if self.layer is not None:  # the explained layer's row only (the JSON keeps them all)
            rows = [r for r in self.rows if r["name"] == self.layer.case.get("layer")]
        cells = [[r["name"], r["type"], "x".join(map(str, r["output_shape"][1:])),
                  f"{r['params']:,}", f"{r['mult_adds']:,}", _rf_text(r),
                  "-" if r["jump"] is None else "x".join(f"{v:g}" for v in r["jump"]),
                  "-" if r["start"] is None else ", ".join(f"{v:g}" for v in r["start"])]
                 for r in rows]  # fmt: skip
        if cells:
            widths = [max(len(h), *(len(c[k]) for c in cells)) for k, h in enumerate(header)]
            out.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
            out += [
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells
            ]
            out += ["", *self.notes]
        if self.layer is not None:
            out += ["(the table of every layer: the same command without --layer)"]
        if self.saved:
            out += ["", "wrote " + ", ".join(self.saved)]
        if self.layer is not None:
            out += ["", self.layer.text()]
        return "\n".join(out)

    def to_dict(self) -> dict:
        data = asdict(self) | {"layer": None if self.layer is None else self.layer.to_dict(),
                               "block": None if self.block is None else self.block.to_dict()}  # fmt: skip
        return data

    def json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=jsonable)


def _rf_text(row: dict) -> str:
    if row["rf_size"] is None:  # a uint8 graph's layer: no field computed
        return "-"
    size = "x".join(f"{v:g}" for v in row["rf_size"])
    return size + (" (whole image)" if row["whole_image"] else "")


RECURRENCE_NOTES = [
    "RF: the input pixels one unit of the layer's output sees, by the standard recurrence",
    "  r_out = r_in + d*(k - 1)*j_in,  j_out = j_in * s,  start_out = start_in + (d*(k - 1)/2 - p)*j_in",
    "  (r: size, j: jump between neighbouring units in input pixels, start: centre of the first",
    "  unit's field; padding counts as virtual pixels past the edge). Branches take the union of",
    "  their inputs' fields; a global pooling (an SE or attention gate) lets every later unit see",
    "  the whole image. Rows: every conv / linear layer, and the other layers that change the",
    "  shape or the field.",
]


def build_model(name: str, weights: str | None = None) -> tuple[nn.Module, int]:
    """The model (published weights from ``weights``, else freshly initialised) and its input
    resolution (the weights' config, else 299 for Xception and 224 otherwise)."""
    if weights is not None:
        model = models.load_pretrained(weights)
        return model, int(model.pretrained_cfg.get("size", 224))  # the file's own input size
    default = 299 if models.registry.resolve_name(name) == "xception" else 224
    return models.create(name, rng=0), default


def layer_rows(model: nn.Module, input_shape) -> list[dict]:
    """One row per conv / linear layer and per other leaf layer whose output shape or receptive
    field differs from the row before (BN and activations are left out): params and
    multiply-adds (per image) from the counter, the receptive field from ``receptive_fields``."""
    counted = {}
    for row in summary(model, input_shape).rows:
        counted.setdefault(row.name, (row.params, row.macs))
    rows, last = [], None
    for f in receptive_fields(model, input_shape):
        key = (f.output_shape, f.size, f.jump, f.start, f.whole_image)
        params, macs = counted.get(f.name, (0, 0))
        if key == last and not macs:
            continue
        last = key
        rows.append(dict(name=f.name, type=f.type, output_shape=f.output_shape, params=params,
                         mult_adds=macs, rf_size=f.size, jump=f.jump, start=f.start,
                         whole_image=f.whole_image))  # fmt: skip
    return rows


def explain_model(
    name: str, resolution: int | None = None, layer: str | None = None,
    weights: str | None = None, image: str | None = None, seed: int = 0,
    save_maps: str | None = None, at=None, block: str | None = None,
) -> ModelExplanation:  # fmt: skip
    """The layer table of ``name`` and, with ``layer``, that layer explained on its real
    weights and on the input it receives for ``image`` (else for a seeded random image).
    ``save_maps``: a directory for the PNGs of ``save_maps_to``; ``at``: the element of the
    layer's output to write out."""
    if block is not None and (layer is not None or save_maps is not None):
        raise ValueError("--block walks a whole block: without --layer / --save-maps")
    needs_weights = any(v is not None for v in (layer, weights, save_maps, block))
    with nullcontext() if needs_weights else skip_init():  # the table reads no weight
        model, default = build_model(name, weights)
    R = default if resolution is None else int(resolution)
    if R < 1:
        raise ValueError(f"--resolution must be at least 1 pixel, got {R}")
    if isinstance(model, QuantizedModel):
        if save_maps is not None:
            raise ValueError("--save-maps draws a float model's maps: a uint8 graph has none")
        return explain_quantized_model(f"{name} ({weights})", model, R, layer, image, seed, at)
    shape = (1, 3, R, R)
    result = ModelExplanation(
        model=name if weights in (None, name) else f"{name} ({weights})",
        input_shape=shape,
        rows=layer_rows(model, shape),
        notes=list(RECURRENCE_NOTES),
    )
    if block is not None:
        module, block_x, _ = layer_input(model, block, model_input(model, R, image, seed))
        result.block = explain_block(module, block, block_x, seed, at)
        return result
    if layer is not None or save_maps is not None:  # one float64 forward serves both
        shown = layer if layer is not None else first_conv(model)[0]
        module, layer_x, layer_y = layer_input(model, shown, model_input(model, R, image, seed))
    if layer is not None:
        result.layer = explain_layer(module, layer, layer_x, layer_y, seed, at)
    if save_maps is not None:
        paths = save_maps_to(Path(save_maps), model, result, shown, layer_y, weights is None)
        result.saved = [str(p) for p in paths]
    return result


def first_conv(model) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def _where_in_the_layer(module) -> str:
    """Whether a layer's output is taken before or after its activation, in words."""
    if isinstance(module, nn.Conv2d):
        return "the conv's output, before any BN and activation"
    if activation_op(getattr(module, "act", None)) is not None:
        return f"after BN and its {activation_op(module.act)}"
    if isinstance(module, nn.BatchNorm2d):
        return "after BN, before any activation"
    if activation_op(module) is not None:
        return f"after the {activation_op(module)}"
    return f"the output of a {type(module).__name__}"


def save_maps_to(
    directory: Path, model, result: ModelExplanation, name: str, out, random_weights: bool
) -> list[Path]:
    """Writes ``<name>_feature_maps.png`` (``out``, the output of the layer ``name`` for one
    image), ``first_conv_filters.png`` and ``receptive_field.png``; returns their paths."""
    from .maps import filters_figure, maps_figure, receptive_field_figure, save

    first_name, conv = first_conv(model)
    out = np.asarray(out)
    if out.ndim != 4:
        raise ValueError(f"layer {name!r} has no feature maps: its output has shape {out.shape}")
    row = next((r for r in result.rows if r["name"] == name), None)
    field = "" if row is None else f", receptive field {_rf_text(row)} px"
    module = dict(model.named_modules())[name]
    weights = "random weights" if random_weights else "the file's weights"
    maps_title = (f"{result.model}: {name} ({type(module).__name__}), {_where_in_the_layer(module)}"
                  f"\noutput {'x'.join(map(str, out.shape[1:]))}{field}; {weights}; channels "
                  f"c0-c{min(out.shape[1], 64) - 1} of {out.shape[1]}")  # fmt: skip
    filters_title = (f"{result.model}: {first_name}, the first conv's filters "
                     f"{tuple(conv.weight.shape)}; {weights}")  # fmt: skip
    return [
        save(maps_figure(out[0], maps_title), directory / f"{name}_feature_maps.png"),
        save(
            filters_figure(conv.weight.data, filters_title, random_weights),
            directory / "first_conv_filters.png",
        ),  # fmt: skip
        save(
            receptive_field_figure(
                result.rows, result.input_shape[-1], f"{result.model}: receptive field by depth"
            ),  # fmt: skip
            directory / "receptive_field.png",
        ),
    ]


def model_input(model, resolution: int, image: str | None, seed: int) -> np.ndarray:
    """(1, 3, R, R) float64: ``image`` through the weights' preprocessing (or ImageNet's
    defaults), else a seeded standard normal image."""
    if image is None:
        return np.random.default_rng(seed).standard_normal((1, 3, resolution, resolution))
    return np.asarray(preprocessed(model, resolution, image), dtype=np.float64)


def preprocessed(model, resolution: int, image: str) -> np.ndarray:
    """(1, 3, R, R): ``image`` through the weights' preprocessing at the table's size (ImageNet's
    defaults without weights; a uint8 file's: the pixels themselves, as uint8)."""
    from .. import data

    cfg = dict(getattr(model, "pretrained_cfg", None) or {}, size=resolution)
    return np.asarray(data.pretrained_transforms(cfg)(np.asarray(data.open_rgb(image)))[None])


def layer_input(model, layer_name: str, x: np.ndarray):
    """(the module called ``layer_name``, the input it receives when the model runs on x, its
    output): the model runs in float64 on the reference backend, in eval mode."""
    modules = dict(model.named_modules())
    if layer_name not in modules:
        leaves = [n for n, m in model.named_modules() if n and not any(True for _ in m.children())]
        raise ValueError(
            f"no layer {layer_name!r} in {type(model).__name__}; layers are e.g. "
            f"{', '.join(leaves[:6])} ... ({len(leaves)} in all; `scratchnets summary` lists them)"
        )
    module = modules[layer_name]
    seen = {}
    forward = module.forward

    def recording(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen.setdefault("io", (args[0], out))
        return out

    model.to("reference", dtype=np.float64).eval()
    model.fast_eval = False
    module.forward = recording
    try:
        model(x)
    finally:
        del module.__dict__["forward"]
    if "io" not in seen:
        raise ValueError(f"layer {layer_name!r} is not called by the model's forward")
    return module, *seen["io"]


def explain_layer(module, layer_name: str, layer_x, layer_y, seed: int = 0, at=None):
    """The op walk-through of one layer on its real weights and the input ``layer_x`` it got in
    the model (``layer_input``); its y element is also checked against what the layer output
    there, ``layer_y`` (so the explanation explains the layer, not a look-alike)."""
    layer_x = np.asarray(layer_x, np.float64)
    arguments = _op_arguments(module, layer_x)
    if arguments is None:
        raise ValueError(
            f"layer {layer_name!r} is a {type(module).__name__}: explain takes a Conv2d, "
            "BatchNorm2d, Linear, an activation or a pooling layer (its blocks are made of them)"
        )
    op, kwargs = arguments
    explanation = explain_op(op, seed=seed, at=at, **kwargs)
    explanation.case = {"layer": layer_name, **explanation.case}
    y_element = next(e for e in explanation.elements if e.name == "y")
    actual = float(np.asarray(layer_y)[y_element.index])
    expected, then = y_element.value, ""
    act = getattr(module, "act", None)  # BatchNormAct2d: y = act(BN(x))
    op_name = activation_op(act)
    if op_name is not None:
        reference = get_backend("reference")
        expected = float(getattr(reference, f"{op_name}_forward")(np.array(expected))[0])
        then = f", after its {op_name} ({num(y_element.value)} -> {num(expected)})"
    if abs(actual - expected) > 1e-9 * max(1.0, abs(actual)):
        raise RuntimeError(
            f"layer {layer_name!r} output {actual} at {y_element.index}, but its explanation as "
            f"{op} gives {expected}: the layer does more than the op (please report)"
        )
    explanation.section(
        "this layer in the model",
        f"{layer_name} ({type(module).__name__}) output {actual:.6g} at {y_element.index} in the "
        f"model's own forward (float64, reference backend): the element below{then}",
    )
    return explanation


def activation_op(module) -> str | None:
    """The op an activation layer runs (the ``_op`` its class names, an op of the table's
    activations family); None for any other module."""
    op = getattr(type(module), "_op", None)
    return op if op in OP_BY_NAME and OP_BY_NAME[op].family == "activations" else None


def _op_arguments(module, x) -> tuple[str, dict] | None:
    """(op, explainer arguments) that reproduce ``module`` on its input x; None if unsupported."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or module._inference_only():
            return None
        padding = module._op_padding  # what its forward just used (TF "same" works it out then)
        b = None if module.bias is None else module.bias.data
        return "conv2d", dict(
            out_channels=module.out_channels, kernel=module.kernel_size, stride=module.stride,
            padding=padding, dilation=module.dilation, groups=module.groups, bias=b is not None,
            arrays={"x": x, "w": module.weight.data, "b": b},
        )  # fmt: skip
    if isinstance(module, nn.BatchNorm2d):
        state = {k: getattr(module, k) for k in ("running_mean", "running_var")}
        state |= {"weight": module.weight.data, "bias": module.bias.data}
        return "batch_norm2d", dict(training=False, eps=module.eps, arrays={"x": x, **state})
    if isinstance(module, nn.Linear):
        b = None if module.bias is None else module.bias.data
        return "linear", dict(out_features=module.out_features, bias=b is not None,
                              arrays={"x": x, "w": module.weight.data, "b": b})  # fmt: skip
    if isinstance(module, nn.Hardtanh):
        return "clip", dict(low=module.min_val, high=module.max_val, arrays={"x": x})
    if isinstance(module, nn.Softmax):
        return "softmax", dict(axis=module.dim, arrays={"x": x})
    if activation_op(module) is not None:
        return activation_op(module), dict(arrays={"x": x})
    if isinstance(module, nn.MaxPool2d):
        return "max_pool2d", dict(kernel=module.kernel_size, stride=module.stride,
                                  padding=module.padding, dilation=module.dilation,
                                  ceil_mode=module.ceil_mode, arrays={"x": x})  # fmt: skip
    if isinstance(module, nn.AvgPool2d):
        return "avg_pool2d", dict(kernel=module.kernel_size, stride=module.stride,
                                  padding=module.padding, ceil_mode=module.ceil_mode,
                                  count_include_pad=module.count_include_pad,
                                  divisor_override=module.divisor_override, arrays={"x": x})  # fmt: skip
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "adaptive_avg_pool2d", dict(output_size=module.output_size, arrays={"x": x})
    return None


# ---------------------------------------------------------------------------------- uint8 graphs


QUANTIZED_NOTES = [
    "A uint8 TFLite graph, run with integer arithmetic only (TFLite's reference kernels): its",
    "layers are the graph's ops by their TFLite names; params: uint8 weights and int32 biases;",
    "mult-adds: integer multiply-accumulates. --layer walks one of its integer ops (conv, add,",
    "average pool, softmax) on the real codes it receives: accumulator, multiplier, rounding,",
    "zero point and clamp.",
]


def quantized_input(model: QuantizedModel, resolution: int, image: str | None, seed: int):
    """(1, 3, R, R) uint8: ``image`` through the file's preprocessing (the pixels themselves,
    cropped and resized as TFLite's MobileNets expect), else seeded random codes."""
    if image is None:
        return np.random.default_rng(seed).integers(0, 256, (1, 3, resolution, resolution),
                                                    dtype=np.uint8)  # fmt: skip
    return preprocessed(model, resolution, image)


def quantized_rows(model: QuantizedModel, tensors: dict) -> list[dict]:
    """The table of a uint8 graph's layers: op, output shape, params, integer mult-adds."""
    rows = []
    for layer in model.layers:
        out, arguments = tensors[layer.output], layer.arguments
        params = macs = 0
        if layer.op == "quantized_conv2d":
            w, bias = arguments["w"], arguments["bias"]
            params = w.size + (0 if bias is None else bias.size)
            macs = int(np.prod(out.shape[1:])) * int(np.prod(w.shape[1:]))
        rows.append(dict(name=layer.name, type=layer.op, output_shape=tuple(out.shape),
                         params=params, mult_adds=macs, rf_size=None, jump=None, start=None,
                         whole_image=False))  # fmt: skip
    return rows


def explain_quantized_model(
    title: str, model: QuantizedModel, resolution: int, layer: str | None, image: str | None,
    seed: int, at=None,
) -> ModelExplanation:  # fmt: skip
    """The table of a uint8 graph's layers and, with ``layer``, that convolution walked through
    on the codes it receives in the model's own integer forward (checked against that forward's
    output at the element)."""
    model.to("reference")
    x = quantized_input(model, resolution, image, seed)
    tensors = model(x, return_all=True)
    result = ModelExplanation(title, tuple(x.shape), quantized_rows(model, tensors),
                              notes=list(QUANTIZED_NOTES))  # fmt: skip
    if layer is not None:
        result.layer = explain_quantized_layer(model, layer, tensors, seed, at)
    return result


def explain_quantized_layer(model: QuantizedModel, name: str, tensors: dict, seed: int, at=None):
    """The graph's layer ``name`` (a uint8 conv, add, average pool or softmax) explained by its
    integer op on the real codes, weights and quantization parameters it has in the model; its
    output element must equal the model's."""
    layers = {q.name: q for q in model.layers}
    if name not in layers:
        raise ValueError(
            f"no layer {name!r} in the uint8 graph; its layers are e.g. "
            f"{', '.join(list(layers)[:6])} ... ({len(layers)} in all)"
        )
    q = layers[name]
    if q.op == "reshape":
        raise ValueError(f"layer {name!r} is a reshape: it moves no number, nothing to walk")
    a, x = q.arguments, tensors[q.inputs[0]]
    padding = 0
    if q.same_padding is not None:  # TF "SAME", worked out for this input as the forward does
        (kh, kw), (sh, sw) = q.same_padding
        padding = (*tf_same_padding(x.shape[2], kh, sh), *tf_same_padding(x.shape[3], kw, sw))
    if q.op == "quantized_conv2d":
        arrays = {k: a[k] for k in ("w", "bias", "x_q", "w_q", "y_q")} | {"x": x}
        arguments = dict(stride=a["stride"], padding=padding, groups=a["groups"],
                         activation=a["activation"])  # fmt: skip
    elif q.op == "quantized_add":
        arrays = {k: a[k] for k in ("a_q", "b_q", "y_q")} | {"a": x, "b": tensors[q.inputs[1]]}
        arguments = dict(activation=a["activation"])
    elif q.op == "quantized_avg_pool2d":
        arrays, arguments = {"x": x}, dict(kernel=a["kernel_size"], stride=a["stride"],
                                           padding=padding)  # fmt: skip
    else:  # quantized_softmax
        arrays, arguments = {"x": x, "x_q": a["x_q"], "y_q": a["y_q"]}, dict(beta=a["beta"])
    e = explain_op(q.op, seed=seed, at=at, arrays=arrays, **arguments)
    e.case = {"layer": name, **e.case}
    y = next(el for el in e.elements if el.name == "y")
    y.index = tuple(int(i) for i in y.index)
    actual = int(tensors[q.output][y.index])
    if actual != y.value:
        raise RuntimeError(
            f"layer {name!r} output {actual} at {y.index}, but its explanation gives {y.value}: "
            "the layer does more than the op (please report)"
        )
    e.section("this layer in the model",
              f"{name} (uint8 {q.op}) output {actual} at {y.index} in the model's own integer "
              "forward: the element below")  # fmt: skip
    return e
