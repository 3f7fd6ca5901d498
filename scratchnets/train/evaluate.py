"""Evaluate a model on labelled images, and classify single images, from a training checkpoint.

Metrics over ``n`` images with true labels ``y_i`` and logits ``z_i`` (K classes)::

    loss      = (1 / n) sum_i [logsumexp(z_i) - z_i[y_i]]     plain cross-entropy, no smoothing
    accuracy  = (1 / n) sum_i [argmax z_i == y_i]
    confusion[t, p] = #{i : y_i = t, argmax z_i = p}           rows: true class, columns: predicted
    per_class_accuracy[c] = confusion[c, c] / sum_p confusion[c, p]

(``torch.nn.functional.cross_entropy`` with ``reduction="mean"``; the log-sum-exp is taken in
float64 with the row maximum subtracted.) Images go through the checkpoint's evaluation
pipeline: shorter side to ``round(S / 0.875)``, centre crop ``S``, normalisation, as in training.

Flip test-time augmentation (``flip=True``, ``evaluate --tta flip``) classifies each crop and its
mirror image and averages the two softmax outputs ``p_i``; the metrics above then read
``log p_i`` for ``z_i`` (already normalised, so the loss is ``-log p_i[y_i]``). It is an option
reported as such: the default numbers are one crop per image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .. import data, models
from ..arrays import to_numpy
from ..nn.module import DEVICE_BACKENDS
from .checkpointing import load_checkpoint, load_weights_into


def default_backend() -> str:
    """ "cpu" (the Numba kernels) when they import, else "reference"."""
    try:
        import scratchnets.kernels.cpu  # noqa: F401
    except ImportError:
        return "reference"
    return "cpu"


def as_input(x: np.ndarray, model):
    """``x`` as the array kind ``model``'s backend takes: a device copy on "cuda", else ``x``."""
    if model.backend in DEVICE_BACKENDS:
        from numba import cuda  # only when the model runs on the GPU

        return cuda.to_device(np.ascontiguousarray(x))
    return x


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    """``z - logsumexp(z)`` per row, in float64: (N, K) -> (N, K)."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)  # (N, K), max 0 per row: exp cannot overflow
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


class MetricAccumulator:
    """Running sums of the metrics above over batches of (logits (N, K), labels (N,))."""

    def __init__(self, num_classes: int):
        self.loss_sum = 0.0
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        logp = log_softmax64(logits)  # (N, K)
        self.loss_sum += float(-logp[np.arange(len(labels)), labels].sum())
        np.add.at(self.confusion, (labels, logp.argmax(axis=1)), 1)

    def result(self, classes: Sequence[str]) -> dict:
        n = int(self.confusion.sum())
        if n == 0:
            raise ValueError("no images were evaluated (all unreadable, or an empty folder)")
        per_class_n = self.confusion.sum(axis=1)
        diag = np.diag(self.confusion)
        return {
            "n": n,
            "accuracy": float(diag.sum() / n),
            "loss": self.loss_sum / n,
            "classes": list(classes),
            "per_class_accuracy": {
                name: (float(diag[c] / per_class_n[c]) if per_class_n[c] else None)
                for c, name in enumerate(classes)
            },
            "per_class_n": {name: int(per_class_n[c]) for c, name in enumerate(classes)},
            "confusion_matrix": self.confusion.tolist(),
        }


def evaluate_model(model, batches: Iterable, classes: Sequence[str], flip: bool = False) -> dict:
    """Metrics of ``model`` (put in eval mode, then restored) over ``(x, y)`` batches; with
    ``flip``, of the mean softmax of each image and its mirror image (module docstring)."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(len(classes))
    try:
        for x, y in batches:
            if flip:  # the log of the mean of the two softmax outputs
                mean = (_probabilities(model, x) + _probabilities(model, x[..., ::-1])) / 2
                acc.add(np.log(mean), y)
            else:
                acc.add(to_numpy(model(as_input(x, model))), y)
    finally:
        model.train(was_training)
    result = acc.result(classes)
    result["tta"] = "flip" if flip else None
    return result


