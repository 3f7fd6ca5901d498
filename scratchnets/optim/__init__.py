"""Optimisation: optimizers, learning-rate schedules, gradient clipping, weight EMA and the
distillation loss, all matching their PyTorch / timm counterparts (tests/test_optim.py).

    opt = optim.RMSprop.keras(model.parameters())          # the seed recipe's Keras RMSprop
    sched = optim.WarmupCosineLR(opt, total_steps=epochs, warmup_steps=2)
    ema = optim.ModelEMA(model, decay=0.9999)
    ...
    optim.clip_grad_norm_(model.parameters(), max_norm=5.0)
    opt.step(); ema.update(model, step=n_steps); opt.zero_grad()
"""

from .clip import clip_grad_norm_
from .distill import DistillationLoss
from .ema import ModelEMA
from .optimizers import SGD, Adam, AdamW, Optimizer, RMSprop
from .schedules import ExponentialLR, LRScheduler, PhasedCosineLR, StepLR, WarmupCosineLR

__all__ = [
    "Optimizer",
    "SGD",
    "RMSprop",
    "Adam",
    "AdamW",
    "LRScheduler",
    "StepLR",
    "ExponentialLR",
    "PhasedCosineLR",
    "WarmupCosineLR",
    "clip_grad_norm_",
    "ModelEMA",
    "DistillationLoss",
]
