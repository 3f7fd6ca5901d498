"""The training loop: ``fit(config, data, out_dir)``.

One step on a batch ``(x (N, 3, S, S), y (N,))``::

    z = model(x)                                   train mode: BN batch statistics, dropout
    loss = CE_smooth(z, y)        or  alpha CE + (1 - alpha) tau^2 KL(teacher || student)
    model.backward(dloss/dz)                       accumulates every parameter's .grad
    [clip_grad_norm_]  optimizer.step()  zero_grad()  scheduler.step()  [ema.update]

Each epoch ends with a validation pass (eval mode; the EMA weights when EMA is on), a history
row, the ``best`` checkpoint when the monitored metric improved, and the ``last`` checkpoint.
The validation set is used for nothing else: early stopping and choosing ``best``.

Stopping, all clean (``last`` is written, and the message says how to go on):

* the epochs run out (``finished``), or early stopping: ``patience`` epochs in a row without an
  improvement of ``monitor`` (``val_loss``: lower is better; ``val_accuracy``: higher; ties are
  no improvement, Keras' ``EarlyStopping`` with ``min_delta=0``);
* the time limit (minutes of wall clock in this invocation): checked after every step; also, at
  an epoch's end, a next epoch that would not fit (judged by the last epoch's duration) is not
  started. Resumable;
* Ctrl-C (SIGINT) or SIGTERM: the current step finishes, ``last`` is written, ``fit`` returns
  ``"interrupted"`` (a second Ctrl-C aborts at once). Resumable;
* ``max_steps`` optimizer steps in this invocation (for tests and smoke runs). Resumable.

Reproducibility: every random choice depends on the seed and the position in the run -- the
model's initialisation on ``seed``; a batch's images, order and augmentation on ``(seed, epoch,
batch index)`` (``scratchnets.data.DataLoader``); dropout masks on per-module generators seeded
from ``(seed, module index)`` whose states are saved. ``last`` holds the complete state
(weights, BN statistics, optimizer moments, schedule position, EMA, generator states, loader
position, the partial epoch's running sums, history), so ``resume=True`` continues bit for bit:
interrupted-and-resumed runs end with exactly the weights of an uninterrupted one
(``tests/test_train.py``).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import data, optim
from ..arrays import to_numpy
from ..nn import CrossEntropyLoss, Module
from . import features, finetune
from .checkpointing import load_checkpoint, load_weights_into, save_checkpoint
from .config import MONITORS, TrainConfig
from .evaluate import as_input, evaluate_model, model_from_meta
from .history import write_history

#: seed-stream word for the dropout generators (the loader uses 0..2 under its own seed words)
_DROPOUT_STREAM = 101
#: config fields a resumed run may change (they do not alter the arithmetic of the run)
RESUME_OVERRIDABLE = ("time_limit_min", "workers", "backend")


@dataclass
class FitResult:
    """How ``fit`` ended. ``status``: finished | early_stopping | time_limit | interrupted | max_steps."""

    status: str
    epoch: int  # epochs completed
    global_step: int
    best: dict
    history: list
    out_dir: Path
    message: str = ""
    paths: dict = field(default_factory=dict)

    @property
    def resumable(self) -> bool:
        return self.status in ("time_limit", "interrupted", "max_steps")


# --------------------------------------------------------------------------- building blocks


def build_optimizer(config: TrainConfig, model) -> optim.Optimizer:
    """The configured optimizer; weight decay only on weights with >= 2 dims (not BN / biases),
    the usual exemption (timm's ``param_groups_weight_decay``). From published weights
    (``init``), the backbone's groups get ``lr * backbone_lr_scale`` (the head's come first, so
    ``param_groups[0]`` is the head's lr)."""
    c = config
    head = finetune.head_name(model) + "." if c.init else ""
    groups = []
    for in_head, scale in ((True, 1.0), (False, c.backbone_lr_scale)):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(head) == in_head]
        decay = [p for _, p in named if len(p.shape) >= 2]
        no_decay = [p for _, p in named if len(p.shape) < 2]
        groups += [
            {"params": decay, "lr": c.lr * scale},
            {"params": no_decay, "weight_decay": 0.0, "lr": c.lr * scale},
        ]
    groups = [g for g in groups if g["params"]]
    if c.optimizer == "sgd":
        return optim.SGD(
            groups,
            lr=c.lr,
            momentum=c.momentum,
            nesterov=c.momentum > 0,
            weight_decay=c.weight_decay,
        )
    if c.optimizer == "rmsprop":
        return optim.RMSprop(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    if c.optimizer == "rmsprop_tf":
        return optim.RMSprop.keras(
            groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
        )
    if c.optimizer == "adam":
        return optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay)
    return optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)