def model_from_meta(meta: dict, backend: str):
    """A freshly built model of the architecture a checkpoint's ``model`` entry describes (for
    one fine-tuned from an ONNX graph, the graph of the file its options name)."""
    from .finetune import build

    model = build(meta["name"], int(meta["num_classes"]), float(meta["width_mult"]),
                  **meta.get("options", {}))  # fmt: skip
    return model.to(backend)


def load_for_inference(path: str | Path, backend: str | None = None):
    """``(model in eval mode with the checkpoint's evaluation weights, checkpoint model entry)``.

    The evaluation weights are the EMA's when the run used EMA (``meta["eval_weights"]``).
    """
    ckpt = load_checkpoint(path)
    if "model" not in ckpt or "weights" not in ckpt:
        raise ValueError(f"{str(path)!r} has no model entry: not a training checkpoint")
    meta = ckpt["model"]
    model = model_from_meta(meta, backend or default_backend())
    weights = ckpt.get(meta.get("eval_weights", "weights")) or ckpt["weights"]
    load_weights_into(model, weights, str(path), meta)
    return model.eval(), meta


def _eval_pipeline(meta: dict):
    norm = meta.get("normalize", {})
    return data.eval_transforms(
        int(meta["image_size"]),
        norm.get("mean", data.IMAGENET_MEAN),
        norm.get("std", data.IMAGENET_STD),
    )


def evaluate_checkpoint(
    path: str | Path,
    data_dir: str | Path,
    batch_size: int = 64,
    backend: str | None = None,
    workers: int = 1,
    flip: bool = False,
) -> dict:
    """Metrics of the checkpoint at ``path`` on ``data_dir`` (one sub-folder per class); with
    ``flip``, flip test-time augmentation (module docstring).

    The folder's classes must be among the checkpoint's; label ``i`` is the checkpoint's class
    ``i`` whatever folders are present. Unreadable images are skipped with a warning.
    """
    model, meta = load_for_inference(path, backend)
    images = data.list_images(data_dir, classes=meta["classes"])
    dataset = data.ImageFolderDataset(images, int(meta["image_size"]), name=str(data_dir))
    loader = data.DataLoader(
        dataset, batch_size, shuffle=False, transforms=_eval_pipeline(meta), workers=workers
    )
    result = evaluate_model(model, loader, meta["classes"], flip)
    result["checkpoint"] = str(path)
    result["data"] = str(data_dir)
    result["skipped"] = len(dataset.skipped)
    return result


