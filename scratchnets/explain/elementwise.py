"""The joins and elementwise ops of the blocks explained: add (a residual splits dy in two), mul
(a gate: its gradient sums over the broadcast axes), concat / slice (dy cut and placed back),
dropout (a seeded mask), and the cross-entropy loss (softmax minus the smoothed target)."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..reference import dropout as ref_dropout
from ..reference import elementwise as ref_ew
from ..reference import loss as ref_loss
from ._common import explainer, nchw, output_index, torch_results, values
from .core import Element, Explanation, Source, index_text, num


def _sources(module, op: str) -> list[Source]:
    return [
        Source.of(getattr(module, f"{op}_forward")),
        Source.of(getattr(module, f"{op}_backward")),
    ]


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
    e.sources = _sources(ref_ew, op)
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
    e.sources = _sources(ref_ew, "concat")
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
    e.sources = _sources(ref_ew, "slice")
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
    e.sources = [Source.of(ref_dropout.dropout_forward), Source.of(ref_dropout.dropout_backward)]
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


@explainer("cross_entropy")
def explain_cross_entropy(input=(2, 4), label_smoothing=0.0, seed=0, at=None) -> Explanation:
    """Mean softmax cross-entropy over N rows of K logits (``F.cross_entropy``)."""
    shape = tuple(int(s) for s in input)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"--input must be N x K (rows x classes) with sizes >= 1, got {shape}")
    N, K = shape
    rng = np.random.default_rng(seed)
    logits, target = values(rng, shape, 2.0), rng.integers(0, K, N)
    loss, cache = ref_loss.cross_entropy_forward(logits, target, label_smoothing)
    dloss = 1.0
    dlogits = ref_loss.cross_entropy_backward(dloss, cache)

    def torch_ce(F, logits):
        return F.cross_entropy(
            logits, logits.new_tensor(target).long(), label_smoothing=label_smoothing
        )

    theirs = torch_results(torch_ce, {"logits": logits}, np.asarray(dloss))
    e = Explanation("cross_entropy", dict(input=shape, label_smoothing=label_smoothing, seed=seed),
                    inputs={"logits": logits, "target": target, "dy": np.asarray(dloss)})  # fmt: skip
    eps = label_smoothing
    e.section(
        "forward",
        "log p[n, k] = z[n, k] - m[n] - log sum_j exp(z[n, j] - m[n]),  m[n] = max_j z[n, j] "
        "(no overflow)",
        f"q[n, k] = {eps:g} / K + (1 - {eps:g}) [k = target[n]]   (the smoothed target)",
        "loss = -(1/N) sum_{n, k} q[n, k] log p[n, k]",
    )
    e.section(
        "backward", "dlogits[n, k] = dloss * (p[n, k] - q[n, k]) / N   (softmax minus target)"
    )
    e.sources = [
        Source.of(ref_loss.cross_entropy_forward),
        Source.of(ref_loss.cross_entropy_backward),
    ]
    n, k = output_index(at, shape, (N - 1, int(target[N - 1])))
    terms, total = [], 0.0
    for row in range(N):
        z = logits[row]
        m = z.max()
        logp = z - m - np.log(np.exp(z - m).sum())
        q = np.full(K, eps / K)
        q[target[row]] += 1 - eps
        total -= (q * logp).sum() / N
        terms.append(f"row {row}: target {target[row]}, log p[target] = {num(logp[target[row]])}, "
                     f"-sum q log p = {num(-(q * logp).sum())}")  # fmt: skip
    torch_loss = None if theirs is None else float(theirs[0])
    e.elements.append(Element("loss", (), "mean over the rows of -sum_k q log p", terms, total,
                              float(loss), torch_loss))  # fmt: skip
    z = logits[n]
    p_nk = np.exp(z[k] - z.max()) / np.exp(z - z.max()).sum()
    q_nk = eps / K + (1 - eps) * (k == target[n])
    e.elements.append(Element(
        "dlogits", (n, k), "(p - q) / N",
        [f"p = softmax(z[{n}])[{k}] = {num(p_nk)}, q = {num(q_nk)}: ({num(p_nk)} - {num(q_nk)}) / {N}"],
        (p_nk - q_nk) / N * dloss, dlogits[n, k],
        None if theirs is None else theirs[1]["logits"][n, k],
    ))  # fmt: skip
    return e
