"""The two resizes explained: each is a gather (an output pixel reads one or a few weighted input
pixels), so its backward is the scatter-add of dy back onto those pixels."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..reference import upsample as ref_up
from ..reference.windows import pair
from ._common import explainer, gather_explanation, nchw, torch_results, values
from .core import Explanation, Source


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
    e = gather_explanation(op, dict(input=shape, size=out_hw, seed=seed), x, y, dy, dx, theirs,
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
