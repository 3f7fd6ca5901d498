"""Learning-rate schedules with torch's calling convention (``torch.optim.lr_scheduler``).

    sched = StepLR(opt, step_size=30, gamma=0.1)
    for epoch in range(epochs):
        train_one_epoch(...)      # opt.step() per batch
        sched.step()              # lr for the next epoch

A schedule counts its ``step()`` calls in ``last_epoch`` (0 right after construction, which sets
the lr of step 0) and sets every param group's lr to ``lr_at(last_epoch)`` of the group's base lr
(its lr when the first schedule was attached, kept as ``initial_lr`` like torch). Whether a unit
is an epoch or an optimizer step is the caller's choice: call ``step()`` once per epoch or once
per batch, and give the lengths (``step_size``, ``warmup_steps``, ``total_steps``) in that unit.

The lrs come from closed forms; torch computes most schedules recursively, and the two agree to
rounding (~1e-16 relative; tests/test_optim.py checks each against torch).
"""

from __future__ import annotations

import math

__all__ = ["LRScheduler", "StepLR", "ExponentialLR", "WarmupCosineLR"]


class LRScheduler:
    """Base class: subclasses implement ``lr_at(step, base_lr)``, the lr after ``step`` calls."""

    def __init__(self, optimizer, last_epoch: int = -1):
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        elif any("initial_lr" not in group for group in optimizer.param_groups):
            raise KeyError(
                "resuming a schedule (last_epoch != -1) needs 'initial_lr' in every group"
            )
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, step: int, base_lr: float) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Advance one unit and set the optimizer's lrs for it."""
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = self.lr_at(self.last_epoch, base_lr)

    def get_last_lr(self) -> list[float]:
        """The lr of every param group set by the last ``step()``."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position (and base lrs) and set the optimizer's lrs accordingly."""
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: {len(state_dict['base_lrs'])} base lrs "
                f"for {len(self.optimizer.param_groups)} param groups"
            )
        self.last_epoch = int(state_dict["last_epoch"])
        self.base_lrs = [float(lr) for lr in state_dict["base_lrs"]]
        self._apply()


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (step // step_size)  (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (step // self.step_size)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** step  (``torch.optim.lr_scheduler.ExponentialLR``)."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float) -> float:
        return base_lr * self.gamma**step


class WarmupCosineLR(LRScheduler):
    """Linear warmup, then half a cosine down to ``eta_min``; W = warmup_steps, T = total_steps::

        t < W:       lr = base_lr * (s + (1 - s) * t / W)         s = warmup_start_factor
        W <= t <= T: lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * (t - W) / (T - W))) / 2
        t > T:       lr = eta_min

    This is torch's ``SequentialLR([LinearLR(start_factor=s, total_iters=W),
    CosineAnnealingLR(T_max=T - W, eta_min=eta_min)], milestones=[W])`` (timm's
    ``CosineLRScheduler`` instead runs its cosine over t from 0 and overlaps the warmup), except
    after T, where torch's cosine would climb back up and this one stays at eta_min.
    ``warmup_steps=0`` gives plain ``CosineAnnealingLR(T_max=T)``.
    """

    def __init__(
        self,
        optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.01,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"WarmupCosineLR needs 0 <= warmup_steps < total_steps, got "
                f"warmup_steps={warmup_steps}, total_steps={total_steps}"
            )
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.warmup_start_factor, self.eta_min = warmup_start_factor, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, base_lr,
                             self.warmup_start_factor, self.eta_min)  # fmt: skip


def warmup_cosine(step: int, total: int, warmup: int, base_lr: float, start_factor: float,
                  eta_min: float) -> float:  # fmt: skip
    """``WarmupCosineLR``'s lr at ``step`` (its docstring's formula)."""
    if step < warmup:
        return base_lr * (start_factor + (1 - start_factor) * step / warmup)
    if step >= total:
        return eta_min
    phase = math.pi * (step - warmup) / (total - warmup)
    return eta_min + (base_lr - eta_min) * (1 + math.cos(phase)) / 2


class PhasedCosineLR(LRScheduler):
    """``WarmupCosineLR`` run once per phase, each with its own length and warmup: a warm
    restart at each phase's first step (fine-tuning's head-only steps, then the whole network's,
    which gets a full cosine of its own instead of the tail of the head's). ``phases``: ``(steps,
    warmup_steps)`` pairs; after the last phase the lr stays at ``eta_min``."""

    def __init__(self, optimizer, phases, warmup_start_factor: float = 0.01,
                 eta_min: float = 0.0, last_epoch: int = -1):  # fmt: skip
        self.phases = [(int(n), int(w)) for n, w in phases]
        if not self.phases or any(not 0 <= w < n for n, w in self.phases):
            raise ValueError(f"PhasedCosineLR needs phases of 0 <= warmup < steps, got {phases}")
        self.warmup_start_factor, self.eta_min = warmup_start_factor, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, step: int, base_lr: float) -> float:
        for steps, warmup in self.phases:
            if step < steps:
                return warmup_cosine(step, steps, warmup, base_lr, self.warmup_start_factor,
                                     self.eta_min)  # fmt: skip
            step -= steps
        return self.eta_min
