"""Softmax cross-entropy with label smoothing on the GPU (``F.cross_entropy``).

Same math as ``scratchnets.reference.loss`` (with q the smoothed targets,
``q[i, k] = eps / K + (1 - eps) [k == t_i]``)::

    logp = z - max(z) - log(sum exp(z - max(z)))        per row
    loss = mean_i sum_k -q[i, k] * logp[i, k]            dloss/dz = dloss * (softmax(z) - q) / N

* ``_rows_kernel``: one thread per row i computes its log-sum-exp, its loss term and the row of
  softmax probabilities (kept for the backward);
* ``_mean_kernel``: a single thread adds the N row terms in order and divides by N (the mean is
  deterministic, no atomics);
* the backward: one thread per logit.

The loss is returned as a 0-d device array of the logits' dtype (the reference returns a 0-d
NumPy array): ``to_numpy(loss)`` or ``float(loss.copy_to_host())`` reads it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from scratchnets.arrays import to_numpy
from scratchnets.reference.loss import check_target

from ._launch import check_float, device_array, empty, launch_1d


@cuda.jit(device=True)
def _smoothed_target(k, target, smoothing):
    """q[i, k] for the row whose target is ``target``; smoothing = (eps / K, 1 - eps)."""
    off, on = smoothing
    return off + on if k == target else off


@cuda.jit
def _rows_kernel(z, target, smoothing, row_loss, probs):
    # z, probs: (N, K); target: (N,) int64; row_loss: (N,); smoothing in z's dtype
    i = cuda.grid(1)
    if i < z.shape[0]:
        K = z.shape[1]
        top = z[i, 0]
        for k in range(1, K):
            top = max(top, z[i, k])
        total = z.dtype.type(0)
        for k in range(K):
            total += math.exp(z[i, k] - top)  # every exponent <= 0: no overflow
        log_total = math.log(total)
        loss = z.dtype.type(0)
        for k in range(K):
            logp = (z[i, k] - top) - log_total
            probs[i, k] = math.exp(logp)
            loss -= _smoothed_target(k, target[i], smoothing) * logp
        row_loss[i] = loss


@cuda.jit
def _mean_kernel(row_loss, loss):
    # a single thread: loss[0] = sum_i row_loss[i] / N, summed in index order
    if cuda.grid(1) == 0:
        acc = loss.dtype.type(0)
        for i in range(row_loss.size):
            acc += row_loss[i]
        loss[0] = acc / loss.dtype.type(row_loss.size)


@cuda.jit
def _backward_kernel(probs, target, smoothing, scale, dz):
    # dz[i, k] = scale * (probs[i, k] - q[i, k]), scale = dloss / N; one thread per logit
    j = cuda.grid(1)
    N, K = probs.shape
    if j < N * K:
        i, k = j // K, j % K
        q = _smoothed_target(k, target[i], smoothing)
        dz[i, k] = scale * (probs[i, k] - q)


def cross_entropy_forward(logits, target, label_smoothing=0.0):
    """Mean softmax cross-entropy; like ``F.cross_entropy(logits, target, label_smoothing)``.

    ``logits`` (N, K) float32/float64 (NumPy or device), ``target`` (N,) integers in [0, K)
    (NumPy or device). Returns ``(loss, cache)`` with ``loss`` a 0-d device array.
    """
    check_float(logits, "logits")
    if len(logits.shape) != 2 or logits.shape[0] == 0:
        raise ValueError(
            f"cross_entropy expects logits of shape (N, K) with N >= 1, got {tuple(logits.shape)}"
        )
    n, k = logits.shape
    target = check_target(to_numpy(target), n, k)  # host copy: the range check reads values
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    z = device_array(logits, "logits")
    target = cuda.to_device(np.ascontiguousarray(target, dtype=np.int64))
    smoothing = (z.dtype.type(eps / k), z.dtype.type(1 - eps))  # q off / on the target
    row_loss, probs, loss = empty((n,), z.dtype), empty((n, k), z.dtype), empty((1,), z.dtype)
    launch_1d(_rows_kernel, n, z, target, smoothing, row_loss, probs)
    _mean_kernel[1, 1](row_loss, loss)
    return loss.reshape(()), (probs, target, smoothing)


def cross_entropy_backward(dloss, cache):
    """dlogits = dloss * (softmax(logits) - q) / N, a device array (N, K); ``dloss`` a scalar
    (Python number, NumPy or device array with one element)."""
    probs, target, smoothing = cache
    dloss = np.asarray(to_numpy(dloss))
    if dloss.size != 1:
        raise ValueError(f"cross_entropy_backward: dloss must be a scalar, got shape {dloss.shape}")
    scale = probs.dtype.type(dloss.reshape(())) / probs.dtype.type(probs.shape[0])
    dz = empty(probs.shape, probs.dtype)
    launch_1d(_backward_kernel, dz.size, probs, target, smoothing, scale, dz)
    return dz
