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
* ``conv2d_bias_act_forward``: inference's conv -> bias -> ReLU / ReLU6 (what a BN-folded
  MobileNet is made of). Separately, the bias is one pass over the output (``y += b``) and the
  activation another that also allocates its output and a mask for a backward that never comes.
  Here the conv writes y, then one in-place Numba pass adds the bias and clamps (the depthwise
  kernel adds the bias itself, so only the clamp is left); no cache is kept. Same values as the
  three ops in sequence: the bias add and the clamp are the same float operations.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from scratchnets.reference._checks import float_array
from scratchnets.reference.batchnorm import eval_scale_shift
from scratchnets.reference.conv import _prepare

from .batchnorm import normalize, normalize_backward
from .conv import (
    _depthwise_forward,
    _general_forward,
    _pointwise_forward,
    _pointwise_input,
    conv_kind,
)

#: the reference's argument checks of a convolution: ``(x, w, b, geometry)``, raising on bad input
conv_prepare = _prepare

#: the clamp of each activation a conv can absorb: (low, high)
ACTIVATION_RANGES = {None: (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}


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
    s, b_folded = eval_scale_shift(  # (C_out,) each
        vector(weight, "weight", 1.0),
        vector(bias, "bias", 0.0),
        vector(running_mean, "running_mean", 0.0),
        vector(running_var, "running_var", 1.0),
        eps,
        vector(b, "b", 0.0),
    )
    w_folded = w.astype(np.float64) * s[:, None, None, None]  # (C_out, C_in/groups, kh, kw)
    return w_folded.astype(w.dtype), b_folded.astype(w.dtype)


@njit(parallel=True, cache=True)
def _epilogue_kernel(y, scale, use_scale, shift, use_shift, low, high):
    """y[n, c] = min(max(y[n, c] * scale[c] + shift[c], low), high) in place (the multiply only
    with ``use_scale``, the add only with ``use_shift``); y (N, C, P), one plane per step.
    ``max`` / ``min`` as written pass NaN through, like ReLU6's kernel."""
    batch, channels, size = y.shape
    for plane in prange(batch * channels):
        n, c = plane // channels, plane % channels
        s = scale[c] if use_scale else 1.0
        b = shift[c] if use_shift else 0.0
        for i in range(size):
            v = y[n, c, i] * s + b if use_scale else y[n, c, i] + b
            y[n, c, i] = low if v <= low else (high if v >= high else v)


def conv2d_bias_act_forward(
    x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None
) -> np.ndarray:
    """y = act(conv2d(x, w) + b) for inference: ``activation`` None, "relu" or "relu6".
    Arguments as ``conv2d_forward``; returns y only (no cache: there is no backward)."""
    if activation not in ACTIVATION_RANGES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_RANGES)}, got {activation!r}")
    x, w, b, g = _prepare(x, w, b, stride, padding, dilation, groups)  # the reference's checks
    return conv2d_bias_act_checked(x, w, b, g, activation)


def conv2d_bias_act_checked(x, w, b, g, activation, scale=None) -> np.ndarray:
    """``conv2d_bias_act_forward`` for arguments already checked, with their geometry ``g``
    (``reference.conv._prepare``): what an inference layer calls once it has validated an input
    shape, skipping the per-call checks (~50 us a layer, a tenth of a small layer's time).
    With ``scale`` (C_out,): ``act(conv2d(x, w) * scale + b)``, an eval-mode BatchNorm applied
    in the same pass (``b`` its shift) instead of folded into a copy of ``w``."""
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    b = None if b is None else np.ascontiguousarray(b)
    kind = conv_kind(g)
    if kind == "depthwise" and scale is None:
        y, _ = _depthwise_forward(x, w, b, g)  # bias added in the kernel
        bias_left = None
    elif kind == "depthwise":
        y, _ = _depthwise_forward(x, w, None, g)
        bias_left = b
    else:
        y = (
            _pointwise_forward(_pointwise_input(x, g), w, g)
            if kind == "pointwise"
            else (_general_forward(x, w, g))
        )
        bias_left = b
    if bias_left is None and activation is None and scale is None:
        return y
    low, high = ACTIVATION_RANGES[activation]
    dummy = np.zeros(1, y.dtype)
    planes = y.reshape(g.batch, g.out_channels, -1)
    _epilogue_kernel(planes, dummy if scale is None else np.ascontiguousarray(scale, y.dtype),
                     scale is not None, dummy if bias_left is None else bias_left,
                     bias_left is not None, y.dtype.type(low), y.dtype.type(high))  # fmt: skip
    return y
