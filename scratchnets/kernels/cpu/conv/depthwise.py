"""Depthwise convolution (``groups == C_in``, any channel multiplier M, kernel, stride, padding
and dilation): which of its two kernels runs.

Only kh*kw multiply-adds per output, so the cost is loop overhead and memory traffic, and the
aim is long unit-stride inner loops that LLVM vectorises. Two kernels, chosen here by
``_flat_applies`` and, for the forward, ``_flat_forward_applies`` (thresholds measured,
bench/NOTES.md): ``depthwise_flat.py`` for "same"-style padding on small planes,
``depthwise_phases.py`` otherwise.
"""

from __future__ import annotations

import numpy as np

from scratchnets.reference.conv import ConvGeometry

from .._threads import planned_threads
from .depthwise_flat import (
    _Flat,
    _flat_applies,
    _flat_backward_kernel,
    _flat_forward_applies,
    _flat_forward_kernel,
    _in_hw,
    _merge_phases_kernel,
    _split_phases,
)
from .depthwise_phases import _depthwise_backward_kernel, _depthwise_forward_kernel, _Phases


def _depthwise_forward(x, w, b, g: ConvGeometry):
    """y and the input as the backward needs it (x, or the phase split of x)."""
    y = np.empty((g.batch, g.out_channels, *g.out_hw), dtype=x.dtype)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    if _flat_forward_applies(g):
        flat = _Flat.of(g, x.dtype)
        xs = _split_phases(x, g, flat) if flat.copy else x
        wt = w.reshape(g.out_channels, -1)  # (C*M, taps)
        args = (flat.block, flat.shift, flat.masks)
        _flat_forward_kernel(xs.reshape(-1), wt, bias, b is not None, y, *args)
        return y, xs
    phases = _Phases.of(g)
    units = g.in_channels * -(-g.batch // phases.images)
    blocks = min(units, 4 * planned_threads())  # a few spans per thread
    _depthwise_forward_kernel(x, w, bias, b is not None, y, *phases.args(), blocks)
    return y, x


def _depthwise_backward(dy, saved, w, g: ConvGeometry):
    dx = np.empty((g.batch, g.in_channels, *_in_hw(g)), saved.dtype)
    dwt = np.empty_like(w)
    if _flat_applies(g):
        flat = _Flat.of(g, saved.dtype)
        dxs = np.empty_like(saved) if flat.copy else dx
        wt, dw2 = w.reshape(g.out_channels, -1), dwt.reshape(g.out_channels, -1)
        tables = (flat.phase, flat.back, flat.adjoint)
        _flat_backward_kernel(saved.reshape(-1), wt, dy, dxs.reshape(-1), dw2, flat.block, *tables)
        if flat.copy:
            _merge_phases_kernel(dxs, dx, flat.pixel_dst)
        return dx, dwt
    _depthwise_backward_kernel(saved, w, dy, dx, dwt, *_Phases.of(g).args())
    return dx, dwt
