"""Batch normalisation of NCHW activations on the CPU (Numba), like ``F.batch_norm``.

The math is ``scratchnets.reference.batchnorm`` (see its docstring and docs/batchnorm.md); here it
is arranged for few passes over memory. ``x`` is viewed as (N, C, L) with L = H*W, so channel c
is N contiguous runs of L values, and per channel (sums over the M = N*L values of a channel)::

    forward, training   pass 1: mu0 = sum(x) / M
                        pass 2: d = x - mu0; S1 = sum(d), S2 = sum(d^2)
                                mean = mu0 + S1/M, var = (S2 - S1^2/M) / M
                        pass 3: y = (x - mean) * (gamma / sigma) + beta      (sigma = sqrt(var+eps))
    forward, eval       pass 3 only, with the running statistics
    backward            pass 1: sum(dy), sum(dy * xhat)     xhat = (x - mean) / sigma, recomputed
                        pass 2: dx = gamma/sigma * (dy - sum(dy)/M - xhat * sum(dy*xhat)/M)

Pass 2 of the statistics is the corrected two-pass algorithm: centring on a first mean makes the
variance immune to |mean| >> std (the one-pass E[x^2] - E[x]^2 cancels catastrophically there),
and the S1 terms remove the rounding error left in that first mean. All sums accumulate in
float64 (float32 inputs too). The reduction kernels are compiled with ``fastmath={"reassoc"}``
(and nothing else: no NaN/inf assumptions), which lets LLVM split each sum into several
vectorised partial sums: 5x faster on the dev box for (32, 64, 56, 56) float32 (36 -> 7 ms per
statistics call, single thread), and no less accurate (partial sums are shorter). The
elementwise passes are compiled without it, so their per-element rounding is fixed. Reductions
are parallel over channels (each thread owns whole
channels, so there are no shared accumulators); the elementwise passes are parallel over the
N*C planes, which balances better when C is small. The cache holds x (not the reference's
full-size xhat), and the backward recomputes xhat on the fly: one array fewer written and read.

Measured on the shared 2-core dev box, (32, 64, 56, 56) float32, one numba thread, best of 7:
forward (training) 16 ms vs the reference's 60 ms, backward 15 ms vs 63 ms.

``batch_norm2d_act_forward`` is BN followed by ReLU / ReLU6 / h-swish in the same passes (what
every conv -> BN -> activation block of a MobileNet trains through): the normalize pass applies
the activation before it stores y, and the backward recomputes the BN output from the cached x
to apply the activation's slope to dy inside both of its passes. Against BN and the activation
as two ops that saves, forward, the pre-activation array (written, then read back) and the
activation's mask; backward, the activation's whole pass (dy and the mask read, dx written).
The values are the ops' in sequence: the BN output is rounded to x's dtype before the
activation (``activate``, the activation kernels' own float operations), and the slope is
applied in that dtype, as the activation's backward does. Measured (2-core EPYC, float32 batch
32, forward + backward of the pair): 0.67-0.83 of the time of BN, ReLU6 and their backwards as
four calls, from (32, 96, 64, 64) (22 vs 33 ms) to (32, 576, 8, 8) (1.04 vs 1.25 ms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from scratchnets.reference.batchnorm import channel_vector

from ._common import check_shape, kernel_array
from .gemm import ACTIVATION_CODES, activate


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _moments_kernel(x, mean, var):
    """mean[c], var[c] (biased) of x (N, C, L) over axes 0 and 2, corrected two-pass."""
    n, c, l = x.shape
    m = n * l
    for ch in prange(c):
        s = 0.0
        for i in range(n):
            for j in range(l):
                s += x[i, ch, j]
        mu0 = s / m
        s1 = 0.0
        s2 = 0.0
        for i in range(n):
            for j in range(l):
                d = x[i, ch, j] - mu0
                s1 += d
                s2 += d * d
        mean[ch] = mu0 + s1 / m
        var[ch] = max((s2 - s1 * s1 / m) / m, 0.0)


# Each kernel below runs one row helper per (image, channel) row, called with the activation code
# as a constant: inlined, its ``_activation_slope`` / ``activate`` branches fold away and the row
# loop vectorises. With the code as a run-time value in the loop LLVM kept the branches and
# did not (measured: the grad-input pass of (32, 192, 16, 16) float32, 0.75 ms for ReLU6, 0.49
# with the constant; 0.72 -> 0.24 ms without an activation).


@njit(cache=True, inline="always")
def _activation_slope(v, activation, zero, one, half, three, six):
    """d act / d v at the BN output v, in v's dtype: 1 or 0 where the activation kernels' masks
    say (0 at the kinks, as torch), h-swish's v / 3 + 1/2 between -3 and 3."""
    if activation == 1:
        return one if v > zero else zero
    if activation == 2:
        return one if v > zero and v < six else zero
    if activation == 3:
        if v <= -three:
            return zero
        return v / three + half if v < three else one
    return one


