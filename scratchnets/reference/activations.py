"""Activations and their gradients: ReLU, ReLU6, clip (hardtanh), sigmoid, hard-sigmoid,
hard-swish, SiLU (swish), elementwise; and softmax along one axis.

Each op is ``<op>_forward(x) -> (y, cache)`` and ``<op>_backward(dy, cache) -> dx``; x, y, dy and
dx share one shape (any) and dtype (float32 or float64). At the kinks the gradient follows torch:
the derivative is taken as 0 at the boundary points themselves (see docs/activations.md).
The piecewise-linear ops cache a bool mask of x's shape: where their slope is nonzero.
"""

from __future__ import annotations

import numpy as np

from .checks import check_dy, float_array


def _masked_backward(dy, mask: np.ndarray, op: str) -> np.ndarray:
    """dx = dy where ``mask`` (bool, x's shape) is True, else 0; a where, not ``dy * mask``."""
    return np.where(mask, check_dy(dy, mask.shape, op), 0)


def relu_forward(x):
    """y = max(x, 0); like ``F.relu``. Returns ``(y, cache)``."""
    x = float_array(x, "x")
    return np.maximum(x, 0), x > 0


def relu_backward(dy, cache):
    """dx = dy * [x > 0]: the subgradient at x = 0 is taken as 0 (as torch)."""
    return _masked_backward(dy, cache, "relu")


def relu6_forward(x):
    """y = min(max(x, 0), 6); like ``F.relu6``. Returns ``(y, cache)``."""
    x = float_array(x, "x")
    return np.minimum(np.maximum(x, 0), 6), (x > 0) & (x < 6)


def relu6_backward(dy, cache):
    """dx = dy * [0 < x < 6]: 0 at exactly x = 0 and x = 6 (as ``F.relu6``)."""
    return _masked_backward(dy, cache, "relu6")


def clip_forward(x, low=-1.0, high=1.0):
    """y = min(max(x, low), high); like ``F.hardtanh(x, low, high)`` and ONNX's Clip (ReLU6 is
    clip(x, 0, 6)). ``low`` may be -inf and ``high`` inf; ``low > high`` gives ``high``
    everywhere, as ``torch.clamp``. The bounds are rounded to x's dtype first. Returns
    ``(y, cache)``."""
    x = float_array(x, "x")
    low, high = x.dtype.type(low), x.dtype.type(high)
    return np.minimum(np.maximum(x, low), high), (x > low) & (x < high)


def clip_backward(dy, cache):
    """dx = dy * [low < x < high]: 0 at exactly the bounds (as ``F.hardtanh``)."""
    return _masked_backward(dy, cache, "clip")


def hard_sigmoid_forward(x):
    """y = relu6(x + 3) / 6 = min(max(x + 3, 0), 6) / 6; like ``F.hardsigmoid``."""
    x = float_array(x, "x")
    y = np.minimum(np.maximum(x + 3, 0), 6) / 6
    return y, (x > -3) & (x < 3)


def hard_sigmoid_backward(dy, cache):
    """dx = dy / 6 for -3 < x < 3 and 0 elsewhere, 0 at exactly x = -3 and x = 3 (as torch)."""
    return _masked_backward(dy, cache, "hard_sigmoid") / 6


def sigmoid_forward(x):
    """y = 1 / (1 + exp(-x)); like ``torch.sigmoid``, without overflow for any finite x.

    With z = exp(-|x|) in (0, 1]:  sigmoid(x) = 1 / (1 + z) for x >= 0 and z / (1 + z) for x < 0.
    The cache also keeps 1 - y = sigmoid(-x), computed the same way instead of by subtraction.
    """
    x = float_array(x, "x")
    z = np.exp(-np.abs(x))  # never overflows; underflows harmlessly to 0 for |x| > ~745
    big, small = 1 / (1 + z), z / (1 + z)  # sigmoid(|x|), sigmoid(-|x|)
    y = np.where(x >= 0, big, small)
    y_complement = np.where(x >= 0, small, big)  # 1 - y without cancellation near y = 1
    return y, (y, y_complement)


def sigmoid_backward(dy, cache):
    """dx = dy * y * (1 - y) = dy * sigmoid(x) * sigmoid(-x)."""
    y, y_complement = cache
    return check_dy(dy, y.shape, "sigmoid") * y * y_complement


def hard_swish_forward(x):
    """y = x * relu6(x + 3) / 6 (MobileNetV3's h-swish); like ``F.hardswish``. The cache is x."""
    x = float_array(x, "x")
    return x * np.minimum(np.maximum(x + 3, 0), 6) / 6, x


def hard_swish_backward(dy, cache):
    """dx = dy * slope(x), the derivative of x * (x + 3) / 6 in the middle piece::

        slope = 0            for x <= -3   (y = 0)
              = x / 3 + 1/2  for -3 < x < 3
              = 1            for x >= 3    (y = x)

    The slope jumps at both kinks (from 0 to -1/2 at -3, from 3/2 to 1 at 3); like torch, the
    kinks take the outer pieces' values. A NaN x takes the last branch (dy), as torch.
    """
    x = cache
    dy = check_dy(dy, x.shape, "hard_swish")
    middle = dy * (x / 3 + 0.5)
    return np.where(x <= -3, 0, np.where(x < 3, middle, dy))


def silu_forward(x):
    """y = x * sigmoid(x) (SiLU, "swish"); like ``F.silu``. The cache holds x, sigmoid(x) and
    sigmoid(-x) = 1 - sigmoid(x) (computed without cancellation, see ``sigmoid_forward``)."""
    x = float_array(x, "x")
    s, (_, s_complement) = sigmoid_forward(x)
    return x * s, (x, s, s_complement)


def silu_backward(dy, cache):
    """dx = dy * d/dx [x s(x)] = dy * (s + x s (1 - s)) = dy * s * (1 + x (1 - s)), s = sigmoid(x)."""
    x, s, s_complement = cache
    dy = check_dy(dy, x.shape, "silu")
    return dy * s * (1 + x * s_complement)


def softmax_lines(shape: tuple, axis: int) -> tuple[int, int, int]:
    """(O, K, I): an array of ``shape`` viewed as O x I lines of K elements along ``axis`` (how
    the kernels walk it; a ValueError for an axis the shape does not have)."""
    if not shape or not -len(shape) <= axis < len(shape):
        raise ValueError(f"softmax: axis {axis} for an input of shape {tuple(shape)}")
    axis %= len(shape)
    return (int(np.prod(shape[:axis], dtype=np.int64)), int(shape[axis]),
            int(np.prod(shape[axis + 1 :], dtype=np.int64)))  # fmt: skip


def softmax_forward(x, axis=-1):
    """y = exp(x - m) / sum(exp(x - m)) along ``axis``, m the maximum there (so exp never
    overflows); like ``F.softmax(x, dim=axis)``. Returns ``(y, (y, axis))``."""
    x = float_array(x, "x")
    softmax_lines(x.shape, axis)  # checks the axis
    e = np.exp(x - x.max(axis=axis, keepdims=True))  # in (0, 1], 1 at the maximum
    y = e / e.sum(axis=axis, keepdims=True)
    return y, (y, axis)


def softmax_backward(dy, cache):
    """dx = y * (dy - sum(dy * y)) along the axis: the Jacobian diag(y) - y y^T applied to dy."""
    y, axis = cache
    dy = check_dy(dy, y.shape, "softmax")
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))
