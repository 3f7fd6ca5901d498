"""Fused operations for the CPU backend (the op table's ``fused`` names of conv2d).

* ``conv2d_bias_act_forward``: inference's conv -> bias -> ReLU / ReLU6 / h-swish (what a
  BN-folded MobileNet is made of). Separately, the bias is one pass over the output (``y += b``)
  and the activation another that also allocates its output and a mask for a backward that never
  comes. Here the pointwise and im2col convs apply bias (or BN scale / shift) and activation to
  each GEMM tile while it is in cache (``gemm.tiled_matmul``); the depthwise conv writes y (with
  the bias added in its kernel), then one in-place Numba pass applies the rest; no cache is
  kept. Same values as the ops in sequence: the bias add is rounded to y's dtype first, then
  the activation does the same float operations as its own kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from scratchnets.reference.conv import prepare_conv

from ._threads import planned_threads
from .channels_last import conv2d_bias_act_channels_last_prepared
from .conv import conv_kind
from .conv.depthwise import _depthwise_forward
from .conv.im2col import _general_forward
from .conv.pointwise import _pointwise_input
from .gemm import (
    ACTIVATION_CODES,
    _contiguous,
    _tiled_gemm,
    blas_gemm,
    epilogue_arguments,
    epilogue_row,
    tile_plan,
    tiled_matmul,
)


@njit(parallel=True, cache=True)
def _epilogue_kernel(y, scale, use_scale, shift, use_shift, activation, zero, three, six):
    """y[n, c] = act(y[n, c] * scale[c] + shift[c]) in place (the multiply only with
    ``use_scale``, the add only with ``use_shift``); y (N, C, P), one plane per step.
    ``activation``: an ``ACTIVATION_CODES`` value; ``zero``, ``three``, ``six`` in y's dtype.

    Each plane is one loop of selects over a contiguous row, which LLVM vectorises: measured
    2-5x faster than the first version, which stored y, reloaded it and branched per element
    (96 x 784 float32 with BN scale and ReLU6: 20 -> 6.5 us; 8 x 96 x 3136: 564 -> 112 us). The
    multiply and the add round separately, as the ops in sequence do."""
    batch, channels, _ = y.shape
    one, nothing = y.dtype.type(1), y.dtype.type(0)
    for plane in prange(batch * channels):
        n, c = plane // channels, plane % channels
        s = scale[c] if use_scale else one
        b = shift[c] if use_shift else nothing
        epilogue_row(y[n, c], s, use_scale, b, activation, zero, three, six)


def conv2d_bias_act_forward(
    x, w, b=None, stride=1, padding=0, dilation=1, groups=1, activation=None
) -> np.ndarray:
    """y = act(conv2d(x, w) + b) for inference: ``activation`` None, "relu", "relu6" or
    "hard_swish".
    Arguments as ``conv2d_forward``; returns y only (no cache: there is no backward)."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_CODES)}, got {activation!r}")
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
    if kind == "pointwise":  # the epilogue inside the GEMM, on each tile while in cache
        y = np.empty((g.batch, g.out_channels, *g.out_hw), x.dtype)
        w2 = w.reshape(g.out_channels, g.in_channels)
        tiled_matmul(w2, _pointwise_input(x, g), y.reshape(g.batch, g.out_channels, -1),
                     scale=scale, shift=b, activation=activation)  # fmt: skip
        return y
    if kind == "general":  # the epilogue inside the GEMM too
        return _general_forward(x, w, g, scale, b, activation)
    if scale is None:
        y, _ = _depthwise_forward(x, w, b, g)  # bias added in the kernel
        bias_left = None
    else:
        y, _ = _depthwise_forward(x, w, None, g)
        bias_left = b
    if bias_left is None and activation is None and scale is None:
        return y
    planes = y.reshape(g.batch, g.out_channels, -1)
    epilogue = epilogue_arguments(y.dtype, _contiguous(scale, y.dtype), bias_left, activation)
    _epilogue_kernel(planes, *epilogue)
    return y