def format_report(result: dict) -> str:
    """Human-readable accuracy, loss, per-class accuracy and the confusion matrix."""
    classes = result["classes"]
    width = max(8, *(len(c) for c in classes)) + 1
    lines = [
        f"{result['checkpoint']} on {result['data']}: {result['n']} images",
        f"accuracy {result['accuracy']:.4f}   loss {result['loss']:.4f}"
        + (
            "   (flip TTA: the mean of each image and its mirror image)"
            if result.get("tta")
            else ""
        ),
        "per-class accuracy:",
    ]
    for name in classes:
        acc = result["per_class_accuracy"][name]
        shown = "   n/a" if acc is None else f"{acc:.4f}"
        lines.append(f"  {name:<{width}}{shown}  ({result['per_class_n'][name]} images)")
    lines.append("confusion matrix (rows: true, columns: predicted):")
    lines.append(" " * (width + 2) + "".join(f"{c:>{width}}" for c in classes))
    for name, row in zip(classes, result["confusion_matrix"], strict=True):
        lines.append(f"  {name:<{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def _probabilities(model, x: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities: the softmax of a float model's logits, or what a uint8
    model's quantized softmax output stands for (``QuantizedModel.real_output``)."""
    if hasattr(model, "real_output"):
        real = model.real_output(model(x))
        return real if model.pretrained_cfg.get("softmax") else np.exp(log_softmax64(real))
    return np.exp(log_softmax64(to_numpy(model(as_input(x, model)))))


def _classify(
    model, pipeline, images, classes: Sequence[str], top: int, every_class: bool
) -> list[dict]:
    """Softmax of ``model``'s logits for each image file after ``pipeline``: one dict per image,
    ``{"image", "class", "probability", "top": [{"class", "index", "probability"}, ...],
    "zero_probability"}`` (the ``top`` most probable, best first, without the classes of
    probability exactly 0 (ties, not a ranking), whose count is ``zero_probability``; with
    ``every_class`` also ``"probabilities"``, a dict of every class's), or ``{"image", "error"}``
    for a file that cannot be decoded."""
    out = []
    for image in images:
        try:
            pixels = np.asarray(data.open_rgb(image))
        except (data.CorruptImageError, OSError) as exc:
            out.append({"image": str(image), "error": str(exc)})
            continue
        x = pipeline(pixels)[None]  # (1, 3, S, S)
        probs = _probabilities(model, x)[0]  # (K,)
        best = np.argsort(-probs, kind="stable")[: max(1, top)]
        # classes at probability exactly 0 tie and rank nothing (a uint8 softmax rounds most of
        # the 1000 classes to 0): only the best one is listed whatever its probability
        best = [k for rank, k in enumerate(best) if rank == 0 or probs[k] > 0]
        ranked = [
            {"class": classes[k], "index": int(k), "probability": float(probs[k])} for k in best
        ]
        result = {
            "image": str(image),
            "class": ranked[0]["class"],
            "probability": ranked[0]["probability"],
            "top": ranked,
            "zero_probability": int(np.sum(probs == 0)),
        }
        if every_class:
            result["probabilities"] = dict(zip(classes, map(float, probs), strict=True))
        out.append(result)
    return out


def predict_images(
    path: str | Path, images: Sequence[str | Path], backend: str | None = None, top: int = 1
) -> list[dict]:
    """Class and probability (softmax of the logits) per image file, for a training checkpoint.

    Returns one dict per image: ``{"image", "class", "probability", "top", "probabilities"}``
    (``probabilities``: every class's), or ``{"image", "error"}`` for a file that cannot be
    decoded.
    """
    model, meta = load_for_inference(path, backend)
    return _classify(model, _eval_pipeline(meta), images, meta["classes"], top, every_class=True)


def predict_pretrained(
    weights: str | Path,
    images: Sequence[str | Path],
    top: int = 5,
    labels: str | Path | None = None,
    backend: str | None = None,
) -> tuple[list[dict], dict]:
    """The ``top`` classes of each image for published weights (any file ``load_pretrained``
    reads), with the source's own preprocessing (``data.pretrained_transforms``) and class names
    (``models.labels.class_names``).

    Returns ``(results, info)``: one dict per image as ``predict_images`` gives (without the
    full ``probabilities``), and ``{"weights", "source", "classes", "labels", "preprocessing"}``.
    """
    from ..models.labels import class_names

    model = models.load_pretrained(weights).to(backend or default_backend()).eval()
    cfg = model.pretrained_cfg
    if not cfg.get("include_top", True):
        raise ValueError(
            f"{weights} has no classifier (a _no_top file: the features only), so it names no "
            "classes; fine-tune it on your classes with scratchnets train --init FILE"
        )
    pipeline = data.pretrained_transforms(cfg)
    names, labels_source = class_names(int(cfg["num_classes"]), weights, labels,
                                       cfg.get("class_names"))  # fmt: skip
    results = _classify(model, pipeline, images, names, top, every_class=False)
    info = {
        "weights": str(weights),
        "source": cfg.get("source", "unknown"),
        "classes": len(names),
        "labels": labels_source,
        "preprocessing": repr(pipeline).replace("\n", ""),
    }
    return results, info
