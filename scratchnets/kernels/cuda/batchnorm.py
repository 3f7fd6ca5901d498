"""Batch normalisation of NCHW activations on the GPU; like ``F.batch_norm``.

Same equations, arguments and validation as ``scratchnets.reference.batchnorm`` (the math and the
3-term backward formula are in its docstrings). The work splits into

* per-channel sums over (n, h, w), deterministic (``_reduce.channel_reduce``, variant
  ``_reduce.CHANNEL_REDUCTION``): the mean, then the two-pass biased variance
  ``mean((x - mu)^2)``; in the backward ``sum(dy)`` and ``sum(dy * xhat)``;
* one thread per channel (``_statistics_kernel``): running statistics updated IN PLACE on the
  arrays passed in (device arrays directly; NumPy arrays are updated on the device and copied
  back into the same host array) and ``1 / sqrt(var + eps)``;
* one thread per element: normalise (``xhat``, ``y``) and the backward ``dx``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from scratchnets.arrays import is_device_array
from scratchnets.reference.batchnorm import channel_vector

from ._launch import check_float, device_array, device_dy, empty, flat, host_proxy, launch_1d
from ._reduce import channel_reduce, term_centered_square, term_product, term_value


@cuda.jit
def _statistics_kernel(
    mean, var, eps, momentum, unbias, update, running_mean, running_var, inv_std
):
    # mean, var, running_*, inv_std: (C,); update = (update running_mean, update running_var)
    c = cuda.grid(1)
    if c < mean.size:
        one = var.dtype.type(1)
        if update[0]:
            running_mean[c] = (one - momentum) * running_mean[c] + momentum * mean[c]
        if update[1]:  # the running buffer keeps the unbiased variance var * M / (M - 1)
            running_var[c] = (one - momentum) * running_var[c] + momentum * (var[c] * unbias)
        inv_std[c] = one / math.sqrt(var[c] + eps)


@cuda.jit
def _normalize_kernel(x, mean, inv_std, gamma, beta, flags, hw, xhat, y):
    # x, xhat, y: flat (N*C*H*W,); mean, inv_std, gamma, beta: (C,); flags = (has_gamma, has_beta)
    i = cuda.grid(1)
    if i < x.size:
        c = (i // hw) % mean.size
        v = (x[i] - mean[c]) * inv_std[c]  # xhat: zero mean, unit variance per channel
        xhat[i] = v
        if flags[0]:
            v = v * gamma[c]
        if flags[1]:
            v = v + beta[c]
        y[i] = v


@cuda.jit
def _dx_kernel(dy, xhat, scale, sum_dy, sum_dy_xhat, training, m, hw, dx):
    # dy, xhat, dx: flat; scale = gamma / sigma (C,); sums (C,); m = N*H*W in dy's dtype
    i = cuda.grid(1)
    if i < dy.size:
        c = (i // hw) % scale.size
        if training:  # the direct path, the path through mu, the path through var
            dx[i] = (scale[c] / m) * (m * dy[i] - sum_dy[c] - xhat[i] * sum_dy_xhat[c])
        else:  # the statistics are constants
            dx[i] = scale[c] * dy[i]


@cuda.jit
def _product_kernel(a, b, out):
    c = cuda.grid(1)
    if c < out.size:
        out[c] = a[c] * b[c]


def _running_buffer(v, name: str, channels: int):
    """Validate a running statistic (updated in place); returns (device array, host array or None)."""
    if v is None:
        return None, None
    channel_vector(host_proxy(v) if is_device_array(v) else v, name, channels, None, True)
    return (v, None) if is_device_array(v) else (device_array(v, name), v)


def batch_norm2d_forward(
    x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5
):
    """y = weight * (x - mu) / sqrt(var + eps) + bias per channel, on the GPU; like
    ``F.batch_norm``. Arguments, shapes and errors as ``reference.batch_norm2d_forward``; any
    array may be NumPy or device. ``running_mean`` / ``running_var`` are updated in place in
    training mode. Returns ``(y, cache)``, y a device array of x's shape and dtype."""
    dtype = check_float(x, "x")
    if len(x.shape) != 4:
        raise ValueError(f"batch_norm2d expects x of shape (N, C, H, W), got shape {x.shape}")
    n, c, h, w = x.shape
    for v, name in ((weight, "weight"), (bias, "bias")):
        channel_vector(None if v is None else host_proxy(v), name, c, dtype)
    gamma = None if weight is None else device_array(weight, "weight", dtype)
    beta = None if bias is None else device_array(bias, "bias", dtype)
    run_mean, host_mean = _running_buffer(running_mean, "running_mean", c)
    run_var, host_var = _running_buffer(running_var, "running_var", c)
    x = device_array(x, "x")
    m = n * h * w  # values per channel

    if m == 0:  # an empty batch (torch): an empty y, the running statistics untouched
        ones = device_array(np.ones(c, dtype), "inv_std")
        return empty(x.shape, dtype), (empty(x.shape, dtype), gamma, ones, False, beta is not None)
    inv_std = empty((c,), dtype)
    if training:
        if m < 2:
            raise ValueError(
                f"batch_norm2d in training needs more than 1 value per channel, "
                f"got N*H*W = {m} for x of shape {x.shape}"
            )
        mean = channel_reduce(term_value, x, scale=1.0 / m)  # (C,)
        var = channel_reduce(term_centered_square, x, shift=mean, scale=1.0 / m)  # (C,) biased
        launch_1d(
            _statistics_kernel,
            c,
            mean,
            var,
            dtype.type(eps),
            dtype.type(momentum),
            dtype.type(m / (m - 1)),
            (run_mean is not None, run_var is not None),
            mean if run_mean is None else run_mean,  # unread placeholders when absent
            var if run_var is None else run_var,
            inv_std,
        )
        for device, host in ((run_mean, host_mean), (run_var, host_var)):
            if host is not None:
                host[...] = device.copy_to_host()  # the caller's NumPy buffer, in place
    else:
        if run_mean is None or run_var is None:
            raise ValueError("batch_norm2d in eval mode needs running_mean and running_var")
        mean = device_array(run_mean, "running_mean", dtype)
        var = device_array(run_var, "running_var", dtype)
        zero, no_update = dtype.type(0), (False, False)
        launch_1d(
            _statistics_kernel,
            c,
            mean,
            var,
            dtype.type(eps),
            zero,
            zero,
            no_update,
            mean,
            var,
            inv_std,
        )

    xhat, y = empty(x.shape, dtype), empty(x.shape, dtype)
    flags = (gamma is not None, beta is not None)
    launch_1d(
        _normalize_kernel,
        x.size,
        flat(x),
        mean,
        inv_std,
        inv_std if gamma is None else gamma,  # placeholders are never read
        inv_std if beta is None else beta,
        flags,
        h * w,
        flat(xhat),
        flat(y),
    )
    return y, (xhat, gamma, inv_std, training, beta is not None)


