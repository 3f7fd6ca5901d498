"""Depthwise convolution on small planes: flat shifts over blocks of planes, with masked weights.

For "same"-style padding on output planes up to 64x64 at stride 1, up to 16x16 at stride 2
(every MobileNetV2 layer at 128 px). On a 4x4 or 8x8 plane any per-row
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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numba import njit, prange, uint64

from scratchnets.reference.conv import ConvGeometry

from ._loops import _mul_add, _mul_add3

#: output planes of at most this many pixels take the flat kernels (where ``_flat_applies``),
#: larger ones the polyphase kernels: up to 64x64 where x is used as it lies, up to 16x16 where
#: the flat kernels copy x into phase planes (stride > 1 or M > 1); measured, bench/NOTES.md
_FLAT_MAX_HW = 4096
_FLAT_COPY_MAX_HW = 256

#: the forward takes the flat kernel on x as it lies only up to this many output pixels; above,
#: the polyphase kernel measured faster (forward, same process, fastest of 5: b1 56x56 with 128
#: channels 269 vs 147 us, 28x28 x 256 147 vs 93; b8 56x56 1144 vs 1025; b32 32x32 2455 vs
#: 1789; at 14x14 and below, and 16x16 at b32, the flat kernel wins). x is saved as it lies
#: either way, so the backward keeps its own choice (``_flat_applies``)
_FLAT_FORWARD_MAX_HW = 400

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


def _flat_forward_applies(g: ConvGeometry) -> bool:
    """Whether the forward of ``g`` takes the flat kernel: where it applies, but on x as it lies
    only up to ``_FLAT_FORWARD_MAX_HW`` output pixels (where it copies, the backward needs the
    copy, so the forward always makes it)."""
    small = g.out_hw[0] * g.out_hw[1] <= _FLAT_FORWARD_MAX_HW
    return _flat_applies(g) and (small or _flat_copies(g))


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
