"""2-D convolution on the CPU (Numba + BLAS), forward and backward; like ``F.conv2d``.

Same equation, arguments, validation and results as ``scratchnets.reference.conv`` (read that
file for the math). Three implementations, chosen per call by ``conv_kind``:

**depthwise** (``groups == C_in``, any channel multiplier M, any kernel/stride/padding/dilation).
Only kh*kw multiply-adds per output, so the cost is loop overhead and memory traffic, and the
aim is long unit-stride inner loops that LLVM vectorises. Two kernels, chosen by
``_flat_applies`` (thresholds measured, bench/NOTES.md):

*"Same"-style padding: flat shifts with masked weights* (output planes up to 64x64 at stride 1,
up to 16x16 at stride 2: every MobileNetV2 layer at 128 px). On a 4x4 or 8x8 plane any per-row
or per-plane work (copies into padded planes, loop set-up) costs more than the few
multiply-adds it serves; torch/oneDNN avoids it by putting channels in the SIMD lanes, which in
Numba costs two transposes per tensor (measured: more than the whole kernel). Instead the NCHW
memory is used as it lies: over a block of consecutive planes of one image, tap (i, j) is
``y[k] += wm[tap, k] * x[k + shift]`` for one flat shift (``_Flat``), where wm is the weight of
k's channel times a 0/1 mask that zeroes the outputs whose read falls in the padding or across
a row, plane or image edge. One contiguous loop of ~512 elements per tap (three taps and two
images per pass), no copies, no per-row work; the masked weights are built once per block and
reused for the whole batch. At stride s the taps read phase planes (x split by coordinates
modulo s, one copy: ``_split_phases_kernel``), which are output-sized when the padding is
"same"-style, so every tap is a flat shift again; M > 1 repeats the input planes in that copy.
Backward: dx as a gather (phase-plane position j is read by output ``j + back[tap]``), and dw
from the same pass (dy read once for both) into per-element accumulators ``acc[tap, j]`` over
the batch, masked and summed per plane at the end. Parallel over channel blocks: each thread
owns its blocks' dx, dw and accumulators, so there are no races and the sums run in a fixed
order.

*Otherwise (larger planes, other paddings): polyphase planes.* Each input plane is copied once
into zero-padded *polyphase* planes (``_Phases``: split by coordinate modulo the stride), after
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
from functools import lru_cache

import numpy as np
from numba import get_num_threads, njit, prange, uint64

from scratchnets.reference.checks import check_dy
from scratchnets.reference.conv import ConvGeometry, prepare_conv

from ._threads import apply_policy, matmul, sum_of_matmuls

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

    ``saved`` is the input as the kernel used it: C-contiguous x (depthwise, general), the
    phase planes of x (flat depthwise kernels with a copy, ``_Flat``), or the subsampled
    ``x[:, :, ::sh, ::sw]`` (pointwise). Attribute names follow the reference cache
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
def _mul_add3(a, a0, a1, a2, x, i0, i1, i2, y, yi, n, x_step, y_step, images):
    """y[yi : yi + n] += a[a0 : a0 + n] * x[i0 : i0 + n] + (same for a1, i1) + (same for a2, i2).

    Three kernel taps in one pass, with per-element weights. With ``images == 2`` the same also
    for the next image (x and y offsets further by x_step and y_step), the weights loaded once
    for both.
    """
    if images == 2:
        for k in range(n):
            w0, w1, w2 = a[uint64(a0 + k)], a[uint64(a1 + k)], a[uint64(a2 + k)]
            i, j = uint64(yi + k), uint64(yi + y_step + k)
            y[i] += w0 * x[uint64(i0 + k)] + w1 * x[uint64(i1 + k)] + w2 * x[uint64(i2 + k)]
            y[j] += (
                w0 * x[uint64(i0 + x_step + k)]
                + w1 * x[uint64(i1 + x_step + k)]
                + w2 * x[uint64(i2 + x_step + k)]
            )
    else:
        for k in range(n):
            y[uint64(yi + k)] += (
                a[uint64(a0 + k)] * x[uint64(i0 + k)]
                + a[uint64(a1 + k)] * x[uint64(i1 + k)]
                + a[uint64(a2 + k)] * x[uint64(i2 + k)]
            )


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


# ---------------------------------------------------------------------------------------------
# depthwise, small planes: flat shifts over blocks of planes, with masked weights
# ---------------------------------------------------------------------------------------------

#: output planes of at most this many pixels take the flat kernels (where ``_flat_applies``),
#: larger ones the polyphase kernels: up to 64x64 where x is used as it lies, up to 16x16 where
#: the flat kernels copy x into phase planes (stride > 1 or M > 1); measured, bench/NOTES.md
_FLAT_MAX_HW = 4096
_FLAT_COPY_MAX_HW = 256

#: elements (channels x output pixels) per channel block of the flat kernels: long enough for
#: the vector loops to dominate their set-up, short enough that a block's masked weights and dw
#: accumulators (taps x block each) stay in L1/L2; measured, bench/NOTES.md
_FLAT_BLOCK = 512


def _in_hw(g: ConvGeometry) -> tuple[int, int]:
    (top, bottom, left, right), (Hp, Wp) = g.pads, g.padded_hw
    return Hp - top - bottom, Wp - left - right


def _flat_copies(g: ConvGeometry) -> bool:
    """Whether the flat kernels need x split into phase planes (else they use x as it lies)."""
    return g.stride != (1, 1) or _in_hw(g) != g.out_hw or g.out_channels != g.in_channels


def _flat_applies(g: ConvGeometry) -> bool:
    """Whether the depthwise conv ``g`` takes the flat kernels (see ``_Flat``)."""
    (H, W), (OH, OW), (sh, sw) = _in_hw(g), g.out_hw, g.stride
    most = _FLAT_COPY_MAX_HW if _flat_copies(g) else _FLAT_MAX_HW
    return OH * OW <= most and -(-H // sh) <= OH and -(-W // sw) <= OW


@dataclass(frozen=True)
class _Flat:
    """Every tap as one flat shift over a block of output-sized planes, borders by masked weights.

    The input is seen as ``xs`` (N, P, C*M, OH, OW), P = sh*sw phase planes per channel:
    ``xs[n, a*sw + b, c*M + m, u, v] = x[n, c, u*sh + a, v*sw + b]`` (0 outside x). Tap (i, j)
    of output (p, q) reads phase ``a*sw + b`` at (p + du, q + dv), with
    ``(du, a) = divmod(i*dh - top, sh)`` and ``(dv, b) = divmod(j*dw - left, sw)``, or the zero
    padding where that lies outside the OH x OW grid; given ``_flat_applies`` (the phase planes
    of x fit in the output grid: "same"-style padding) nothing else is padding. So in flat
    indices, over all the planes of a block of channels at once (G = OH*OW)::

        y[k] += w[o, tap] * mask[tap, k % G] * xs[k + shift[tap]],  shift = phase*C*M*G + du*OW + dv

    Reads that cross into a neighbouring row, plane or image get weight 0 (so a non-finite input
    value can make NaNs in a neighbouring plane's border outputs, unlike torch). At stride 1
    with the output the size of x and M = 1, xs is x itself and nothing is copied.
    """

    copy: bool  # whether xs is a copy of x (otherwise x itself)
    block: int  # output channels per block
    shift: np.ndarray  # (taps,) offset of the tap's read in xs, from the output's flat index
    phase: np.ndarray  # (taps,) the phase plane the tap reads
    back: np.ndarray  # (taps,) -(du*OW + dv): offset of dy, from the phase plane's flat index
    masks: np.ndarray  # (taps, G): 1 where the tap's read is inside the grid
    adjoint: np.ndarray  # (taps, G): 1 where a phase-plane position is read by a valid output
    pixel_dst: np.ndarray  # (H*W,) offset of input pixel (r, s) in xs from its channel's plane

    @classmethod
    @lru_cache(maxsize=64)
    def of(cls, g: ConvGeometry, dtype) -> _Flat:
        """The tables of ``g`` (cached: ~60 us of Python, and a model repeats its geometries)."""
        (kh, kw), (sh, sw), (dh, dw) = g.kernel, g.stride, g.dilation
        (OH, OW), (H, W), (top, _, left, _) = g.out_hw, _in_hw(g), g.pads
        G, CM = OH * OW, g.out_channels
        shift, phase, back, masks, adjoint = [], [], [], [], []
        for i in range(kh):
            du, a = divmod(i * dh - top, sh)
            for j in range(kw):
                dv, b = divmod(j * dw - left, sw)
                phase.append(a * sw + b)
                shift.append(phase[-1] * CM * G + du * OW + dv)
                back.append(-(du * OW + dv))
                m = np.zeros((OH, OW), dtype)
                m[max(0, -du) : max(0, OH - du), max(0, -dv) : max(0, OW - dv)] = 1
                masks.append(m.ravel())
                m = np.zeros((OH, OW), dtype)
                m[max(0, du) : max(0, OH + du), max(0, dv) : max(0, OW + dv)] = 1
                adjoint.append(m.ravel())
        r, s = np.divmod(np.arange(H * W), W)
        pixel_dst = ((r % sh * sw + s % sw) * CM * G + r // sh * OW + s // sw).astype(np.int64)
        tables = (np.array(v, dtype=np.int64) for v in (shift, phase, back))
        block = max(1, _FLAT_BLOCK // G)
        masks, adjoint = np.array(masks), np.array(adjoint)
        return cls(_flat_copies(g), block, *tables, masks, adjoint, pixel_dst)


@njit(cache=True, inline="always")
def _masked_weights(wt, c0, nc, masks, wm):
    """wm[t, c, k] = wt[c0 + c, t] * masks[t, k] for the block's nc channels, flat (taps, nc*G)."""
    taps, G = masks.shape
    for t in range(taps):
        for c in range(nc):
            a, i0 = wt[c0 + c, t], (t * nc + c) * G
            for k in range(G):
                wm[uint64(i0 + k)] = a * masks[t, k]


@njit(cache=True, inline="always")
def _clip(xi, n, size):
    """The k in [0, n) with xi + k inside [0, size), as ``[lo, hi)`` (hi <= lo: none).

    Only a flat shift at the very start or end of an array reaches outside it, and there the
    masked weight is 0, so skipping those k is exact.
    """
    return max(0, -xi), min(n, size - xi)


@njit(cache=True, inline="always")
def _forward_taps(wm, L, x, x0, x_step, shift, y, y0, y_step, images):
    """y[y0 : y0 + L] += sum_t wm[t*L : (t+1)*L] * x[x0 + shift[t] :][:L], for ``images`` (1 or 2)
    images (the second at x0 + x_step, y0 + y_step); three taps per pass."""
    taps, last = shift.size, (images - 1) * x_step
    t = 0
    while t < taps:
        if t + 3 <= taps:
            i0, i1, i2 = x0 + shift[t], x0 + shift[t + 1], x0 + shift[t + 2]
            if min(i0, i1, i2) >= 0 and max(i0, i1, i2) + last + L <= x.size:
                a0 = t * L
                _mul_add3(
                    wm, a0, a0 + L, a0 + 2 * L, x, i0, i1, i2, y, y0, L, x_step, y_step, images
                )
                t += 3
                continue
        for image in range(images):
            i = x0 + image * x_step + shift[t]
            lo, hi = _clip(i, L, x.size)
            if hi > lo:
                _mul_add(wm, t * L + lo, x, i + lo, y, y0 + image * y_step + lo, hi - lo)
        t += 1


@njit(cache=True, inline="always")
def _adjoint3(wa, a0, a1, a2, dy, i0, i1, i2, x, dx, j, acc, n, y_step, x_step, images):
    """Three taps of the flat backward over n elements, dy read once for dx and dw::

        dx[j + k] += wa[a0 + k] * dy[i0 + k] + (same for a1, i1) + (same for a2, i2)
        acc[a0 + k] += x[j + k] * dy[i0 + k]   (and likewise for a1, i1 and a2, i2)

    With ``images == 2`` also the next image (dy offsets further by y_step, x and dx by
    x_step), wa and acc loaded and stored once for both.
    """
    if images == 2:
        for k in range(n):
            d0, d1, d2 = dy[uint64(i0 + k)], dy[uint64(i1 + k)], dy[uint64(i2 + k)]
            e0, e1 = dy[uint64(i0 + y_step + k)], dy[uint64(i1 + y_step + k)]
            e2 = dy[uint64(i2 + y_step + k)]
            w0, w1, w2 = wa[uint64(a0 + k)], wa[uint64(a1 + k)], wa[uint64(a2 + k)]
            u, v = uint64(j + k), uint64(j + x_step + k)
            dx[u] += w0 * d0 + w1 * d1 + w2 * d2
            dx[v] += w0 * e0 + w1 * e1 + w2 * e2
            acc[uint64(a0 + k)] += x[u] * d0 + x[v] * e0
            acc[uint64(a1 + k)] += x[u] * d1 + x[v] * e1
            acc[uint64(a2 + k)] += x[u] * d2 + x[v] * e2
    else:
        for k in range(n):
            d0, d1, d2 = dy[uint64(i0 + k)], dy[uint64(i1 + k)], dy[uint64(i2 + k)]
            u = uint64(j + k)
            dx[u] += wa[uint64(a0 + k)] * d0 + wa[uint64(a1 + k)] * d1 + wa[uint64(a2 + k)] * d2
            acc[uint64(a0 + k)] += x[u] * d0
            acc[uint64(a1 + k)] += x[u] * d1
            acc[uint64(a2 + k)] += x[u] * d2


@njit(cache=True, inline="always")
def _adjoint1(wa, a0, dy, i0, x, dx, j, acc, n):
    """One tap of ``_adjoint3`` on one image."""
    for k in range(n):
        d = dy[uint64(i0 + k)]
        dx[uint64(j + k)] += wa[uint64(a0 + k)] * d
        acc[uint64(a0 + k)] += x[uint64(j + k)] * d


@njit(parallel=True, cache=True)
def _split_phases_kernel(x, xs, pixel_dst):
    """xs[n, :, c*M + m] = the phase planes of x[n, c] (``_Flat``); parallel over (n, c).

    xs (N, P, C*M, OH, OW) comes zeroed: positions outside x are not written.
    """
    N, C, H, W = x.shape
    P, CM, G = xs.shape[1], xs.shape[2], xs.shape[3] * xs.shape[4]
    xf, xsf = x.reshape(-1), xs.reshape(-1)
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        for m in range(CM // C):
            dst = (n * P * CM + c * (CM // C) + m) * G
            for k in range(H * W):
                xsf[uint64(dst + pixel_dst[k])] = xf[uint64(plane * H * W + k)]


@njit(parallel=True, cache=True)
def _merge_phases_kernel(dxs, dx, pixel_dst):
    """Adjoint of ``_split_phases_kernel``: dx[n, c] = sum over m of dxs[n, :, c*M + m]'s pixels."""
    N, C, H, W = dx.shape
    P, CM, G = dxs.shape[1], dxs.shape[2], dxs.shape[3] * dxs.shape[4]
    M = CM // C
    dxsf, dxf = dxs.reshape(-1), dx.reshape(-1)
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        src = (n * P * CM + c * M) * G
        for k in range(H * W):
            total = dxsf[uint64(src + pixel_dst[k])]
            for m in range(1, M):  # in order: the same sum whatever the threads
                total += dxsf[uint64(src + m * G + pixel_dst[k])]
            dxf[uint64(plane * H * W + k)] = total


@njit(parallel=True, cache=True, fastmath={"contract"})
def _flat_forward_kernel(xs, wt, b, use_bias, y, block, shift, masks):
    """y[n, o] = b[o] + sum_taps of the masked weights times the shifted xs (see ``_Flat``).

    xs: flat x or its phase split; wt (C*M, taps); b (C*M,) (ignored unless use_bias);
    y (N, C*M, OH, OW). Parallel over blocks of ``block`` output channels; a block builds its
    masked weights (taps, block*G) once, then runs the whole batch.
    """
    N, C_out, OH, OW = y.shape
    taps, G = masks.shape
    yf = y.reshape(-1)
    x_image = xs.size // N
    for blk in prange((C_out + block - 1) // block):
        c0 = blk * block
        nc = min(block, C_out - c0)
        L = nc * G
        wm = np.empty(taps * L, dtype=y.dtype)
        _masked_weights(wt, c0, nc, masks, wm)
        for n in range(0, N, 2):  # two images per pass
            images = min(2, N - n)
            y0 = (n * C_out + c0) * G
            for image in range(images):
                yi = y0 + image * C_out * G
                if use_bias:
                    for c in range(nc):
                        yf[yi + c * G : yi + (c + 1) * G] = b[c0 + c]
                else:
                    yf[yi : yi + L] = 0.0
            x0 = n * x_image + c0 * G
            _forward_taps(wm, L, xs, x0, x_image, shift, yf, y0, C_out * G, images)


@njit(parallel=True, cache=True, fastmath={"contract"})
def _flat_backward_kernel(xs, wt, dy, dxs, dwt, block, phase, back, adjoint):
    """dxs (flat, like xs) and dw of the flat depthwise conv, parallel over channel blocks.

    The adjoint in gather form: phase-plane position j of tap t is read by output
    ``j + back[t]`` (where the adjoint mask is 1), so with the adjoint-masked weights wa::

        dxs[phase[t]][j] += wa[t, j] * dy[j + back[t]]
        acc[t, j]        += xs[phase[t]][j] * dy[j + back[t]]

    one pass per run of three taps on the same phase plane (all taps at stride 1), dy read once
    for both; then ``dw[o, t] = sum_j adjoint[t, j % G] * acc[t, j]`` over the block's planes.
    The sum over n is element-wise in a fixed order in the thread owning the block, so dw is
    deterministic.
    """
    N, C_out, OH, OW = dy.shape
    taps, G = adjoint.shape
    dyf = dy.reshape(-1)
    x_image = xs.size // N
    for blk in prange((C_out + block - 1) // block):
        c0 = blk * block
        nc = min(block, C_out - c0)
        L = nc * G
        wa = np.empty(taps * L, dtype=dy.dtype)
        _masked_weights(wt, c0, nc, adjoint, wa)
        acc = np.zeros(taps * L, dtype=dy.dtype)
        y_step = C_out * G
        for n in range(0, N, 2):  # two images per pass
            images = min(2, N - n)
            y0 = n * y_step + c0 * G
            for p in range(images * x_image // y_step):  # the phase planes of the images
                j = n * x_image + p * y_step + c0 * G
                dxs[j : j + L] = 0.0
            t = 0
            while t < taps:
                j = n * x_image + phase[t] * y_step + c0 * G
                i0 = y0 + back[t]
                if t + 3 <= taps and phase[t + 1] == phase[t] and phase[t + 2] == phase[t]:
                    i1, i2 = y0 + back[t + 1], y0 + back[t + 2]
                    last = (images - 1) * y_step
                    if min(i0, i1, i2) >= 0 and max(i0, i1, i2) + last + L <= dyf.size:
                        a0, a1, a2 = t * L, (t + 1) * L, (t + 2) * L
                        _adjoint3(
                            wa,
                            a0,
                            a1,
                            a2,
                            dyf,
                            i0,
                            i1,
                            i2,
                            xs,
                            dxs,
                            j,
                            acc,
                            L,
                            y_step,
                            x_image,
                            images,
                        )
                        t += 3
                        continue
                for image in range(images):
                    i = i0 + image * y_step
                    lo, hi = _clip(i, L, dyf.size)
                    if hi > lo:
                        ji = j + image * x_image + lo
                        _adjoint1(wa, t * L + lo, dyf, i + lo, xs, dxs, ji, acc, hi - lo)
                t += 1
        for t in range(taps):
            for c in range(nc):
                s = 0.0
                for k in range(G):
                    s += adjoint[t, k] * acc[t * L + c * G + k]
                dwt[c0 + c, t] = s


def _split_phases(x, g: ConvGeometry, flat: _Flat) -> np.ndarray:
    """xs (N, P, C*M, OH, OW) of ``_Flat``: x split into its phase planes (and repeated M times)."""
    (sh, sw), (OH, OW) = g.stride, g.out_hw
    xs = np.zeros((g.batch, sh * sw, g.out_channels, OH, OW), dtype=x.dtype)
    _split_phases_kernel(x, xs, flat.pixel_dst)
    return xs


def _depthwise_forward(x, w, b, g: ConvGeometry):
    """y and the input as the backward needs it (x, or the phase split of x)."""
    y = np.empty((g.batch, g.out_channels, *g.out_hw), dtype=x.dtype)
    bias = b if b is not None else np.zeros(1, dtype=x.dtype)
    if _flat_applies(g):
        flat = _Flat.of(g, x.dtype)
        xs = _split_phases(x, g, flat) if flat.copy else x
        wt = w.reshape(g.out_channels, -1)  # (C*M, taps)
        args = (flat.block, flat.shift, flat.masks)
        _flat_forward_kernel(xs.reshape(-1), wt, bias, b is not None, y, *args)
        return y, xs
    phases = _Phases.of(g)
    units = g.in_channels * -(-g.batch // phases.images)
    blocks = min(units, 4 * get_num_threads())  # a few spans per thread
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
            matmul(
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
            dw3[grp] += sum_of_matmuls(dy_g, cols_g.transpose(0, 2, 1))
            # dcols_g[b] = W_g.T (K, Mg) @ dY_g[b] (Mg, OH*OW)
            matmul(w3[grp].T, dy_g, out=dcols[:, grp * K : (grp + 1) * K])
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
    x, w, b, g = prepare_conv(x, w, b, stride, padding, dilation, groups)  # the reference's checks
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    b = None if b is None else np.ascontiguousarray(b)
    kind = conv_kind(g)
    if kind == "depthwise":
        y, saved = _depthwise_forward(x, w, b, g)  # bias added in the kernel
        return y, CpuConvCache(g, saved, w, b is not None, kind)
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
    dy = np.ascontiguousarray(
        check_dy(dy, cache.geometry.out_shape, "conv2d", cache.w.dtype)
    )  # shape and dtype checked as in the reference
    g, saved, w = cache.geometry, cache.saved, cache.w
    if cache.kind == "depthwise":
        dx, dw = _depthwise_backward(dy, saved, w, g)
    elif cache.kind == "pointwise":
        dx, dw = _pointwise_backward(dy, saved, w, g)
    else:
        dx, dw = _general_backward(dy, saved, w, g)
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None  # (C_out,)
    return dx, dw, db