@njit(cache=True, inline="always")
def _normalize_row(x, y, mu, a, b, activation):
    """y[j] = act((x[j] - mu) * a + b), the BN output rounded to y's dtype first."""
    kind = y.dtype.type
    zero, three, six = kind(0), kind(3), kind(6)
    for j in range(x.size):
        y[j] = activate(kind((x[j] - mu) * a + b), activation, zero, three, six)


@njit(cache=True, inline="always")
def _grad_sums_row(dy, x, mu, r, a, b, activation):
    """(sum(g), sum(g * xhat)) over a row, g = dy * act'((x - mu) * a + b), xhat = (x - mu) * r."""
    kind = dy.dtype.type
    zero, one, half, three, six = kind(0), kind(1), kind(0.5), kind(3), kind(6)
    sg = 0.0
    sgx = 0.0
    for j in range(dy.size):
        v = kind((x[j] - mu) * a + b)  # the forward's BN output, as it rounded it
        g = dy[j] * _activation_slope(v, activation, zero, one, half, three, six)
        sg += g
        sgx += g * ((x[j] - mu) * r)
    return sg, sgx


@njit(cache=True, inline="always")
def _grad_input_row(dy, x, dx, mu, r, a, b, g_mean, gx_mean, activation):
    """dx[j] = a * (g - g_mean - xhat * gx_mean), g and xhat as in ``_grad_sums_row``."""
    kind = dy.dtype.type
    zero, one, half, three, six = kind(0), kind(1), kind(0.5), kind(3), kind(6)
    for j in range(dy.size):
        v = kind((x[j] - mu) * a + b)  # the forward's BN output, as it rounded it
        g = dy[j] * _activation_slope(v, activation, zero, one, half, three, six)
        dx[j] = a * (g - g_mean - ((x[j] - mu) * r) * gx_mean)


@njit(parallel=True, cache=True)
def _normalize_kernel(x, mean, scale, beta, y, activation):
    """y = act((x - mean[c]) * scale[c] + beta[c]) for x, y (N, C, L); ``activation`` an
    ``ACTIVATION_CODES`` value (0: none)."""
    n, c, _ = x.shape
    for k in prange(n * c):
        i, ch = k // c, k % c
        xr, yr, mu, a, b = x[i, ch], y[i, ch], mean[ch], scale[ch], beta[ch]
        if activation == 1:
            _normalize_row(xr, yr, mu, a, b, 1)
        elif activation == 2:
            _normalize_row(xr, yr, mu, a, b, 2)
        elif activation == 3:
            _normalize_row(xr, yr, mu, a, b, 3)
        else:
            _normalize_row(xr, yr, mu, a, b, 0)


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _grad_sums_kernel(dy, x, mean, inv_std, scale, beta, activation, dsum, dxhat_sum):
    """dsum[c] = sum(g), dxhat_sum[c] = sum(g * xhat) over (N, L) for g = dy * act'(BN output)
    (g = dy with ``activation`` 0); dy, x (N, C, L), the sums (C,)."""
    n, c, _ = dy.shape
    for ch in prange(c):
        mu, r, a, b = mean[ch], inv_std[ch], scale[ch], beta[ch]
        sg = 0.0
        sgx = 0.0
        for i in range(n):
            dyr, xr = dy[i, ch], x[i, ch]
            if activation == 1:
                s, sx = _grad_sums_row(dyr, xr, mu, r, a, b, 1)
            elif activation == 2:
                s, sx = _grad_sums_row(dyr, xr, mu, r, a, b, 2)
            elif activation == 3:
                s, sx = _grad_sums_row(dyr, xr, mu, r, a, b, 3)
            else:
                s, sx = _grad_sums_row(dyr, xr, mu, r, a, b, 0)
            sg += s
            sgx += sx
        dsum[ch] = sg
        dxhat_sum[ch] = sgx


@njit(parallel=True, cache=True)
def _grad_input_kernel(dy, x, mean, inv_std, scale, beta, activation, g_mean, gx_mean, dx):
    """dx = scale[c] * (g - g_mean[c] - xhat * gx_mean[c]) for g as in ``_grad_sums_kernel``;
    dy, x, dx (N, C, L)."""
    n, c, _ = dy.shape
    for k in prange(n * c):
        i, ch = k // c, k % c
        dyr, xr, dxr = dy[i, ch], x[i, ch], dx[i, ch]
        mu, r, a, b = mean[ch], inv_std[ch], scale[ch], beta[ch]
        gm, gxm = g_mean[ch], gx_mean[ch]
        if activation == 1:
            _grad_input_row(dyr, xr, dxr, mu, r, a, b, gm, gxm, 1)
        elif activation == 2:
            _grad_input_row(dyr, xr, dxr, mu, r, a, b, gm, gxm, 2)
        elif activation == 3:
            _grad_input_row(dyr, xr, dxr, mu, r, a, b, gm, gxm, 3)
        else:
            _grad_input_row(dyr, xr, dxr, mu, r, a, b, gm, gxm, 0)


@dataclass(frozen=True)
class BatchNormCache:
    """What the backward needs; the per-channel vectors are float64."""

    x: np.ndarray  # (N, C, H, W), C-contiguous
    mean: np.ndarray  # (C,) the mean used: batch mean (training) or running mean (eval)
    inv_std: np.ndarray  # (C,) 1 / sqrt(var + eps)
    gamma: np.ndarray | None  # (C,) float64, None without affine weight
    beta: np.ndarray | None  # (C,) float64, None without bias
    training: bool
    activation: int  # the ``ACTIVATION_CODES`` value of the activation applied after BN (0: none)


