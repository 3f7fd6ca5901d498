"""The joins and elementwise ops of the blocks explained: add (a residual splits dy in two), mul
(a gate: its gradient sums over the broadcast axes), concat / slice (dy cut and placed back)."""

from __future__ import annotations

import numpy as np

from ..reference import elementwise as ref_ew
from ._common import explainer, nchw, output_index, sources, torch_results, values
from .core import Element, Explanation, index_text, num


def _binary(op: str, input, seed, at) -> Explanation:
    """add / mul of a (N, C, H, W) and a broadcast b (N, C, 1, 1), like an SE gate."""
    N, C, H, W = nchw(input)
    rng = np.random.default_rng(seed)
    a, b = values(rng, (N, C, H, W)), values(rng, (N, C, 1, 1))
    forward = getattr(ref_ew, f"{op}_forward")
    y, cache = forward(a, b)
    dy = values(rng, y.shape)
    da, db = getattr(ref_ew, f"{op}_backward")(dy, cache)
    symbol = "+" if op == "add" else "*"
    theirs = torch_results(lambda F, a, b: a + b if op == "add" else a * b, {"a": a, "b": b}, dy)
    e = Explanation(op, dict(input=(N, C, H, W), other=(N, C, 1, 1), seed=seed),
                    inputs={"a": a, "b": b, "dy": dy})  # fmt: skip
    e.section(
        "shapes (broadcasting)",
        f"a {a.shape} {symbol} b {b.shape} -> y {y.shape}: b's size-1 axes are repeated over H, W",
    )
    e.section("forward", f"y[n, c, h, w] = a[n, c, h, w] {symbol} b[n, c, 0, 0]")
    e.section(
        "backward (dy = dL/dy given)",
        "da = dy" if op == "add" else "da = dy * b  (b broadcast)",
        ("db[n, c, 0, 0] = sum_{h, w} dy[n, c, h, w]" if op == "add" else
         "db[n, c, 0, 0] = sum_{h, w} dy[n, c, h, w] * a[n, c, h, w]"),
        "   (an input broadcast over an axis sums its gradient over that axis; a residual "
        "connection hands dy to both paths unchanged)" if op == "add" else
        "   (a gate's gradient sums over every pixel it scaled)",
    )  # fmt: skip
    e.sources = sources(ref_ew, op)
    n, c, h, w = output_index(at, y.shape, (0, C - 1, H // 2, W // 2))
    value = a[n, c, h, w] + b[n, c, 0, 0] if op == "add" else a[n, c, h, w] * b[n, c, 0, 0]
    e.elements.append(Element(
        "y", (n, c, h, w), f"a {symbol} b",
        [f"{num(a[n, c, h, w])} {symbol} {num(b[n, c, 0, 0])} = {num(value)}"], value,
        y[n, c, h, w], None if theirs is None else theirs[0][n, c, h, w],
    ))  # fmt: skip
    grad_a = dy[n, c, h, w] * (1.0 if op == "add" else b[n, c, 0, 0])
    e.elements.append(Element(
        "da", (n, c, h, w), "dy" if op == "add" else "dy * b",
        [f"{num(dy[n, c, h, w])}" + ("" if op == "add" else f" * {num(b[n, c, 0, 0])}")],
        grad_a, da[n, c, h, w], None if theirs is None else theirs[1]["a"][n, c, h, w],
    ))  # fmt: skip
    cells = [(r, s) for r in range(H) for s in range(W)]
    factor = (lambda r, s: 1.0) if op == "add" else (lambda r, s: a[n, c, r, s])
    e.elements.append(Element(
        "db", (n, c, 0, 0), "sum over h, w of " + ("dy" if op == "add" else "dy * a"),
        [f"{index_text('dy', (n, c, r, s))}" + ("" if op == "add" else
         f" * {index_text('a', (n, c, r, s))}") + f" = {num(dy[n, c, r, s] * factor(r, s))}"
         for r, s in cells],
        float(sum(dy[n, c, r, s] * factor(r, s) for r, s in cells)), db[n, c, 0, 0],
        None if theirs is None else theirs[1]["b"][n, c, 0, 0],
    ))  # fmt: skip
    return e


@explainer("add")
def explain_add(input=(1, 2, 2, 3), seed=0, at=None) -> Explanation:
    """Broadcast addition (residuals, biases)."""
    return _binary("add", input, seed, at)


@explainer("mul")
def explain_mul(input=(1, 2, 2, 3), seed=0, at=None) -> Explanation:
    """Broadcast multiplication (squeeze-and-excitation / DFC attention gates)."""
    return _binary("mul", input, seed, at)


@explainer("concat")
def explain_concat(input=(1, 2, 2, 2), seed=0, at=None) -> Explanation:
    """Two inputs joined along the channels (a Ghost module's primary and cheap features)."""
    N, C, H, W = nchw(input)
    rng = np.random.default_rng(seed)
    x0, x1 = values(rng, (N, C, H, W)), values(rng, (N, C + 1, H, W))
    y, cache = ref_ew.concat_forward([x0, x1], axis=1)
    dy = values(rng, y.shape)
    dx0, dx1 = ref_ew.concat_backward(dy, cache)

    def torch_concat(F, x0, x1):
        import torch

        return torch.cat([x0, x1], 1)

    theirs = torch_results(torch_concat, {"x0": x0, "x1": x1}, dy)
    e = Explanation("concat", dict(input=(N, C, H, W), other=x1.shape, axis=1, seed=seed),
                    inputs={"x0": x0, "x1": x1, "dy": dy})  # fmt: skip
    e.section("shapes", f"x0 {x0.shape} and x1 {x1.shape} joined on axis 1 -> y {y.shape}")
    e.section(
        "forward / backward",
        f"y[:, :{C}] = x0, y[:, {C}:] = x1     (a copy: no arithmetic)",
        f"dx0 = dy[:, :{C}], dx1 = dy[:, {C}:]  (dy cut back at the same boundary)",
    )
    e.sources = sources(ref_ew, "concat")
    n, c, h, w = output_index(at, y.shape, (0, C, H // 2, W // 2))
    source, k = ("x0", c) if c < C else ("x1", c - C)
    piece = x0 if c < C else x1
    e.elements.append(Element(
        "y", (n, c, h, w), f"channel {c} of y is channel {k} of {source}",
        [f"{index_text(source, (n, k, h, w))} = {num(piece[n, k, h, w])}"], piece[n, k, h, w],
        y[n, c, h, w], None if theirs is None else theirs[0][n, c, h, w],
    ))  # fmt: skip
    grads = {"x0": dx0, "x1": dx1}
    e.elements.append(Element(
        f"d{source}", (n, k, h, w), "the dy of the channel it was copied to",
        [f"{index_text('dy', (n, c, h, w))} = {num(dy[n, c, h, w])}"], dy[n, c, h, w],
        grads[source][n, k, h, w], None if theirs is None else theirs[1][source][n, k, h, w],
    ))  # fmt: skip
    return e


@explainer("slice")
def explain_slice(input=(1, 4, 2, 2), start=1, stop=3, seed=0, at=None) -> Explanation:
    """Channels start:stop of x (GhostNet keeps the first out_channels of its concat)."""
    shape = nchw(input)
    rng = np.random.default_rng(seed)
    x = values(rng, shape)
    y, cache = ref_ew.slice_forward(x, start, stop, axis=1)
    dy = values(rng, y.shape)
    dx = ref_ew.slice_backward(dy, cache)
    theirs = torch_results(lambda F, x: x.narrow(1, start, stop - start), {"x": x}, dy)
    e = Explanation("slice", dict(input=shape, start=start, stop=stop, axis=1, seed=seed),
                    inputs={"x": x, "dy": dy})  # fmt: skip
    e.section("shapes", f"x {shape} -> y = x[:, {start}:{stop}] {y.shape}")
    e.section(
        "forward / backward",
        f"y[:, k] = x[:, {start} + k]",
        f"dx[:, {start}:{stop}] = dy, zero elsewhere (the dropped channels get no gradient)",
    )
    e.sources = sources(ref_ew, "slice")
    n, k, h, w = output_index(at, y.shape, (0, y.shape[1] - 1, 0, 0))
    e.elements.append(Element(
        "y", (n, k, h, w), f"x[n, {start} + k, h, w]",
        [f"{index_text('x', (n, start + k, h, w))} = {num(x[n, start + k, h, w])}"],
        x[n, start + k, h, w], y[n, k, h, w], None if theirs is None else theirs[0][n, k, h, w],
    ))  # fmt: skip
    dropped = 0 if start > 0 else stop % shape[1]
    e.elements.append(Element(
        "dx", (n, dropped, h, w), "0: this channel was not kept" if not start <= dropped < stop
        else "dy of the kept channel", ["no output read it" if not start <= dropped < stop
                                        else f"dy = {num(dy[n, dropped - start, h, w])}"],
        0.0 if not start <= dropped < stop else dy[n, dropped - start, h, w], dx[n, dropped, h, w],
        None if theirs is None else theirs[1]["x"][n, dropped, h, w],
    ))  # fmt: skip
    return e
