"""Softmax cross-entropy with label smoothing on the CPU (Numba), like ``F.cross_entropy``.

Same math as ``scratchnets.reference.loss`` (read it for the derivation): with the row maximum
m, the shifted logits d_k = z_k - m (all <= 0) and s = sum_k exp(d_k) in [1, K],
log p_k = d_k - log s, and per row i with smoothing eps::

    loss_i = (1 - eps) * (log s - d_t) + eps * (log s - mean_k d_k)
    dlogits_ik = dloss / N * (exp(d_k - log s) - q_ik),   q_ik = (1 - eps) [k = t_i] + eps / K

What is optimised: the reference materialises the shifted logits, log-softmax, its exp and the
dense (N, K) target matrix q (several full-size temporaries). Here each row is one task of a
``prange`` loop (rows are independent): one sweep finds the maximum, a second computes
e_k = exp(d_k) into the cached softmax array while summing e_k and d_k (float64), and a third
scales it to p_k = e_k / s. The backward is one sweep ``dlogits = dloss / N * (p - q)`` with q
never stored (its only non-constant entry is the target column). ``exp`` is a scalar libm call
in Numba (NumPy's is SIMD), so it is computed once, in the forward, and p is cached.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from scratchnets.reference.loss import check_target

from ._common import kernel_array


@njit(parallel=True, cache=True)
def _forward_kernel(z, target, eps, row_loss, p):
    """Per row of z (N, K): row_loss (smoothed NLL) and p = softmax(z)."""
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
            e = np.exp(d)
            p[r, j] = e
            s += e
            d_sum += d
        log_s = np.log(s)  # s in [1, K]: safe
        nll = log_s - (z[r, target[r]] - m)  # -log p_t
        row_loss[r] = (1.0 - eps) * nll + eps * (log_s - d_sum / k)
        inv_s = 1.0 / s
        for j in range(k):
            p[r, j] *= inv_s


@njit(parallel=True, cache=True)
def _backward_kernel(p, target, eps, scale, dz):
    """dz[r, j] = scale * (p[r, j] - q[r, j]); scale = dloss / N."""
    n, k = p.shape
    off = eps / k  # q off the target column
    for r in prange(n):
        t = target[r]
        for j in range(k):
            q = off + (1.0 - eps) if j == t else off
            dz[r, j] = scale * (p[r, j] - q)


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
    target = np.ascontiguousarray(check_target(target, n, k), dtype=np.int64)
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    row_loss = np.empty(n)  # (N,) float64
    p = np.empty_like(logits)  # (N, K) softmax, in the logits' dtype
    _forward_kernel(logits, target, eps, row_loss, p)
    loss = np.asarray(row_loss.sum() / n, dtype=logits.dtype)
    return loss, (p, target, eps)


def cross_entropy_backward(dloss, cache):
    """dlogits = dloss * (softmax(logits) - q) / N, shape (N, K); ``dloss`` a scalar."""
    p, target, eps = cache
    dloss = np.asarray(dloss)
    if dloss.size != 1:
        raise ValueError(f"cross_entropy_backward: dloss must be a scalar, got shape {dloss.shape}")
    scale = float(dloss.reshape(())) / p.shape[0]
    dlogits = np.empty_like(p)
    _backward_kernel(p, target, eps, scale, dlogits)
    return dlogits
