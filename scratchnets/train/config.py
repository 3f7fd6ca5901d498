"""What a training run is: ``TrainConfig`` and the named recipes (``default``, ``seed``).

The **default recipe** is built for the target: >= 85 % validation accuracy on the 2,000-image
Cats vs Dogs subset, from scratch, in at most 30 minutes on a 2-core CPU. Every choice trades
accuracy per CPU-second:

* ``mobilenet_v2`` at ``width_mult=0.5``, evaluated at 128 px. Multiply-adds grow with the square
  of the resolution and roughly the square of the width: about 32 M MACs per image forward at
  128 px, 1/10 of the full network at 224 px. 128 px keeps enough detail of faces and fur;
  MobileNetV2's inverted residuals with BatchNorm train stably from scratch.
* **120 epochs**, because the run is short of updates, not of capacity: the 60-epoch run of this
  recipe ended at 81 % training accuracy (augmented, label-smoothed) against 80.6 % validation,
  both still rising as the lr annealed. The faster training step (0.16 s for 32 images at
  128 px, was 0.29 s; an epoch ~13.5 s with validation, was 21 s) buys twice the epochs.
* **Progressive resizing** (``train_scales`` 0.75, 0.875, 1: training crops of 96, 112, then
  128 px, a third of the epochs each): a step's cost follows its pixels (measured 0.10 / 0.13 /
  0.16 s at 96 / 112 / 128 px, epochs ~9 / ~11 / ~13.5 s), and early epochs, which learn coarse
  features at a high lr, lose little at low resolution (the schedule of progressive learning in
  EfficientNetV2, arXiv 2104.00298, which also grows the augmentation with the size: here it
  stays the same, and of fast.ai's ImageNet runs). 120 epochs take ~26 min
  this way, ~100 would fit at 128 px throughout. The last stage trains at the evaluation size,
  so the BN statistics the checkpoint keeps are those of 128-px inputs.
* Augmentation ``standard`` (random resized crop with scale (0.25, 1), flip, +-10 degree rotation,
  colour jitter 0.2, random erasing 0.25): with only 2,000 images the network overfits within a
  few epochs without it; these Pillow transforms cost ~2 ms of CPU per image (measured), on
  the loader's background thread. The crop scale floor is 0.25 rather than ImageNet's 0.08: an 8 %
  crop of a pet photo is mostly fur or background. RandAugment (the GhostNetV3 recipe's
  policy) is available as ``--augment randaugment``; the milder policy was chosen for a run that
  is still under-fitted at its end, where stronger augmentation is expected to slow convergence
  more than it curbs overfitting.
* AdamW, lr 2e-3, weight decay 0.05 (decoupled; not on BN parameters and biases), batch 32,
  cosine schedule with a 2-epoch linear warmup, stepped per batch: AdamW converges quickly from
  scratch and is forgiving about the lr; the warmup protects the freshly initialised BatchNorm
  statistics. 32 images per batch give 62 updates per epoch: with 2,000 images, the number of
  updates, not the batch's gradient noise, limits the run. Earlier runs of this recipe at fixed
  128 px: 26 epochs (57 s each, before the GEMM threading fix) 73.2 %, 50 epochs 79.1 % (76.5 %
  training accuracy), 60 epochs 80.6 %: each under-fitted, so the epochs a faster step buys go
  to more updates, not to a bigger model.
* Label smoothing 0.1 (regularises the two-class logits; the validation loss is reported without
  it, so it stays a plain negative log-likelihood).
* EMA of the weights off: in a 2,500-step run whose lr anneals to zero, the final weights are
  already an average; ``--ema`` turns it on.
* ``time_limit_min=30`` as a safety net: the cosine schedule needs its length up front, so the
  epoch count is sized from the measured throughput (a forecast after the first steps says
  whether it fits); the time limit stops the run cleanly (``best`` and ``last`` kept,
  resumable) if the machine is slower than expected, and a next epoch that would overrun the
  limit is not started.
* No early stopping (``patience=0``): under a cosine schedule the validation metrics keep
  improving until the end; ``best`` is chosen by validation accuracy (``monitor``), the only use
  the validation set has.

The **seed recipe** (``--recipe seed``) is the project's starting point, one flag away:
MobileNetV2 at full width and 128 px (a Keras ``MobileNetV2`` input size), Keras' RMSprop
(lr 1e-3, rho 0.9, epsilon 1e-7 inside the root), constant lr, basic augmentation (crop +
flip), and Keras-style early stopping on the validation loss with patience 3 (Keras
``EarlyStopping``'s default monitor is ``val_loss``). One training step of 32 images costs
~1.45 CPU-seconds at this size (measured, one core), about 3x the default recipe's.

The **finetune recipe** (``--recipe finetune``, implied by ``--init FILE``) starts from published
weights: see the comment at ``RECIPES["finetune"]`` and ``scratchnets/train/finetune.py``.

Flags given on the command line override the recipe's values field by field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: the metrics early stopping and best-checkpoint selection can monitor, and which way is better
MONITORS = {"val_loss": "min", "val_accuracy": "max"}
OPTIMIZERS = ("sgd", "rmsprop", "rmsprop_tf", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "exponential")


@dataclass
class TrainConfig:
    """Every setting of a run; saved in each checkpoint (``asdict``) so a resume can restore it."""

    # model
    model: str = "mobilenet_v2"
    width_mult: float = 0.5
    model_options: dict = field(default_factory=dict)  # more of models.create's, e.g. keras_style
    image_size: int = 128  # evaluation and checkpoint size, and the last training stage's
    # progressive resizing: training crops of these fractions of image_size, in equal stages of
    # the epochs (``train_sizes``, ``train_size``); (1.0,): image_size throughout
    train_scales: tuple[float, ...] = (0.75, 0.875, 1.0)
    # data
    augment: str = "standard"  # scratchnets.data.POLICIES
    crop_scale_min: float = 0.25  # RandomResizedCrop scale = (crop_scale_min, 1)
    batch_size: int = 32
    workers: int = 1  # loader threads (the kernels use both cores; one thread keeps up)
    # optimisation
    epochs: int = 120
    optimizer: str = "adamw"  # OPTIMIZERS
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # SGD and RMSprop momentum
    schedule: str = "cosine"  # SCHEDULES; stepped once per batch
    warmup_epochs: float = 2.0
    step_size_epochs: int = 10  # schedule "step": lr *= gamma every step_size_epochs
    gamma: float = 0.1  # schedule "step" / "exponential" (per epoch)
    label_smoothing: float = 0.1
    clip_grad_norm: float | None = None
    # EMA of the weights; when on, validation and the checkpoints' eval weights are the EMA's
    ema: bool = False
    ema_decay: float = 0.998
    # starting from published weights (scratchnets/train/finetune.py)
    init: str | None = None  # a weight file load_pretrained reads; its head is rebuilt
    freeze_backbone: bool = False  # train the head only, the whole run
    head_only_epochs: int = 0  # train the head only for the first epochs, then everything
    backbone_lr_scale: float = 1.0  # the backbone's lr is lr * backbone_lr_scale
    cache_features: bool = True  # head-only epochs on the frozen backbone's cached outputs
    fit_epochs: bool = False  # full epochs after the head-only ones: as many as the time fits
    input_mean: tuple[float, ...] | None = None  # Normalize's mean / std; None: ImageNet's
    input_std: tuple[float, ...] | None = None
    # distillation
    teacher: str | None = None  # path of a training checkpoint
    kd_alpha: float = 0.5
    kd_tau: float = 1.0
    # stopping and selection
    patience: int = 0  # epochs without improvement of ``monitor`` before stopping; 0: never stop
    monitor: str = "val_accuracy"  # MONITORS
    time_limit_min: float = 30.0  # wall-clock minutes per invocation; 0: no limit
    # run
    seed: int = 0
    backend: str = "cpu"
    recipe: str = "default"
    extra: dict = field(default_factory=dict)  # free-form notes kept with the run

    def __post_init__(self):
        checks = {
            "optimizer": (self.optimizer, OPTIMIZERS),
            "schedule": (self.schedule, SCHEDULES),
            "monitor": (self.monitor, tuple(MONITORS)),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {', '.join(allowed)}")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "lr": self.lr,
            "width_mult": self.width_mult,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.train_scales = tuple(float(scale) for scale in self.train_scales)
        if not self.train_scales or not all(scale > 0 for scale in self.train_scales):
            raise ValueError(
                "train_scales must be one or more positive fractions of image_size, got "
                f"{self.train_scales}"
            )
        if self.patience < 0:
            raise ValueError(
                f"patience must be >= 0 (0 disables early stopping), got {self.patience}"
            )
        if not self.time_limit_min >= 0:
            raise ValueError(
                f"time limit must be >= 0 minutes (0: none), got {self.time_limit_min}"
            )
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.head_only_epochs < 0:
            raise ValueError(f"head_only_epochs must be >= 0, got {self.head_only_epochs}")
        if not self.backbone_lr_scale > 0:
            raise ValueError(
                f"backbone_lr_scale must be positive, got {self.backbone_lr_scale} (freeze the "
                "backbone instead)"
            )
        uses_init = self.freeze_backbone or self.head_only_epochs or self.backbone_lr_scale != 1
        if uses_init and not self.init:
            raise ValueError(
                "freezing the backbone or scaling its lr needs published weights (--init FILE)"
            )
        for name in ("input_mean", "input_std"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 3:
                    raise ValueError(f"{name} needs 3 values (R, G, B), got {value}")
                setattr(self, name, tuple(float(v) for v in value))

    def train_sizes(self) -> tuple[int, ...]:
        """The training crop size of each stage, in pixels (``train_scales`` of ``image_size``)."""
        return tuple(round(scale * self.image_size) for scale in self.train_scales)

    def train_size(self, epoch: int) -> int:
        """The training crop size of epoch ``epoch`` (0-based): the stages split the epochs
        equally (the earlier stages one epoch shorter where they do not divide)."""
        sizes = self.train_sizes()
        return sizes[min(epoch * len(sizes) // self.epochs, len(sizes) - 1)]

    def step_cost(self, size: int) -> float:
        """A training step's cost on crops of ``size`` pixels relative to one at ``image_size``:
        the ratio of their pixels (measured on the default recipe's steps: 112 / 96 px 1.35x,
        pixels 1.36x; 128 / 96 px 1.65x, pixels 1.78x, so a little high for larger crops)."""
        return (size / self.image_size) ** 2

    def resizes(self) -> bool:
        """Whether training crop sizes change during the run (progressive resizing)."""
        return len(set(self.train_sizes())) > 1

    def fits_epochs(self) -> bool:
        """Whether the full epochs are fitted to the time limit (``fit_epochs``, a limit, and
        full epochs to fit: not a frozen backbone)."""
        return self.fit_epochs and bool(self.time_limit_min) and not self.freeze_backbone

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from ``to_dict()`` output; unknown keys (from a newer version) are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        # runs saved before progressive resizing trained at image_size throughout
        return cls(**{"train_scales": (1.0,), **values})

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


#: recipe name -> the fields it changes from TrainConfig's defaults (the default recipe)
RECIPES: dict[str, dict] = {
    "default": {},
    "seed": {
        "model": "mobilenet_v2",
        "width_mult": 1.0,
        "image_size": 128,
        "augment": "basic",
        "crop_scale_min": 0.25,
        "optimizer": "rmsprop_tf",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "momentum": 0.0,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.0,
        "epochs": 30,
        "patience": 3,
        "monitor": "val_loss",
        "train_scales": (1.0,),
    },
    # from published weights (--init FILE, which also sets model, width, image size and input
    # normalisation from the file), in a 5-minute budget: five head-only epochs let the new
    # classifier settle on the frozen published features, BN statistics kept, before the whole
    # network trains. They run on cached features (train/features.py: the backbone once per
    # image, ~80 s for MobileNetV2 1.0 at 224 px, then a fraction of a second an epoch), so
    # they cost the same whatever their number; a linear head on MobileNetV2's frozen features
    # tops out at 98.5-98.8 % on Cats vs Dogs (measured with L-BFGS over weight decays), so the
    # last step to 99 % needs full epochs. Those fill the rest of the budget (``fit_epochs``:
    # counted from the backbone's measured speed, ~75 s each for MobileNetV2, ~15 s for
    # MobileNetV1 0.25), the backbone at a tenth of the head's lr so that 2,000 images nudge
    # rather than overwrite the ImageNet features (weight decay small for the same reason).
    # The full epochs train on crops of 6/7 of the file's size (192 px for 224) and evaluate at
    # the full size: a step costs ~0.73 of one at 224 px, and a network trained on random-resized
    # crops sees objects larger at training than at test time, which testing at a higher
    # resolution than training compensates (FixRes, arXiv 1906.06423, Touvron et al. 2019).
    # Measured (three seeds each, README): MobileNetV2 1.0 98.9 % mean best (98.7-99.0) in
    # 3.7-4.5 min, against 98.8 % (98.7-98.9) in 3.0-4.7 min at 224 px; MobileNetV1 0.25 97.0 %
    # against 96.6 %. ``Trainer.refit_epochs`` corrects the count from the first full steps.
    # ``--epochs`` or ``--time-limit 0`` turn the fitting off (15 epochs then).
    "finetune": {
        "train_scales": (6 / 7,),
        "epochs": 15,
        "head_only_epochs": 5,
        "optimizer": "adamw",
        "lr": 1e-3,
        "backbone_lr_scale": 0.1,
        "weight_decay": 0.01,
        "warmup_epochs": 1.0,
        "crop_scale_min": 0.35,
        "time_limit_min": 5.0,
        "fit_epochs": True,
    },
}
#: recipes that start from published weights (``init`` must be given)
NEEDS_INIT = ("finetune",)


def recipe(name: str = "default", **overrides) -> TrainConfig:
    """The named recipe's config with ``overrides`` applied (None values are ignored)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    values = {**RECIPES[name], "recipe": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("epochs") is not None:  # epochs asked for are run, not fitted
        values["fit_epochs"] = False
    if name in NEEDS_INIT and not values.get("init"):
        raise ValueError(f"recipe {name!r} starts from published weights: give --init FILE")
    return TrainConfig(**values)
