"""pad2d and the two resizes explained: each is a gather (an output pixel reads one or a few
weighted input pixels), so its backward is the scatter-add of dy back onto those pixels."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..reference import pad as ref_pad
from ..reference import upsample as ref_up
from ..reference._padding import pair
from ._common import explainer, nchw, output_index, torch_results, values
from .core import Element, Explanation, Source, index_text, num


def _gather_explanation(op, case, x, y, dy, dx, theirs, taps_h, taps_w, at, default_at):
    """The y and dx elements of a separable gather: output (p, q) reads rows ``taps_h`` and
    columns ``taps_w`` (lists of (index array, weight array or None)) with product weights."""
    e = Explanation(op, case, inputs={"x": x, "dy": dy})
    n, c, p, q = output_index(at, y.shape, default_at)

    def reads(p, q):
        """(h, w, weight) of the input pixels output (p, q) reads."""
        return [(int(rows[p]), int(cols[q]), (1.0 if wr is None else wr[p]) * (1.0 if wc is None else wc[q]))
                for rows, wr in taps_h for cols, wc in taps_w
                if rows[p] != ref_pad.OUTSIDE and cols[q] != ref_pad.OUTSIDE]  # fmt: skip

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
    e = _gather_explanation("pad2d", case, x, y, dy, dx, theirs, [(cache.rows, None)],
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


def _explain_resize(op, kind, input, size, seed, at) -> Explanation:
    shape = nchw(input)
    out_hw = pair(size, "size", minimum=1)
    nn.Upsample(size=out_hw, mode=kind)
    rng = np.random.default_rng(seed)
    x = values(rng, shape)
    forward = getattr(ref_up, f"{op}_forward")
    y, cache = forward(x, out_hw)
    dy = values(rng, y.shape)
    dx = getattr(ref_up, f"{op}_backward")(dy, cache)
    extra = {} if kind == "nearest" else {"align_corners": False}
    theirs = torch_results(lambda F, x: F.interpolate(x, size=out_hw, mode=kind, **extra),
                           {"x": x}, dy)  # fmt: skip
    e = _gather_explanation(op, dict(input=shape, size=out_hw, seed=seed), x, y, dy, dx, theirs,
                            cache.taps_h, cache.taps_w, at,
                            (0, shape[1] - 1, out_hw[0] // 2, out_hw[1] // 2))  # fmt: skip
    H, W = shape[2:]
    if kind == "nearest":
        rule = [
            "output index d reads input floor(d * in / out)  (torch computes it in float32)",
            f"rows    {list(map(int, cache.taps_h[0][0]))}   (H = {H} -> {out_hw[0]})",
            f"columns {list(map(int, cache.taps_w[0][0]))}   (W = {W} -> {out_hw[1]})",
        ]
    else:
        rule = [
            "half-pixel centres: src = max((d + 0.5) * in / out - 0.5, 0), i0 = floor(src),",
            "i1 = min(i0 + 1, in - 1), l = src - i0; weights (1 - l) on i0 and l on i1, per axis;",
            "the 2-d weights are the products of the row and column weights (4 taps)",
        ]
    e.sections = [
        ("shapes", [f"x {shape} -> y {y.shape}"]),
        ("which input pixels each output reads", rule),
        ("forward / backward", [
            "y[n, c, p, q] = sum over its taps of weight * x[n, c, h, w]",
            "dx[n, c, h, w] = sum over the outputs that read (h, w) of weight * dy[n, c, p, q]",
        ]),
    ]  # fmt: skip
    e.sources = [Source.of(forward), Source.of(getattr(ref_up, f"{op}_backward"))]
    return e


@explainer("upsample_nearest2d")
def explain_upsample_nearest2d(input=(1, 1, 3, 3), size=(5, 7), seed=0, at=None):
    """Nearest-neighbour resize to ``size``."""
    return _explain_resize("upsample_nearest2d", "nearest", input, size, seed, at)


@explainer("upsample_bilinear2d")
def explain_upsample_bilinear2d(input=(1, 1, 3, 3), size=(5, 7), seed=0, at=None):
    """Bilinear resize to ``size`` (half-pixel centres, torch's align_corners=False)."""
    return _explain_resize("upsample_bilinear2d", "bilinear", input, size, seed, at)