def build_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """The per-batch lr schedule (None for a constant lr); epoch-based settings become steps."""
    total = config.epochs * steps_per_epoch
    head_only = config.head_only_epochs if config.init and not config.freeze_backbone else 0
    if config.schedule == "cosine" and 0 < head_only < config.epochs:
        # fine-tuning: the head-only epochs' cosine, then the whole network's from the top
        # (a short warmup guards the published weights), so that the full epochs, the costly
        # ones, do not train at the tail of a schedule spent on the cheap head-only ones
        head, full = head_only * steps_per_epoch, total - head_only * steps_per_epoch
        warmups = [min(int(round(config.warmup_epochs * steps_per_epoch)), n // 4)
                   for n in (head, full)]  # fmt: skip
        return optim.PhasedCosineLR(optimizer, [(head, warmups[0]), (full, warmups[1])])
    if config.schedule == "cosine":
        warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
        return optim.WarmupCosineLR(optimizer, total_steps=total, warmup_steps=warmup)
    if config.schedule == "step":
        return optim.StepLR(optimizer, config.step_size_epochs * steps_per_epoch, config.gamma)
    if config.schedule == "exponential":  # gamma per epoch, spread evenly over its steps
        return optim.ExponentialLR(optimizer, config.gamma ** (1.0 / steps_per_epoch))
    return None


def _random_modules(model) -> list:
    """``(name, module)`` of the modules that draw random numbers (Dropout).

    Adapter: ``nn.Dropout`` keeps its generator in the attribute ``_rng`` (no public accessor);
    it is read and replaced here to seed it and to save / restore its state.
    """
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "_rng", None), np.random.Generator)
    ]


def module_generators(model) -> dict[str, np.random.Generator]:
    """``{module name: Generator}`` of every random module."""
    return {name: m._rng for name, m in _random_modules(model)}


def seed_module_generators(model, seed: int) -> None:
    """Give the k-th random module the generator ``default_rng([seed, 101, k])``."""
    for k, (_, m) in enumerate(_random_modules(model)):
        m._rng = np.random.default_rng([seed, _DROPOUT_STREAM, k])


