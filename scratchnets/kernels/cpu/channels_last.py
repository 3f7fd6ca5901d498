"""Channels-last (NHWC) inference kernels: the layout the eval plan holds from mid-network on.

Our NCHW depthwise kernels work plane by plane: on the late layers of a MobileNet (planes of
7-28 px, 256-1024 channels) the per-plane set-up and phase copies cost more than the arithmetic.
Channels-last turns the channel axis into the inner loop: every tap of the filter is one
contiguous multiply-add over all channels of a pixel, which LLVM vectorises whatever the plane
size. Measured with a prototype (MobileNetV1's depthwise shapes, batch 1, 2-core EPYC): 2-6x
faster than the NCHW kernels from 28 px on, 3x slower on the first layer (32 channels at 112
px: too short an inner loop). A transpose per layer costs more than that gains, so the plan
chooses the layout once per stretch of the network (``nn.module.chain_plans``) and the
pointwise convs between the depthwise ones read and write channels-last too: there the GEMM is
``(N*H*W, C_in) @ (C_in, C_out)``, the whole batch one matrix, with a per-column epilogue.

Both apply an eval-mode BatchNorm (scale / shift) and the activation to each output pixel while
it is in L1, as ``fused`` does for NCHW; values are the ops' within float32 rounding (the sums
run in another order than the NCHW kernels', so not bit for bit).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._threads import planned_threads
from .gemm import _tiled_gemm, blas_gemm, epilogue_arguments, epilogue_channels, tile_plan


@njit(parallel=True, cache=True, fastmath={"contract"})
def _depthwise_channels_last(
    x, w, y, stride_h, stride_w, top, left, dilation_h, dilation_w,
    scale, use_scale, shift, use_shift, activation, zero, three, six,
):  # fmt: skip
    """y[n, i, j, c] = act(sum_{p, q} x[n, i s_h - top + p d_h, j s_w - left + q d_w, c]
    w[c, 0, p, q] * scale[c] + shift[c]), zero padding; x (N, H, W, C), w (C, 1, KH, KW) as the
    layer holds it, y (N, OH, OW, C); one output row per step.

    The taps are first copied channels-last (KH, KW, C), so every tap is a multiply-add of
    three contiguous vectors over the channels. A pixel whose three columns of a 3-wide kernel
    all lie inside the image adds a kernel row's three taps in one pass (a third of the loads
    and stores of its running sums: 28 px, 192 channels, 91 -> 75 us); edge pixels and other
    widths take tap by tap. The multiply-adds may contract to FMAs; the epilogue runs on each
    finished row (a separate function: its multiply and add round as the ops do; called per
    pixel it cost 4x the whole conv)."""
    batch, height, width, channels = x.shape
    kernel_h, kernel_w = w.shape[2], w.shape[3]
    out_h, out_w = y.shape[1], y.shape[2]
    taps = np.empty((kernel_h, kernel_w, channels), w.dtype)
    for c in range(channels):
        for p in range(kernel_h):
            for q in range(kernel_w):
                taps[p, q, c] = w[c, 0, p, q]
    for job in prange(batch * out_h):
        n, i = job // out_h, job % out_h
        for j in range(out_w):
            pixel = y[n, i, j]
            for c in range(channels):
                pixel[c] = 0
            v0 = j * stride_w - left
            row_inside = kernel_w == 3 and v0 >= 0 and v0 + 2 * dilation_w < width
            for p in range(kernel_h):
                h = i * stride_h - top + p * dilation_h
                if h < 0 or h >= height:
                    continue
                if row_inside:
                    a, b, d = x[n, h, v0], x[n, h, v0 + dilation_w], x[n, h, v0 + 2 * dilation_w]
                    ta, tb, td = taps[p, 0], taps[p, 1], taps[p, 2]
                    for c in range(channels):
                        pixel[c] += a[c] * ta[c] + b[c] * tb[c] + d[c] * td[c]
                    continue
                for q in range(kernel_w):
                    v = v0 + q * dilation_w
                    if v < 0 or v >= width:
                        continue
                    source, tap = x[n, h, v], taps[p, q]
                    for c in range(channels):
                        pixel[c] += source[c] * tap[c]
        _row_epilogue(y[n, i], scale, use_scale, shift, use_shift, activation, zero, three, six)


@njit(cache=True)
def _row_epilogue(row, scale, use_scale, shift, use_shift, activation, zero, three, six):
    """``epilogue_channels`` on each pixel of a row (OW, C), compiled on its own so the caller's
    ``contract`` flag does not fuse the epilogue's multiply and add."""
    for j in range(row.shape[0]):
        epilogue_channels(row[j], scale, use_scale, shift, use_shift, activation, zero, three, six)


