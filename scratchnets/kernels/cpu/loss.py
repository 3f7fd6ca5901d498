"""Softmax cross-entropy with label smoothing on the CPU (Numba), like ``F.cross_entropy``.

Same math as ``scratchnets.reference.loss`` (read it for the derivation): with the row maximum
m, the shifted logits d_k = z_k - m (all <= 0) and s = sum_k exp(d_k) in [1, K],
log p_k = d_k - log s, and per row i with smoothing eps::

    loss_i = (1 - eps) * (log s - d_t) + eps * (log s - mean_k d_k)
    dlogits_ik = dloss / N * (exp(d_k - log s) - q_ik),   q_ik = (1 - eps) [k = t_i] + eps / K

What is optimised: the reference materialises log-softmax, its exp and the dense (N, K) target
matrix q (several full-size temporaries) and caches two (N, K) arrays. Here each row is one task
of a ``prange`` loop (rows are independent): two sweeps over the row (max; then sum of exp and
of d), all in float64, and only (N,) values are cached next to the logits (m and log s per row);
the backward recomputes p from them in a single sweep that writes dlogits directly, with q never
stored (its only non-constant entry is the target column).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from scratchnets.reference.loss import _check_target

from ._common import kernel_array


@njit(parallel=True, cache=True)
def _forward_kernel(z, target, eps, row_loss, row_max, log_sum):
    """Per row of z (N, K): row_loss (smoothed NLL), row_max = m and log_sum = log s."""
    n, k = z.shape
    for r in prange(n):
        m = z[r, 0]
        for j in range(1, k):
            if z[r, j] > m:
                m = z[r, j]
        s = 0.0
        d_sum = 0.0
        for j in range(k):
            d = z[r, j] - m  # float64: exact for float32 logits
            s += np.exp(d)
            d_sum += d
        log_s = np.log(s)  # s in [1, K]: safe
        nll = log_s - (z[r, target[r]] - m)  # -log p_t
        row_loss[r] = (1.0 - eps) * nll + eps * (log_s - d_sum / k)
        row_max[r] = m
        log_sum[r] = log_s


@njit(parallel=True, cache=True)
def _backward_kernel(z, target, eps, row_max, log_sum, scale, dz):
    """dz[r, j] = scale * (softmax(z)[r, j] - q[r, j]); scale = dloss / N."""
    n, k = z.shape
    off = eps / k  # q off the target column
    for r in prange(n):
        m, log_s, t = row_max[r], log_sum[r], target[r]
        for j in range(k):
            q = off + (1.0 - eps) if j == t else off
            dz[r, j] = scale * (np.exp((z[r, j] - m) - log_s) - q)


def cross_entropy_forward(logits, target, label_smoothing=0.0):
    """Mean softmax cross-entropy; like ``F.cross_entropy(logits, target, label_smoothing=eps)``.

    Shapes: ``logits`` (N, K) float32/float64, ``target`` (N,) integers in [0, K).
    Returns ``(loss, cache)``, ``loss`` a 0-d array of the logits' dtype.
    """
    logits = kernel_array(logits, "logits")
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(
            f"cross_entropy expects logits of shape (N, K) with N >= 1, got {logits.shape}"
        )
    n, k = logits.shape
    target = np.ascontiguousarray(_check_target(target, n, k), dtype=np.int64)
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    row_loss, row_max, log_sum = np.empty(n), np.empty(n), np.empty(n)  # (N,) float64
    _forward_kernel(logits, target, eps, row_loss, row_max, log_sum)
    loss = np.asarray(row_loss.sum() / n, dtype=logits.dtype)
    return loss, (logits, target, eps, row_max, log_sum)


def cross_entropy_backward(dloss, cache):
    """dlogits = dloss * (softmax(logits) - q) / N, shape (N, K); ``dloss`` a scalar."""
    logits, target, eps, row_max, log_sum = cache
    dloss = np.asarray(dloss)
    if dloss.size != 1:
        raise ValueError(f"cross_entropy_backward: dloss must be a scalar, got shape {dloss.shape}")
    scale = float(dloss.reshape(())) / logits.shape[0]
    dlogits = np.empty_like(logits)
    _backward_kernel(logits, target, eps, row_max, log_sum, scale, dlogits)
    return dlogits
