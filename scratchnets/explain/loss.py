"""The cross-entropy loss explained: softmax minus the smoothed target."""

from __future__ import annotations

import numpy as np

from ..reference import loss as ref_loss
from ._common import explainer, output_index, sources, torch_results, values
from .core import Element, Explanation, num


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
    e.sources = sources(ref_loss, "cross_entropy")
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
