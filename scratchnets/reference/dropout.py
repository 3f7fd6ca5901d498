"""Inverted dropout (``torch.nn.functional.dropout``) with a reproducible host-side mask.

Training: each element is kept with probability 1 - p and the kept ones are scaled by 1 / (1 - p),
so that E[y] = x; eval mode (or p = 0) is the identity. Every backend draws its mask with
:func:`dropout_mask`, so all backends agree for a given seed (torch's own random stream differs).
"""

from __future__ import annotations

import numpy as np

from .checks import float_array


def check_p(p) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p}")
    return float(p)


def dropout_mask(shape, p, seed=None) -> np.ndarray:
    """Bool array of ``shape``: True where the element is KEPT, each with probability 1 - p.

    ``mask = np.random.default_rng(seed).random(shape) >= p``; ``seed=None`` draws fresh entropy.
    """
    p = check_p(p)
    return np.random.default_rng(seed).random(shape) >= p


def dropout_forward(x, p=0.5, training=True, seed=None):
    """y = x * mask / (1 - p) in training, y = x in eval mode or for p = 0; zeros for p = 1.

    ``x`` any shape, float32 or float64; ``y`` same shape and dtype. Returns ``(y, cache)``.
    """
    x = float_array(x, "x")
    p = check_p(p)
    if not training or p == 0.0:
        return x.copy(), None  # identity: the cache None means dx = dy
    mask = dropout_mask(x.shape, p, seed)  # bool, x's shape
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)  # p = 1 drops everything (mask is all False)
    multiplier = (mask * scale).astype(x.dtype)  # 0 or 1 / (1 - p), x's shape
    return x * multiplier, multiplier


def dropout_backward(dy, cache):
    """dx = dy * mask / (1 - p): the forward multiplier again (dx = dy when the forward was identity)."""
    dy = float_array(dy, "dy")
    if cache is None:
        return dy.copy()
    if dy.shape != cache.shape:
        raise ValueError(f"dropout_backward: dy has shape {dy.shape}, y had {cache.shape}")
    return dy * cache
