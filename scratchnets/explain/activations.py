"""The activations explained: each element's y and slope with its numbers, the inputs placed
exactly on the kinks (ReLU6 at 0 and 6, clip at its bounds, hard-sigmoid / hard-swish at -3 and
3) so that torch's choice of derivative there is shown and checked; softmax's y and dx of one
element written out over its line."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..reference import activations as ref_act
from ._common import explainer, output_index, torch_results, values
from .core import CHECK_RTOL, Element, Explanation, Source, index_text, num

#: how many elements the table of x and slopes shows (a model layer's input has many)
SHOWN_ELEMENTS = 16


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


@dataclass(frozen=True)
class Activation:
    """What the explanation of one activation says and computes (independently of the op).
    An activation with parameters (clip's bounds) names them in ``parameters`` with their
    defaults; its texts are formatted with them, and ``kinks``, ``value`` and ``slope`` take them
    as keywords."""

    forward: str  # the equation of y
    backward: str  # the equation of dx, with the choice at the kinks
    kinks: tuple[float, ...] | Callable[..., tuple[float, ...]]  # where the slope jumps: placed
    value: Callable[..., float]  # y(x)
    slope: Callable[..., float]  # dy/dx, torch's value at the kinks
    torch_name: str  # in torch.nn.functional, called with the parameters' values after x
    torch_rounding: str = ""  # where torch's float64 gradient is itself rounded: what and how much
    parameters: tuple[tuple[str, float], ...] = ()  # (name, default), in the op's argument order


ACTIVATIONS = {
    "relu": Activation(
        "y = max(x, 0)",
        "dx = dy * [x > 0]   (the slope at exactly x = 0 is taken as 0, as torch)",
        (0.0,), lambda v: max(v, 0.0), lambda v: float(v > 0), "relu",
    ),
    "relu6": Activation(
        "y = min(max(x, 0), 6)",
        "dx = dy * [0 < x < 6]   (the mask is 0 at exactly x = 0 and at exactly x = 6, as torch)",
        (0.0, 6.0), lambda v: min(max(v, 0.0), 6.0), lambda v: float(0 < v < 6), "relu6",
    ),
    "clip": Activation(
        "y = min(max(x, {low}), {high})",
        "dx = dy * [{low} < x < {high}]   (0 at exactly the bounds, as torch's hardtanh)",
        lambda low, high: tuple(b for b in (low, high) if math.isfinite(b)),
        lambda v, low, high: min(max(v, low), high), lambda v, low, high: float(low < v < high),
        "hardtanh", parameters=(("low", -1.0), ("high", 1.0)),
    ),
    "sigmoid": Activation(
        "y = 1 / (1 + exp(-x))",
        "dx = dy * y * (1 - y)",
        (), _sigmoid, lambda v: _sigmoid(v) * _sigmoid(-v), "sigmoid",
    ),
    "hard_sigmoid": Activation(
        "y = relu6(x + 3) / 6 = min(max(x + 3, 0), 6) / 6",
        "dx = dy / 6 for -3 < x < 3, else 0   (0 at exactly x = -3 and x = 3, as torch)",
        (-3.0, 3.0), lambda v: min(max(v + 3, 0.0), 6.0) / 6, lambda v: (1 / 6) * (-3 < v < 3),
        "hardsigmoid", "torch's float64 hardsigmoid backward multiplies by a float32 1/6, 3e-8 "
        "relative: its dx is compared at 1e-7",
    ),
    "hard_swish": Activation(
        "y = x * relu6(x + 3) / 6",
        "dx = dy * slope: 0 for x <= -3, x / 3 + 1/2 for -3 < x < 3, 1 for x >= 3   (the slope "
        "jumps at both kinks; torch takes the outer pieces there)",
        (-3.0, 3.0), lambda v: v * min(max(v + 3, 0.0), 6.0) / 6,
        lambda v: 0.0 if v <= -3 else (v / 3 + 0.5 if v < 3 else 1.0), "hardswish",
    ),
    "silu": Activation(
        "y = x * sigmoid(x)   (SiLU, swish)",
        "dx = dy * s * (1 + x * (1 - s)),  s = sigmoid(x)",
        (), lambda v: v * _sigmoid(v), lambda v: _sigmoid(v) * (1 + v * _sigmoid(-v)), "silu",
    ),
}  # fmt: skip


def _make(name: str, spec: Activation):
    forward = getattr(ref_act, f"{name}_forward")
    backward = getattr(ref_act, f"{name}_backward")

    def explain(input=(1, 1, 2, 4), seed=0, at=None, *, arrays=None, **parameters) -> Explanation:
        unknown = set(parameters) - {p for p, _ in spec.parameters}
        if unknown:
            raise TypeError(f"{name} takes no argument {sorted(unknown)[0]!r}")
        p = {k: float(parameters.get(k, default)) for k, default in spec.parameters}
        if p.get("low", -math.inf) > p.get("high", math.inf):
            raise ValueError(f"--low {p['low']} is above --high {p['high']} (torch's hardtanh "
                             "refuses that too; the op then gives high everywhere)")  # fmt: skip
        kinks = spec.kinks(**p) if callable(spec.kinks) else spec.kinks
        shape = tuple(int(s) for s in (input if arrays is None else arrays["x"].shape))
        if not shape or min(shape) < 1:
            raise ValueError(f"--input must be a shape with every size >= 1, got {shape}")
        rng = np.random.default_rng(seed)
        if arrays is None:
            x = values(rng, shape, 4.0)
            # the kinks exactly, then one input past each end of them (the flat pieces: ReLU6's
            # 6 above 6, hard-sigmoid's 0 below -3), where the slope is 0 or 1 again
            beyond = (min(kinks) - 1.5, max(kinks) + 1.5) if kinks else ()
            placed = np.array([*kinks, *beyond])[: x.size]
            x.reshape(-1)[: len(placed)] = placed
        else:
            x = np.array(arrays["x"], np.float64)
        flat = x.reshape(-1)
        y, cache = forward(x, *p.values())
        dy = values(rng, shape)
        dx = backward(dy, cache)
        theirs = torch_results(lambda F, x: getattr(F, spec.torch_name)(x, *p.values()),
                               {"x": x}, dy)  # fmt: skip
        forward_text, backward_text = (t.format(**{k: num(v) for k, v in p.items()})
                                       for t in (spec.forward, spec.backward))  # fmt: skip
        e = Explanation(name, dict(input=shape, **p, seed=seed), inputs={"x": x, "dy": dy})
        e.section(
            "shapes and work",
            f"x, y, dy, dx all of shape {shape}: one y per x, no parameters, no multiply-adds",
        )
        e.section("forward", forward_text)
        e.section("backward (dy = dL/dy given)", backward_text)
        shown = flat[:SHOWN_ELEMENTS]
        e.section(
            "every element" if flat.size <= SHOWN_ELEMENTS else f"the first {SHOWN_ELEMENTS}",
            "x     " + "  ".join(f"{num(v):>8}" for v in shown),
            "slope " + "  ".join(f"{num(spec.slope(float(v), **p)):>8}" for v in shown),
        )
        e.sources = [Source.of(forward), Source.of(backward)]
        # the kinks and, past the top one, the flat piece (ReLU6 at 7.5: y = 6, slope 0)
        written = (*kinks, max(kinks) + 1.5) if kinks else ()
        found = np.flatnonzero(np.isin(flat, written))[: len(written)]
        chosen = [np.unravel_index(k, shape) for k in found]
        chosen.append(output_index(at, shape, np.unravel_index(flat.size - 1, shape)))
        for index in chosen:
            v, g = float(x[index]), float(dy[index])
            on_kink = " (a kink)" if v in kinks else ""
            value, slope = spec.value(v, **p), spec.slope(v, **p)
            e.elements.append(Element(
                "y", index, forward_text, [f"x = {num(v)}{on_kink}: y = {num(value)}"],
                value, y[index], None if theirs is None else theirs[0][index],
            ))  # fmt: skip
            e.elements.append(Element(
                "dx", index, "dy * slope(x)",
                [f"{index_text('dy', index)} * slope({num(v)}) = {num(g)} * "
                 f"{num(slope)} = {num(g * slope)}"],
                g * slope, dx[index], None if theirs is None else theirs[1]["x"][index],
                spec.torch_rounding, 1e-7 if spec.torch_rounding else CHECK_RTOL,
            ))  # fmt: skip
        return e

    explain.__signature__ = inspect.Signature([
        *(inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
          for k, d in (("input", (1, 1, 2, 4)), *spec.parameters, ("seed", 0), ("at", None))),
        inspect.Parameter("arrays", inspect.Parameter.KEYWORD_ONLY, default=None),
    ])  # fmt: skip
    explain.__doc__ = f"{name}: {spec.forward.format(**dict(spec.parameters))}."
    return explain


for _name, _spec in ACTIVATIONS.items():
    explainer(_name)(_make(_name, _spec))


@explainer("softmax")
def explain_softmax(input=(1, 4, 2, 2), axis=1, seed=0, at=None, *, arrays=None) -> Explanation:
    """softmax along ``axis`` (default: the channels): each y is exp(x) over its line's sum."""
    shape = tuple(int(s) for s in (input if arrays is None else arrays["x"].shape))
    if not shape or min(shape) < 1:
        raise ValueError(f"--input must be a shape with every size >= 1, got {shape}")
    rng = np.random.default_rng(seed)
    x = values(rng, shape, 2.0) if arrays is None else np.array(arrays["x"], np.float64)
    y, cache = ref_act.softmax_forward(x, axis)
    dy = values(rng, shape)
    dx = ref_act.softmax_backward(dy, cache)
    theirs = torch_results(lambda F, x: F.softmax(x, axis), {"x": x}, dy)
    axis %= len(shape)
    e = Explanation("softmax", dict(input=shape, axis=axis, seed=seed), inputs={"x": x, "dy": dy})
    e.section(
        "shapes and work",
        f"x, y, dy, dx all of shape {shape}; each line of {shape[axis]} elements along axis "
        f"{axis} is one distribution (its y sum to 1); no parameters, no multiply-adds",
    )
    e.section(
        "forward",
        "y_k = exp(x_k - m) / sum_j exp(x_j - m),  m = max_j x_j over the line",
        "(subtracting m changes nothing mathematically and keeps every exp in (0, 1]: no overflow)",
    )
    e.section(
        "backward (dy = dL/dy given)",
        "dx_k = sum_j dy_j * (d y_j / d x_k) = y_k * (dy_k - sum_j dy_j * y_j)",
        "(the Jacobian diag(y) - y y^T applied to dy: one dot product per line, no K x K matrix)",
    )
    e.sources = [Source.of(ref_act.softmax_forward), Source.of(ref_act.softmax_backward)]
    index = output_index(at, shape, (0,) * len(shape))
    line = [index[:axis] + (j,) + index[axis + 1 :] for j in range(shape[axis])]
    xs = np.array([x[i] for i in line])
    top = float(xs.max())
    exps = np.exp(xs - top)
    total = float(exps.sum())
    k = index[axis]
    value = float(exps[k] / total)
    e.elements.append(Element(
        "y", index, f"exp(x_k - m) / sum_j exp(x_j - m), m = {num(top)}",
        [f"exp({index_text('x', i)} - m) = exp({num(x[i])} - {num(top)}) = {num(v)}"
         for i, v in zip(line, exps, strict=True)],
        value, y[index], None if theirs is None else theirs[0][index],
        steps=[f"sum = {num(total)};  y = {num(exps[k])} / {num(total)} = {num(value)}"],
    ))  # fmt: skip
    ys, dys = exps / total, np.array([dy[i] for i in line])
    dot = float(ys @ dys)
    grad = value * (float(dy[index]) - dot)
    e.elements.append(Element(
        "dx", index, "y_k * (dy_k - sum_j dy_j * y_j)",
        [f"{index_text('dy', i)} * y = {num(dy[i])} * {num(v)} = {num(dy[i] * v)}"
         for i, v in zip(line, ys, strict=True)],
        grad, dx[index], None if theirs is None else theirs[1]["x"][index],
        steps=[f"sum = {num(dot)};  dx = {num(value)} * ({num(dy[index])} - {num(dot)}) = "
               f"{num(grad)}"],
    ))  # fmt: skip
    return e
