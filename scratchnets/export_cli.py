"""``scratchnets export keras | onnx SRC -o OUT``: a model in another framework's file format.

``export onnx SRC -o OUT.onnx [--input-size S]``: any model (``formats.onnx.export_onnx``: its
traced ops, BN folded), for ONNX Runtime; S defaults to the checkpoint's or file's input size.

``export keras SRC -o OUT.h5``: a model in the layout of keras.applications' own
weight files, which Keras loads (``keras.applications.MobileNet(alpha=..., weights="OUT.h5")``)
and ``load_pretrained`` reads back.

SRC is any weight file ``load_pretrained`` reads or a training checkpoint of ``scratchnets
train``, holding a keras_style MobileNet, MobileNetV2 or MobileNetV3 (a model fine-tuned here
from a Keras file is one), or Google's folded-BN MobileNetV1 of a ``.tflite`` file (the network
Keras' MobileNet was converted from: each folded bias becomes a BN that adds it, and the
"background" output is dropped for Keras' 1000 classes).
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a model in another framework's file format (keras, onnx)",
        description="Write the model of SRC (a weight file or a training checkpoint) in another "
        "framework's format: keras = the legacy HDF5 layout of keras.applications' downloads; "
        "onnx = an ONNX graph (opset 17, BN folded) for ONNX Runtime.",
    )
    p.add_argument("format", choices=("keras", "onnx"), help="the file format to write")
    p.add_argument("source", metavar="SRC", help="a weight file or a training checkpoint")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the file to write")
    p.add_argument("--input-size", type=int, metavar="S",
                   help="onnx: the H = W traced (default: the checkpoint's or file's size)")  # fmt: skip
    p.set_defaults(func=run)


def _model_of(path: Path, keras: bool = True):
    """``(model, width multiplier, input size, preprocessing, class names)`` of a training
    checkpoint or a weight file (``keras``: Google's folded TFLite MobileNetV1 unfolded into
    Keras' layers)."""
    from .models.checkpoint import CheckpointError
    from .models.keras_import import unfold_tf_mobilenet_v1
    from .train.evaluate import load_for_inference
    from .train.finetune import float_model

    if path.suffix.lower() == ".npz":
        try:
            model, meta = load_for_inference(path, "cpu")
            size = int(meta.get("image_size", 224))
            norm = meta.get("normalize", {})
            preprocessing = {"source": "scratchnets checkpoint", "size": size,
                             **{k: norm[k] for k in ("mean", "std") if k in norm}}  # fmt: skip
            return model, meta["width_mult"], size, preprocessing, meta.get("classes")
        except (CheckpointError, ValueError):
            pass  # a plain state dict: a weight file
    model = float_model(path)
    cfg = model.pretrained_cfg
    width, size = cfg.get("width_mult"), int(cfg.get("size", 224))
    preprocessing = {k: cfg[k] for k in ("source", "size", "resize", "crop", "crop_pct",
                                         "interpolation", "mean", "std") if k in cfg}  # fmt: skip
    if keras and cfg.get("architecture") == "tf_mobilenet_v1":
        model = unfold_tf_mobilenet_v1(model)
        print("its BatchNorm layers hold the graph's folded biases, not statistics: the file "
              "predicts as the graph does; fine-tune it with --freeze-backbone")  # fmt: skip
    return model, width, size, preprocessing, None


def run(args) -> int:
    if args.format == "onnx":
        return _run_onnx(args)
    from .formats.keras import write_legacy_h5
    from .models.keras_import import KERAS_APPLICATIONS, keras_architecture_of, keras_layers_of

    output = Path(args.output)
    try:
        model, width, *_ = _model_of(Path(args.source))
        arch = keras_architecture_of(model)
        layers = keras_layers_of(model)
        write_legacy_h5(output, layers)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    classes = layers[-1][1][-1][1].shape[0]
    print(f"wrote {output}: keras.applications.{KERAS_APPLICATIONS[arch]}(alpha={width:g}, "
          f"classes={classes}), {len(layers)} layers with weights, in the layout of Keras' own "
          "downloads")  # fmt: skip
    return 0


def _run_onnx(args) -> int:
    from .formats.onnx import export_onnx

    output = Path(args.output)
    try:
        model, _, size, preprocessing, classes = _model_of(Path(args.source), keras=False)
        size = args.input_size or size
        info = export_onnx(model, output, (1, 3, size, size),
                           preprocessing=preprocessing | {"size": size}, class_names=classes)  # fmt: skip
    except (FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {output}: ONNX opset 17, input (N, 3, {size}, {size}), {info['nodes']} nodes "
          f"({', '.join(info['ops'])}), {info['initializers']} initializers")  # fmt: skip
    return 0
