"""Fused operations for the CPU backend (the op table's ``fused`` names of conv2d).

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

from scratchnets.reference.conv import prepare_conv

from .conv import conv_kind
from .conv.depthwise import _depthwise_forward
from .conv.im2col import _general_forward
from .conv.pointwise import _pointwise_forward, _pointwise_input

#: the clamp of each activation a conv can absorb: (low, high)
ACTIVATION_RANGES = {None: (-np.inf, np.inf), "relu": (0.0, np.inf), "relu6": (0.0, 6.0)}


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
    x, w, b, g = prepare_conv(x, w, b, stride, padding, dilation, groups)  # the reference's checks
    return conv2d_bias_act_checked(x, w, b, g, activation)


def conv2d_bias_act_checked(x, w, b, g, activation, scale=None) -> np.ndarray:
    """``conv2d_bias_act_forward`` for arguments already checked, with their geometry ``g``
    (``reference.conv.prepare_conv``): what an inference layer calls once it has validated an input
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
