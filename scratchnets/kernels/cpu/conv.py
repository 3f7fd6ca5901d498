"""2-D convolution on the CPU (Numba + BLAS), forward and backward; like ``F.conv2d``.

Same equation, arguments, validation and results as ``scratchnets.reference.conv`` (read that
file for the math). Three implementations, chosen per call by ``conv_kind``:

**depthwise** (``groups == C_in``, any channel multiplier M, any kernel/stride/padding/dilation).
Only kh*kw multiply-adds per output, so the cost is loop overhead and memory traffic, and the
aim is long unit-stride inner loops that LLVM vectorises. Each input plane is copied once into
zero-padded *polyphase* planes (``_Phases``: split by coordinate modulo the stride), after which
every kernel tap, at any stride and dilation, is one contiguous shifted multiply-add over the
whole output plane (kept on a grid of padded row length; the extra columns are scratch). The
planes of several images of the same channel (same weights) are stacked so that even 4x4 planes
give loops of ~1000 elements. Forward is parallel over (channel, run of images) units, three
taps per pass so the output is loaded and stored once per three taps. The backward pass is one
fused sweep, parallel over input channels c: it reads dy and x once per (n, c) and produces dx
(each tap adds ``w * dY`` at its shift, the adjoint) and the dw partial sums. dw reduces over
n, p and q; reducing over n inside the thread that owns channel c makes it race-free without
per-thread copies, and the sum is kept per grid position (``acc[m, tap, t]``) so the update is
element-wise (vectorisable without reassociating float additions).

**pointwise** (1x1 kernel, groups 1, no padding). A 1x1 conv of one image is the matrix product
``y[n] (C_out, HW) = W (C_out, C_in) @ x[n] (C_in, HW)`` on the NCHW memory as it lies, so it goes
to BLAS (``np.matmul``) with no copy: forward and dx are one broadcast batched GEMM each. dw is a
sum over the batch: N GEMMs plus a sum on the arrays as they lie, except for planes of <= 64
pixels (8x8), where one GEMM over (C, N*HW) transposed copies of dy and x measured faster
(N GEMMs of inner size 16 are too small for BLAS; bench/NOTES.md). A strided 1x1 conv reads every sh-th row and sw-th column: subsample x once
(a copy), then GEMM; dx is zero except on that subgrid.

**general** (any other: the 3x3 stem at stride 2, dense 3x3 VGG layers, grouped, 1xk/kx1 dense,
padded 1x1). im2col + GEMM: a Numba pass, parallel over (n, c) planes, unfolds a chunk of the
batch into ``cols (nb, G*K, OH*OW)`` with ``K = Cg*kh*kw`` (rows in the (c, i, j) order of a row
of ``w.reshape(C_out, -1)``, columns in NCHW pixel order), then per group BLAS computes
``y[n, group] = W_g (Mg, K) @ cols[n, group] (K, OH*OW)`` straight into the NCHW output. Chunks
bound the im2col buffer (``_COLS_BUDGET`` elements) so a VGG layer at 128x128 does not need
gigabytes. Backward recomputes the columns from x (nothing large is cached), gets
``dW_g = sum_n dY_g[n] @ cols_g[n].T`` and ``dcols = W_g.T @ dY_g`` by BLAS, and col2im (the
adjoint scatter-add, parallel over (n, c), so each dx plane has one writer) folds dcols into dx.
The GEMMs have K = C_in*kh*kw >= 27 and OH*OW >= 16, where BLAS is efficient; a direct Numba
loop kernel was not built (see bench/NOTES.md for the measured times against torch).

Thread policy (``_threads``): jitted kernels never call BLAS and BLAS is never called inside a
``prange`` region, so numba's pool and the BLAS pool take turns, each with every core.

Compiled signatures: every jitted kernel sees only C-contiguous float32 or float64 arrays (the
wrappers normalise with ``np.ascontiguousarray``) and int64 scalars, so each compiles at most
twice, and ``cache=True`` keeps the machine code on disk across runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import get_num_threads, njit, prange, uint64

from scratchnets.reference.conv import ConvGeometry, _check_dy, _prepare

from ._threads import apply_policy

apply_policy()

#: pointwise dw: planes of at most this many pixels use one GEMM over the whole batch (after
#: transposing copies), larger ones a GEMM per image; measured crossover, bench/NOTES.md
_GEMM_OVER_BATCH_MAX_HW = 64

#: largest im2col buffer (elements) for one chunk of the batch in the general path; 4M float32
#: is 16 MiB: big enough that the per-chunk GEMMs stay efficient, small enough for L3-sized
#: machines not to thrash and for big layers not to need gigabytes.
_COLS_BUDGET = 4 * 1024 * 1024


@dataclass(frozen=True)
class CpuConvCache:
    """What ``conv2d_backward`` needs: the geometry, the weights, the input, which kernel ran.

    ``saved`` is the input as the kernel used it: C-contiguous x (depthwise, general), or the
    subsampled ``x[:, :, ::sh, ::sw]`` (pointwise). Attribute names follow the reference cache
    so the reference's ``dy`` check applies unchanged.
    """

    geometry: ConvGeometry
    saved: np.ndarray
    w: np.ndarray
    has_bias: bool
    kind: str


def conv_kind(g: ConvGeometry) -> str:
    """Which implementation runs: "depthwise", "pointwise" or "general" (see the module doc)."""
    if g.groups == g.in_channels:
        return "depthwise"
    if g.kernel == (1, 1) and g.groups == 1 and not any(g.pads):
        return "pointwise"
    return "general"


# ---------------------------------------------------------------------------------------------
# inner loops shared by the kernels
# ---------------------------------------------------------------------------------------------
# Indices are cast to uint64: numba wraps negative indices (a[-1] is the last element), and that
# per-access check stops LLVM from vectorising a loop; an unsigned index cannot be negative.


@njit(cache=True, inline="always")
def _axpy(a, x, xi, y, yi, n):
    """y[yi : yi + n] += a * x[xi : xi + n] on flat arrays."""
    for k in range(n):
        y[uint64(yi + k)] += a * x[uint64(xi + k)]


@njit(cache=True, inline="always")
def _axpy3(a0, a1, a2, x, i0, i1, i2, y, n):
    """y[:n] += a0 * x[i0 : i0 + n] + a1 * x[i1 : i1 + n] + a2 * x[i2 : i2 + n].

    Three kernel taps in one pass: y is loaded and stored once instead of three times.
    """
    for k in range(n):
        y[uint64(k)] += a0 * x[uint64(i0 + k)] + a1 * x[uint64(i1 + k)] + a2 * x[uint64(i2 + k)]


@njit(cache=True, inline="always")
def _mul_add(a, ai, b, bi, y, yi, n):
    """y[yi : yi + n] += a[ai : ai + n] * b[bi : bi + n] on flat arrays."""
    for k in range(n):
        y[uint64(yi + k)] += a[uint64(ai + k)] * b[uint64(bi + k)]


@njit(cache=True, inline="always")
def _copy(src, si, s_step, dst, di, d_step, n):
    """dst[di + k*d_step] = src[si + k*s_step] for k < n (unit steps get their own loop so it vectorises)."""
    if s_step == 1 and d_step == 1:
        for k in range(n):
            dst[uint64(di + k)] = src[uint64(si + k)]
    else:
        for k in range(n):
            dst[uint64(di + k * d_step)] = src[uint64(si + k * s_step)]


@njit(cache=True, inline="always")
def _add_to(src, si, s_step, dst, di, d_step, n):
    """dst[di + k*d_step] += src[si + k*s_step] for k < n."""
    if s_step == 1 and d_step == 1:
        for k in range(n):
            dst[uint64(di + k)] += src[uint64(si + k)]
    else:
        for k in range(n):
            dst[uint64(di + k * d_step)] += src[uint64(si + k * s_step)]


@njit(cache=True, inline="always")
def _valid_range(n_out, offset, stride, size):
    """Output indices ``[lo, hi)`` whose input index ``k * stride + offset`` lies in ``[0, size)``.

    Used per kernel tap: ``offset = i * dilation - pad_before``. Indices outside the range read
    the zero padding and are skipped.
    """
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = size - 1 - offset  # k * stride <= last
    hi = last // stride + 1 if last >= 0 else 0
    hi = min(hi, n_out)
    return min(lo, hi), hi


# ---------------------------------------------------------------------------------------------
# depthwise: polyphase planes, one long contiguous multiply-add per kernel tap
# ---------------------------------------------------------------------------------------------


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
    """
    sw = col_src.size
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