def batch_norm2d_backward(dy, cache):
    """Gradients of batch_norm2d on the GPU: ``(dx, dweight, dbias)`` as device arrays
    (dweight / dbias None when the forward had no weight / bias); formula as
    ``reference.batch_norm2d_backward``."""
    xhat, gamma, inv_std, training, has_bias = cache
    dy = device_dy(dy, tuple(xhat.shape), xhat.dtype, "batch_norm2d_backward")
    n, c, h, w = xhat.shape
    sum_dy = channel_reduce(term_value, dy)  # (C,) = dbias
    sum_dy_xhat = channel_reduce(term_product, dy, xhat)  # (C,) = dweight
    scale = inv_std  # (C,) gamma / sigma
    if gamma is not None:
        scale = empty((c,), xhat.dtype)
        launch_1d(_product_kernel, c, gamma, inv_std, scale)
    dx = empty(xhat.shape, xhat.dtype)
    m = xhat.dtype.type(n * h * w)
    launch_1d(
        _dx_kernel,
        dy.size,
        flat(dy),
        flat(xhat),
        scale,
        sum_dy,
        sum_dy_xhat,
        training,
        m,
        h * w,
        flat(dx),
    )
    return dx, (None if gamma is None else sum_dy_xhat), (sum_dy if has_bias else None)
