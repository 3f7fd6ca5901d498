"""Softmax cross-entropy with optional label smoothing (``torch.nn.functional.cross_entropy``).

For logits z (N, K) and integer targets t (N,), with log-probabilities
logp = z - logsumexp(z) and the smoothed target distribution q_ik = (1 - eps) [k = t_i] + eps / K::

    loss = mean_i sum_k -q_ik * logp_ik = mean_i [(1 - eps) * nll_i + eps * mean_k(-logp_ik)]
    dloss/dz = (softmax(z) - q) / N

Derivation and the log-sum-exp shift: docs/loss.md.
"""

from __future__ import annotations

import numpy as np

from .checks import float_array


def check_target(target, n: int, k: int) -> np.ndarray:
    target = np.asarray(target)
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(
            f"cross_entropy: target must hold integer class indices, got {target.dtype}"
        )
    if target.shape != (n,):
        raise ValueError(
            f"cross_entropy: target must have shape ({n},) for logits (N={n}, K={k}), "
            f"got {target.shape}"
        )
    if target.size and (target.min() < 0 or target.max() >= k):
        raise ValueError(
            f"cross_entropy: target values must lie in [0, {k}), got range "
            f"[{target.min()}, {target.max()}]"
        )
    return target


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, shifted by the row maximum so that exp never overflows.

    logp = (z - m) - log(sum exp(z - m)) with m = max z: every exponent is <= 0 and one is 0,
    so the sum lies in [1, K] and its log is safe.
    """
    shifted = z - z.max(axis=-1, keepdims=True)  # (N, K), each row's max is 0
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy_forward(logits, target, label_smoothing=0.0):
    """Mean softmax cross-entropy; like ``F.cross_entropy(logits, target, label_smoothing=eps)``.

    Shapes: ``logits`` (N, K) float32/float64, ``target`` (N,) integers in [0, K).
    Returns ``(loss, cache)`` with ``loss`` a 0-d array of the logits' dtype.
    """
    logits = float_array(logits, "logits")
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(
            f"cross_entropy expects logits of shape (N, K) with N >= 1, got {logits.shape}"
        )
    n, k = logits.shape
    target = check_target(target, n, k)
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    logp = log_softmax(logits)  # (N, K)
    q = np.full((n, k), eps / k, dtype=logits.dtype)  # (N, K) smoothed targets, rows sum to 1
    q[np.arange(n), target] += 1 - eps
    loss = -(q * logp).sum() / n
    return np.asarray(loss, dtype=logits.dtype), (np.exp(logp), q)


def cross_entropy_backward(dloss, cache):
    """dlogits = dloss * (softmax(logits) - q) / N, shape (N, K); ``dloss`` a scalar."""
    p, q = cache  # (N, K) each
    dloss = np.asarray(dloss)
    if dloss.size != 1:
        raise ValueError(f"cross_entropy_backward: dloss must be a scalar, got shape {dloss.shape}")
    scale = dloss.reshape(()).astype(p.dtype) / p.shape[0]
    return scale * (p - q)