def batch_norm2d_forward(
    x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5
):
    """y = weight * (x - mu) / sqrt(var + eps) + bias, per channel; like ``F.batch_norm``.

    Shapes: ``x`` (N, C, H, W); ``weight``, ``bias``, ``running_mean``, ``running_var`` (C,), each
    may be None. Training uses the batch statistics and updates the running ones IN PLACE
    (running_var with the unbiased variance); eval uses the running ones. Returns ``(y, cache)``.
    """
    return batch_norm2d_act_forward(
        x, weight, bias, running_mean, running_var, training, momentum, eps, activation=None
    )


def batch_norm2d_act_forward(
    x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5,
    activation="relu6",
):  # fmt: skip
    """y = act(batch_norm2d(x)) in the passes of BN alone: ``activation`` "relu", "relu6",
    "hard_swish" or None; the other arguments and the running statistics' update as
    ``batch_norm2d_forward``. Returns ``(y, cache)``; ``batch_norm2d_backward(dy, cache)`` is
    then the gradient through both (dy is the gradient of the activation's output)."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_CODES)}, got {activation!r}")
    x = kernel_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"batch_norm2d expects x of shape (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    gamma = channel_vector(weight, "weight", c, np.float64)
    beta = channel_vector(bias, "bias", c, np.float64)
    running_mean = channel_vector(running_mean, "running_mean", c, None, in_place=True)
    running_var = channel_vector(running_var, "running_var", c, None, in_place=True)
    x3 = x.reshape(n, c, h * w)  # (N, C, L)
    code = ACTIVATION_CODES[activation]

    if x.size == 0:  # an empty batch (torch): an empty y, the running statistics untouched
        y = x.copy()
        return y, BatchNormCache(x, np.zeros(c), np.ones(c), gamma, beta, False, code)
    if training:
        m = n * h * w
        if m < 2:
            raise ValueError(
                f"batch_norm2d in training needs more than 1 value per channel, "
                f"got N*H*W = {m} for x of shape {x.shape}"
            )
        mean, var = np.empty(c), np.empty(c)  # (C,) float64
        _moments_kernel(x3, mean, var)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var * (m / (m - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm2d in eval mode needs running_mean and running_var")
        mean = running_mean.astype(np.float64)  # a copy: later in-place updates don't leak in
        var = running_var.astype(np.float64)

    inv_std = 1.0 / np.sqrt(var + eps)  # (C,)
    cache = BatchNormCache(x, mean, inv_std, gamma, beta, training, code)
    y3 = np.empty_like(x3)
    _normalize_kernel(x3, mean, *_affine(cache), y3, code)
    return y3.reshape(x.shape), cache


def _affine(cache: BatchNormCache) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) (C,) float64, BN's output being (x - mean) * scale + shift: scale =
    gamma / sigma, shift = beta (0 without). The same float64 values forward and backward, so
    the output the backward recomputes is the forward's, bit for bit."""
    scale = cache.inv_std if cache.gamma is None else cache.gamma * cache.inv_std
    return scale, np.zeros(len(scale)) if cache.beta is None else cache.beta


def batch_norm2d_backward(dy, cache):
    """``(dx, dweight, dbias)``: dbias = sum(dy), dweight = sum(dy * xhat) and
    dx = gamma / sigma * (dy - mean(dy) - xhat * mean(dy * xhat)) in training, gamma / sigma * dy
    in eval. dweight / dbias are None when the forward had no weight / bias; dy is cast to the
    forward's dtype. After ``batch_norm2d_act_forward`` dy is the activation output's gradient,
    turned into the BN output's (dy * act') inside both passes.
    """
    n, c, h, w = cache.x.shape
    dy = kernel_array(dy, "dy", cache.x.dtype)
    check_shape(dy, cache.x.shape, "batch_norm2d_backward")
    as3 = (n, c, h * w)  # (N, C, L) views for the kernel
    dy3, x3 = dy.reshape(as3), cache.x.reshape(as3)
    scale, shift = _affine(cache)
    per_channel = (cache.mean, cache.inv_std, scale, shift, cache.activation)
    dsum, dxhat_sum = np.empty(c), np.empty(c)  # (C,) float64
    _grad_sums_kernel(dy3, x3, *per_channel, dsum, dxhat_sum)
    m = n * h * w
    # training: the paths through mu and var; eval: the statistics are constants
    g_mean, gx_mean = (dsum / m, dxhat_sum / m) if cache.training else (np.zeros(c), np.zeros(c))
    dx = np.empty_like(dy)
    _grad_input_kernel(dy3, x3, *per_channel, g_mean, gx_mean, dx.reshape(as3))
    dweight = None if cache.gamma is None else dxhat_sum.astype(dy.dtype)
    dbias = None if cache.beta is None else dsum.astype(dy.dtype)
    return dx, dweight, dbias
