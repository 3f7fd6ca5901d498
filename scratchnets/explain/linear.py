"""linear explained: y = x W^T + b as sums of products, and dx, dW, db written out."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..reference import linear as ref_linear
from ._common import counted, explainer, output_index, product_line, torch_results, values
from .core import Element, Explanation, Source, index_text, num


@explainer("linear")
def explain_linear(
    input=(2, 4), out_features=3, bias=True, seed=0, at=None, *, arrays=None
) -> Explanation:
    """A fully connected layer (``reference.linear``). ``arrays`` ({"x", "w", "b"}): explain
    these instead of drawn values."""
    shape = tuple(int(s) for s in (input if arrays is None else arrays["x"].shape))
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"--input must be N x in_features with sizes >= 1, got {shape}")
    N, F_in = shape
    layer = nn.Linear(F_in, out_features, bias, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if arrays is None:
        x, w = values(rng, (N, F_in)), values(rng, (out_features, F_in), 0.5)
        b = values(rng, (out_features,), 0.1) if bias else None
    else:
        x, w, b = (None if arrays.get(k) is None else np.asarray(arrays[k], np.float64)
                   for k in ("x", "w", "b"))  # fmt: skip
    y, cache = ref_linear.linear_forward(x, w, b)
    dy = values(rng, y.shape)
    dx, dw, db = ref_linear.linear_backward(dy, cache)
    inputs = {"x": x, "w": w} | ({"b": b} if bias else {})
    theirs = torch_results(lambda F, x, w, b=None: F.linear(x, w, b), inputs, dy)
    case = dict(input=shape, out_features=out_features, bias=bias, seed=seed)
    e = Explanation("linear", case, inputs=inputs | {"dy": dy})
    e.section(
        "shapes",
        f"x (N, in) = {x.shape};  w (out, in) = {w.shape}"
        + (f";  b (out,) = {b.shape}" if bias else ";  no bias")
        + f";  y (N, out) = {y.shape}",
    )
    params = out_features * F_in + (out_features if bias else 0)
    macs = N * out_features * F_in
    counter = counted(layer, shape)
    e.counts = dict(params=params, mult_adds=macs, counter_params=counter[0],
                    counter_mult_adds=counter[1])  # fmt: skip
    e.section(
        "params and multiply-adds",
        product_line("weights", ["out", "in"], [out_features, F_in])
        + (f";  + bias {out_features} = {params:,} params" if bias else " params"),
        product_line("mult-adds", ["N", "out", "in"], [N, out_features, F_in]),
        f"the counter (scratchnets summary of this nn.Linear): params {counter[0]:,}, "
        f"mult-adds {counter[1]:,}: {'equal' if counter == (params, macs) else 'DIFFERENT'}",
        "(a 1x1 conv is the same product at every pixel: a pointwise conv IS a linear layer)",
    )
    e.section("forward", "y[n, o] = b[o] + sum_{i < in} x[n, i] * w[o, i]      (y = x @ w.T + b)")
    e.section(
        "backward (dy = dL/dy given)",
        "dx[n, i] = sum_o dy[n, o] * w[o, i]     (dx = dy @ w)",
        "dw[o, i] = sum_n dy[n, o] * x[n, i]     (dw = dy.T @ x)",
        "db[o]    = sum_n dy[n, o]",
    )
    e.sources = [Source.of(ref_linear.linear_forward), Source.of(ref_linear.linear_backward)]

    def products(pairs):
        return ([f"{a} * {b_} = {num(u)} * {num(v)} = {num(u * v)}" for a, b_, u, v in pairs],
                sum(u * v for *_, u, v in pairs))  # fmt: skip

    n, o = output_index(at, y.shape, (N - 1, out_features - 1))
    terms, total = products([(index_text("x", (n, i)), index_text("w", (o, i)), x[n, i], w[o, i])
                             for i in range(F_in)])  # fmt: skip
    if bias:
        terms.append(f"+ b[{o}] = {num(b[o])}")
        total += b[o]
    torch_y = None if theirs is None else theirs[0][n, o]
    e.elements.append(Element("y", (n, o), "b[o] + sum_i x[n, i] * w[o, i]", terms, total,
                              y[n, o], torch_y))  # fmt: skip
    i = F_in - 1
    terms, total = products([(index_text("dy", (n, k)), index_text("w", (k, i)), dy[n, k], w[k, i])
                             for k in range(out_features)])  # fmt: skip
    e.elements.append(Element("dx", (n, i), "sum_o dy[n, o] * w[o, i]", terms, total, dx[n, i],
                              None if theirs is None else theirs[1]["x"][n, i]))  # fmt: skip
    terms, total = products([(index_text("dy", (k, o)), index_text("x", (k, i)), dy[k, o], x[k, i])
                             for k in range(N)])  # fmt: skip
    e.elements.append(Element("dw", (o, i), "sum_n dy[n, o] * x[n, i]", terms, total, dw[o, i],
                              None if theirs is None else theirs[1]["w"][o, i]))  # fmt: skip
    if bias:
        e.elements.append(Element(
            "db", (o,), "sum_n dy[n, o]", [f"dy[{k}, {o}] = {num(dy[k, o])}" for k in range(N)],
            float(dy[:, o].sum()), db[o], None if theirs is None else theirs[1]["b"][o],
        ))  # fmt: skip
    return e
