"""The general convolution (every other: the 3x3 stem at stride 2, dense 3x3 VGG layers, grouped,
1xk/kx1 dense, padded 1x1): im2col + GEMM.

A Numba pass, parallel over (n, c) planes, unfolds a chunk of the
batch into ``cols (nb, G*K, OH*OW)`` with ``K = Cg*kh*kw`` (rows in the (c, i, j) order of a row
of ``w.reshape(C_out, -1)``, columns in NCHW pixel order), then per group BLAS computes
``y[n, group] = W_g (Mg, K) @ cols[n, group] (K, OH*OW)`` straight into the NCHW output. Chunks
bound the im2col buffer (``_COLS_BUDGET`` elements) so a VGG layer at 128x128 does not need
gigabytes. Backward recomputes the columns from x (nothing large is cached), gets
``dW_g = sum_n dY_g[n] @ cols_g[n].T`` and ``dcols = W_g.T @ dY_g`` by BLAS, and col2im (the
adjoint scatter-add, parallel over (n, c), so each dx plane has one writer) folds dcols into dx.
The GEMMs have K = C_in*kh*kw >= 27 and OH*OW >= 16, where BLAS is efficient; a direct Numba
loop kernel was not built (see bench/NOTES.md for the measured times against torch).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from scratchnets.reference.conv import ConvGeometry

from ..gemm import matmul, sum_of_matmuls, tiled_matmul
from ._loops import _float32_pairs, _pair_halves, _valid_range

#: largest im2col buffer (elements) for one chunk of the batch in the general path; 4M float32
#: is 16 MiB: big enough that the per-chunk GEMMs stay efficient, small enough for L3-sized
#: machines not to thrash and for big layers not to need gigabytes.
_COLS_BUDGET = 4 * 1024 * 1024


@njit(parallel=True, cache=True)
def _im2col_kernel(x, n0, cols, kh, kw, sh, sw, dh, dw, top, left, OH, OW):
    """cols[b, (c*kh + i)*kw + j, p*OW + q] = x[n0 + b, c, p*sh + i*dh - top, q*sw + j*dw - left]
    (0 where that reads the padding). x (N, C, H, W); cols (nb, C*kh*kw, OH*OW).
    """
    _, C, H, W = x.shape
    nb = cols.shape[0]
    xf, colsf = x.reshape(-1), cols.reshape(-1)
    # stride 2 on float32 rows of even length: every other column read as halves of uint64 pairs
    use_pairs = sw == 2 and _float32_pairs(xf, W)
    pairs = xf.view(np.uint64) if use_pairs else xf[:0].view(np.uint64)  # (empty: not read)
    words = colsf.view(np.uint32) if use_pairs else colsf[:0].view(np.uint32)
    for bc in prange(nb * C):  # one input plane per iteration
        b, c = bc // C, bc % C
        xs = x[n0 + b, c]
        for i in range(kh):
            for j in range(kw):
                row = cols[b, (c * kh + i) * kw + j]  # (OH*OW,)
                q_lo, q_hi = _valid_range(OW, j * dw - left, sw, W)
                s0 = q_lo * sw + j * dw - left
                for p in range(OH):
                    out = row[p * OW : (p + 1) * OW]
                    r = p * sh + i * dh - top
                    if r < 0 or r >= H:
                        out[:] = 0.0
                        continue
                    out[:q_lo] = 0.0
                    if use_pairs:
                        first = (((n0 + b) * C + c) * H + r) * W + s0  # in xf
                        done = ((b * C * kh + c * kh + i) * kw + j) * OH * OW + p * OW + q_lo
                        _pair_halves(pairs, first // 2, 32 * (first % 2), words, done,
                                     q_hi - q_lo)  # fmt: skip
                    else:
                        xrow = xs[r]
                        for k in range(q_hi - q_lo):
                            out[q_lo + k] = xrow[s0 + k * sw]
                    out[q_hi:] = 0.0


@njit(parallel=True, cache=True)
def _col2im_kernel(dcols, n0, dx, kh, kw, sh, sw, dh, dw, top, left, OH, OW):
    """Adjoint of ``_im2col_kernel``: dx[n0 + b, c, r, s] = sum of the dcols entries copied from it.

    dx (N, C, H, W) is overwritten for the chunk's images; dcols (nb, C*kh*kw, OH*OW).
    """
    _, C, H, W = dx.shape
    nb = dcols.shape[0]
    for bc in prange(nb * C):  # each dx plane has exactly one writer
        b, c = bc // C, bc % C
        dxs = dx[n0 + b, c]
        dxs[:, :] = 0.0
        for i in range(kh):
            for j in range(kw):
                row = dcols[b, (c * kh + i) * kw + j]
                q_lo, q_hi = _valid_range(OW, j * dw - left, sw, W)
                s0 = q_lo * sw + j * dw - left
                for p in range(OH):
                    r = p * sh + i * dh - top
                    if r < 0 or r >= H:
                        continue  # gradient of the padding is dropped
                    dxrow = dxs[r]
                    base = p * OW + q_lo
                    for k in range(q_hi - q_lo):
                        dxrow[s0 + k * sw] += row[base + k]


def _chunks(g: ConvGeometry):
    """Batch ranges ``(n0, n1)`` whose im2col buffer fits in ``_COLS_BUDGET`` elements."""
    kh, kw = g.kernel
    per_image = g.in_channels * kh * kw * g.out_hw[0] * g.out_hw[1]
    step = max(1, min(g.batch, _COLS_BUDGET // max(per_image, 1)))
    return [(n0, min(n0 + step, g.batch)) for n0 in range(0, g.batch, step)]


def _im2col(x, n0, n1, g: ConvGeometry, out=None) -> np.ndarray:
    """cols (n1 - n0, C_in*kh*kw, OH*OW) of images n0..n1-1 (written into ``out`` if given)."""
    (kh, kw), (sh, sw), (dh, dw), (top, _, left, _) = g.kernel, g.stride, g.dilation, g.pads
    OH, OW = g.out_hw
    shape = (n1 - n0, g.in_channels * kh * kw, OH * OW)
    cols = np.empty(shape, dtype=x.dtype) if out is None else out[: n1 - n0]
    _im2col_kernel(x, n0, cols, kh, kw, sh, sw, dh, dw, top, left, OH, OW)
    return cols


def _general_forward(x, w, g: ConvGeometry, scale=None, shift=None, activation=None):
    """y = conv(x, w) (N, C_out, OH, OW); with ``scale`` / ``shift`` (C_out,) / ``activation``
    the inference epilogue ``act(y * scale + shift)`` on each GEMM tile (``tiled_matmul``)."""
    G, Mg = g.groups, g.out_per_group
    K = g.in_per_group * g.kernel[0] * g.kernel[1]
    y = np.empty((g.batch, g.out_channels, g.out_hw[0] * g.out_hw[1]), dtype=x.dtype)
    w3 = w.reshape(G, Mg, K)  # (G, Mg, Cg*kh*kw), rows in the (c, i, j) order of cols
    buffer = None
    for n0, n1 in _chunks(g):
        cols = buffer = _im2col(x, n0, n1, g, buffer)  # (nb, G*K, OH*OW)
        for grp in range(G):
            # (Mg, K) @ (nb, K, OH*OW) -> (nb, Mg, OH*OW), written into y's channels of the group
            channels = slice(grp * Mg, (grp + 1) * Mg)
            tiled_matmul(w3[grp], cols[:, grp * K : (grp + 1) * K], y[n0:n1, channels],
                         None if scale is None else scale[channels],
                         None if shift is None else shift[channels], activation)  # fmt: skip
    return y.reshape(g.batch, g.out_channels, *g.out_hw)


def _general_backward(dy, x, w, g: ConvGeometry):
    G, Mg = g.groups, g.out_per_group
    (kh, kw), (sh, sw), (dh, dw), (top, _, left, _) = g.kernel, g.stride, g.dilation, g.pads
    OH, OW = g.out_hw
    K = g.in_per_group * kh * kw
    w3 = w.reshape(G, Mg, K)
    dy3 = dy.reshape(g.batch, g.out_channels, OH * OW)
    dx = np.empty_like(x)
    dw3 = np.zeros((G, Mg, K), dtype=x.dtype)
    cols = dcols = None
    for n0, n1 in _chunks(g):
        cols = _im2col(x, n0, n1, g, cols)  # recomputed: cheaper than caching N*K*OH*OW values
        dcols = np.empty_like(cols) if dcols is None else dcols[: n1 - n0]
        for grp in range(G):
            dy_g = dy3[n0:n1, grp * Mg : (grp + 1) * Mg]  # (nb, Mg, OH*OW)
            cols_g = cols[:, grp * K : (grp + 1) * K]  # (nb, K, OH*OW)
            # dW_g += sum_b dY_g[b] (Mg, OH*OW) @ cols_g[b].T (OH*OW, K)
            dw3[grp] += sum_of_matmuls(dy_g, cols_g.transpose(0, 2, 1))
            # dcols_g[b] = W_g.T (K, Mg) @ dY_g[b] (Mg, OH*OW)
            matmul(w3[grp].T, dy_g, out=dcols[:, grp * K : (grp + 1) * K])
        _col2im_kernel(dcols, n0, dx, kh, kw, sh, sw, dh, dw, top, left, OH, OW)
    return dx, dw3.reshape(w.shape)