def channels_last_conv_kind(in_channels, out_channels, groups, kernel, stride, padding):
    """Which channels-last kernel runs a conv: "depthwise" (one filter per channel, any kernel,
    stride, dilation and zero padding), "pointwise" (1x1, stride 1, no padding, one group), or
    None (the plan keeps NCHW). ``padding``: an int or a tuple of ints."""
    if groups == in_channels == out_channels:
        return "depthwise"
    if tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and groups == 1:
        return None if np.any(padding) else "pointwise"
    return None


def conv2d_bias_act_channels_last_prepared(w, g, affine, activation):
    """A conv of geometry ``g`` on channels-last inputs, prepared once: a function
    ``run(x) -> y`` for x (N, H, W, C_in) -> y (N, OH, OW, C_out), ``act(conv(x) * scale +
    shift)`` with ``(scale, shift) = affine()`` read on every call (either may be None), as
    ``fused.conv2d_bias_act_prepared`` does for NCHW. ``w`` is read on every call too (changes
    in place are seen)."""
    kind = channels_last_conv_kind(g.in_channels, g.out_channels, g.groups, g.kernel, g.stride,
                                   g.pads)  # fmt: skip
    if kind is None:
        raise ValueError(f"no channels-last kernel for a conv of geometry {g}")
    dtype = np.dtype(w.dtype)
    out_shape = (g.batch, *g.out_hw, g.out_channels)
    if kind == "depthwise":
        top, _, left, _ = g.pads

        def run_depthwise(x):
            y = np.empty(out_shape, dtype)
            _depthwise_channels_last(x, w, y, *g.stride, top, left, *g.dilation,
                                     *epilogue_arguments(dtype, *affine(), activation))  # fmt: skip
            return y

        return run_depthwise
    pixels = g.batch * g.out_hw[0] * g.out_hw[1]
    weights = w.reshape(1, g.out_channels, g.in_channels)  # a view: op(b) = w.T (C_in, C_out)
    tiles = tile_plan(1, pixels, g.out_channels, g.in_channels, planned_threads())
    gemm = blas_gemm(dtype)

    def run_pointwise(x):
        y = np.empty(out_shape, dtype)
        _tiled_gemm(gemm, x.reshape(pixels, g.in_channels), False, weights, True,
                    y.reshape(1, pixels, g.out_channels), tiles, True,
                    *epilogue_arguments(dtype, *affine(), activation))  # fmt: skip
        return y

    return run_pointwise


@njit(parallel=True, cache=True)
def _pixel_mean_kernel(x, y):
    """y[n, c] = mean_p x[n, p, c] for x (N, P, C), accumulated in float64 (the NCHW pool's
    ``_plane_mean_kernel`` accumulates each plane in float64 too); one image per step."""
    batch, pixels, channels = x.shape
    for n in prange(batch):
        total = np.zeros(channels)
        for p in range(pixels):
            row = x[n, p]
            for c in range(channels):
                total[c] += row[c]
        for c in range(channels):
            y[n, c] = total[c] / pixels


def global_avg_pool2d_channels_last(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C, 1, 1) means over each channel's plane (a 1 x 1 map is the same
    array in either layout)."""
    n, h, w, c = x.shape
    y = np.empty((n, c), x.dtype)
    _pixel_mean_kernel(x.reshape(n, h * w, c), y)
    return y.reshape(n, c, 1, 1)
