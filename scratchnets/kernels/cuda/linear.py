"""Fully connected layer ``y = x @ w.T + b`` on the GPU (``F.linear``), forward and backward.

Three matrix products (``_gemm.matmul``, variant ``_gemm.GEMM``), read straight from the arrays
as they lie (the loaders do the transposes), plus a deterministic column sum for db::

    y  (N, out) = x (N, in) @ w.T (in, out)   then y += b
    dx (N, in)  = dy (N, out) @ w (out, in)
    dw (out, in) = dy.T (out, N) @ x (N, in)
    db (out,)   = sum_n dy[n, :]              (dy viewed as (N, out, 1, 1), ``_reduce``)
"""

from __future__ import annotations

from . import _gemm
from ._launch import check_float, device_array, device_dy, empty
from ._reduce import channel_reduce, term_value


def _check(x, w, b) -> None:
    """The reference's argument errors, from shapes and dtypes only."""
    check_float(x, "x")
    check_float(w, "w")
    x_shape, w_shape = tuple(x.shape), tuple(w.shape)
    if len(x_shape) != 2 or len(w_shape) != 2:
        raise ValueError(f"linear expects x (N, in) and w (out, in), got {x_shape} and {w_shape}")
    if x_shape[1] != w_shape[1]:
        raise ValueError(
            f"linear: x has {x_shape[1]} input features but w of shape {w_shape} expects "
            f"{w_shape[1]} (x shape {x_shape})"
        )
    if b is not None:
        check_float(b, "b")
        if tuple(b.shape) != (w_shape[0],):
            raise ValueError(f"linear: b must have shape ({w_shape[0]},), got {tuple(b.shape)}")


def linear_forward(x, w, b=None):
    """y[n, o] = sum_i x[n, i] * w[o, i] + b[o]; like ``F.linear``. Shapes: x (N, in),
    w (out, in), b (out,) or None -> y (N, out), a device array. Returns ``(y, cache)``."""
    _check(x, w, b)
    x = device_array(x, "x")
    w = device_array(w, "w", x.dtype)
    N, out = x.shape[0], w.shape[0]
    y = empty((N, out), x.dtype)
    _gemm.matmul(_gemm.plain, x, _gemm.transposed, w, y.reshape(1, N, out), x.shape[1])
    if b is not None:
        _gemm.add_channel_bias(y, device_array(b, "b", x.dtype), 1)
    return y, (x, w, b is not None)


def linear_backward(dy, cache):
    """Gradients of linear: ``(dx, dw, db or None)`` as device arrays (see module docstring)."""
    x, w, has_bias = cache
    (N, n_in), n_out = x.shape, w.shape[0]
    dy = device_dy(dy, (N, n_out), x.dtype, "linear_backward")
    dx, dw = empty((N, n_in), x.dtype), empty((n_out, n_in), x.dtype)
    _gemm.matmul(_gemm.plain, dy, _gemm.plain, w, dx.reshape(1, N, n_in), n_out)
    _gemm.matmul(_gemm.transposed, dy, _gemm.plain, x, dw.reshape(1, n_out, n_in), N)
    db = channel_reduce(term_value, dy.reshape(N, n_out, 1, 1)) if has_bias else None
    return dx, dw, db
