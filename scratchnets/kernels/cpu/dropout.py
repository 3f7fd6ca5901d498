"""Inverted dropout on the CPU (``F.dropout``): y = x * mask / (1 - p) in training.

The mask is drawn with the reference's ``dropout_mask`` (``np.random.default_rng(seed)``), so for
a given seed every backend drops the same elements. What differs from the reference is the
memory traffic after the draw: the reference builds a full-size multiplier array in x's dtype
(mask * scale, then a cast) and caches it; here one select pass (``_common.masked_scale``,
parallel) writes y from x and the bool mask, and the cache is the 1-byte mask plus the scalar
scale. The backward is the same select pass on dy. A dropped element is exactly 0 (a select, not
a multiplication by 0). Eval mode and p = 0 are the identity, as in the reference.
"""

from __future__ import annotations

from scratchnets.reference.dropout import check_p, dropout_mask

from ._common import check_shape, kernel_array, masked_scale


def dropout_forward(x, p=0.5, training=True, seed=None):
    """y = x * mask / (1 - p) in training (mask: keep with probability 1 - p), y = x (a copy) in
    eval mode or for p = 0, zeros for p = 1. ``x`` any shape; returns ``(y, cache)``.
    """
    x = kernel_array(x, "x")
    p = check_p(p)
    if not training or p == 0.0:
        return x.copy(), None  # identity: the cache None means dx = dy
    mask = dropout_mask(x.shape, p, seed)  # bool, x's shape, True = kept
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)  # p = 1: the mask is all False anyway
    return masked_scale(x, mask, scale), (mask, scale)


def dropout_backward(dy, cache):
    """dx = dy * mask / (1 - p) (the forward's mask and scale); dx = dy for an identity forward."""
    dy = kernel_array(dy, "dy")
    if cache is None:
        return dy.copy()
    mask, scale = cache
    check_shape(dy, mask.shape, "dropout_backward")
    return masked_scale(dy, mask, scale)