def _depthwise_forward(x, w, b, g: ConvGeometry) -> np.ndarray:
    y = np.empty((g.batch, g.out_channels, *g.out_hw), dtype=x.dtype)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    phases = _Phases.of(g)
    units = g.in_channels * -(-g.batch // phases.images)
    blocks = min(units, 4 * get_num_threads())  # a few spans per thread
    _depthwise_forward_kernel(x, w, bias, b is not None, y, *phases.args(), blocks)
    return y


def _depthwise_backward(dy, x, w, g: ConvGeometry):
    dx, dwt = np.empty_like(x), np.empty_like(w)
    _depthwise_backward_kernel(x, w, dy, dx, dwt, *_Phases.of(g).args())
    return dx, dwt


# ---------------------------------------------------------------------------------------------
# pointwise (1x1) as BLAS GEMMs
# ---------------------------------------------------------------------------------------------


def _pointwise_input(x, g: ConvGeometry) -> np.ndarray:
    """x (N, C_in, H, W) -> (N, C_in, OH*OW): the pixels a strided 1x1 conv reads (a view at stride 1)."""
    sh, sw = g.stride
    if (sh, sw) != (1, 1):
        x = np.ascontiguousarray(x[:, :, ::sh, ::sw])  # (N, C_in, OH, OW)
    return x.reshape(g.batch, g.in_channels, -1)


def _pointwise_forward(xs, w, g: ConvGeometry) -> np.ndarray:
    w2 = w.reshape(g.out_channels, g.in_channels)  # (C_out, C_in)
    y = np.matmul(w2, xs)  # (C_out, C_in) @ (N, C_in, HW) -> (N, C_out, HW)
    return y.reshape(g.batch, g.out_channels, *g.out_hw)


def _pointwise_backward(dy, xs, w, g: ConvGeometry):
    C_out, C_in = g.out_channels, g.in_channels
    w2 = w.reshape(C_out, C_in)
    dy3 = dy.reshape(g.batch, C_out, -1)  # (N, C_out, HW)
    dxs = np.matmul(w2.T, dy3)  # (C_in, C_out) @ (N, C_out, HW) -> (N, C_in, HW)
    if dy3.shape[2] > _GEMM_OVER_BATCH_MAX_HW:
        # dw = sum_n dy[n] (C_out, HW) @ x[n].T (HW, C_in): N GEMMs on the arrays as they lie
        dw = np.matmul(dy3, xs.transpose(0, 2, 1)).sum(axis=0)  # (N, C_out, C_in) -> (C_out, C_in)
    else:
        # small planes: N GEMMs of inner size HW are too small for BLAS to be efficient, so
        # transpose dy and x to (C, N*HW) (two copies) and do one GEMM of inner size N*HW
        dy_rows = dy3.transpose(1, 0, 2).reshape(C_out, -1)  # (C_out, N*HW)
        x_rows = xs.transpose(1, 0, 2).reshape(C_in, -1)  # (C_in, N*HW)
        dw = dy_rows @ x_rows.T  # (C_out, C_in)
    dw = dw.reshape(w.shape)
    sh, sw = g.stride
    if (sh, sw) == (1, 1):
        return dxs.reshape(g.batch, C_in, *g.out_hw), dw
    dx = np.zeros((g.batch, C_in, g.padded_hw[0], g.padded_hw[1]), dtype=dy.dtype)
    dx[:, :, ::sh, ::sw] = dxs.reshape(g.batch, C_in, *g.out_hw)  # only the read pixels
    return dx, dw


# ---------------------------------------------------------------------------------------------
# general: im2col + GEMM
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _im2col_kernel(x, n0, cols, kh, kw, sh, sw, dh, dw, top, left, OH, OW):
    """cols[b, (c*kh + i)*kw + j, p*OW + q] = x[n0 + b, c, p*sh + i*dh - top, q*sw + j*dw - left]
    (0 where that reads the padding). x (N, C, H, W); cols (nb, C*kh*kw, OH*OW).
    """
    _, C, H, W = x.shape
    nb = cols.shape[0]
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
                    xrow = xs[r]
                    out[:q_lo] = 0.0
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


def _general_forward(x, w, g: ConvGeometry) -> np.ndarray:
    G, Mg = g.groups, g.out_per_group
    K = g.in_per_group * g.kernel[0] * g.kernel[1]
    y = np.empty((g.batch, g.out_channels, g.out_hw[0] * g.out_hw[1]), dtype=x.dtype)
    w3 = w.reshape(G, Mg, K)  # (G, Mg, Cg*kh*kw), rows in the (c, i, j) order of cols
    buffer = None
    for n0, n1 in _chunks(g):
        cols = buffer = _im2col(x, n0, n1, g, buffer)  # (nb, G*K, OH*OW)
        for grp in range(G):
            # (Mg, K) @ (nb, K, OH*OW) -> (nb, Mg, OH*OW), written into y's channels of the group
            np.matmul(
                w3[grp], cols[:, grp * K : (grp + 1) * K], out=y[n0:n1, grp * Mg : (grp + 1) * Mg]
            )
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
            dw3[grp] += np.matmul(dy_g, cols_g.transpose(0, 2, 1)).sum(axis=0)
            # dcols_g[b] = W_g.T (K, Mg) @ dY_g[b] (Mg, OH*OW)
            np.matmul(w3[grp].T, dy_g, out=dcols[:, grp * K : (grp + 1) * K])
        _col2im_kernel(dcols, n0, dx, kh, kw, sh, sw, dh, dw, top, left, OH, OW)
    return dx, dw3.reshape(w.shape)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y = conv2d(x, w, b); like ``F.conv2d`` and ``scratchnets.reference.conv2d_forward``.

    Shapes: ``x`` (N, C_in, H, W), ``w`` (C_out, C_in/groups, kh, kw), ``b`` (C_out,) or None ->
    ``y`` (N, C_out, OH, OW), ``OH = floor((H + top + bottom - dh*(kh-1) - 1) / sh) + 1``.
    ``stride``/``dilation``: int or (h, w); ``padding``: int, (ph, pw) or (top, bottom, left,
    right). float32 or float64 (x, w, b of one dtype). Returns ``(y, cache)``.
    """
    x, w, b, g = _prepare(x, w, b, stride, padding, dilation, groups)  # the reference's checks
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    b = None if b is None else np.ascontiguousarray(b)
    kind = conv_kind(g)
    if kind == "depthwise":
        y = _depthwise_forward(x, w, b, g)  # bias added in the kernel
        return y, CpuConvCache(g, x, w, b is not None, kind)
    if kind == "pointwise":
        saved = _pointwise_input(x, g)  # (N, C_in, OH*OW)
        y = _pointwise_forward(saved, w, g)
    else:
        saved, y = x, _general_forward(x, w, g)
    if b is not None:
        y += b[None, :, None, None]  # (C_out,) broadcast over n, p, q
    return y, CpuConvCache(g, saved, w, b is not None, kind)


def conv2d_backward(dy, cache: CpuConvCache):
    """Gradients of ``conv2d_forward``: ``(dx, dw, db or None)`` shaped like x, w, b.

    dx is the transposed convolution of dy with w, dw the correlation of x with dy, and
    ``db[o] = sum_{n,p,q} dy[n, o, p, q]`` (see ``scratchnets.reference.conv``).
    """
    dy = np.ascontiguousarray(_check_dy(dy, cache))  # shape and dtype checked as in the reference
    g, saved, w = cache.geometry, cache.saved, cache.w
    if cache.kind == "depthwise":
        dx, dw = _depthwise_backward(dy, saved, w, g)
    elif cache.kind == "pointwise":
        dx, dw = _pointwise_backward(dy, saved, w, g)
    else:
        dx, dw = _general_backward(dy, saved, w, g)
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None  # (C_out,)
    return dx, dw, db
