"""Elementwise activations and their gradients: ReLU, ReLU6, sigmoid, hard-sigmoid.

Each op is ``<op>_forward(x) -> (y, cache)`` and ``<op>_backward(dy, cache) -> dx``; x, y, dy and
dx share one shape (any) and dtype (float32 or float64). At the kinks the gradient follows torch:
the derivative is taken as 0 at the boundary points themselves (see docs/activations_and_loss.md).
The piecewise-linear ops cache a bool mask of x's shape: where their slope is nonzero.
"""

from __future__ import annotations

import numpy as np

from ._checks import float_array


def _masked_backward(dy, mask: np.ndarray, op: str) -> np.ndarray:
    """dx = dy where ``mask`` (bool, x's shape) is True, else 0; a where, not ``dy * mask``."""
    dy = float_array(dy, "dy")
    if dy.shape != mask.shape:
        raise ValueError(f"{op}_backward: dy has shape {dy.shape}, y had {mask.shape}")
    return np.where(mask, dy, 0)


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
    dy = float_array(dy, "dy")
    if dy.shape != y.shape:
        raise ValueError(f"sigmoid_backward: dy has shape {dy.shape}, y had {y.shape}")
    return dy * y * y_complement
