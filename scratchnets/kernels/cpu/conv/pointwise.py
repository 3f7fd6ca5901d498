"""Pointwise convolution (1x1 kernel, groups 1, no padding) as BLAS GEMMs.

A 1x1 conv of one image is the matrix product
``y[n] (C_out, HW) = W (C_out, C_in) @ x[n] (C_in, HW)`` on the NCHW memory as it lies, so it goes
to BLAS (``np.matmul``) with no copy: forward and dx are one broadcast batched GEMM each. dw is a
sum over the batch: N GEMMs plus a sum on the arrays as they lie, except for planes of <= 64
pixels (8x8), where one GEMM over (C, N*HW) transposed copies of dy and x measured faster
(N GEMMs of inner size 16 are too small for BLAS; bench/NOTES.md). A strided 1x1 conv reads
every sh-th row and sw-th column: subsample x once (a copy), then GEMM; dx is zero except on
that subgrid.
"""

from __future__ import annotations

import numpy as np

from scratchnets.reference.conv import ConvGeometry

from ..gemm import matmul, sum_of_matmuls

#: pointwise dw: planes of at most this many pixels use one GEMM over the whole batch (after
#: transposing copies), larger ones a GEMM per image; measured crossover, bench/NOTES.md
_GEMM_OVER_BATCH_MAX_HW = 64


def _pointwise_input(x, g: ConvGeometry) -> np.ndarray:
    """x (N, C_in, H, W) -> (N, C_in, OH*OW): the pixels a strided 1x1 conv reads (a view at stride 1)."""
    sh, sw = g.stride
    if (sh, sw) != (1, 1):
        x = np.ascontiguousarray(x[:, :, ::sh, ::sw])  # (N, C_in, OH, OW)
    return x.reshape(g.batch, g.in_channels, -1)


def _pointwise_forward(xs, w, g: ConvGeometry) -> np.ndarray:
    w2 = w.reshape(g.out_channels, g.in_channels)  # (C_out, C_in)
    y = np.empty((g.batch, g.out_channels, xs.shape[2]), dtype=xs.dtype)
    matmul(w2, xs, out=y)  # (C_out, C_in) @ (N, C_in, HW) -> (N, C_out, HW)
    return y.reshape(g.batch, g.out_channels, *g.out_hw)


def _pointwise_backward(dy, xs, w, g: ConvGeometry):
    C_out, C_in = g.out_channels, g.in_channels
    w2 = w.reshape(C_out, C_in)
    dy3 = dy.reshape(g.batch, C_out, -1)  # (N, C_out, HW)
    dxs = np.empty((g.batch, C_in, dy3.shape[2]), dtype=dy.dtype)
    matmul(w2.T, dy3, out=dxs)  # (C_in, C_out) @ (N, C_out, HW) -> (N, C_in, HW)
    if dy3.shape[2] > _GEMM_OVER_BATCH_MAX_HW:
        # dw = sum_n dy[n] (C_out, HW) @ x[n].T (HW, C_in): N GEMMs on the arrays as they lie
        dw = sum_of_matmuls(dy3, xs.transpose(0, 2, 1))  # (C_out, C_in)
    else:
        # small planes: N GEMMs of inner size HW are too small for BLAS to be efficient, so
        # transpose dy and x to (C, N*HW) (two copies) and do one GEMM of inner size N*HW
        dy_rows = dy3.transpose(1, 0, 2).reshape(C_out, -1)  # (C_out, N*HW)
        x_rows = xs.transpose(1, 0, 2).reshape(C_in, -1)  # (C_in, N*HW)
        dw = matmul(dy_rows, x_rows.T, out=np.empty((C_out, C_in), dtype=dy.dtype))
    dw = dw.reshape(w.shape)
    sh, sw = g.stride
    if (sh, sw) == (1, 1):
        return dxs.reshape(g.batch, C_in, *g.out_hw), dw
    dx = np.zeros((g.batch, C_in, g.padded_hw[0], g.padded_hw[1]), dtype=dy.dtype)
    dx[:, :, ::sh, ::sw] = dxs.reshape(g.batch, C_in, *g.out_hw)  # only the read pixels
    return dx, dw
