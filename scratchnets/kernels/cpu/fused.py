"""Fused operations for the CPU backend (names outside ``OP_NAMES``).

* ``batch_norm2d_relu6_forward`` / ``_backward``: BatchNorm followed by ReLU6, the pair after
  nearly every convolution of MobileNetV2. Done separately, BN writes y_bn, ReLU6 reads it and
  writes y and a mask, and the backward reads the mask and dy and writes a gated dy that BN then
  reads twice. Fused, the clamp happens in BN's write pass and the gate ``0 < y < 6`` is applied
  where BN's backward reads dy, so no intermediate tensor exists (see ``batchnorm.py`` for the
  passes). The output is bit-identical to BN then ReLU6: rounding to the output dtype commutes
  with clamping to [0, 6], and ``0 < y < 6`` on the clamped output is ReLU6's own mask. The
  gradients agree up to the order of the per-channel sums (reassociated, so the gated loop may
  be vectorised differently from the plain one: differences of a few ulps, seen on AVX-512).
* ``fold_bn_into_conv``: for inference, BN in eval mode is an affine map per output channel, so
  it can be folded into the preceding convolution's weights and bias, removing the BN pass.
"""

from __future__ import annotations

import numpy as np

from scratchnets.reference._checks import float_array

from .batchnorm import normalize, normalize_backward


def batch_norm2d_relu6_forward(
    x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5
):
    """y = relu6(batch_norm2d(x, ...)) in one write pass; arguments and running-stat updates as in
    ``batch_norm2d_forward``. Shapes: x, y (N, C, H, W). Returns ``(y, cache)``.
    """
    return normalize(x, weight, bias, running_mean, running_var, training, momentum, eps, True)


def batch_norm2d_relu6_backward(dy, cache):
    """``(dx, dweight, dbias)`` of ``batch_norm2d_relu6_forward``: BN's backward applied to
    g = dy * [0 < y < 6].
    """
    return normalize_backward(dy, cache, True)


def fold_bn_into_conv(w, b, weight, bias, running_mean, running_var, eps=1e-5):
    """Fold an eval-mode BatchNorm into the convolution before it: ``(w', b')`` with

        s = weight / sqrt(running_var + eps)        (C_out,)
        w'[o] = w[o] * s[o]                         (C_out, C_in/groups, kh, kw)
        b'[o] = (b[o] - running_mean[o]) * s[o] + bias[o]

    so that ``conv2d(x, w', b') == batch_norm2d(conv2d(x, w, b), training=False)``. ``b`` may be
    None (a conv without bias), as may ``weight`` (1) and ``bias`` (0). Computed in float64 and
    returned in w's dtype; ``b'`` always exists.
    """
    w = float_array(w, "w")
    if w.ndim != 4:
        raise ValueError(
            f"fold_bn_into_conv: w must be (C_out, C_in/groups, kh, kw), got {w.shape}"
        )
    c_out = w.shape[0]

    def vector(v, name, default):
        if v is None:
            return np.full(c_out, default)
        v = float_array(v, name)
        if v.shape != (c_out,):
            raise ValueError(
                f"fold_bn_into_conv: {name} must have shape ({c_out},) for w of shape "
                f"{w.shape}, got {v.shape}"
            )
        return v.astype(np.float64)

    if running_mean is None or running_var is None:
        raise ValueError("fold_bn_into_conv needs running_mean and running_var")
    gamma, beta = vector(weight, "weight", 1.0), vector(bias, "bias", 0.0)
    mean, var = vector(running_mean, "running_mean", 0.0), vector(running_var, "running_var", 1.0)
    s = gamma / np.sqrt(var + eps)  # (C_out,)
    w_folded = w.astype(np.float64) * s[:, None, None, None]  # (C_out, C_in/groups, kh, kw)
    b_folded = (vector(b, "b", 0.0) - mean) * s + beta  # (C_out,)
    return w_folded.astype(w.dtype), b_folded.astype(w.dtype)
