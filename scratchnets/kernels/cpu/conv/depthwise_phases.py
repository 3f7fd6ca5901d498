"""Depthwise convolution on larger planes: polyphase planes, one long contiguous multiply-add
per kernel tap (larger planes, other paddings).

Each input plane is copied once into zero-padded *polyphase* planes (``_Phases``: split by coordinate modulo the stride), after
which every kernel tap, at any stride and dilation, is one contiguous shifted multiply-add over
the whole output plane (kept on a grid of padded row length; the extra columns are scratch). The
planes of several images of the same channel (same weights) are stacked so that even 4x4 planes
give loops of ~1000 elements. Forward is parallel over (channel, run of images) units, three
taps per pass so the output is loaded and stored once per three taps. The backward pass is one
fused sweep, parallel over input channels c: it reads dy and x once per (n, c) and produces dx
(each tap adds ``w * dY`` at its shift, the adjoint) and the dw partial sums. dw reduces over
n, p and q; reducing over n inside the thread that owns channel c makes it race-free without
per-thread copies, and the sum is kept per grid position (``acc[m, tap, t]``) so the update is
element-wise (vectorisable without reassociating float additions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from scratchnets.reference.conv import ConvGeometry

from ._loops import _axpy, _axpy3, _copy, _deinterleave_pairs, _float32_pairs, _mul_add

#: aim for at least this many elements in one stacked phase plane (see ``_Phases``): enough for
#: LLVM's vectorised loop (8 lanes x 4 interleaved) to dominate its scalar remainder
_STACK_TARGET = 1024


@dataclass(frozen=True)
class _Phases:
    """Polyphase layout of zero-padded input planes, so that every tap is a unit-stride shift.

    A padded plane ``xp`` (Hp, Wp) is split by the remainders of its coordinates modulo the
    stride into ``sh*sw`` phase planes of (Hq, Wq) = (ceil(Hp/sh), ceil(Wp/sw)):
    ``phase[a*sw + b][u, v] = xp[u*sh + a, v*sw + b]``. The tap (i, j) reads
    ``xp[p*sh + i*dh, q*sw + j*dw] = phase[a*sw + b][p + di, q + dj]`` with
    ``(di, a) = divmod(i*dh, sh)`` and ``(dj, b) = divmod(j*dw, sw)``. So with the output kept
    on a grid of row length Wq (columns q >= OW are scratch), the tap is the flat shift
    ``out[t] += w[i, j] * phases[tap_offset[i*kw + j] + t]``: one long contiguous loop per tap,
    whatever the stride, padding or dilation. At stride 1 the one phase is the padded plane.

    The planes of ``images`` images of one channel (same weights) are stacked below each other,
    phase by phase: buffer layout (sh*sw, images, Hq, Wq); image k's output row p sits at grid
    row ``k*Hq + p``. Stacking makes the shifts long even for 4x4 planes (the rows between the
    images are scratch, like the columns q >= OW); without it a 4x4 plane gives loops of ~20
    elements that never reach the vectorised loop body.

    Input pixel (r, s) of column phase ``b = (s + left) % sw`` lands at flat offset
    ``row_dst[r] + col_dst[b] + (s - col_src[b]) // sw``; the tables are precomputed because
    integer divisions in the per-row loop were the main cost on 4x4 planes.
    """

    buffer: int  # sh*sw * images * Hq*Wq: the flat phase buffer
    plane: int  # Hq * Wq
    Wq: int
    images: int  # images stacked per buffer
    tap_offset: np.ndarray  # (kh*kw,) offsets into the flat buffer
    row_dst: np.ndarray  # (H,) offset of input row r
    col_src: np.ndarray  # (sw,) first input column of column phase b
    col_count: np.ndarray  # (sw,) number of input columns of column phase b
    col_dst: np.ndarray  # (sw,) offset of column phase b's first column

    @classmethod
    def of(cls, g: ConvGeometry) -> _Phases:
        (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
        (top, bottom, left, right), (Hp, Wp) = g.pads, g.padded_hw
        H, W = Hp - top - bottom, Wp - left - right
        Hq, Wq = -(-Hp // sh), -(-Wp // sw)
        runs = -(-g.batch // max(1, -(-_STACK_TARGET // (Hq * Wq))))  # runs of the batch
        images = -(-g.batch // runs)  # spread the batch evenly over the runs
        size = images * Hq * Wq  # one phase plane of the stack
        taps = [(i * dh, j * dw) for i in range(kh) for j in range(kw)]
        offsets = [(a % sh * sw + b % sw) * size + a // sh * Wq + b // sw for a, b in taps]
        rows = [(r + top) % sh * sw * size + (r + top) // sh * Wq for r in range(H)]
        first = [(b - left) % sw for b in range(sw)]  # first column s with (s + left) % sw == b
        count = [len(range(s0, W, sw)) for s0 in first]
        dst = [b * size + (s0 + left) // sw for b, s0 in enumerate(first)]
        tables = (np.array(v, dtype=np.int64) for v in (offsets, rows, first, count, dst))
        return cls(sh * sw * size, Hq * Wq, Wq, images, *tables)

    def args(self) -> tuple:
        """The layout arguments of the depthwise kernels, in their order."""
        return (self.buffer, self.plane, self.Wq, self.images, self.tap_offset) + self.pixel_map()

    def pixel_map(self) -> tuple:
        return (self.row_dst, self.col_src, self.col_count, self.col_dst)


@njit(cache=True, inline="always")
def _to_phases(xf, x0, W, row_dst, col_src, col_count, col_dst, ph, k0):
    """Copy the plane ``xf[x0 : x0 + H*W]`` (H, W) into the flat phase buffer ``ph``, stacked at
    offset ``k0`` within each phase plane. Padding positions are not written (they stay 0).
    At stride 2 on float32 rows of even length the even and odd columns are split in one
    vectorised pass over the row's pairs (``_deinterleave_pairs``).
    """
    sw = col_src.size
    if sw == 2 and x0 % 2 == 0 and _float32_pairs(xf, W):
        pairs, dst = xf.view(np.uint64), ph.view(np.uint32)
        even = 0 if col_src[0] == 0 else 1  # the phase of columns 0, 2, 4, ...
        for r in range(row_dst.size):
            row = k0 + row_dst[r]
            _deinterleave_pairs(pairs, (x0 + r * W) // 2, dst, row + col_dst[even],
                                row + col_dst[1 - even], W // 2)  # fmt: skip
        return
    for r in range(row_dst.size):
        for b in range(sw):
            _copy(
                xf, x0 + r * W + col_src[b], sw, ph, k0 + row_dst[r] + col_dst[b], 1, col_count[b]
            )


@njit(cache=True, inline="always")
def _from_phases(ph, k0, row_dst, col_src, col_count, col_dst, xf, x0, W):
    """Adjoint of ``_to_phases`` on the real pixels: ``xf[x0 + r*W + s] = phase value of (r, s)``."""
    sw = col_src.size
    for r in range(row_dst.size):
        for b in range(sw):
            _copy(
                ph, k0 + row_dst[r] + col_dst[b], 1, xf, x0 + r * W + col_src[b], sw, col_count[b]
            )


@njit(parallel=True, cache=True)
def _depthwise_forward_kernel(
    x,
    w,
    b,
    use_bias,
    y,
    buffer,
    plane,
    Wq,
    images,
    tap_offset,
    row_dst,
    col_src,
    col_count,
    col_dst,
    blocks,
):
    """y[n, o] = b[o] + sum_taps w[o, tap] * (shifted phase plane of x[n, o // M]).

    x (N, C, H, W), w (C*M, 1, kh, kw), b (C*M,) (ignored unless use_bias), y (N, C*M, OH, OW).
    The work units are (input channel c, run of ``images`` images), flattened; ``prange`` runs
    over ``blocks`` contiguous spans of units, and each span allocates and zeroes its scratch
    once (the padding positions of the phase planes are never written, so they stay 0).
    """
    N, C, H, W = x.shape
    C_out, OH, OW = y.shape[1], y.shape[2], y.shape[3]
    M, taps = C_out // C, tap_offset.size
    xf, yf, w2 = x.reshape(-1), y.reshape(-1), w.reshape(C_out, taps)
    runs = (N + images - 1) // images
    units = C * runs
    for blk in prange(blocks):
        ph = np.zeros(buffer, dtype=x.dtype)  # X of one unit (padding positions stay 0)
        out = np.empty(images * plane, dtype=x.dtype)  # the unit's stacked output grid
        for unit in range(blk * units // blocks, (blk + 1) * units // blocks):
            c, n0 = unit // runs, (unit % runs) * images
            nb = min(images, N - n0)
            L = (nb - 1) * plane + (OH - 1) * Wq + OW  # used length of the output grid
            for k in range(nb):
                x0 = ((n0 + k) * C + c) * H * W
                _to_phases(xf, x0, W, row_dst, col_src, col_count, col_dst, ph, k * plane)
            for m in range(M):
                o = c * M + m
                a = w2[o]  # (taps,)
                out[:L] = b[o] if use_bias else 0.0
                t = 0
                while t + 3 <= taps:  # taps three at a time, then the rest one by one
                    i0, i1, i2 = tap_offset[t], tap_offset[t + 1], tap_offset[t + 2]
                    _axpy3(a[t], a[t + 1], a[t + 2], ph, i0, i1, i2, out, L)
                    t += 3
                for rest in range(t, taps):
                    _axpy(a[rest], ph, tap_offset[rest], out, 0, L)
                for k in range(nb):  # keep rows p < OH and columns q < OW of each image
                    y0 = ((n0 + k) * C_out + o) * OH * OW
                    for p in range(OH):
                        _copy(out, k * plane + p * Wq, 1, yf, y0 + p * OW, 1, OW)


@njit(parallel=True, cache=True)
def _depthwise_backward_kernel(
    x, w, dy, dx, dwt, buffer, plane, Wq, images, tap_offset, row_dst, col_src, col_count, col_dst
):
    """Fused dx and dw of the depthwise conv, parallel over input channels c.

    With dY the planes dy[n, o] on the stacked output grid (scratch positions zero) and X the
    phase planes of x[n, c], for every tap::

        dX[tap_offset + t] += w[o, tap] * dY[t]         (then dx[n, c] = real pixels of dX)
        dw[o, tap]         += sum_t dY[t] * X[tap_offset + t]

    The dw sum is kept per grid position (``acc[m, tap, t]``, summed at the end), so the update
    is element-wise and vectorises without reassociating float additions. The thread that owns
    channel c owns dx[:, c] and dw[c*M : (c+1)*M]: no races and no partial copies.
    """
    N, C, H, W = x.shape
    C_out, OH, OW = dy.shape[1], dy.shape[2], dy.shape[3]
    M, taps = C_out // C, tap_offset.size
    xf, dyf, dxf = x.reshape(-1), dy.reshape(-1), dx.reshape(-1)
    w2, dw2 = w.reshape(C_out, taps), dwt.reshape(C_out, taps)
    for c in prange(C):
        ph = np.zeros(buffer, dtype=x.dtype)  # X (padding stays 0)
        dph = np.empty(buffer, dtype=x.dtype)  # dX
        grid = np.zeros(images * plane, dtype=x.dtype)  # dY (scratch positions stay 0)
        acc = np.zeros((M, taps, images * plane), dtype=x.dtype)
        for n0 in range(0, N, images):
            nb = min(images, N - n0)
            L = (nb - 1) * plane + (OH - 1) * Wq + OW
            for k in range(nb):
                x0 = ((n0 + k) * C + c) * H * W
                _to_phases(xf, x0, W, row_dst, col_src, col_count, col_dst, ph, k * plane)
            dph[:] = 0.0
            for m in range(M):
                o = c * M + m
                for k in range(nb):
                    y0 = ((n0 + k) * C_out + o) * OH * OW
                    for p in range(OH):
                        _copy(dyf, y0 + p * OW, 1, grid, k * plane + p * Wq, 1, OW)
                for t in range(taps):
                    _axpy(w2[o, t], grid, 0, dph, tap_offset[t], L)
                    _mul_add(grid, 0, ph, tap_offset[t], acc[m, t], 0, L)
            for k in range(nb):
                x0 = ((n0 + k) * C + c) * H * W
                _from_phases(dph, k * plane, row_dst, col_src, col_count, col_dst, dxf, x0, W)
        for m in range(M):
            for t in range(taps):
                dw2[c * M + m, t] = acc[m, t].sum()