class _StopRequests:
    """SIGINT / SIGTERM handler for the duration of a run: the first signal asks the loop to
    stop after the current step; a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self, log):
        self.reason: str | None = None
        self._log = log
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.reason == "interrupted" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = "interrupted"
        self._log(
            f"\n{signal.Signals(signum).name}: finishing the current step, then saving `last` "
            "(press Ctrl-C again to abort without saving)"
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _improved(monitor: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if MONITORS[monitor] == "min" else value > best


def _default_log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------ fitting


class Trainer:
    """The state of one run and the steps that advance it (``fit`` drives it)."""

    def __init__(
        self,
        config: TrainConfig,
        splits: dict,
        out_dir: Path,
        data_source: str,
        log: Callable[[str], None],
        resumed_meta: dict | None = None,
    ):
        """``resumed_meta``: the ``model`` entry of the checkpoint this run resumes (its weights
        are loaded by ``restore``, so an ``init`` file is not read again)."""
        self.config, self.out_dir, self.log = config, Path(out_dir), log
        self.data_source = data_source
        c = config
        train, val = splits["train"], splits["val"]
        self.classes = list(train.classes)
        mean, std = c.input_mean or data.IMAGENET_MEAN, c.input_std or data.IMAGENET_STD
        if list(val.classes) != self.classes:
            raise ValueError(f"train classes {self.classes} != val classes {list(val.classes)}")
        self.train_set = data.ImageFolderDataset(train, c.image_size, name="train")
        self.val_set = data.ImageFolderDataset(val, c.image_size, name="val")
        if len(self.train_set) < c.batch_size:
            raise ValueError(
                f"{len(self.train_set)} training images are fewer than one batch of {c.batch_size}"
            )
        self.train_set.require_a_readable_image()
        self.train_transforms = {  # training size -> augmentation (begin_epoch picks one)
            size: data.train_transforms(
                size, c.augment, scale=(c.crop_scale_min, 1.0), mean=mean, std=std
            )
            for size in set(c.train_sizes())
        }
        self.loader = data.DataLoader(
            self.train_set,
            c.batch_size,
            shuffle=True,
            seed=c.seed,
            drop_last=True,  # no tiny last batch: BN statistics of 1-3 images are noise
            transforms=self.train_transforms[c.train_size(0)],
            workers=c.workers,
        )
        self.eval_transforms = data.eval_transforms(c.image_size, mean, std)  # val and the cache
        self.val_loader = data.DataLoader(
            self.val_set,
            c.batch_size,
            shuffle=False,
            transforms=self.eval_transforms,
            workers=c.workers,
        )
        self.steps_per_epoch = len(self.loader)
        self.meta = {
            "name": c.model,
            "num_classes": len(self.classes),
            "width_mult": c.width_mult,
            "options": dict(c.model_options),
            "classes": self.classes,
            "image_size": c.image_size,
            "normalize": {"mean": list(mean), "std": list(std)},
            "eval_weights": "ema" if c.ema else "weights",
        }
        if c.init and resumed_meta is None:
            self.model, self.meta["init"] = finetune.start_from(
                c.init, c.model, c.width_mult, len(self.classes), rng=c.seed,
                options=c.model_options, frozen=c.freeze_backbone,
            )  # fmt: skip
        else:  # from scratch, or resumed (restore loads the weights)
            self.model = finetune.build(c.model, len(self.classes), c.width_mult, c.seed,
                                        **c.model_options)  # fmt: skip
            if c.init:
                self.meta["init"] = resumed_meta.get("init")
        seed_module_generators(self.model, c.seed)
        self.model.to(c.backend).train()
        self.optimizer = build_optimizer(c, self.model)
        self.scheduler = build_scheduler(c, self.optimizer, self.steps_per_epoch)
        self.ema = optim.ModelEMA(self.model, decay=c.ema_decay, use_warmup=True) if c.ema else None
        self.eval_model = model_from_meta(self.meta, c.backend) if c.ema else self.model
        self.criterion = CrossEntropyLoss(c.label_smoothing).to(c.backend)
        self.teacher = self._load_teacher(c.teacher) if c.teacher else None
        if self.teacher is not None:
            self.criterion = optim.DistillationLoss(c.kd_alpha, c.kd_tau, c.label_smoothing)
        # progress
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # loader batch index within the current epoch
        self.global_step = 0
        self.sums = {"loss": 0.0, "correct": 0, "seen": 0}  # the current epoch's running sums
        self.best = {"metric": c.monitor, "value": None, "epoch": None}
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.elapsed_s = 0.0  # training wall clock over all invocations
        self.finished, self.stop_reason = False, None
        # head-only epochs on cached features (train/features.py): built at the first one
        self.features: features.FrozenFeatures | None = None
        self.cached_epoch = False  # whether the current epoch trains on them
        self.head_start = 0  # ... through the model's children from this one (the head) on
        self.head: Module | None = None
        # the last epoch's (duration, training size), by cached_epoch
        self.epoch_seconds: dict[bool, tuple[float, int]] = {}
        # the cache's forward seconds per image where _fit_epochs used them and refit_epochs
        # has not yet
        self.fitted_forward_s: float | None = None

    def decode_images(self, progress: bool) -> None:
        """Decode every image into the datasets' memory caches on all cores, before the first
        step: otherwise the first epoch decodes them on the loader's thread, which slows its
        steps and the forecast timed on them (~1.5x here)."""
        start = time.monotonic()
        for images in (self.train_set, self.val_set):
            images.preload(workers=os.cpu_count() or 1, progress=progress)
        self.log(f"decoded {len(self.train_set) + len(self.val_set)} images into memory in "
                 f"{time.monotonic() - start:.0f} s")  # fmt: skip

    def _load_teacher(self, path: str):
        ckpt = load_checkpoint(path)
        meta = ckpt["model"]
        if list(meta["classes"]) != self.classes:
            raise ValueError(
                f"teacher {path!r} predicts classes {meta['classes']}, the data has {self.classes}"
            )
        teacher = model_from_meta(meta, self.config.backend)
        load_weights_into(teacher, ckpt[meta.get("eval_weights", "weights")], path, meta)
        self.log(f"teacher: {meta['name']} (width {meta['width_mult']}) from {path}")
        return teacher.eval()

    # ------------------------------------------------------------------------- state <-> file

    def state(self) -> dict:
        return {
            "model": self.meta,
            "config": self.config.to_dict(),
            "data": self.data_source,
            "weights": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "progress": {
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "global_step": self.global_step,
                "epoch_sums": dict(self.sums),
                "finished": self.finished,
                "stop_reason": self.stop_reason,
            },
            "rng": {
                "loader": self.loader.state_dict(),
                "modules": {
                    name: g.bit_generator.state for name, g in module_generators(self.model).items()
                },
            },
            "best": dict(self.best),
            "early_stopping": {"patience": self.config.patience, "bad_epochs": self.bad_epochs},
            "history": self.history,
            "elapsed_s": self.elapsed_s,
        }

    def restore(self, ckpt: dict, path: Path) -> None:
        """Load a ``state()`` saved by this run's configuration."""
        p = ckpt["progress"]
        if p["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"{path}: the run had {p['steps_per_epoch']} steps per epoch, the data now gives "
                f"{self.steps_per_epoch}: the dataset changed, so it cannot resume bit for bit"
            )
        load_weights_into(self.model, ckpt["weights"], str(path), ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        generators = module_generators(self.model)
        for name, state in ckpt["rng"]["modules"].items():
            generators[name].bit_generator.state = state
        self.epoch, self.step_in_epoch = int(p["epoch"]), int(p["step_in_epoch"])
        self.global_step = int(p["global_step"])
        self.sums = dict(p["epoch_sums"])
        self.finished, self.stop_reason = bool(p["finished"]), p["stop_reason"]
        self.loader.load_state_dict(ckpt["rng"]["loader"])
        self.best = dict(ckpt["best"])
        self.bad_epochs = int(ckpt["early_stopping"]["bad_epochs"])
        self.history = list(ckpt["history"])
        self.elapsed_s = float(ckpt["elapsed_s"])

    def save(self, name: str) -> Path:
        return save_checkpoint(self.out_dir / f"{name}.npz", self.state())

    # ------------------------------------------------------------------------------ the work

    def train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        """One optimizer step on a batch; returns (loss, number correct)."""
        net = self.head if self.cached_epoch else self.model  # x: cached features, or images
        x_in = as_input(x, net)  # (N, 3, S, S), on the GPU for "cuda"
        logits = net(x_in)  # (N, K)
        if self.teacher is not None:
            loss = self.criterion(logits, self.teacher(x_in), y)
        else:
            loss = self.criterion(logits, y)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the training loss became {loss} at step {self.global_step + 1} (epoch "
                f"{self.epoch + 1}); lower --lr, or set clip_grad_norm"
            )
        if self.cached_epoch:
            self.head.backward(self.criterion.backward())
        elif self.backbone_frozen():
            finetune.backward_to_trainable(self.model, self.criterion.backward())
        else:
            self.model.backward(self.criterion.backward())
        if self.config.clip_grad_norm:
            optim.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.scheduler is not None:
            self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        correct = int((to_numpy(logits).argmax(axis=1) == y).sum())
        return loss, correct

    def begin_epoch(self, progress: bool = True) -> None:
        """Freeze or unfreeze the backbone for this epoch (``backbone_frozen``) and set the
        training modes: everything in train mode, a frozen backbone's BN layers in eval mode.
        A head-only epoch trains on cached features where it can (``cache_features``, no
        teacher, a Sequential model): computed here at the first such epoch."""
        self.model.train()
        self.loader.transforms = self.train_transforms[self.config.train_size(self.epoch)]
        self.cached_epoch = False
        if not self.config.init:
            return
        frozen = self.backbone_frozen()
        finetune.freeze_backbone(self.model, frozen)
        if not frozen:
            return
        finetune.set_frozen_modes(self.model)
        first = finetune.frozen_split(self.model)
        if not self.config.cache_features or self.teacher is not None or first is None:
            return
        if self.features is None:
            start = time.monotonic()
            self.features = features.FrozenFeatures(
                self.model, first, self.train_set, self.val_set, self.eval_transforms,
                self.config.batch_size, progress,
            )  # fmt: skip
            cache_s = time.monotonic() - start
            self.log(f"cached the frozen backbone's outputs for {len(self.train_set)} training "
                     f"images (and their mirror images) and {len(self.val_set)} validation "
                     f"images in {cache_s:.0f} s: head-only epochs train on them")  # fmt: skip
            if self.config.fits_epochs() and self.global_step == 0:
                views = 2 * len(self.train_set) + len(self.val_set)
                self._fit_epochs(cache_s / views, self.elapsed_s + cache_s)
        self.head_start, self.head = first, features.head_of(self.model, first)
        self.cached_epoch = True

    def _fit_epochs(self, forward_s: float, spent_s: float) -> None:
        """``fit_epochs``: as many full epochs after the head-only ones as the time limit leaves
        room for, judged from ``forward_s``, the backbone's seconds per image in the feature
        cache (a training image costs ``TRAIN_IMAGE_FORWARDS`` of them at ``image_size``, times
        the stages' mean ``step_cost``, a validation image one);
        the schedule is rebuilt for the new length (no step has run yet). ``refit_epochs``
        corrects the count once the first full steps are timed."""
        c = self.config
        if not c.fits_epochs():
            return
        sizes = c.train_sizes()
        cost = sum(c.step_cost(size) for size in sizes) / len(sizes)  # over the stages
        train_s = TRAIN_IMAGE_FORWARDS * cost * len(self.train_set)
        epoch_s = (train_s + len(self.val_set)) * forward_s
        left_s = FIT_SHARE * c.time_limit_min * 60.0 - spent_s
        full = max(1, int(left_s // epoch_s))
        self._set_full_epochs(full)
        self.fitted_forward_s = forward_s
        self.log(f"fitting the run to its {c.time_limit_min:g}-min budget: the backbone took "
                 f"{forward_s * 1e3:.1f} ms an image, so a full epoch ~{epoch_s:.0f} s; "
                 f"{c.head_only_epochs} head-only epochs, then {full} full: "
                 f"{self.config.epochs} epochs")  # fmt: skip

    def refit_epochs(self, step_s: float, spent_s: float) -> None:
        """The full epochs fitted again, once, from ``step_s``, the measured seconds of a step of
        the first full epoch (``spent_s`` into the run): the cache's forward speed predicts a
        training step only roughly (a small network's step costs more than its forwards:
        MobileNetV1 0.25's full epochs were planned at 11 s and took 16), so the count is
        corrected while the full epochs' schedule has barely started; that schedule keeps its
        position and stretches or shrinks to the new length. Only in the invocation that
        fitted the epochs (``_fit_epochs``), and only while the first full epoch runs."""
        c, forward_s = self.config, self.fitted_forward_s
        if forward_s is None or self.epoch != c.head_only_epochs:
            return
        self.fitted_forward_s = None
        val_s = len(self.val_set) * forward_s  # the cache timed the evaluation forward itself
        epoch_s = self.steps_per_epoch * step_s + val_s
        this_epoch_s = (self.steps_per_epoch - self.step_in_epoch) * step_s + val_s
        left_s = FIT_SHARE * c.time_limit_min * 60.0 - spent_s - this_epoch_s
        full = 1 + max(0, int(left_s // epoch_s))
        if c.head_only_epochs + full == c.epochs:
            return
        self.log(f"the first full steps took {step_s:.2f} s each, so a full epoch ~{epoch_s:.0f}"
                 f" s: {full} full epochs instead of {c.epochs - c.head_only_epochs}")  # fmt: skip
        self._set_full_epochs(full)

    def _set_full_epochs(self, full: int) -> None:
        """The run's length: the head-only epochs, then ``full`` ones; the schedule rebuilt for it,
        at the step it had reached."""
        position = self.scheduler.state_dict()
        self.config = self.config.replace(epochs=self.config.head_only_epochs + full)
        self.scheduler = build_scheduler(self.config, self.optimizer, self.steps_per_epoch)
        self.scheduler.load_state_dict(position)

    def epoch_batches(self):
        """This epoch's training batches from the current step: the loader's images, or in a
        cached epoch the same images' cached features."""
        if not self.cached_epoch:
            return iter(self.loader)
        return self.features.train_batches(
            self.loader.order(self.epoch), self.config.batch_size, self.step_in_epoch,
            self.config.seed, self.epoch, self.loader,
        )  # fmt: skip

    def backbone_frozen(self) -> bool:
        """Whether this step trains the head only (``freeze_backbone``, or within the first
        ``head_only_epochs``)."""
        return self.head_only(self.epoch)

    def head_only(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) trains the head only."""
        c = self.config
        return bool(c.init) and (c.freeze_backbone or epoch < c.head_only_epochs)

    def on_cached_features(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` is expected to train on cached features (``begin_epoch``
        decides: also no teacher and a model it can split)."""
        return self.config.cache_features and self.head_only(epoch)

    def validate(self) -> dict:
        if self.ema is not None:
            self.ema.copy_to(self.eval_model)
        if self.cached_epoch:  # the head on the cached features: the same function
            head = features.head_of(self.eval_model, self.head_start)
            batches = self.features.val_batches(self.config.batch_size)
            return evaluate_model(head, batches, self.classes)
        return evaluate_model(self.eval_model, self.val_loader, self.classes)

    def end_epoch(self, epoch_time: float, images: int) -> bool:
        """Validate, record, checkpoint; True when early stopping ends the run."""
        val = self.validate()
        train_size = self.config.train_size(self.epoch)
        seen = max(self.sums["seen"], 1)
        self.epoch += 1
        self.step_in_epoch = 0
        row = {
            "epoch": self.epoch,
            "train_loss": self.sums["loss"] / seen,
            "train_accuracy": self.sums["correct"] / seen,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_size": self.config.image_size if self.cached_epoch else train_size,
            "epoch_time_s": epoch_time,
            "images_per_s": images / epoch_time if epoch_time > 0 else None,
            "elapsed_s": self.elapsed_s,
        }
        self.history.append(row)
        self.sums = {"loss": 0.0, "correct": 0, "seen": 0}
        value = row[self.config.monitor]
        improved = _improved(self.config.monitor, value, self.best["value"])
        if improved:
            self.best.update(value=value, epoch=self.epoch)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        stop = bool(self.config.patience) and self.bad_epochs >= self.config.patience
        if stop:
            self.finished, self.stop_reason = True, "early_stopping"
        elif self.epoch >= self.config.epochs:
            self.finished, self.stop_reason = True, "finished"
        if improved:
            self.save("best")
        self.save("last")
        write_history(self.out_dir, self.history, title=f"{self.config.model} {self.config.recipe}")
        self.epoch_seconds[self.cached_epoch] = (epoch_time, train_size)
        self.log(
            f"epoch {self.epoch}/{self.config.epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f} | val loss {row['val_loss']:.4f} "
            f"acc {row['val_accuracy']:.4f} | lr {row['lr']:.3g} | {epoch_time:.0f} s, "
            f"{row['images_per_s'] or 0:.1f} img/s | {self._eta()}"
            + (" | best" if improved else "")
        )
        return stop

    def _eta(self) -> str:
        """The time the epochs left take, each at the last duration of its kind (on cached
        features or not), scaled by its training size's ``step_cost``; until an epoch of each kind
        needed has run, says which is missing."""
        c = self.config
        if self.finished:
            return "ETA 0.0 min"
        left_s = 0.0
        for e in range(self.epoch, c.epochs):
            kind = self.on_cached_features(e)
            if kind not in self.epoch_seconds:
                return "ETA after the first full epoch"
            seconds, size = self.epoch_seconds[kind]
            if not kind:  # cached epochs crop no images
                seconds *= c.step_cost(c.train_size(e)) / c.step_cost(size)
            left_s += seconds
        return f"ETA {left_s / 60:.1f} min"


def resolve_data(source) -> tuple[dict, str]:
    """``(splits, description)`` from a folder (any layout ``find_splits`` reads), a splits dict,
    or None (the downloaded ``cats_and_dogs_filtered``, fetched on first use)."""
    if isinstance(source, dict):
        return source, "<splits>"
    if source is None:
        source = data.download_cats_and_dogs()
    return data.find_splits(source), str(Path(source).resolve())


def fit(
    config: TrainConfig | None = None,
    data_source=None,
    out_dir: str | Path = "runs/train",
    *,
    resume: bool = False,
    overrides: dict | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    on_step: Callable[[Trainer], None] | None = None,
    log: Callable[[str], None] = _default_log,
) -> FitResult:
    """Train ``config``'s model on ``data_source``, writing checkpoints and history to ``out_dir``.

    ``data_source``: a dataset folder (any layout ``scratchnets.data.find_splits`` reads), a
    ``{"train": ImageList, "val": ImageList}`` dict, or None for the downloaded Cats vs Dogs.
    ``resume=True`` continues the run saved in ``out_dir/last.npz`` with its saved config (pass
    no ``config``); ``overrides`` may change only the ``RESUME_OVERRIDABLE`` fields, and
    ``data_source`` defaults to the run's folder. ``max_steps`` stops (resumably) after that many
    steps of this call; ``on_step(trainer)`` runs after every step (a test hook). The stopping
    rules are in the module docstring.
    """
    out_dir = Path(out_dir)
    overrides = dict(overrides or {})
    ckpt = None
    if resume:
        if config is not None:
            raise ValueError("resume=True continues the saved config; pass changes as overrides")
        not_allowed = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
        if not_allowed:
            raise ValueError(
                f"cannot change {', '.join(not_allowed)} when resuming: the run continues with its "
                f"saved settings (only {', '.join(RESUME_OVERRIDABLE)} may change); start a new "
                "run in another --out folder instead"
            )
        last = out_dir / "last.npz"
        if not last.exists():
            raise FileNotFoundError(f"cannot resume: no {last} (start the run without --resume)")
        ckpt = load_checkpoint(last)
        config = TrainConfig.from_dict(ckpt["config"])
        if data_source is None and ckpt["data"] != "<splits>":
            data_source = ckpt["data"]
    config = (config or TrainConfig()).replace(**overrides)
    splits, description = resolve_data(data_source)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        config, splits, out_dir, description, log, resumed_meta=ckpt["model"] if ckpt else None
    )
    if ckpt is not None:
        trainer.restore(ckpt, out_dir / "last.npz")
        log(
            f"resuming {out_dir / 'last.npz'} at epoch {trainer.epoch + 1}, step "
            f"{trainer.step_in_epoch}/{trainer.steps_per_epoch}"
        )
        if trainer.finished:
            return _result(trainer, trainer.stop_reason, "the run had already ended")
    else:
        what = (f"the graph of {Path(config.model_options['file']).name} ("
                if config.model == finetune.ONNX_MODEL
                else f"{config.model} (width {config.width_mult}, ")  # fmt: skip
        if config.resizes():
            stages = " / ".join(str(size) for size in config.train_sizes())
            what += f"crops of {stages} px in equal stages of the epochs, evaluated at "
        log(
            f"training {what}{config.image_size} px) on "
            f"{len(trainer.train_set)} images ({', '.join(trainer.classes)}), validating on "
            f"{len(trainer.val_set)}; {_epochs_planned(config, trainer.steps_per_epoch)}, "
            f"{config.optimizer} lr {config.lr}, backend {config.backend} -> {out_dir}"
            + (
                f"; from {config.init} (new {trainer.meta['init']['replaced_head']})"
                if config.init
                else ""
            )
        )
    with _StopRequests(log) as stops:
        return _run(trainer, stops, max_steps, progress, on_step)


#: a training image's step (forward, backward, update) in seconds of the backbone's forward
#: per image in the feature cache: measured 1.7-2.3 for MobileNetV2 1.0 at 224 px (the cache
#: 77-83 s for 5,000 images, a full epoch 73-88 s with validation); 2.5 leaves a margin
#: (``fit_epochs``)
TRAIN_IMAGE_FORWARDS = 2.5
#: ``fit_epochs`` plans this share of the time limit (the rest: start-up, checkpoints, noise)
FIT_SHARE = 0.9
#: the forecast of a run's length is made after this many timed steps of a full epoch (or the
#: rest of that epoch, if shorter): steps vary by 10-30 % one to the next, and 4 of them read
#: 0.17 s where the default recipe's first-stage epochs averaged 0.137 s a step (measured), which
#: forecast a time-limit stop for a run that took 26 of its 30 minutes
FORECAST_STEPS = 20
#: a validation image is counted as this fraction of a training image's step time (a forward
#: pass in eval mode, without backward or optimizer: measured 0.2-0.3 on MobileNets)
VALIDATION_SHARE = 0.3


def forecast(trainer: Trainer, step_s: float, limit_s: float, elapsed_s: float) -> str:
    """The time budget and the epoch the run expects to reach, from the seconds of a full
    training step ``step_s`` at this epoch's training size (a step at another size scaled by
    ``TrainConfig.step_cost``; head-only epochs on cached features counted as free),
    ``elapsed_s`` into this invocation: said at the start of a run, so one that will not fit says
    so then rather than at the time limit."""
    c = trainer.config
    size = c.train_size(trainer.epoch)

    def step_at(other: int) -> float:  # seconds of a step on crops of ``other`` pixels
        return step_s * c.step_cost(other) / c.step_cost(size)

    val_s = VALIDATION_SHARE * step_at(c.image_size) / c.batch_size * len(trainer.val_set)
    left = trainer.steps_per_epoch - trainer.step_in_epoch
    this_epoch_s = left * step_s + val_s
    later_s = [
        trainer.steps_per_epoch * step_at(c.train_size(e)) + val_s
        for e in range(trainer.epoch + 1, c.epochs)
        if not trainer.on_cached_features(e)
    ]
    needed = this_epoch_s + sum(later_s)
    epoch_s = trainer.steps_per_epoch * step_s + val_s
    text = f"~{epoch_s:.0f} s per epoch ({step_s:.2f} s a step, validation included)"
    if c.resizes():
        text += f" at {size} px, other sizes counted by their pixels"
    if not math.isfinite(limit_s):
        return f"{text}: all {c.epochs} epochs, ~{needed / 60:.1f} min to go (no time limit)"
    budget = f"time budget {limit_s / 60:g} min ({elapsed_s / 60:.1f} spent)"
    if elapsed_s + needed <= limit_s:
        return f"{budget}; {text}: all {c.epochs} epochs fit, ~{needed / 60:.1f} min to go"
    ends = elapsed_s + this_epoch_s + np.cumsum(later_s) > limit_s  # later epochs cut short
    reach = trainer.epoch + 1 + int(np.argmax(ends)) if this_epoch_s + elapsed_s <= limit_s else 0
    return (f"{budget}; {text}: the budget ends around epoch {max(reach, trainer.epoch)} of "
            f"{c.epochs}; the run will stop at the time limit with its schedule unfinished "
            "(lower --epochs to fit, or raise --time-limit)")  # fmt: skip


def _epochs_planned(config: TrainConfig, steps: int) -> str:
    if not config.fits_epochs():
        return f"{config.epochs} epochs of {steps} steps"
    return (f"epochs of {steps} steps, {config.head_only_epochs} head-only, then full ones "
            f"fitted to the {config.time_limit_min:g}-min budget")  # fmt: skip


def _run(trainer: Trainer, stops: _StopRequests, max_steps, progress, on_step) -> FitResult:
    from tqdm.auto import tqdm

    c = trainer.config
    start, elapsed_before = time.monotonic(), trainer.elapsed_s
    limit_s = c.time_limit_min * 60.0 if c.time_limit_min else math.inf
    steps_here, last_epoch_s = 0, 0.0
    forecast_from = None  # (time, step count, steps to time) from the warm-up

    def tick() -> float:
        """Seconds since this invocation started (and the run's total in trainer.elapsed_s)."""
        here = time.monotonic() - start
        trainer.elapsed_s = elapsed_before + here
        return here

    trainer.decode_images(progress)
    while trainer.epoch < trainer.config.epochs and not stops.reason:  # fit_epochs may set it
        if trainer.step_in_epoch == 0 and last_epoch_s and tick() + last_epoch_s > limit_s:
            stops.reason = "time_limit"  # the next epoch would not finish in time
            break
        trainer.loader.set_epoch(trainer.epoch, trainer.step_in_epoch)
        trainer.begin_epoch(
            progress
        )  # after the last epoch's validation (evaluate_model's train())
        epoch_start, images, stopped_early = time.monotonic(), 0, False
        bar = tqdm(
            total=trainer.steps_per_epoch * c.batch_size,
            initial=trainer.step_in_epoch * c.batch_size,
            desc=f"epoch {trainer.epoch + 1}/{trainer.config.epochs}",
            unit="img",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        batches = trainer.epoch_batches()
        try:
            for x, y in batches:
                loss, correct = trainer.train_step(x, y)
                trainer.step_in_epoch = trainer.loader.batch_index
                sums = trainer.sums
                sums["loss"] += loss * len(y)
                sums["correct"] += correct
                sums["seen"] += len(y)
                images += len(y)
                steps_here += 1
                bar.update(len(y))  # tqdm shows img/s and the epoch's ETA
                bar.set_postfix(
                    loss=f"{sums['loss'] / sums['seen']:.4f}",
                    acc=f"{sums['correct'] / sums['seen']:.3f}",
                    lr=f"{trainer.optimizer.param_groups[0]['lr']:.2e}",
                    refresh=False,
                )
                if forecast_from is None and not trainer.cached_epoch and steps_here >= 2:
                    timed = min(FORECAST_STEPS, trainer.steps_per_epoch - trainer.step_in_epoch)
                    forecast_from = (time.monotonic(), steps_here, max(timed, 1))  # warmed up
                elif forecast_from and steps_here - forecast_from[1] == forecast_from[2]:
                    step_s = (time.monotonic() - forecast_from[0]) / forecast_from[2]
                    trainer.refit_epochs(step_s, tick())
                    trainer.log(forecast(trainer, step_s, limit_s, tick()))
                    forecast_from = ()  # said once per invocation
                if on_step is not None:
                    on_step(trainer)
                if max_steps is not None and steps_here >= max_steps:
                    stops.reason = stops.reason or "max_steps"
                if tick() >= limit_s:
                    stops.reason = stops.reason or "time_limit"
                if stops.reason and trainer.step_in_epoch < trainer.steps_per_epoch:
                    stopped_early = True  # at the epoch's last step, validate first
                    break
        finally:
            batches.close()
            bar.close()
        tick()
        if stopped_early:
            trainer.save("last")  # mid-epoch: resumes at step_in_epoch
            break
        epoch_time = time.monotonic() - epoch_start
        if trainer.end_epoch(epoch_time, images):  # writes best / last
            break
        last_epoch_s = time.monotonic() - epoch_start
    tick()
    if trainer.finished:
        return _result(trainer, trainer.stop_reason)
    return _result(trainer, stops.reason or "finished")


def _result(trainer: Trainer, status: str, note: str = "") -> FitResult:
    out = trainer.out_dir
    best = trainer.best
    best_text = (
        f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch']} ({out / 'best.npz'})"
        if best["value"] is not None
        else "no epoch completed yet"
    )
    where = f"epoch {trainer.epoch + 1}, step {trainer.step_in_epoch}/{trainer.steps_per_epoch}"
    resume = f"resume with: scratchnets train --out {out} --resume"
    messages = {
        "finished": f"finished {trainer.epoch} epochs; {best_text}",
        "early_stopping": (
            f"early stopping after epoch {trainer.epoch}: {trainer.config.monitor} did not improve "
            f"for {trainer.config.patience} epochs; {best_text}"
        ),
        "time_limit": (
            f"time limit of {trainer.config.time_limit_min:g} min reached at {where}; saved "
            f"{out / 'last.npz'}; {best_text}; {resume} (and a new --time-limit)"
        ),
        "interrupted": f"interrupted at {where}; saved {out / 'last.npz'}; {resume}",
        "max_steps": f"stopped after the requested steps at {where}; saved {out / 'last.npz'}; {resume}",
    }
    message = (note + "; " if note else "") + messages[status]
    trainer.log(message)
    paths = {
        name: out / f"{name}.npz" for name in ("best", "last") if (out / f"{name}.npz").exists()
    }
    return FitResult(
        status,
        trainer.epoch,
        trainer.global_step,
        dict(best),
        list(trainer.history),
        out,
        message,
        paths,
    )


__all__ = ["FitResult", "Trainer", "build_optimizer", "build_scheduler", "fit", "resolve_data"]
