"""Optimizers: SGD, RMSprop, Adam and AdamW, each exactly ``torch.optim``'s update rule.

Usage mirrors torch::

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
    loss = ce(model(x), y); model.backward(ce.backward())
    opt.step()          # p.data <- update(p.data, p.grad, state)
    opt.zero_grad()     # p.grad <- None

Every update is plain NumPy on host arrays, in the parameter's dtype (float32 stays float32, as in
torch). A parameter that lives on the GPU (a numba.cuda device array, "cuda" backend) is copied
to the host, updated there and copied back into the same device buffer: one host round trip per
parameter and step, the one edge copy of an optimizer step. Optimizer state (moment buffers)
always lives on the host.

Parameters are given as an iterable of ``Parameter`` or of param groups (dicts with a
``"params"`` entry and per-group hyper-parameters overriding the defaults), like torch.
``state_dict()`` / ``load_state_dict()`` use torch's layout, with NumPy arrays and Python
scalars: ``{"state": {index: {name: array | int}}, "param_groups": [{..., "params": [index]}]}``;
loading one and continuing gives bit-for-bit the run that was saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..arrays import is_device_array, to_numpy

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "to_host", "write_back"]


def to_host(a) -> np.ndarray:
    """``a`` itself when it is a NumPy array, else a host copy of the device array."""
    return a.copy_to_host() if is_device_array(a) else a


def write_back(dst, host: np.ndarray) -> None:
    """After updating ``host = to_host(dst)`` in place: copy it back when ``dst`` is on the
    device (a host ``dst`` *is* ``host`` and already holds the update)."""
    if is_device_array(dst):
        dst.copy_to_device(np.ascontiguousarray(host, dtype=dst.dtype))


def _check_nonnegative(**values) -> None:
    for name, value in values.items():
        if not value >= 0.0:  # also rejects NaN
            raise ValueError(f"invalid {name}: {value!r} (must be >= 0)")


class Optimizer:
    """Base class: param groups, ``step``, ``zero_grad`` and the state dict.

    A subclass sets its hyper-parameter ``defaults`` and implements
    ``_update(param, grad, state, group)``, which changes the host array ``param`` in place
    using ``grad`` (same shape and dtype, never modified), the parameter's ``state`` dict
    (empty before its first step) and the group's hyper-parameters.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        #: per-parameter state, keyed by the Parameter object (identity)
        self.state: dict = {}
        params = list(params) if isinstance(params, Iterable) else params
        if not isinstance(params, list):
            raise TypeError(
                f"params must be an iterable of Parameters or of dicts, got {type(params).__name__}"
            )
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        """Add ``{"params": [...], <hyper-parameter>: value, ...}``; missing ones take defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a param group is a dict with a 'params' entry")
        unknown = set(group) - set(self.defaults) - {"params", "initial_lr"}
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown hyper-parameter(s) {sorted(unknown)} in a param "
                f"group; known: {sorted(self.defaults)}"
            )
        params = list(group["params"])
        for param in params:
            if not (hasattr(param, "data") and hasattr(param, "grad")):
                raise TypeError(
                    f"optimizers update Parameters (with .data and .grad), got {type(param).__name__}"
                )
        known = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in known for p in params) or len({id(p) for p in params}) != len(params):
            raise ValueError("a parameter appears in more than one place of the optimizer")
        new = {**self.defaults, **group, "params": params}
        self._check_group(new)
        self.param_groups.append(new)

    def _check_group(self, group: dict) -> None:
        """Raise ValueError for invalid hyper-parameters (subclasses extend)."""
        _check_nonnegative(lr=group["lr"], weight_decay=group.get("weight_decay", 0.0))

    def _params(self):
        """Every parameter in group order (the numbering of the state dict)."""
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (``grad = None``), or zero them in place with ``set_to_none=False``."""
        for param in self._params():
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                host = to_host(param.grad)
                host[...] = 0
                write_back(param.grad, host)

    def step(self) -> None:
        """One update of every parameter that has a gradient (frozen ones are skipped)."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None or not getattr(param, "requires_grad", True):
                    continue
                data = to_host(param.data)  # the array itself, or a host copy of a device array
                grad = np.asarray(to_numpy(param.grad), dtype=data.dtype)
                if grad.shape != data.shape:
                    raise ValueError(
                        f"{type(self).__name__}: gradient of shape {grad.shape} for a parameter "
                        f"of shape {data.shape}"
                    )
                self._update(data, grad, self.state.setdefault(param, {}), group)
                write_back(param.data, data)

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict, group: dict) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------ state dict

    def state_dict(self) -> dict:
        """torch's layout: parameters are numbered 0.. in group order; arrays are copies."""
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {
            index[id(param)]: {
                k: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
                for k, v in param_state.items()
            }
            for param, param_state in self.state.items()
        }
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append(
                {
                    **{k: v for k, v in group.items() if k != "params"},
                    "params": list(range(start, start + n)),
                }
            )
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and per-parameter state saved by ``state_dict``.

        The groups must have the same sizes and the arrays the shapes of the parameters they
        belong to (ValueError otherwise, before anything is changed).
        """
        groups = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        saved_sizes = [len(g["params"]) for g in groups]
        if sizes != saved_sizes:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: saved param groups have sizes "
                f"{saved_sizes}, this optimizer's have {sizes}"
            )
        by_index = {
            saved: param
            for group, saved_group in zip(self.param_groups, groups, strict=True)
            for param, saved in zip(group["params"], saved_group["params"], strict=True)
        }
        new_state = {}
        for key, param_state in state_dict["state"].items():
            key = int(key)
            if key not in by_index:
                raise ValueError(f"{type(self).__name__}.load_state_dict: no parameter {key}")
            param = by_index[key]
            restored = {}
            for name, value in param_state.items():
                if isinstance(value, np.ndarray) and value.ndim > 0:
                    if value.shape != param.shape:
                        raise ValueError(
                            f"{type(self).__name__}.load_state_dict: state {name!r} of parameter "
                            f"{key} has shape {value.shape}, the parameter {param.shape}"
                        )
                    value = np.array(value, dtype=param.dtype, copy=True)
                elif isinstance(value, np.ndarray | np.generic):
                    value = value.item()  # a scalar saved as a 0-d array (e.g. via .npz)
                restored[name] = value
            new_state[param] = restored
        for group, saved_group in zip(self.param_groups, groups, strict=True):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params"]
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, ``torch.optim.SGD``::

    g = grad + weight_decay * p                        (L2 penalty in the gradient)
    b = g  at the first step,  else  b = momentum * b + (1 - dampening) * g
    g = g + momentum * b  if nesterov  else  b         (only when momentum != 0)
    p = p - lr * g
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        _check_nonnegative(momentum=group["momentum"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _update(self, param, grad, state, group):
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        g = grad + wd * param if wd != 0 else grad
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * g
            g = g + momentum * buf if group["nesterov"] else buf
        param -= lr * g


#: the two denominators of RMSprop's step (see ``RMSprop``)
EPS_PLACEMENTS = ("torch", "tf")


class RMSprop(Optimizer):
    """RMSprop (Hinton's lecture 6e), ``torch.optim.RMSprop``, or Keras' variant of it.

    With ``eps_placement="torch"`` (default; torch's update, its defaults)::

        g = grad + weight_decay * p
        s = alpha * s + (1 - alpha) * g^2                  (s starts at 0)
        centered:  a = alpha * a + (1 - alpha) * g;  v = s - a^2    else  v = s
        d = sqrt(v) + eps                                  (eps OUTSIDE the root)
        momentum > 0:  b = momentum * b + g / d;  p = p - lr * b
        else:          p = p - lr * g / d

    ``eps_placement="tf"`` follows ``keras.optimizers.RMSprop`` (Keras 2 and 3): its moving
    average of g^2 also starts at zero and decays with ``rho`` (our ``alpha``), but epsilon is
    added *inside* the square root, and with momentum the learning rate is applied before the
    gradient enters the momentum buffer::

        d = sqrt(v + eps)                                  (eps INSIDE the root)
        momentum > 0:  b = momentum * b + lr * g / d;  p = p - b
        else:          p = p - lr * g / d

    (With a constant lr the two momentum forms agree; they differ when a schedule changes lr.)
    ``weight_decay`` is torch's L2 term in the gradient in both placements; Keras' own
    ``weight_decay`` argument (decoupled) is not reproduced, but an L2 kernel regulariser of
    strength l adds 2 * l * p to Keras' gradient, i.e. ``weight_decay = 2 * l`` here.
    Keras' defaults are lr=1e-3, rho=0.9, epsilon=1e-7: ``RMSprop.keras(params)`` uses them.
    (TensorFlow 1's ``tf.train.RMSPropOptimizer`` started s at 1, not 0; Keras does not.)
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        eps_placement: str = "torch",
    ):
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            eps_placement=eps_placement,
        )
        super().__init__(params, defaults)

    @classmethod
    def keras(cls, params, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7, **kwargs):
        """RMSprop with Keras' update and defaults (``keras.optimizers.RMSprop()``)."""
        return cls(params, lr=lr, alpha=rho, eps=eps, eps_placement="tf", **kwargs)

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        _check_nonnegative(eps=group["eps"], alpha=group["alpha"], momentum=group["momentum"])
        if group["eps_placement"] not in EPS_PLACEMENTS:
            raise ValueError(
                f"eps_placement must be one of {EPS_PLACEMENTS}, got {group['eps_placement']!r}"
            )

    def _update(self, param, grad, state, group):
        lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
        momentum, wd = group["momentum"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(param)
            if momentum > 0:
                state["momentum_buffer"] = np.zeros_like(param)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(param)
        state["step"] += 1
        g = grad + wd * param if wd != 0 else grad
        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += (1 - alpha) * g * g
        variance = square_avg
        if group["centered"]:
            grad_avg = state["grad_avg"]
            grad_avg += (1 - alpha) * (g - grad_avg)  # torch's lerp_(g, 1 - alpha)
            variance = square_avg - grad_avg * grad_avg
        if group["eps_placement"] == "torch":
            denom = np.sqrt(variance) + eps
        else:
            denom = np.sqrt(variance + eps)
        if momentum > 0:
            buf = state["momentum_buffer"]
            buf *= momentum
            if group["eps_placement"] == "torch":
                buf += g / denom
                param -= lr * buf
            else:
                buf += lr * g / denom
                param -= buf
        else:
            param -= lr * (g / denom)


class Adam(Optimizer):
    """Adam (Kingma & Ba), ``torch.optim.Adam``; ``AdamW`` is the decoupled-decay variant::

    t = t + 1
    Adam:   g = grad + weight_decay * p            AdamW:  p = p - lr * weight_decay * p
    m = m + (1 - beta1) * (g - m)                  (torch's lerp; = beta1 m + (1-beta1) g)
    v = beta2 * v + (1 - beta2) * g^2              (m, v start at 0)
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    _decoupled = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _check_group(self, group: dict) -> None:
        super()._check_group(group)
        _check_nonnegative(eps=group["eps"])
        if len(group["betas"]) != 2 or not all(0.0 <= b < 1.0 for b in group["betas"]):
            raise ValueError(f"betas must be two numbers in [0, 1), got {group['betas']!r}")

    def _update(self, param, grad, state, group):
        lr, (beta1, beta2), eps, wd = (
            group["lr"],
            group["betas"],
            group["eps"],
            group["weight_decay"],
        )
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
        state["step"] += 1
        step = state["step"]
        g = grad
        if wd != 0:
            if self._decoupled:
                # p - (lr wd) p, not p * (1 - lr wd): in float32 the factor 1 - 3e-8 would
                # round to 1 - 6e-8 or to 1, doubling or dropping the decay
                param -= (lr * wd) * param
            else:
                g = grad + wd * param
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (g - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * g * g
        step_size = lr / (1 - beta1**step)
        denom = np.sqrt(exp_avg_sq) / math.sqrt(1 - beta2**step) + eps
        param -= step_size * (exp_avg / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), ``torch.optim.AdamW``: the
    parameter shrinks by ``lr * weight_decay`` before the Adam step instead of the decay
    entering the gradient. torch's default ``weight_decay=0.01``."""

    _decoupled = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
