"""``scratchnets train``, ``scratchnets evaluate`` and ``scratchnets predict``.

    scratchnets train [--data DIR] [--recipe default|seed] [--model mobilenet_v2] [--width-mult A]
                      [--image-size S] [--train-scales F...] [--epochs E] [--batch-size B] [--optimizer NAME] [--lr LR]
                      [--schedule NAME] [--patience N] [--ema] [--teacher CKPT] [--seed N]
                      [--backend cpu|cuda|reference] [--time-limit MIN] [--out DIR] [--resume]
    scratchnets evaluate CHECKPOINT --data DIR [--tta flip] [--json]
    scratchnets predict CHECKPOINT IMAGE... [--top K] [--json]
    scratchnets predict --weights FILE IMAGE... [--top K] [--labels FILE] [--json]

Without ``--data``, ``train`` uses the downloaded ``cats_and_dogs_filtered`` (fetched into the
cache on first use, see ``scratchnets data download``). Flags override the recipe's values;
``--resume`` continues ``DIR/last.npz`` with the run's saved settings (only ``--time-limit``,
``--workers`` and ``--backend`` may change; other flags are an error). Exit status: 0, 130 after
an interrupt (Ctrl-C), 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..models.checkpoint import CheckpointError
from .config import MONITORS, OPTIMIZERS, RECIPES, SCHEDULES

#: CLI flag destination -> TrainConfig field
_CONFIG_FLAGS = {
    "model": "model",
    "width_mult": "width_mult",
    "image_size": "image_size",
    "train_scales": "train_scales",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "schedule": "schedule",
    "warmup_epochs": "warmup_epochs",
    "label_smoothing": "label_smoothing",
    "augment": "augment",
    "patience": "patience",
    "monitor": "monitor",
    "ema": "ema",
    "teacher": "teacher",
    "seed": "seed",
    "backend": "backend",
    "time_limit": "time_limit_min",
    "workers": "workers",
    "init": "init",
    "freeze_backbone": "freeze_backbone",
    "head_only_epochs": "head_only_epochs",
    "backbone_lr_scale": "backbone_lr_scale",
}
_BACKENDS = ("cpu", "cuda", "reference")


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_predict(subparsers)


def _register_train(subparsers) -> None:
    from ..data import POLICIES

    p = subparsers.add_parser(
        "train",
        help="train a model on a folder of class images (default: Cats vs Dogs)",
        description="Train from scratch with per-epoch validation, early stopping, best/last "
        "checkpoints (written atomically), history CSV/JSON/PNG, and bit-for-bit --resume. "
        "Flags override the recipe (default: mobilenet_v2 x0.5 at 128 px, crops growing from 96 px, "
        "AdamW + cosine, 120 epochs, "
        "30-minute limit; `--recipe seed`: MobileNetV2, RMSprop, early stopping patience 3).",
    )
    p.add_argument("--data", metavar="DIR", help="dataset folder (default: the downloaded one)")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="starting settings (default: default)")
    p.add_argument("--model", help="architecture (scratchnets.models.list_models())")
    p.add_argument("--width-mult", type=float, metavar="A", help="channel width multiplier")
    p.add_argument(
        "--image-size", type=int, metavar="S",
        help="crop size in pixels for evaluation, the checkpoint and the last training stage",
    )  # fmt: skip
    p.add_argument(
        "--train-scales", type=float, nargs="+", metavar="F",
        help="progressive resizing: training crops of these fractions of --image-size, one per "
        "equal stage of the epochs (default recipe: 0.75 0.875 1; 1: no resizing)",
    )  # fmt: skip
    p.add_argument("--epochs", type=int, metavar="E")
    p.add_argument("--batch-size", type=int, metavar="B")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="rmsprop_tf = Keras' RMSprop")
    p.add_argument("--lr", type=float, metavar="LR", help="peak learning rate")
    p.add_argument("--weight-decay", type=float, metavar="WD")
    p.add_argument("--schedule", choices=SCHEDULES, help="per-step lr schedule")
    p.add_argument("--warmup-epochs", type=float, metavar="E", help="cosine warmup length")
    p.add_argument("--label-smoothing", type=float, metavar="EPS")
    p.add_argument("--augment", choices=POLICIES, help="training augmentation policy")
    p.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="stop after N epochs without improvement of --monitor (0: never)",
    )
    p.add_argument(
        "--monitor", choices=sorted(MONITORS), help="metric for early stopping and `best`"
    )
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep an EMA of the weights and validate / export it",
    )
    p.add_argument("--teacher", metavar="CKPT", help="distil from this training checkpoint")
    p.add_argument(
        "--init",
        metavar="FILE",
        help="start from published weights (torchvision / timm .pth, .safetensors, .npz, float "
        ".tflite): the classifier is rebuilt for the data's classes; model, width, image size "
        "and normalisation default to the file's, the recipe to `finetune`",
    )
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        default=None,
        help="with --init: train the classifier only (backbone weights and BN statistics fixed)",
    )
    p.add_argument(
        "--head-only-epochs",
        type=int,
        metavar="N",
        help="with --init: train the classifier only for the first N epochs",
    )
    p.add_argument(
        "--backbone-lr-scale",
        type=float,
        metavar="S",
        help="with --init: the backbone trains at lr * S (finetune recipe: 0.1)",
    )
    p.add_argument("--seed", type=int, metavar="N")
    p.add_argument("--backend", choices=_BACKENDS, help="op backend (default: cpu if available)")
    p.add_argument(
        "--time-limit", type=float, metavar="MIN", help="stop cleanly after MIN minutes (0: none)"
    )
    p.add_argument("--workers", type=int, metavar="N", help="data loader threads")
    p.add_argument("--out", default="runs/train", metavar="DIR", help="output folder")
    p.add_argument("--resume", action="store_true", help="continue DIR/last.npz bit for bit")
    p.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop (resumably) after N steps of this invocation (smoke tests)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)


def _register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy, loss, per-class accuracy and confusion matrix of a checkpoint",
        description="Evaluate a training checkpoint on DIR (one sub-folder per class).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--data", required=True, metavar="DIR", help="one sub-folder per class")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=int, default=64, metavar="B")
    p.add_argument("--backend", choices=_BACKENDS)
    p.add_argument(
        "--tta", choices=("flip",),
        help="test-time augmentation: flip averages each image's softmax with its mirror "
        "image's (reported as such; the default is one crop)",
    )  # fmt: skip
    p.set_defaults(func=run_evaluate)


def _register_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="class and probability for each image",
        usage="scratchnets predict CHECKPOINT IMAGE... | --weights FILE IMAGE... [options]",
        description="Classify images with a training checkpoint, or with published weights "
        "(--weights: torchvision / timm .pth, .safetensors, .npz, float or uint8 .tflite; a "
        "uint8 model computes TFLite's integer arithmetic bit for bit) using their source's "
        "preprocessing and ImageNet class names.",
    )
    p.add_argument("inputs", nargs="+", metavar="CHECKPOINT IMAGE... | IMAGE")
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="published weights instead of a checkpoint; every positional is an image",
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per line (default: labels.txt / imagenet_labels.txt beside "
        "--weights, else torchvision's ImageNet names)",
    )
    p.add_argument(
        "--top", type=int, metavar="K", help="the K most probable classes (default 5 with "
        "--weights, else 1)"
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.add_argument("--backend", choices=_BACKENDS)
    p.set_defaults(func=run_predict)


def _error(message) -> int:
    """One line on stderr and exit status 1; called in an ``except`` block, it re-raises there
    under ``--debug``."""
    from ..cli import debugging

    if debugging() and sys.exc_info()[1] is not None:
        raise
    print(f"error: {message}", file=sys.stderr)
    return 1


def _check_writable(out_dir: str) -> None:
    """Create ``out_dir`` and write a probe file into it, or fail before any training."""
    import tempfile
    from pathlib import Path

    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot write the output folder {out_dir}: {exc.strerror or exc}; choose another "
            "--out DIR"
        ) from exc


def _defaults_from_init(path: str) -> dict:
    """The config fields a weight file decides unless a flag says otherwise: architecture,
    width, the options its numerics need (a Keras file's ``keras_style``), input size and
    normalisation (the source's preprocessing)."""
    from .finetune import describe_init

    cfg = describe_init(path)
    return {
        "model": cfg["architecture"],
        "width_mult": cfg.get("width_mult") or 1.0,
        "model_options": dict(cfg.get("options", {})),
        "image_size": int(cfg.get("size", 224)),
        "input_mean": tuple(cfg["mean"]) if "mean" in cfg else None,
        "input_std": tuple(cfg["std"]) if "std" in cfg else None,
    }


def run_train(args) -> int:
    from .config import recipe
    from .evaluate import default_backend
    from .loop import fit

    given = {
        field: getattr(args, flag)
        for flag, field in _CONFIG_FLAGS.items()
        if getattr(args, flag) is not None
    }
    from ..data import DownloadError

    try:
        _check_writable(args.out)
        if args.resume:
            if args.recipe is not None:
                given["recipe"] = args.recipe  # reported as not changeable by fit
            result = fit(
                None,
                args.data,
                args.out,
                resume=True,
                overrides=given,
                max_steps=args.max_steps,
                progress=not args.quiet,
            )
        else:
            given.setdefault("backend", default_backend())
            if args.init:
                given = _defaults_from_init(args.init) | given
            config = recipe(args.recipe or ("finetune" if args.init else "default"), **given)
            result = fit(
                config, args.data, args.out, max_steps=args.max_steps, progress=not args.quiet
            )
    except DownloadError as exc:
        return _error(f"{exc}. --data DIR takes a local folder with one sub-folder per class")
    except (CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as exc:
        return _error(exc)
    return 130 if result.status == "interrupted" else 0


def run_evaluate(args) -> int:
    from .evaluate import evaluate_checkpoint, format_report

    try:
        result = evaluate_checkpoint(
            args.checkpoint, args.data, batch_size=args.batch_size, backend=args.backend,
            flip=args.tta == "flip",
        )  # fmt: skip
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return _error(exc)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def run_predict(args) -> int:
    from .evaluate import predict_images, predict_pretrained

    top = args.top if args.top is not None else (5 if args.weights else 1)
    if top < 1:
        return _error(f"--top must be at least 1, got {top}")
    try:
        if args.weights:
            results, info = predict_pretrained(
                args.weights, args.inputs, top, labels=args.labels, backend=args.backend
            )
            if not args.json:
                print(f"{info['weights']} ({info['source']}, {info['classes']} classes; "
                      f"names: {info['labels']})")  # fmt: skip
        elif args.labels:
            return _error("--labels applies to --weights; a checkpoint holds its class names")
        elif len(args.inputs) < 2:
            return _error("give a CHECKPOINT and at least one IMAGE (or --weights FILE IMAGE...)")
        else:
            results = predict_images(args.inputs[0], args.inputs[1:], args.backend, top)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return _error(exc)
    failed = 0
    for r in results:
        if "error" in r:
            failed += 1
            print(f"{r['image']}: error: {r['error']}", file=sys.stderr)
        elif args.json:
            print(json.dumps(r))
        elif top == 1:
            print(f"{r['image']}: {r['class']} ({r['probability']:.4f})")
        else:
            print(f"{r['image']}:")
            for rank, entry in enumerate(r["top"], 1):
                print(f"  {rank}. {entry['class']} ({entry['probability']:.4f})")
            if len(r["top"]) < top:
                print(f"  (the other {r['zero_probability']} classes have probability 0)")
    return 1 if failed else 0
