"""batch_norm2d explained: the batch statistics of one channel with their numbers, x-hat, the
running-statistics update, and the three-term dx (direct path, through the mean, through the
variance) written out for one element."""

from __future__ import annotations

import numpy as np

from .. import nn
from ..reference import batchnorm as ref_bn
from ._common import counted, explainer, nchw, output_index, torch_results, values
from .core import Element, Explanation, Source, index_text, num


@explainer("batch_norm2d")
def explain_batch_norm2d(
    input=(2, 3, 4, 4), training=True, momentum=0.1, eps=1e-5, seed=0, at=None, *, arrays=None
) -> Explanation:
    """BatchNorm2d in training (batch statistics) or eval mode (running statistics).
    ``arrays`` ({"x", "weight", "bias", "running_mean", "running_var"}): explain these instead
    of drawn values (a model layer's real input and state)."""
    N, C, H, W = nchw(input if arrays is None else arrays["x"].shape)
    layer = nn.BatchNorm2d(C, eps=eps, momentum=momentum, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if arrays is None:
        offsets = np.round(rng.standard_normal(C), 1)[None, :, None, None]  # channel means != 0
        x = values(rng, (N, C, H, W)) + offsets
        gamma, beta = np.round(1 + 0.2 * rng.standard_normal(C), 2), values(rng, (C,), 0.1)
        running_mean, running_var = values(rng, (C,), 0.5), np.round(0.5 + rng.random(C), 2)
    else:
        x, gamma, beta, running_mean, running_var = (
            np.array(arrays[k], np.float64)
            for k in ("x", "weight", "bias", "running_mean", "running_var")
        )
    mean_before, var_before = running_mean.copy(), running_var.copy()
    y, cache = ref_bn.batch_norm2d_forward(
        x, gamma, beta, running_mean, running_var, training, momentum, eps
    )  # updates running_mean / running_var in place in training
    dy = values(rng, y.shape)
    dx, dgamma, dbeta = ref_bn.batch_norm2d_backward(dy, cache)
    torch_buffers = {}

    def torch_bn(F, x, weight, bias):
        rm, rv = x.new_tensor(mean_before), x.new_tensor(var_before)
        torch_buffers.update(mean=rm, var=rv)
        return F.batch_norm(x, rm, rv, weight, bias, training, momentum, eps)

    theirs = torch_results(torch_bn, {"x": x, "weight": gamma, "bias": beta}, dy)
    M = N * H * W
    mode = "train" if training else "eval"
    case = dict(input=(N, C, H, W), mode=mode, momentum=momentum, eps=eps, seed=seed)
    drawn = dict(x=x, weight=gamma, bias=beta, running_mean=mean_before, running_var=var_before)
    e = Explanation("batch_norm2d", case, inputs=drawn | {"dy": dy})
    e.section(
        "shapes",
        f"x, y, dy, dx (N, C, H, W) = {x.shape};  gamma, beta, running_mean, running_var (C,) = ({C},)",
        f"statistics per channel over M = N * H * W = {N} * {H} * {W} = {M} values",
    )
    params = counted(layer, (N, C, H, W))[0]
    e.counts = dict(params=2 * C, counter_params=params)
    e.section(
        "params and work",
        f"params = gamma + beta = 2 * C = 2 * {C} = {2 * C}  (the counter: {params}: "
        f"{'equal' if params == 2 * C else 'DIFFERENT'}); buffers running_mean, running_var "
        f"(C each) and num_batches_tracked",
        f"no multiply-adds in the papers' convention: one scale and shift per element, "
        f"{N * C * H * W:,} elements",
        "in eval mode BN is a per-channel affine map, scale = gamma / sqrt(running_var + eps),",
        "shift = beta - running_mean * scale, which folds into the conv before it (models.fuse).",
    )
    if training:
        forward = [
            "mu[c]      = (1/M) sum_{n, h, w} x[n, c, h, w]",
            "var[c]     = (1/M) sum_{n, h, w} (x[n, c, h, w] - mu[c])^2      (biased: divides by M)",
            "xhat       = (x - mu[c]) / sqrt(var[c] + eps)",
            "y          = gamma[c] * xhat + beta[c]",
            "running_mean[c] <- (1 - momentum) * running_mean[c] + momentum * mu[c]",
            "running_var[c]  <- (1 - momentum) * running_var[c] + momentum * var[c] * M / (M - 1)"
            "   (unbiased)",
        ]
        backward = [
            "dbeta[c]  = sum dy          dgamma[c] = sum dy * xhat      (sums over n, h, w)",
            "dx = gamma[c] / (sigma[c] * M) * (M * dy - sum dy - xhat * sum(dy * xhat)),  "
            "sigma = sqrt(var + eps)",
            "   three terms: the direct path through xhat, the path through mu (every x moves the",
            "   mean), the path through var (every x moves the variance); dx sums to 0 per channel",
        ]
    else:
        forward = [
            "xhat = (x - running_mean[c]) / sqrt(running_var[c] + eps);  y = gamma[c] * xhat + beta[c]",
            "the running statistics are constants here: nothing is updated",
        ]
        backward = [
            "dbeta[c] = sum dy;  dgamma[c] = sum dy * xhat;  dx = gamma[c] / sqrt(running_var[c] + eps) * dy",
        ]
    e.section("forward", *forward)
    e.section("backward (dy = dL/dy given)", *backward)
    e.sources = [Source.of(ref_bn.batch_norm2d_forward), Source.of(ref_bn.batch_norm2d_backward)]

    n, c, h, w = output_index(at, y.shape, (0, C - 1, H // 2, W // 2))
    channel = x[:, c]
    if training:
        mu, var = channel.mean(), ((channel - channel.mean()) ** 2).mean()
        stats = [
            f"mu[{c}]  = (sum of the {M} values of channel {c}) / {M} = {num(channel.sum())} / {M}"
            f" = {num(mu)}",
            f"var[{c}] = (sum of (x - mu)^2) / {M} = {num(((channel - mu) ** 2).sum())} / {M} = "
            f"{num(var)}",
        ]
    else:
        mu, var = mean_before[c], var_before[c]
        stats = [f"running_mean[{c}] = {num(mu)}, running_var[{c}] = {num(var)}"]
    sigma = np.sqrt(var + eps)
    xhat = (x[n, c, h, w] - mu) / sigma
    value = gamma[c] * xhat + beta[c]
    e.elements.append(Element(
        "y", (n, c, h, w), "gamma[c] * (x - mu[c]) / sqrt(var[c] + eps) + beta[c]",
        stats + [
            f"xhat = ({num(x[n, c, h, w])} - {num(mu)}) / sqrt({num(var)} + {eps:g}) = {num(xhat)}",
            f"y = {num(gamma[c])} * {num(xhat)} + {num(beta[c])} = {num(value)}",
        ],
        value, y[n, c, h, w], None if theirs is None else theirs[0][n, c, h, w],
    ))  # fmt: skip

    xhat_c = (channel - mu) / sigma  # (N, H, W) the channel's xhat
    if training:
        sum_dy, sum_dy_xhat = dy[:, c].sum(), (dy[:, c] * xhat_c).sum()
        direct, via_mean, via_var = M * dy[n, c, h, w], sum_dy, xhat * sum_dy_xhat
        value = gamma[c] / (sigma * M) * (direct - via_mean - via_var)
        terms = [
            f"gamma / (sigma * M) = {num(gamma[c])} / ({num(sigma)} * {M}) = {num(gamma[c] / (sigma * M))}",
            f"direct:        M * dy = {M} * {num(dy[n, c, h, w])} = {num(direct)}",
            f"through mu:    sum dy = {num(via_mean)}",
            f"through var:   xhat * sum(dy * xhat) = {num(xhat)} * {num(sum_dy_xhat)} = {num(via_var)}",
            f"dx = {num(gamma[c] / (sigma * M))} * ({num(direct)} - {num(via_mean)} - {num(via_var)})",
        ]
    else:
        value = gamma[c] / sigma * dy[n, c, h, w]
        terms = [f"dx = {num(gamma[c])} / {num(sigma)} * {num(dy[n, c, h, w])}"]
    e.elements.append(Element(
        "dx", (n, c, h, w), "the three-term BN gradient" if training else "gamma / sigma * dy",
        terms, value, dx[n, c, h, w], None if theirs is None else theirs[1]["x"][n, c, h, w],
    ))  # fmt: skip
    cells = [(i, r, s) for i in range(N) for r in range(H) for s in range(W)]
    e.elements.append(Element(
        "dgamma", (c,), "sum over n, h, w of dy * xhat",
        [f"{index_text('dy', (i, c, r, s))} * xhat = {num(dy[i, c, r, s])} * "
         f"{num(xhat_c[i, r, s])} = {num(dy[i, c, r, s] * xhat_c[i, r, s])}" for i, r, s in cells],
        float((dy[:, c] * xhat_c).sum()), dgamma[c],
        None if theirs is None else theirs[1]["weight"][c],
    ))  # fmt: skip
    e.elements.append(Element(
        "dbeta", (c,), "sum over n, h, w of dy",
        [f"{index_text('dy', (i, c, r, s))} = {num(dy[i, c, r, s])}" for i, r, s in cells],
        float(dy[:, c].sum()), dbeta[c], None if theirs is None else theirs[1]["bias"][c],
    ))  # fmt: skip
    if training:
        new_mean = (1 - momentum) * mean_before[c] + momentum * mu
        new_var = (1 - momentum) * var_before[c] + momentum * var * M / (M - 1)
        e.elements += [
            Element("running_mean", (c,), "(1 - momentum) * old + momentum * mu",
                    [f"(1 - {momentum:g}) * {num(mean_before[c])} + {momentum:g} * {num(mu)}"],
                    new_mean, running_mean[c],
                    None if theirs is None else float(torch_buffers["mean"][c])),
            Element("running_var", (c,), "(1 - momentum) * old + momentum * var * M / (M - 1)",
                    [f"(1 - {momentum:g}) * {num(var_before[c])} + {momentum:g} * {num(var)} * "
                     f"{M} / {M - 1}"],
                    new_var, running_var[c],
                    None if theirs is None else float(torch_buffers["var"][c])),
        ]  # fmt: skip
    return e
