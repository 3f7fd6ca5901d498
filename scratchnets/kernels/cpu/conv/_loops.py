"""Inner loops shared by the convolution kernels (inlined into them by Numba).

Indices are cast to uint64: numba wraps negative indices (a[-1] is the last element), and that
per-access check stops LLVM from vectorising a loop; an unsigned index cannot be negative.
"""

from __future__ import annotations

import sys

from numba import njit, uint32, uint64

#: float32 pairs read as one uint64 keep the even column in the low half on this machine
LITTLE_ENDIAN = sys.byteorder == "little"


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


@njit(cache=True, inline="always")
def _float32_pairs(flat, width):
    """Whether the rows (``width`` long, from the start) of the flat array can be read as uint64
    pairs of float32 columns, even column in the low half: float32, an even width, 8-byte
    aligned, a little-endian machine."""
    aligned = flat.ctypes.data % 8 == 0
    return flat.itemsize == 4 and width % 2 == 0 and aligned and LITTLE_ENDIAN


@njit(cache=True, inline="always")
def _deinterleave_pairs(pairs, p0, dst, d_even, d_odd, n):
    """dst[d_even + k] = the low 32 bits of ``pairs[p0 + k]``, dst[d_odd + k] = the high ones,
    for k < n: with ``pairs`` a uint64 view of a float32 row and ``dst`` a uint32 view of a float32
    buffer (little-endian), the row's even and odd columns. The stride-2 float loop does not
    vectorise (one element per ~1 ns); shifting and truncating 64-bit lanes does (a 112-column
    row: 4.6x faster)."""
    for k in range(n):
        v = pairs[uint64(p0 + k)]
        dst[uint64(d_even + k)] = uint32(v & 0xFFFFFFFF)
        dst[uint64(d_odd + k)] = uint32(v >> 32)


@njit(cache=True, inline="always")
def _pair_halves(pairs, p0, shift, dst, d0, n):
    """dst[d0 + k] = bits ``shift`` .. ``shift + 31`` of ``pairs[p0 + k]`` for k < n: every other
    float32 of a row (its even columns with shift 0, odd with 32; views as in
    ``_deinterleave_pairs``), vectorised where the stride-2 float loop is not."""
    for k in range(n):
        dst[uint64(d0 + k)] = uint32(pairs[uint64(p0 + k)] >> shift)
