"""Training: the loop, checkpoints, history, evaluation and the train / evaluate / predict commands.

    from scratchnets import train
    config = train.recipe("default", epochs=5)              # or train.recipe("seed")
    result = train.fit(config, "../shared/data/cats_vs_dogs", "runs/cvd")
    result = train.fit(None, None, "runs/cvd", resume=True)  # after Ctrl-C or a kill
    train.evaluate_checkpoint("runs/cvd/best.npz", "../shared/data/cats_vs_dogs/val")

Modules: ``config`` (``TrainConfig``, the recipes and why), ``loop`` (``fit``), ``checkpointing``
(the atomic ``.npz`` + JSON checkpoint format), ``history`` (CSV / JSON / PNG), ``evaluate``
(metrics, ``predict_images``), ``cli`` (the commands).
"""

from __future__ import annotations

from .checkpointing import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from .config import RECIPES, TrainConfig, recipe
from .evaluate import evaluate_checkpoint, evaluate_model, load_for_inference, predict_images
from .history import plot_history, write_history
from .loop import FitResult, Trainer, fit

__all__ = [
    "CheckpointError",
    "FitResult",
    "RECIPES",
    "TrainConfig",
    "Trainer",
    "atomic_write",
    "evaluate_checkpoint",
    "evaluate_model",
    "fit",
    "load_checkpoint",
    "load_for_inference",
    "plot_history",
    "predict_images",
    "recipe",
    "save_checkpoint",
    "write_history",
]