def conv2d_bias_act_prepared(w, b, g, activation, bn=None, channels_last=False):
    """``conv2d_bias_act_checked`` prepared once for one layer and one input geometry ``g``: a
    function ``run(x) -> y`` for checked inputs of that geometry, the eval fast path's per-layer
    plan. Chosen here once instead of on every call: the kernel, and for a pointwise conv the
    weights' (C_out, C_in) view, the GEMM's tile plan, BLAS routine and epilogue constants (the
    checks and look-ups of ``tiled_matmul`` and of this module's dispatch were ~10 us a layer,
    half the time of a small layer).

    ``bn``: an eval-mode BatchNorm after the conv as ``(weight, bias, running_mean, running_var,
    eps)`` (weight / bias may be None), or None. Every array (``w``, ``b`` and these) is read on
    every call, so a change in place is seen; a caller that replaces one prepares again.
    ``channels_last``: ``run`` takes and returns (N, H, W, C) arrays
    (``channels_last.conv2d_bias_act_channels_last_prepared``; depthwise and stride-1 pointwise
    convs only)."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_CODES)}, got {activation!r}")
    dtype = np.dtype(w.dtype)

    def affine():  # (scale, shift): the BN's current statistics, the conv's bias folded in
        if bn is None:
            return None, b
        return batch_norm2d_eval_affine(*bn, b, dtype)

    if channels_last:
        return conv2d_bias_act_channels_last_prepared(w, g, affine, activation)
    if conv_kind(g) != "pointwise":

        def run(x):
            scale, shift = affine()
            return conv2d_bias_act_checked(x, w, shift, g, activation, scale)

        return run

    weights = w.reshape(g.out_channels, g.in_channels)  # a view: in-place changes are seen
    pixels = g.out_hw[0] * g.out_hw[1]
    tiles = tile_plan(g.batch, g.out_channels, pixels, g.in_channels, planned_threads())
    gemm, out_shape = blas_gemm(dtype), (g.batch, g.out_channels, *g.out_hw)

    def run_pointwise(x):
        epilogue = epilogue_arguments(dtype, *affine(), activation)
        y = np.empty(out_shape, dtype)
        columns = _pointwise_input(np.ascontiguousarray(x), g)  # (N, C_in, OH*OW)
        _tiled_gemm(gemm, weights, False, columns, False, y.reshape(g.batch, g.out_channels, -1),
                    tiles, False, *epilogue)  # fmt: skip
        return y

    return run_pointwise


@njit(cache=True)
def _eval_affine_kernel(weight, use_weight, bias, use_bias, mean, var, eps, conv_bias,
                        use_conv_bias, scale, shift):  # fmt: skip
    """``reference.batchnorm.eval_scale_shift`` per channel in float64, stored in the outputs'
    dtype (the same float64 operations in the same order: the same values)."""
    for c in range(scale.size):
        s = (np.float64(weight[c]) if use_weight else 1.0) / np.sqrt(np.float64(var[c]) + eps)
        z = np.float64(conv_bias[c]) if use_conv_bias else 0.0
        t = (z - np.float64(mean[c])) * s
        scale[c] = s
        shift[c] = t + (np.float64(bias[c]) if use_bias else 0.0)


def batch_norm2d_eval_affine(weight, bias, running_mean, running_var, eps, conv_bias, dtype):
    """An eval-mode BatchNorm after a conv as ``(scale, shift)`` in ``dtype``: what
    ``reference.batchnorm.eval_scale_shift`` computes (``weight`` / ``bias`` / ``conv_bias`` may
    be None), cast, in one compiled call: ~1 us where the NumPy expression costs ~12 us, paid by
    every BN-carrying conv of the eval fast path on every forward."""
    channels = len(running_var)
    scale, shift = np.empty(channels, dtype), np.empty(channels, dtype)
    nothing = np.zeros(1)
    _eval_affine_kernel(
        nothing if weight is None else weight, weight is not None,
        nothing if bias is None else bias, bias is not None,
        running_mean, running_var, float(eps),
        nothing if conv_bias is None else conv_bias, conv_bias is not None,
        scale, shift,
    )  # fmt: skip
    return scale, shift
