"""2-D convolution on the CPU (Numba + BLAS), forward and backward; like ``F.conv2d``.

Same equation, arguments, validation and results as ``scratchnets.reference.conv`` (read that
file for the math). Three implementations, chosen per call by ``conv_kind``:

**depthwise** (``groups == C_in``, any channel multiplier M, any kernel/stride/padding/dilation).
A depthwise conv does only kh*kw multiply-adds per output, so it is memory-bound: the work is
to touch each plane once, with unit-stride inner loops. Forward is parallel over the N*C_out
output planes (``prange`` over the flattened (n, o)); per output row p, each kernel tap (i, j)
adds ``w[o, i, j] * x[n, c, r, :]`` (a shifted, strided input row) into the row ``y[n, o, p, :]``,
which stays in L1 while its kh*kw taps accumulate. The zero padding is never materialised: for
each tap, the range of output columns whose input column is inside the image is computed once
(``_valid_range``), so the inner loop has no branches and vectorises. The backward pass is one
fused sweep, parallel over input channels c: for every n it reads dy and x once and produces
both dx[n, c] (each tap scatters ``w * dy`` row-wise into dx) and the dw partial sums. dw is a
reduction over n, p and q; reducing over n inside the thread that owns channel c makes it
race-free without per-thread copies, and the q-sum is kept as a vector of per-column partial
sums (``acc[m, i, j, q]``), so the inner loop is element-wise (vectorisable without reassociating
float additions) and each partial sums only N*OH terms.

**pointwise** (1x1 kernel, groups 1, no padding). A 1x1 conv of one image is the matrix product
``y[n] (C_out, HW) = W (C_out, C_in) @ x[n] (C_in, HW)`` on the NCHW memory as it lies, so it goes
to BLAS (``np.matmul``) with no copy: forward and dx are one broadcast batched GEMM each. dw is a
sum over the batch; it is computed as one GEMM over the batch by viewing dy and x as
(C, N*HW) (two transposing copies), which measured faster than N small GEMMs plus a sum
(bench/NOTES.md). A strided 1x1 conv reads every sh-th row and sw-th column: subsample x once
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
On the MobileNetV2 stem and VGG 3x3 layers this beat a direct Numba loop kernel (bench/NOTES.md).

Thread policy (``_threads``): jitted kernels never call BLAS and BLAS is never called inside a
``prange`` region, so numba's pool and the BLAS pool take turns, each with every core.

Compiled signatures: every jitted kernel sees only C-contiguous float32 or float64 arrays (the
wrappers normalise with ``np.ascontiguousarray``) and int64 scalars, so each compiles at most
twice, and ``cache=True`` keeps the machine code on disk across runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from scratchnets.reference.conv import ConvGeometry, _check_dy, _prepare

from ._threads import apply_policy

apply_policy()

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
# shared geometry helper
# ---------------------------------------------------------------------------------------------


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
# depthwise
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _depthwise_forward_kernel(x, w, b, use_bias, y, sh, sw, dh, dw, top, left):
    """y[n, o, p, q] = b[o] + sum_ij w[o, 0, i, j] * x[n, o // M, p*sh + i*dh - top, q*sw + j*dw - left].

    x (N, C, H, W), w (C*M, 1, kh, kw), b (C*M,), y (N, C*M, OH, OW), all C-contiguous.
    """
    N, C, H, W = x.shape
    C_out, _, kh, kw = w.shape
    M = C_out // C
    OH, OW = y.shape[2], y.shape[3]
    for no in prange(N * C_out):  # one output plane per iteration
        n, o = no // C_out, no % C_out
        xs, ys = x[n, o // M], y[n, o]  # (H, W), (OH, OW)
        init = b[o] if use_bias else 0.0
        for p in range(OH):
            yrow = ys[p]  # (OW,): stays in L1 while the kh*kw taps accumulate into it
            yrow[:] = init
            for i in range(kh):
                r = p * sh + i * dh - top
                if r < 0 or r >= H:
                    continue  # this tap row reads zero padding
                xrow = xs[r]
                for j in range(kw):
                    q_lo, q_hi = _valid_range(OW, j * dw - left, sw, W)
                    wij = w[o, 0, i, j]
                    s0 = q_lo * sw + j * dw - left  # input column of output column q_lo
                    for k in range(q_hi - q_lo):
                        yrow[q_lo + k] += wij * xrow[s0 + k * sw]


@njit(parallel=True, cache=True)
def _depthwise_backward_kernel(x, w, dy, dx, dwt, sh, sw, dh, dw, top, left):
    """Fused dx and dw of the depthwise conv, parallel over input channels c.

    dx[n, c, r, s] = sum_{m, i, j, p, q: r = p*sh + i*dh - top, s = q*sw + j*dw - left}
                     w[c*M + m, 0, i, j] * dy[n, c*M + m, p, q]
    dw[o, 0, i, j] = sum_{n, p, q} dy[n, o, p, q] * x[n, o // M, p*sh + i*dh - top, q*sw + j*dw - left]

    x, dx (N, C, H, W); w, dwt (C*M, 1, kh, kw); dy (N, C*M, OH, OW).
    """
    N, C, H, W = x.shape
    C_out, _, kh, kw = w.shape
    M = C_out // C
    OH, OW = dy.shape[2], dy.shape[3]
    for c in prange(C):  # this thread owns dx[:, c] and dw[c*M : (c+1)*M]: no races
        acc = np.zeros((M, kh, kw, OW), dtype=dwt.dtype)  # per-column partial sums of dw
        for n in range(N):
            xs, dxs = x[n, c], dx[n, c]  # (H, W)
            dxs[:, :] = 0.0
            for m in range(M):
                o = c * M + m
                dys = dy[n, o]  # (OH, OW)
                for p in range(OH):
                    dyrow = dys[p]
                    for i in range(kh):
                        r = p * sh + i * dh - top
                        if r < 0 or r >= H:
                            continue
                        xrow, dxrow = xs[r], dxs[r]
                        for j in range(kw):
                            q_lo, q_hi = _valid_range(OW, j * dw - left, sw, W)
                            wij = w[o, 0, i, j]
                            s0 = q_lo * sw + j * dw - left
                            accrow = acc[m, i, j]
                            for k in range(q_hi - q_lo):
                                g = dyrow[q_lo + k]
                                dxrow[s0 + k * sw] += wij * g
                                accrow[q_lo + k] += g * xrow[s0 + k * sw]
        for m in range(M):
            for i in range(kh):
                for j in range(kw):
                    dwt[c * M + m, 0, i, j] = acc[m, i, j].sum()


def _depthwise_forward(x, w, b, g: ConvGeometry) -> np.ndarray:
    y = np.empty((g.batch, g.out_channels, *g.out_hw), dtype=x.dtype)
    bias = b if b is not None else np.zeros(0, dtype=x.dtype)
    (sh, sw), (dh, dw), (top, _, left, _) = g.stride, g.dilation, g.pads
    _depthwise_forward_kernel(x, w, bias, b is not None, y, sh, sw, dh, dw, top, left)
    return y


def _depthwise_backward(dy, x, w, g: ConvGeometry):
    dx, dwt = np.empty_like(x), np.empty_like(w)
    (sh, sw), (dh, dw), (top, _, left, _) = g.stride, g.dilation, g.pads
    _depthwise_backward_kernel(x, w, dy, dx, dwt, sh, sw, dh, dw, top, left)
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
    # dw = sum_n dy[n] @ x[n].T as one GEMM over (C, N*HW) views of dy and x
    dy_rows = dy3.transpose(1, 0, 2).reshape(C_out, -1)  # (C_out, N*HW), a copy
    x_rows = xs.transpose(1, 0, 2).reshape(C_in, -1)  # (C_in, N*HW), a copy
    dw = (dy_rows @ x_rows.T).reshape(w.shape)  # (C_out, C_in) -> (C_out, C_in, 1, 1)
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
