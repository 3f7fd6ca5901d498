"""Shared by the explainers: the registry, seeded readable inputs, torch's results for the same
case, the arithmetic lines every windowed op prints, and the y / dx elements of a gather (pad2d,
the resizes)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..reference.pad import OUTSIDE
from .core import Element, Explanation, Source, index_text, num

#: op name -> explainer; every op of ``scratchnets.reference`` has one
EXPLAINERS: dict[str, Callable[..., Explanation]] = {}


def explainer(name: str):
    """Register the decorated function as the explainer of ``name``."""

    def register(func):
        EXPLAINERS[name] = func
        return func

    return register


def values(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """Seeded float64 values rounded to two decimals: readable, and exact enough to check."""
    return np.round(rng.standard_normal(shape) * scale, 2)


def torch_results(fn, inputs: dict[str, np.ndarray], dy: np.ndarray):
    """torch's output and gradients of ``sum(fn(F, **inputs) * dy)`` w.r.t. every input (F:
    ``torch.nn.functional``), float64; None when torch is not installed."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    # contiguous copies: torch 2.13's CPU batch_norm backward in eval mode returns wrong
    # gradients for a (1, C, H, W) input whose batch stride equals its row stride (a layout our
    # conv output can have when N = 1; found by this tool)
    tensors = {
        k: torch.tensor(np.ascontiguousarray(v), dtype=torch.float64, requires_grad=True)
        for k, v in inputs.items()
    }
    y = fn(F, **tensors)
    grads = torch.autograd.grad((y * torch.tensor(dy)).sum(), list(tensors.values()))
    return y.detach().numpy(), {k: g.numpy() for k, g in zip(tensors, grads, strict=True)}


def window_count_lines(
    axis: str, size: int, kernel: int, stride: int, pad, dilation: int, ceil_mode=False
) -> list[str]:
    """The output-size arithmetic of one axis, symbols then numbers, and what the rounding does:
    ``OH = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1`` (``pad`` an int, or (before, after)
    for asymmetric padding; ceil in pooling's ceil mode, whose last window is dropped again when
    it would start past the input and its left padding)."""
    s = "H" if axis == "h" else "W"
    k, st, pd, dl = (f"{c}{axis}" for c in ("k", "s", "p", "d"))
    before, after = (pad, pad) if isinstance(pad, int) else pad
    if before == after:
        pad_symbols, pad_numbers = f"2*{pd}", f"2*{before}"
    else:
        names = ("top", "bottom") if axis == "h" else ("left", "right")
        pad_symbols, pad_numbers = " + ".join(names), f"{before} + {after}"
    cells = "rows" if axis == "h" else "columns"
    numerator = size + before + after - dilation * (kernel - 1) - 1
    rounding = "ceil" if ceil_mode else "floor"
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    lines = [
        f"O{s} = {rounding}(({s} + {pad_symbols} - {dl}*({k} - 1) - 1) / {st}) + 1",
        f"   = {rounding}(({size} + {pad_numbers} - {dilation}*({kernel} - 1) - 1) / {stride}) + 1"
        f" = {rounding}({numerator} / {stride}) + 1 = {out}",
    ]
    if ceil_mode and numerator % stride:
        if (out - 1) * stride >= size + before:
            lines.append(
                f"   (the last window would start at padded {cells[:-1]} {(out - 1) * stride} >= "
                f"{s} + {pd} = {size + before}, past the input: dropped, O{s} = {out - 1})"
            )
        else:
            lines.append(
                f"   (ceil keeps a last window that overhangs the padded input by "
                f"{stride - numerator % stride} of its {cells}: those cells are ignored)"
            )
    elif numerator >= 0 and numerator % stride:
        lines.append(
            f"   (the floor drops {numerator % stride}: the last {numerator % stride} padded "
            f"{cells} are never read)"
        )
    return lines


def product_line(name: str, factor_names: list[str], factors: list[int]) -> str:
    return f"{name} = {' * '.join(factor_names)} = {' * '.join(map(str, factors))} = {math.prod(factors):,}"


def output_index(at, shape, default) -> tuple[int, ...]:
    """The index to write out: ``at`` (checked against ``shape``) or ``default``."""
    if at is None:
        return tuple(default)
    at = tuple(int(i) for i in at)
    if len(at) != len(shape) or not all(0 <= i < s for i, s in zip(at, shape, strict=True)):
        raise ValueError(f"--at {at} is not an index of the output of shape {tuple(shape)}")
    return at


def nchw(shape) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"--input must be N x C x H x W with every size >= 1, got {shape}")
    return shape


def counted(layer, input_shape) -> tuple[int, int]:
    """(params, mult-adds for the whole batch) of a layer by the model counter."""
    from ..profile.summary import summary

    report = summary(layer, input_shape)
    return report.total_params, report.total_macs * input_shape[0]


def gather_explanation(op, case, x, y, dy, dx, theirs, taps_h, taps_w, at, default_at):
    """The y and dx elements of a separable gather: output (p, q) reads rows ``taps_h`` and
    columns ``taps_w`` (lists of (index array, weight array or None)) with product weights."""
    e = Explanation(op, case, inputs={"x": x, "dy": dy})
    n, c, p, q = output_index(at, y.shape, default_at)

    def reads(p, q):
        """(h, w, weight) of the input pixels output (p, q) reads."""
        return [(int(rows[p]), int(cols[q]), (1.0 if wr is None else wr[p]) * (1.0 if wc is None else wc[q]))
                for rows, wr in taps_h for cols, wc in taps_w
                if rows[p] != OUTSIDE and cols[q] != OUTSIDE]  # fmt: skip

    terms, total = [], 0.0
    for h, w, weight in reads(p, q):
        total += weight * x[n, c, h, w]
        terms.append(f"{num(weight)} * {index_text('x', (n, c, h, w))} = {num(weight)} * "
                     f"{num(x[n, c, h, w])} = {num(weight * x[n, c, h, w])}")  # fmt: skip
    if not terms:  # the constant border of pad2d
        total = float(y[n, c, p, q])
        terms = [f"outside x: the constant value {num(total)}"]
    e.elements.append(Element(
        "y", (n, c, p, q), "sum over the pixels this output reads of weight * x", terms, total,
        y[n, c, p, q], None if theirs is None else theirs[0][n, c, p, q],
    ))  # fmt: skip
    h, w = (reads(p, q) or [(0, 0, 1.0)])[0][:2]
    terms, total = [], 0.0
    for a in range(y.shape[2]):
        for b in range(y.shape[3]):
            for r, s, weight in reads(a, b):
                if (r, s) == (h, w):
                    total += weight * dy[n, c, a, b]
                    terms.append(f"output ({a}, {b}) read it: {num(weight)} * "
                                 f"{index_text('dy', (n, c, a, b))} = {num(weight)} * "
                                 f"{num(dy[n, c, a, b])}")  # fmt: skip
    e.elements.append(Element(
        "dx", (n, c, h, w), "sum of weight * dy over the outputs that read this pixel", terms,
        total, dx[n, c, h, w], None if theirs is None else theirs[1]["x"][n, c, h, w],
    ))  # fmt: skip
    return e


def sources(module, op: str) -> list[Source]:
    """The source lines of ``op``'s forward and backward in ``module``."""
    return [
        Source.of(getattr(module, f"{op}_forward")),
        Source.of(getattr(module, f"{op}_backward")),
    ]
