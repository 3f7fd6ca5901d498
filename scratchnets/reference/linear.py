"""Fully connected layer ``y = x @ w.T + b`` (``torch.nn.functional.linear``), forward and backward."""

from __future__ import annotations

import numpy as np

from .checks import float_array


def check_linear(x, w, b=None):
    """``(x, w, b)`` as float arrays after checking that they make a linear layer (the
    backends' forwards share these checks)."""
    x, w = float_array(x, "x"), float_array(w, "w")
    if x.ndim != 2 or w.ndim != 2:
        raise ValueError(f"linear expects x (N, in) and w (out, in), got {x.shape} and {w.shape}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"linear: x has {x.shape[1]} input features but w of shape {w.shape} expects "
            f"{w.shape[1]} (x shape {x.shape})"
        )
    if b is not None:
        b = float_array(b, "b")
        if b.shape != (w.shape[0],):
            raise ValueError(f"linear: b must have shape ({w.shape[0]},), got {b.shape}")
    return x, w, b


def linear_forward(x, w, b=None):
    """y[n, o] = sum_i x[n, i] * w[o, i] + b[o]; like ``F.linear``.

    Shapes: ``x`` (N, in), ``w`` (out, in), ``b`` (out,) or None  ->  ``y`` (N, out).
    Returns ``(y, cache)``.
    """
    x, w, b = check_linear(x, w, b)
    y = x @ w.T  # (N, in) @ (in, out) -> (N, out)
    if b is not None:
        y = y + b  # (out,) broadcasts over the batch
    return y, (x, w, b is not None)


def check_linear_dy(dy, x, w) -> np.ndarray:
    """``dy`` as a float array after checking that it has the forward output's shape."""
    dy = float_array(dy, "dy")
    if dy.shape != (x.shape[0], w.shape[0]):
        raise ValueError(
            f"linear_backward: dy has shape {dy.shape}, y had {(x.shape[0], w.shape[0])}"
        )
    return dy


def linear_backward(dy, cache):
    """Gradients of linear: ``(dx, dw, db or None)``.

    dx = dy @ w  (N, out) @ (out, in) -> (N, in)
    dw = dy.T @ x  (out, N) @ (N, in) -> (out, in)
    db = sum_n dy[n]  -> (out,), None when the forward had no bias
    """
    x, w, has_bias = cache
    dy = check_linear_dy(dy, x, w)
    dx = dy @ w  # (N, in)
    dw = dy.T @ x  # (out, in)
    db = dy.sum(axis=0) if has_bias else None  # (out,)
    return dx, dw, db
