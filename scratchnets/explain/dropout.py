"""dropout explained: a seeded keep-mask scaled by 1 / (1 - p), the same mask gating dy."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..reference import dropout as ref_dropout
from ._common import explainer, output_index, sources, values
from .core import Element, Explanation, num


@explainer("dropout")
def explain_dropout(input=(1, 1, 2, 4), p=0.5, training=True, seed=0, at=None) -> Explanation:
    """Inverted dropout with the seeded mask every backend draws (``dropout_mask``)."""
    shape = tuple(int(s) for s in input)
    nn.Dropout(p)  # the layer's check of p
    rng = np.random.default_rng(seed)
    x = values(rng, shape)
    y, cache = ref_dropout.dropout_forward(x, p, training, seed)
    dy = values(rng, shape)
    dx = ref_dropout.dropout_backward(dy, cache)
    kept = ref_dropout.dropout_mask(shape, p, seed) if training else np.ones(shape, bool)
    scale = 1.0 if not training else (0.0 if p == 1 else 1 / (1 - p))
    e = Explanation("dropout", dict(input=shape, p=p, mode="train" if training else "eval",
                                    seed=seed), inputs={"x": x, "mask": kept, "dy": dy})  # fmt: skip
    e.section(
        "forward / backward",
        "train: y = x * mask / (1 - p), mask[i] = (u[i] >= p) with u uniform from the seed; "
        "E[y] = x"
        if training
        else "eval: y = x (the identity)",
        "dx = dy * mask / (1 - p)   (the same multiplier)" if training else "dx = dy",
        "torch draws its own random stream, so the check is against the reference op (the "
        "cpu and cuda backends draw this same mask)",
    )
    e.section("the mask", "kept  " + " ".join("1" if k else "0" for k in kept.reshape(-1)),
              f"scale 1 / (1 - p) = {num(scale)}")  # fmt: skip
    e.sources = sources(ref_dropout, "dropout")
    index = output_index(at, shape, np.unravel_index(0, shape))
    multiplier = scale * kept[index]
    e.elements.append(Element(
        "y", index, "x * mask * scale",
        [f"{num(x[index])} * {int(kept[index])} * {num(scale)}"], x[index] * multiplier, y[index],
    ))  # fmt: skip
    e.elements.append(Element(
        "dx", index, "dy * mask * scale",
        [f"{num(dy[index])} * {int(kept[index])} * {num(scale)}"], dy[index] * multiplier,
        dx[index],
    ))  # fmt: skip
    return e
