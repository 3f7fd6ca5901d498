"""pad2d explained: a gather (an output pixel reads one input pixel, or is the constant border),
so its backward is the scatter-add of dy back onto the pixels read."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..reference import pad as ref_pad
from ._common import explainer, gather_explanation, nchw, torch_results, values
from .core import Explanation, Source


@explainer("pad2d")
def explain_pad2d(input=(1, 1, 3, 4), padding=(2, 1, 1, 2), mode="reflect", value=0.0, seed=0,
                  at=None) -> Explanation:  # fmt: skip
    """Padding in torch's four modes (``padding`` as (top, bottom, left, right), like conv2d)."""
    shape = nchw(input)
    pads, mode = ref_pad.check_pad(shape, padding, mode)
    top, bottom, left, right = pads
    nn.ZeroPad2d((left, right, top, bottom))  # the layer's checks of the sizes
    rng = np.random.default_rng(seed)
    x = values(rng, shape)
    y, cache = ref_pad.pad2d_forward(x, pads, mode, value)
    dy = values(rng, y.shape)
    dx = ref_pad.pad2d_backward(dy, cache)
    theirs = torch_results(lambda F, x: F.pad(x, (left, right, top, bottom), mode, value)
                           if mode == "constant" else F.pad(x, (left, right, top, bottom), mode),
                           {"x": x}, dy)  # fmt: skip
    case = dict(input=shape, padding=pads, mode=mode, value=value, seed=seed)
    e = gather_explanation("pad2d", case, x, y, dy, dx, theirs, [(cache.rows, None)],
                            [(cache.cols, None)], at, (0, shape[1] - 1, 0, 0))  # fmt: skip
    H, W = shape[2:]
    e.sections = [
        ("shapes", [f"x {shape} -> y (N, C, top + H + bottom, left + W + right) = {y.shape}",
                    f"pads (top, bottom, left, right) = {pads}  (torch's F.pad takes "
                    f"(left, right, top, bottom) = {(left, right, top, bottom)})"]),
        ("which input pixel each output reads (per axis; -1: the constant value)", [
            f"rows    {list(map(int, cache.rows))}   (H = {H})",
            f"columns {list(map(int, cache.cols))}   (W = {W})",
            {"constant": "constant: outside x the value", "reflect": "reflect: mirrored at the "
             "edge, the edge not repeated (d c b | a b c d | c b a)", "replicate": "replicate: "
             "the edge repeated (a a | a b c d | d d)", "circular": "circular: wrapped around "
             "(c d | a b c d | a b)"}[mode],
        ]),
        ("forward / backward", [
            "y[n, c, p, q] = x[n, c, rows[p], cols[q]]        (a copy: no arithmetic)",
            "dx[n, c, h, w] = sum over (p, q) with rows[p] = h and cols[q] = w of dy[n, c, p, q]",
            "   (a border pixel copied k times collects k gradients: the scatter-add of a gather)",
        ]),
    ]  # fmt: skip
    e.sources = [Source.of(ref_pad.pad2d_forward), Source.of(ref_pad.pad2d_backward)]
    return e
