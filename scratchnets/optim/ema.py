"""Exponential moving average of a model's weights (timm's ``ModelEmaV3`` semantics)."""

from __future__ import annotations

import numpy as np

from ..arrays import FLOAT_DTYPES, to_numpy

__all__ = ["ModelEMA"]


def _named_arrays(model):
    """``(state dict name, array)`` for every parameter and buffer of ``model`` (no copies of
    host arrays; device arrays come back to the host)."""
    for name, param in model.named_parameters():
        yield name, to_numpy(param.data)
    for name, buffer in model.named_buffers():
        yield name, to_numpy(buffer)


class ModelEMA:
    """A shadow copy of every parameter and buffer, averaged after each optimizer step::

        ema = decay * ema + (1 - decay) * w      for floating arrays (computed as torch's lerp,
                                                  ema + (1 - decay) * (w - ema), in their dtype)
        ema = w                                  for integer ones (num_batches_tracked)

    ``update(model, step=None)`` uses ``decay`` when ``step`` is None. Given the number of
    optimizer steps taken so far (1 after the first), it uses timm's ``ModelEmaV3.get_decay``:
    with k = step - update_after_step - 1, the EMA just copies the weights while k <= 0;
    afterwards the decay is ``decay``, or with ``use_warmup`` the ramp
    ``clip(1 - (1 + k / warmup_gamma) ** -warmup_power, min_decay, decay)``.

    The shadow weights stay on the host in the model's dtype; ``state_dict()`` returns them under
    the model's names (load them into a model of the same architecture to evaluate the EMA), and
    ``copy_to(model)`` does exactly that. Reading a model on the "cuda" backend copies its
    weights to the host once per update.
    """

    def __init__(
        self,
        model,
        decay: float = 0.9999,
        min_decay: float = 0.0,
        update_after_step: int = 0,
        use_warmup: bool = False,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
    ):
        if not 0.0 <= min_decay <= decay <= 1.0:
            raise ValueError(f"need 0 <= min_decay <= decay <= 1, got {min_decay}, {decay}")
        self.decay, self.min_decay = decay, min_decay
        self.update_after_step = update_after_step
        self.use_warmup, self.warmup_gamma, self.warmup_power = (
            use_warmup,
            warmup_gamma,
            warmup_power,
        )
        self.shadow = {name: np.array(a, copy=True) for name, a in _named_arrays(model)}

    def get_decay(self, step: int | None = None) -> float:
        """The decay an update at optimizer step ``step`` uses (see the class docstring)."""
        if step is None:
            return self.decay
        k = max(0, step - self.update_after_step - 1)
        if k <= 0:
            return 0.0
        if not self.use_warmup:
            return self.decay
        ramp = 1 - (1 + k / self.warmup_gamma) ** -self.warmup_power
        return max(min(ramp, self.decay), self.min_decay)

    def update(self, model, step: int | None = None) -> None:
        """Move the shadow weights toward ``model``'s current ones."""
        weight = 1.0 - self.get_decay(step)
        seen = set()
        for name, value in _named_arrays(model):
            if name not in self.shadow:
                raise KeyError(f"ModelEMA.update: the model has {name!r}, the EMA does not")
            seen.add(name)
            ema = self.shadow[name]
            if ema.shape != value.shape:
                raise ValueError(
                    f"ModelEMA.update: {name!r} has shape {value.shape}, the EMA {ema.shape}"
                )
            if ema.dtype in FLOAT_DTYPES:
                ema += ema.dtype.type(weight) * (value.astype(ema.dtype, copy=False) - ema)
            else:
                ema[...] = value
        if seen != set(self.shadow):
            raise KeyError(f"ModelEMA.update: the model lacks {sorted(set(self.shadow) - seen)}")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the shadow weights under the model's state dict names."""
        return {name: np.array(a, copy=True) for name, a in self.shadow.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore shadow weights saved by ``state_dict`` (same names and shapes)."""
        if set(state_dict) != set(self.shadow):
            raise ValueError(
                "ModelEMA.load_state_dict: names differ; missing "
                f"{sorted(set(self.shadow) - set(state_dict))[:5]}, unexpected "
                f"{sorted(set(state_dict) - set(self.shadow))[:5]}"
            )
        for name, value in state_dict.items():
            value = np.asarray(value)
            if value.shape != self.shadow[name].shape:
                raise ValueError(
                    f"ModelEMA.load_state_dict: {name!r} has shape {value.shape}, expected "
                    f"{self.shadow[name].shape}"
                )
        for name, value in state_dict.items():
            self.shadow[name][...] = value

    def copy_to(self, model) -> None:
        """Write the averaged weights into ``model`` (e.g. a copy used for evaluation)."""
        model.load_state_dict(self.shadow)
