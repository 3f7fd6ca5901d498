"""Batch normalisation of NCHW activations, per channel (``torch.nn.functional.batch_norm``).

For channel ``c`` the statistics run over the ``M = N * H * W`` values ``x[:, c, :, :]``::

    train:  mu = mean(x)                    var = mean((x - mu)^2)         (biased)
            running_mean <- (1 - momentum) * running_mean + momentum * mu
            running_var  <- (1 - momentum) * running_var  + momentum * var * M / (M - 1)
    eval:   mu = running_mean               var = running_var
    both:   xhat = (x - mu) / sqrt(var + eps)       y = gamma * xhat + beta

Normalisation uses the biased variance, the running buffer stores the unbiased one (as torch).
The derivation of the backward pass (the 3-term formula) is in ``docs/batchnorm.md``.
"""

from __future__ import annotations

import numpy as np

from .checks import float_array

#: every axis of NCHW except the channel axis: the axes the statistics reduce over
_AXES = (0, 2, 3)


def _per_channel(v: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C, 1, 1), so that a per-channel vector broadcasts against (N, C, H, W)."""
    return v.reshape(1, -1, 1, 1)


def channel_vector(v, name: str, channels: int, dtype, in_place: bool = False):
    """Validate a per-channel parameter or buffer of shape (C,); None stays None.

    Returns the array cast to ``dtype`` for computing, except buffers updated ``in_place``, which
    are returned as given (they must then be writeable NumPy arrays).
    """
    if v is None:
        return None
    if in_place and not isinstance(v, np.ndarray):
        raise TypeError(f"{name} is updated in place and must be a NumPy array, got {type(v)}")
    arr = float_array(v, name)
    if arr.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) for C={channels}, got {arr.shape}")
    return arr if in_place else arr.astype(dtype, copy=False)


def _channel_sum(a: np.ndarray) -> np.ndarray:
    """sum over (N, H, W) per channel -> (C,), accumulated in float64 and rounded to a's dtype
    (torch's CPU kernels accumulate float32 in double too: ``acc_type<float>`` is double)."""
    return a.sum(axis=_AXES, dtype=np.float64).astype(a.dtype, copy=False)


def _channel_mean(a: np.ndarray) -> np.ndarray:
    """mean over (N, H, W) per channel -> (C,), accumulated like ``_channel_sum``."""
    return a.mean(axis=_AXES, dtype=np.float64).astype(a.dtype, copy=False)


def eval_scale_shift(weight, bias, running_mean, running_var, eps, conv_bias=None):
    """Eval-mode BN as an affine map per channel, ``y = z * scale + shift``, in float64::

        scale = weight / sqrt(running_var + eps)
        shift = (conv_bias - running_mean) * scale + bias

    where z is the output of a conv without its bias ``conv_bias`` (so a BN after a conv folds
    into it: ``w' = w * scale``, ``b' = shift``). ``weight`` / ``bias`` / ``conv_bias`` may be
    None (1, 0, 0). Shapes (C,) -> ``(scale, shift)`` (C,) each.
    """
    var = np.asarray(running_var, np.float64)
    scale = (1.0 if weight is None else np.asarray(weight, np.float64)) / np.sqrt(var + eps)
    z_bias = 0.0 if conv_bias is None else np.asarray(conv_bias, np.float64)
    shift = (z_bias - np.asarray(running_mean, np.float64)) * scale
    shift = shift + (0.0 if bias is None else np.asarray(bias, np.float64))
    return scale, shift


def batch_norm2d_forward(
    x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5
):
    """y = weight * (x - mu) / sqrt(var + eps) + bias, per channel; like ``F.batch_norm``.

    Shapes: ``x`` (N, C, H, W); ``weight``, ``bias``, ``running_mean``, ``running_var`` (C,),
    each may be None (no affine term; no running statistics). ``y`` has the shape and dtype of x.

    In training mode the batch statistics are used and, when given, ``running_mean`` and
    ``running_var`` are updated IN PLACE (``running_var`` with the unbiased batch variance).
    In eval mode the running statistics are used and must be given. An empty batch gives an
    empty y and changes nothing, in both modes (as torch).
    Returns ``(y, cache)``; the cache is private to :func:`batch_norm2d_backward`.
    """
    x = float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"batch_norm2d expects x of shape (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    gamma = channel_vector(weight, "weight", c, x.dtype)
    beta = channel_vector(bias, "bias", c, x.dtype)
    running_mean = channel_vector(running_mean, "running_mean", c, x.dtype, in_place=True)
    running_var = channel_vector(running_var, "running_var", c, x.dtype, in_place=True)

    if x.size == 0:  # an empty batch (torch): an empty y, the running statistics untouched
        return x.copy(), (x.copy(), gamma, np.ones(c, x.dtype), False, beta is not None)
    if training:
        m = n * h * w  # values per channel
        if m < 2:
            raise ValueError(
                f"batch_norm2d in training needs more than 1 value per channel, "
                f"got N*H*W = {m} for x of shape {x.shape}"
            )
        mean = _channel_mean(x)  # (C,)
        # Two passes: centre first, then average the squares. The one-pass E[x^2] - E[x]^2
        # cancels catastrophically when |mean| >> std (e.g. x = 1000 + noise).
        xc = x - _per_channel(mean)  # (N, C, H, W)
        var = _channel_mean(xc * xc)  # (C,) biased: divides by M
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            unbiased = var * (m / (m - 1))  # (C,) divides by M - 1
            running_var[...] = (1 - momentum) * running_var + momentum * unbiased
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm2d in eval mode needs running_mean and running_var")
        xc = x - _per_channel(running_mean.astype(x.dtype, copy=False))  # (N, C, H, W)
        var = running_var.astype(x.dtype, copy=False)  # (C,)

    inv_std = 1 / np.sqrt(var + eps)  # (C,)  1 / sigma
    xhat = xc * _per_channel(inv_std)  # (N, C, H, W), zero mean and unit variance per channel
    y = xhat if gamma is None else xhat * _per_channel(gamma)
    if beta is not None:
        y = y + _per_channel(beta)
    cache = (xhat, gamma, inv_std, training, beta is not None)
    return y, cache


def batch_norm2d_backward(dy, cache):
    """Gradients of batch_norm2d: ``(dx, dweight, dbias)``, like autograd through ``F.batch_norm``.

    With sums over the M = N*H*W positions of each channel and sigma = sqrt(var + eps)::

        dbias   = sum(dy)                 dweight = sum(dy * xhat)
        train:  dx = gamma / (sigma * M) * (M * dy - sum(dy) - xhat * sum(dy * xhat))
        eval:   dx = gamma / sigma * dy        (the statistics are constants)

    Shapes: ``dy`` and ``dx`` (N, C, H, W); ``dweight``, ``dbias`` (C,), or None when the forward
    had no weight / no bias.
    """
    xhat, gamma, inv_std, training, has_bias = cache
    dy = float_array(dy, "dy")
    if dy.shape != xhat.shape:
        raise ValueError(f"batch_norm2d_backward: dy has shape {dy.shape}, y had {xhat.shape}")
    dbias = _channel_sum(dy)  # (C,)
    dweight = _channel_sum(dy * xhat)  # (C,)
    scale = inv_std if gamma is None else gamma * inv_std  # (C,)  gamma / sigma
    if training:
        m = xhat.size // xhat.shape[1]  # values per channel
        # The three terms: the direct path, the path through mu, the path through var.
        dx = _per_channel(scale / m) * (
            m * dy - _per_channel(dbias) - xhat * _per_channel(dweight)
        )  # (N, C, H, W)
    else:
        dx = _per_channel(scale) * dy  # (N, C, H, W)
    return dx, (None if gamma is None else dweight), (dbias if has_bias else None)
