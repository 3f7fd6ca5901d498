"""The elementwise activations explained: each element's y and slope with its numbers, the
inputs placed exactly on the kinks (ReLU6 at 0 and 6, hard-sigmoid / hard-swish at -3 and 3) so
that torch's choice of derivative there is shown and checked."""

from __future__ import annotations

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
    """What the explanation of one activation says and computes (independently of the op)."""

    forward: str  # the equation of y
    backward: str  # the equation of dx, with the choice at the kinks
    kinks: tuple[float, ...]  # inputs where the slope jumps: placed into x on purpose
    value: Callable[[float], float]  # y(x)
    slope: Callable[[float], float]  # dy/dx, torch's value at the kinks
    torch_name: str  # in torch.nn.functional
    torch_rounding: str = ""  # where torch's float64 gradient is itself rounded: what and how much


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

    def explain(input=(1, 1, 2, 4), seed=0, at=None, *, arrays=None) -> Explanation:
        shape = tuple(int(s) for s in (input if arrays is None else arrays["x"].shape))
        if not shape or min(shape) < 1:
            raise ValueError(f"--input must be a shape with every size >= 1, got {shape}")
        rng = np.random.default_rng(seed)
        if arrays is None:
            x = values(rng, shape, 4.0)
            # the kinks exactly, then one input past each end of them (the flat pieces: ReLU6's
            # 6 above 6, hard-sigmoid's 0 below -3), where the slope is 0 or 1 again
            beyond = (min(spec.kinks) - 1.5, max(spec.kinks) + 1.5) if spec.kinks else ()
            placed = np.array([*spec.kinks, *beyond])[: x.size]
            x.reshape(-1)[: len(placed)] = placed
        else:
            x = np.array(arrays["x"], np.float64)
        flat = x.reshape(-1)
        y, cache = forward(x)
        dy = values(rng, shape)
        dx = backward(dy, cache)
        theirs = torch_results(lambda F, x: getattr(F, spec.torch_name)(x), {"x": x}, dy)
        e = Explanation(name, dict(input=shape, seed=seed), inputs={"x": x, "dy": dy})
        e.section(
            "shapes and work",
            f"x, y, dy, dx all of shape {shape}: one y per x, no parameters, no multiply-adds",
        )
        e.section("forward", spec.forward)
        e.section("backward (dy = dL/dy given)", spec.backward)
        shown = flat[:SHOWN_ELEMENTS]
        e.section(
            "every element" if flat.size <= SHOWN_ELEMENTS else f"the first {SHOWN_ELEMENTS}",
            "x     " + "  ".join(f"{num(v):>8}" for v in shown),
            "slope " + "  ".join(f"{num(spec.slope(float(v))):>8}" for v in shown),
        )
        e.sources = [Source.of(forward), Source.of(backward)]
        # the kinks and, past the top one, the flat piece (ReLU6 at 7.5: y = 6, slope 0)
        written = (*spec.kinks, max(spec.kinks) + 1.5) if spec.kinks else ()
        kinks = np.flatnonzero(np.isin(flat, written))[: len(written)]
        chosen = [np.unravel_index(k, shape) for k in kinks]
        chosen.append(output_index(at, shape, np.unravel_index(flat.size - 1, shape)))
        for index in chosen:
            v, g = float(x[index]), float(dy[index])
            on_kink = " (a kink)" if v in spec.kinks else ""
            e.elements.append(Element(
                "y", index, spec.forward, [f"x = {num(v)}{on_kink}: y = {num(spec.value(v))}"],
                spec.value(v), y[index], None if theirs is None else theirs[0][index],
            ))  # fmt: skip
            e.elements.append(Element(
                "dx", index, "dy * slope(x)",
                [f"{index_text('dy', index)} * slope({num(v)}) = {num(g)} * "
                 f"{num(spec.slope(v))} = {num(g * spec.slope(v))}"],
                g * spec.slope(v), dx[index], None if theirs is None else theirs[1]["x"][index],
                spec.torch_rounding, 1e-7 if spec.torch_rounding else CHECK_RTOL,
            ))  # fmt: skip
        return e

    explain.__doc__ = f"{name}: {spec.forward}."
    return explain


for _name, _spec in ACTIVATIONS.items():
    explainer(_name)(_make(_name, _spec))
