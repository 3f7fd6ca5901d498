"""``scratchnets explain OP|MODEL``: step through one op call (or a model) with its numbers."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from .ops import EXPLAINERS, explain_op

#: command-line option -> explainer argument, for the options an op may take
OP_OPTIONS = {
    "input": "input",
    "out_channels": "out_channels",
    "kernel": "kernel",
    "stride": "stride",
    "padding": "padding",
    "dilation": "dilation",
    "groups": "groups",
    "no_bias": "bias",
    "out_features": "out_features",
    "eval": "training",
    "ceil_mode": "ceil_mode",
    "exclude_pad": "count_include_pad",
    "divisor_override": "divisor_override",
    "output_size": "output_size",
    "size": "size",
    "mode": "mode",
    "value": "value",
    "p": "p",
    "label_smoothing": "label_smoothing",
    "start": "start",
    "stop": "stop",
    "activation": "activation",
    "low": "low",
    "high": "high",
    "axis": "axis",
    "at": "at",
}


def sizes(text: str) -> tuple[int, ...]:
    """``"1x4x7x7"`` or ``"1,4,7,7"`` -> (1, 4, 7, 7)."""
    try:
        return tuple(int(v) for v in text.replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 3 or 3x2, got {text!r}") from None


def int_or_pair(text: str):
    """``"3"`` -> 3, ``"3x2"`` -> (3, 2)."""
    values = sizes(text)
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    return values[0] if len(values) == 1 else values


def padding(text: str):
    """``"1"``, ``"1x2"`` (ph x pw) or ``"2x1x1x2"`` (top x bottom x left x right)."""
    values = sizes(text)
    if len(values) not in (1, 2, 4):
        raise argparse.ArgumentTypeError(f"expected P, PHxPW or TxBxLxR, got {text!r}")
    return values[0] if len(values) == 1 else values


def register(subparsers) -> None:
    from ..models import list_models

    p = subparsers.add_parser(
        "explain",
        help="step through an op or a model with its numbers: equations, elements, receptive fields",
        usage="scratchnets explain OP [case options] | MODEL [--resolution R] [--layer NAME] "
        "[--weights FILE] [--image IMG] [--save-maps DIR] | model.onnx [--layer NAME] ...",
        description="Explain OP for a concrete case: the output-size arithmetic, params and "
        "multiply-adds (checked against the counter), the forward and backward equations with "
        "the case's numbers, the reference code's lines, and single elements of y, dx and dw "
        "written out as their sums and checked against the reference op and torch. "
        f"OP: {', '.join(sorted(EXPLAINERS))}. Or explain MODEL ({', '.join(list_models())}): "
        "its layers with shapes, params, multiply-adds and receptive fields; --layer walks "
        "through one layer on its real weights and real input; --save-maps writes PNGs. A model file "
        "(an ONNX graph: model.onnx) in MODEL's place is explained the same way, its layers named "
        "after its nodes.",
    )
    p.add_argument("target", metavar="OP|MODEL", help="the op or model to explain")
    p.add_argument("--input", type=sizes, help="input shape, e.g. 1x4x7x7 (N x C x H x W)")
    p.add_argument("--out-channels", type=int, help="conv2d: output channels")
    p.add_argument("--kernel", type=int_or_pair, help="kernel size: 3 or 1x3")
    p.add_argument("--stride", type=int_or_pair, help="stride: 2 or 2x1")
    p.add_argument("--padding", type=padding,
                   help="padding per side: 1, 0x1, or for pad2d top x bottom x left x right")  # fmt: skip
    p.add_argument("--dilation", type=int_or_pair, help="dilation: 1 or 2x1")
    p.add_argument("--groups", type=int, help="conv2d: groups (= C_in: depthwise)")
    p.add_argument("--no-bias", action="store_false", dest="no_bias", default=None,
                   help="conv2d / linear: without a bias")  # fmt: skip
    p.add_argument("--out-features", type=int, help="linear: output features")
    p.add_argument("--eval", action="store_false", dest="eval", default=None,
                   help="batch_norm2d / dropout: eval mode (default: training)")  # fmt: skip
    p.add_argument(
        "--ceil-mode",
        action="store_true",
        default=None,
        help="pooling: round the number of windows up (torch's ceil_mode)",
    )
    p.add_argument(
        "--exclude-pad",
        action="store_false",
        dest="exclude_pad",
        default=None,
        help="avg_pool2d: divide by the real pixels only (count_include_pad=False)",
    )
    p.add_argument("--divisor-override", type=int, help="avg_pool2d: divide every window by it")
    p.add_argument("--output-size", type=int_or_pair, help="adaptive pooling: 3 or 3x4")  # fmt: skip
    p.add_argument("--size", type=int_or_pair, help="upsample: output size, 5 or 5x7")
    p.add_argument("--mode", choices=("constant", "reflect", "replicate", "circular"),
                   help="pad2d: padding mode")  # fmt: skip
    p.add_argument("--value", type=float, help="pad2d: the constant mode's value")
    p.add_argument("--p", type=float, help="dropout: drop probability")
    p.add_argument("--label-smoothing", type=float, help="cross_entropy: label smoothing")
    p.add_argument("--start", type=int, help="slice: first channel kept")
    p.add_argument("--stop", type=int, help="slice: one past the last channel kept")
    p.add_argument("--low", type=float, help="clip: the lower bound (default -1; -inf allowed)")
    p.add_argument("--high", type=float, help="clip: the upper bound (default 1; inf allowed)")
    p.add_argument("--axis", type=int, help="softmax: the axis of each distribution (default 1)")
    p.add_argument("--activation", choices=("RELU", "RELU6"),
                   help="quantized_conv2d / quantized_add: the fused activation's clamp")  # fmt: skip
    p.add_argument("--at", type=sizes, help="the output element to write out, e.g. 0,1,2,2 "
                   "(also with a MODEL's --layer)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs and dy (default 0)")
    model = p.add_argument_group("MODEL options")
    model.add_argument("--resolution", type=int, help="input H = W (default: the weights' size, "
                       "else 224; 299 for xception)")  # fmt: skip
    model.add_argument("--layer", metavar="NAME", help="walk through this layer (a name from "
                       "the table or `scratchnets summary`)")  # fmt: skip
    model.add_argument("--block", metavar="NAME", help="walk through a whole block (e.g. "
                       "mobilenet_v2's features.2, ghostnetv2_100's blocks.3.0.ghost1): its ops, "
                       "their counts, its output and input gradient checked against torch")  # fmt: skip
    model.add_argument("--weights", metavar="FILE", help="published weights (any file "
                       "`scratchnets predict --weights` reads)")  # fmt: skip
    model.add_argument("--image", metavar="IMG", help="the input image (default: seeded noise)")
    model.add_argument("--save-maps", metavar="DIR", help="write the layer's (else the first "
                       "conv's) feature maps, the first conv's filters and the receptive field "
                       "by depth as PNGs")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=run_explain)


MODEL_OPTIONS = ("resolution", "layer", "block", "weights", "image", "save_maps")


def _flag(option: str) -> str:
    return {"no_bias": "--no-bias"}.get(option, f"--{option.replace('_', '-')}")


def run_explain(args) -> int:
    from ..models import list_models

    if args.target in list_models() or Path(args.target).is_file():  # a name, or a model file
        return run_explain_model(args)
    for option in MODEL_OPTIONS:
        if getattr(args, option) is not None:
            raise ValueError(f"{_flag(option)} applies to a MODEL, not to the op {args.target}")
    if args.target not in EXPLAINERS:
        raise ValueError(
            f"unknown op or model {args.target!r}; ops: {', '.join(sorted(EXPLAINERS))}; "
            f"models: {', '.join(list_models())}"
        )
    accepted = inspect.signature(EXPLAINERS[args.target]).parameters
    arguments = {"seed": args.seed}
    for option, name in OP_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(f"{_flag(option)} does not apply to {args.target}")
        arguments[name] = value
    explanation = explain_op(args.target, **arguments)
    print(explanation.json() if args.json else explanation.text())
    return 0 if explanation.all_checked else 1


def run_explain_model(args) -> int:
    from .model import explain_model

    for option in OP_OPTIONS:
        if option != "at" and getattr(args, option) is not None:
            raise ValueError(f"{_flag(option)} applies to an OP, not to the model {args.target}")
    if args.at is not None and args.layer is None and args.block is None:
        raise ValueError(
            "--at picks the element of --layer's (or --block's) output to write out: give one"
        )
    weights = args.weights
    if Path(args.target).is_file():  # an ONNX graph (or any weight file) is its own model
        if weights is not None:
            raise ValueError(f"{args.target} is a model file: give it alone, without --weights")
        weights = args.target
    result = explain_model(
        args.target, resolution=args.resolution, layer=args.layer, weights=weights,
        image=args.image, seed=args.seed, save_maps=args.save_maps, at=args.at, block=args.block,
    )  # fmt: skip
    print(result.json() if args.json else result.text())
    return 0 if result.all_checked else 1
