"""Max, average and global average pooling (``F.max_pool2d``, ``F.avg_pool2d``,
``F.adaptive_avg_pool2d(x, 1)``), forward and backward.

Both windowed poolings read the same windows as a convolution with ``dilation = 1``::

    window(n, c, p, q) = { xp[n, c, p*sh + i, q*sw + j] : i < kh, j < kw }

and differ only in how a window is reduced (max or mean) and therefore in how ``dy`` flows back:
max pooling routes ``dy[n, c, p, q]`` to one input (the first maximum of the window in row-major
scan order), average pooling spreads it evenly over the window. Max pooling also takes torch's
``dilation`` (taps ``i*dh`` apart); both take ``ceil_mode`` (``pool_output_size``), whose last
window may overhang the padded input. See docs/pooling.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dy, float_array
from .windows import (
    conv_output_size,
    pad_nchw,
    pair,
    scatter_windows,
    sliding_windows,
    unpad_nchw,
)


@dataclass(frozen=True)
class PoolGeometry:
    """Shapes shared by the forward and backward pass of a windowed pooling.

    ``pads`` is what the window view needs around the input: torch's symmetric ``padding`` on
    top / left, and on bottom / right that padding plus, in ceil mode, the overhang of the last
    window past the padded input (cells there are neither pixels nor padding: ignored).
    """

    in_shape: tuple[int, int, int, int]  # (N, C, H, W)
    kernel: tuple[int, int]  # (kh, kw)
    stride: tuple[int, int]  # (sh, sw)
    dilation: tuple[int, int]  # (dh, dw); 1 for average pooling
    padding: tuple[int, int]  # (ph, pw), torch's symmetric padding
    out_hw: tuple[int, int]  # (OH, OW)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (*self.in_shape[:2], *self.out_hw)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the padded array every window fits in."""
        (H, W), (ph, pw) = self.in_shape[2:], self.padding
        (kh, kw), (sh, sw), (dh, dw), (OH, OW) = (
            self.kernel,
            self.stride,
            self.dilation,
            self.out_hw,
        )
        reach_h = (OH - 1) * sh + dh * (kh - 1) + 1  # rows the windows span, from the top
        reach_w = (OW - 1) * sw + dw * (kw - 1) + 1
        return ph, max(ph, reach_h - H - ph), pw, max(pw, reach_w - W - pw)

    @property
    def padded_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.pads
        return self.in_shape[2] + top + bottom, self.in_shape[3] + left + right

    def windows(self, xp: np.ndarray) -> np.ndarray:
        """(N, C, Hp, Wp) -> (N, C, OH, OW, kh, kw) view of the windows of a padded array."""
        return sliding_windows(xp, self.kernel, self.stride, self.dilation, self.out_hw)

    def cells_inside(self, grow: tuple[int, int]) -> np.ndarray:
        """(OH, OW, kh, kw) boolean: which window cells lie in the input grown by ``grow`` =
        (gh, gw) rows / columns on each side ((0, 0): the real pixels; ``padding``: the padded
        input, without the overhang of ceil mode)."""
        (H, W), (top, _, left, _), (gh, gw) = self.in_shape[2:], self.pads, grow
        inside = np.zeros(self.padded_hw, dtype=bool)
        inside[top - gh : top + H + gh, left - gw : left + W + gw] = True
        return self.windows(inside[None, None])[0, 0]

    def scatter(self, windows: np.ndarray) -> np.ndarray:
        """Adjoint of ``windows``: (N, C, OH, OW, kh, kw) -> (N, C, H, W), padding dropped."""
        dxp = scatter_windows(windows, self.padded_hw, self.stride, self.dilation)
        return np.ascontiguousarray(unpad_nchw(dxp, self.pads))


@dataclass(frozen=True)
class PoolCache:
    """``geometry`` plus what the backward needs: the argmax (max) or the divisors (avg)."""

    geometry: PoolGeometry
    saved: np.ndarray
    dtype: np.dtype


def pool_output_size(
    size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode
) -> int:
    """torch's number of windows along one axis. Floor mode is the convolution's rule
    ``floor((size + 2*pad - span) / stride) + 1`` with ``span = dilation*(kernel - 1) + 1``; ceil
    mode rounds up instead (a last, partial window overhangs the padded input), then drops that
    window again when it would start past the input and its left padding
    (``(out - 1) * stride >= size + pad``)."""
    if not ceil_mode:
        return conv_output_size(size, kernel, stride, pad, pad, dilation)
    span = dilation * (kernel - 1) + 1
    out = -((span - size - 2 * pad) // stride) + 1  # ceil((size + 2*pad - span) / stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad else out


def pool_geometry(
    in_shape, kernel_size, stride, padding, name: str, dilation=1, ceil_mode=False
) -> PoolGeometry:
    """Validate pooling arguments like PyTorch does, for an input of shape ``in_shape``
    (N, C, H, W). Every backend (and the shape-only meta backend) calls this."""
    kh, kw = pair(kernel_size, "kernel_size", minimum=1)
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride", minimum=1)
    ph, pw = pair(padding, "padding", minimum=0)
    dh, dw = pair(dilation, "dilation", minimum=1)
    if ph > kh // 2 or pw > kw // 2:
        # torch's rule: without dilation it guarantees that every window holds a real pixel
        raise ValueError(
            f"{name}: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}"
        )
    N, C, H, W = in_shape
    OH = pool_output_size(H, kh, sh, ph, dh, ceil_mode)
    OW = pool_output_size(W, kw, sw, pw, dw, ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(
            f"{name}: kernel {(kh, kw)} with dilation {(dh, dw)} does not fit x of shape "
            f"{tuple(in_shape)} with padding {(ph, pw)}"
        )
    geometry = PoolGeometry((N, C, H, W), (kh, kw), (sh, sw), (dh, dw), (ph, pw), (OH, OW))
    for axis, (size, k, s, p, d, out) in enumerate(
        [(H, kh, sh, ph, dh, OH), (W, kw, sw, pw, dw, OW)]
    ):
        taps = (
            np.arange(out)[:, None] * s - p + np.arange(k)[None, :] * d
        )  # input index of each tap
        empty = np.flatnonzero(~((taps >= 0) & (taps < size)).any(axis=1))
        if empty.size:  # only a dilated window can fall between the pixels
            raise ValueError(
                f"{name}: with dilation {(dh, dw)} and padding {(ph, pw)} the window of output "
                f"{'row' if axis == 0 else 'column'} {empty[0]} holds no pixel of x of shape "
                f"{tuple(in_shape)} (only padding)"
            )
    return geometry


def prepare_pool(x, kernel_size, stride, padding, name: str, dilation=1, ceil_mode=False):
    """``(x, geometry)``: x checked as a float (N, C, H, W) array, then ``pool_geometry``."""
    x = float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got shape {x.shape}")
    return x, pool_geometry(x.shape, kernel_size, stride, padding, name, dilation, ceil_mode)


# ---------------------------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------------------------


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """y[n, c, p, q] = max_{i<kh, j<kw} xp[n, c, p*sh + i*dh, q*sw + j*dw]; like ``F.max_pool2d``.

    ``xp`` is ``x`` padded with -inf (padding and the overhang of ceil mode never win).
    ``stride=None`` means ``kernel_size``; ``padding`` (int or pair) must be at most half the
    kernel. Shapes: ``x`` (N, C, H, W) -> ``y`` (N, C, OH, OW), ``OH`` by ``pool_output_size``
    (floor mode: ``floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1``). The cache keeps, per output,
    the flat window index ``i*kw + j`` of the winner of PyTorch's CPU scan: walk the window in
    row-major order and take a cell when it is greater than the best so far or is NaN. So ties go
    to the FIRST maximum; a window holding NaN gives y = NaN and routes dy to its LAST NaN.
    Returns ``(y, cache)``.
    """
    x, g = prepare_pool(x, kernel_size, stride, padding, "max_pool2d", dilation, ceil_mode)
    (N, C, _, _), (OH, OW), (kh, kw) = g.in_shape, g.out_hw, g.kernel
    xp = pad_nchw(x, g.pads, value=-np.inf)  # (N, C, Hp, Wp)
    flat = g.windows(xp).reshape(N, C, OH, OW, kh * kw)  # window cells in scan order
    y = flat.max(axis=-1)  # (N, C, OH, OW); NaN propagates
    # candidates: cells equal to the max (or NaN), restricted to the real input so that an
    # all -inf window sends its gradient to a real pixel, never to the padding
    real = g.cells_inside((0, 0)).reshape(OH, OW, kh * kw)
    is_max = ((flat == y[..., None]) | np.isnan(flat)) & real  # (N, C, OH, OW, kh*kw)
    first = is_max.argmax(axis=-1)  # first True: the first maximum in scan order
    last = kh * kw - 1 - is_max[..., ::-1].argmax(axis=-1)  # last True: the last NaN, if any
    argmax = np.where(np.isnan(y), last, first)  # (N, C, OH, OW)
    return y, PoolCache(g, argmax, x.dtype)


def max_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy[n, c, p, q] over the windows (p, q) whose first maximum is
    the pixel (h, w). Shapes: ``dy`` (N, C, OH, OW) -> ``dx`` (N, C, H, W).
    """
    dy = check_dy(dy, cache.geometry.out_shape, "max_pool2d", cache.dtype)
    g, argmax = cache.geometry, cache.saved
    kh, kw = g.kernel
    routed = np.zeros((*dy.shape, kh * kw), dtype=dy.dtype)  # (N, C, OH, OW, kh*kw)
    np.put_along_axis(routed, argmax[..., None], dy[..., None], axis=-1)  # dy to its argmax cell
    return g.scatter(routed.reshape(*dy.shape, kh, kw))  # overlapping windows add up


def window_to_input_index(window_index: np.ndarray, g: PoolGeometry) -> np.ndarray:
    """torch's ``return_indices`` from each output's winning window cell ``k = i*kw + j``: the
    flat input index ``h * W + w`` with ``h = p*sh - ph + i*dh``, ``w = q*sw - pw + j*dw``.
    Shapes: (N, C, OH, OW) -> (N, C, OH, OW) int64. Every backend's max pooling uses this."""
    kw, (sh, sw), (dh, dw), (ph, pw) = g.kernel[1], g.stride, g.dilation, g.padding
    (OH, OW), W = g.out_hw, g.in_shape[3]
    k = np.asarray(window_index, dtype=np.int64).reshape(*g.in_shape[:2], OH, OW)
    p, q = np.arange(OH)[:, None], np.arange(OW)[None, :]
    h, w = p * sh - ph + (k // kw) * dh, q * sw - pw + (k % kw) * dw
    return h * W + w


def max_pool2d_indices(cache):
    """The flat input index ``h * W + w`` of each output's maximum (torch's ``return_indices``),
    from the cache of ``max_pool2d_forward``. Shape (N, C, OH, OW), int64."""
    return window_to_input_index(cache.saved, cache.geometry)


# ---------------------------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------------------------


def divisor_rule(padding, count_include_pad, divisor_override) -> tuple[int, tuple[int, int]]:
    """How average pooling divides, as ``(fixed, grow)``: every window's divisor is ``fixed``
    when it is nonzero (``divisor_override``, a nonzero int as in torch), else the number of its
    cells inside the input grown by ``grow`` = (gh, gw) on each side: torch's ``padding`` with
    ``count_include_pad`` (padded zeros count, the overhang of ceil mode does not), else (0, 0)
    (real pixels only). Every backend's average pooling uses this rule."""
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(
            divisor_override, (int, np.integer)
        ):
            raise TypeError(f"divisor_override must be an int, got {divisor_override!r}")
        if divisor_override == 0:
            raise ValueError("divisor_override must not be zero")
        return int(divisor_override), (0, 0)
    return 0, (pair(padding, "padding") if count_include_pad else (0, 0))


def avg_pool2d_forward(
    x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None,
):  # fmt: skip
    """y[n, c, p, q] = (1 / D[p, q]) * sum_{i<kh, j<kw} xp[n, c, p*sh + i, q*sw + j]; like
    ``F.avg_pool2d`` (arguments in its order).

    ``xp`` is ``x`` zero-padded. The divisor ``D`` is ``divisor_override`` when given, else the
    window's cells inside the padded input when ``count_include_pad`` (the padded zeros count as
    pixels; in ceil mode the overhang past the padding does not) and its real pixels otherwise
    (``divisor_rule``). Shapes: ``x`` (N, C, H, W) -> ``y`` (N, C, OH, OW), ``OH`` by
    ``pool_output_size``. Returns ``(y, cache)``.
    """
    x, g = prepare_pool(x, kernel_size, stride, padding, "avg_pool2d", ceil_mode=ceil_mode)
    fixed, grow = divisor_rule(g.padding, count_include_pad, divisor_override)
    if fixed:
        divisor = np.full(g.out_hw, fixed, dtype=x.dtype)  # (OH, OW)
    else:
        divisor = g.cells_inside(grow).sum(axis=(-2, -1)).astype(x.dtype)  # (OH, OW) counted cells
    xp = pad_nchw(x, g.pads)  # (N, C, Hp, Wp)
    y = g.windows(xp).sum(axis=(-2, -1)) / divisor  # (N, C, OH, OW)
    return y, PoolCache(g, divisor, x.dtype)


def avg_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = sum over windows (p, q) containing (h, w) of dy[n, c, p, q] / D[p, q].

    Every cell of a window receives the same share; shares that land on padding are dropped.
    Shapes: ``dy`` (N, C, OH, OW) -> ``dx`` (N, C, H, W).
    """
    dy = check_dy(dy, cache.geometry.out_shape, "avg_pool2d", cache.dtype)
    g, divisor = cache.geometry, cache.saved
    share = dy / divisor  # (N, C, OH, OW)
    spread = np.broadcast_to(share[..., None, None], (*share.shape, *g.kernel))  # one per cell
    return g.scatter(spread)


# ---------------------------------------------------------------------------------------------
# global average pooling
# ---------------------------------------------------------------------------------------------


def global_avg_pool2d_forward(x):
    """y[n, c, 0, 0] = (1 / (H*W)) * sum_{h, w} x[n, c, h, w]; like
    ``F.adaptive_avg_pool2d(x, 1)``. Shapes: (N, C, H, W) -> (N, C, 1, 1). Returns ``(y, cache)``.
    """
    x = float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool2d expects x of shape (N, C, H, W), got shape {x.shape}")
    y = x.mean(axis=(2, 3), keepdims=True)  # (N, C, 1, 1)
    return y, (x.shape, x.dtype)


def global_avg_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = dy[n, c, 0, 0] / (H*W). Shapes: (N, C, 1, 1) -> (N, C, H, W)."""
    in_shape, dtype = cache
    N, C, H, W = in_shape
    dy = check_dy(dy, (N, C, 1, 1), "global_avg_pool2d", dtype)
    return np.broadcast_to(dy / (H * W), in_shape).copy()  # every pixel gets an equal share


# ---------------------------------------------------------------------------------------------
# adaptive pooling
# ---------------------------------------------------------------------------------------------


def adaptive_windows(size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's window rule of adaptive pooling along one axis: output i reads input indices
    ``[floor(i * size / out), ceil((i + 1) * size / out))``. Windows cover the axis, may
    overlap by one and differ in length by at most one. Returns ``(start, end)``, (out,) int64."""
    i = np.arange(out_size)
    return (i * size) // out_size, -((-(i + 1) * size) // out_size)  # floor, ceil


def adaptive_output_size(output_size, in_hw: tuple[int, int]) -> tuple[int, int]:
    """``output_size`` (int, or a pair whose None entries keep the input's size) as (OH, OW)."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        sizes = tuple(in_hw[k] if v is None else v for k, v in enumerate(output_size))
    else:
        sizes = (output_size, output_size)
    return pair(sizes, "output_size", minimum=1)


@dataclass(frozen=True)
class AdaptiveCache:
    in_shape: tuple[int, int, int, int]
    rows: tuple[np.ndarray, np.ndarray]  # (start, end) of each output row's window
    cols: tuple[np.ndarray, np.ndarray]
    dtype: np.dtype
    argmax: np.ndarray | None = None  # max: flat input index h * W + w of each output's winner


def prepare_adaptive_pool(x, output_size, name: str):
    x = float_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"{name} expects x of shape (N, C, H, W), got shape {x.shape}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{name}: x of shape {x.shape} has an empty spatial axis")
    OH, OW = adaptive_output_size(output_size, x.shape[2:])
    return x, adaptive_windows(x.shape[2], OH), adaptive_windows(x.shape[3], OW)


def adaptive_avg_pool2d_forward(x, output_size):
    """y[n, c, p, q] = mean of x[n, c, h0(p):h1(p), w0(q):w1(q)] with torch's windows
    (``adaptive_windows``); like ``F.adaptive_avg_pool2d``. ``output_size``: int or (OH, OW),
    None keeping that axis. Shapes: (N, C, H, W) -> (N, C, OH, OW). Returns ``(y, cache)``."""
    x, (r0, r1), (c0, c1) = prepare_adaptive_pool(x, output_size, "adaptive_avg_pool2d")
    y = np.empty((*x.shape[:2], r0.size, c0.size), dtype=x.dtype)
    for p in range(r0.size):
        for q in range(c0.size):
            y[:, :, p, q] = x[:, :, r0[p] : r1[p], c0[q] : c1[q]].mean(axis=(2, 3))
    return y, AdaptiveCache(x.shape, (r0, r1), (c0, c1), x.dtype)


def adaptive_avg_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = sum over the windows (p, q) holding (h, w) of dy[n, c, p, q] / area(p, q)."""
    (r0, r1), (c0, c1) = cache.rows, cache.cols
    dy = check_dy(dy, (*cache.in_shape[:2], r0.size, c0.size), "adaptive_avg_pool2d", cache.dtype)
    dx = np.zeros(cache.in_shape, dtype=cache.dtype)
    for p in range(r0.size):
        for q in range(c0.size):
            area = (r1[p] - r0[p]) * (c1[q] - c0[q])
            dx[:, :, r0[p] : r1[p], c0[q] : c1[q]] += (dy[:, :, p, q] / area)[:, :, None, None]
    return dx


def adaptive_max_pool2d_forward(x, output_size):
    """y[n, c, p, q] = max of x over torch's window (p, q) (``adaptive_windows``); like
    ``F.adaptive_max_pool2d``. The winner is chosen like ``max_pool2d``'s: the first maximum in
    row-major scan order, or the last NaN. The cache keeps its flat input index ``h * W + w``
    (torch's ``return_indices``). Returns ``(y, cache)``."""
    x, (r0, r1), (c0, c1) = prepare_adaptive_pool(x, output_size, "adaptive_max_pool2d")
    N, C, H, W = x.shape
    y = np.empty((N, C, r0.size, c0.size), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int64)
    for p in range(r0.size):
        for q in range(c0.size):
            window = x[:, :, r0[p] : r1[p], c0[q] : c1[q]]  # (N, C, h, w)
            width = window.shape[3]
            cells = window.reshape(N, C, -1)  # row-major scan order
            y[:, :, p, q] = cells.max(axis=-1)  # NaN propagates
            is_max = (cells == y[:, :, p, q, None]) | np.isnan(cells)
            first = is_max.argmax(axis=-1)
            last = cells.shape[-1] - 1 - is_max[..., ::-1].argmax(axis=-1)
            k = np.where(np.isnan(y[:, :, p, q]), last, first)  # index within the window
            argmax[:, :, p, q] = (r0[p] + k // width) * W + c0[q] + k % width
    return y, AdaptiveCache(x.shape, (r0, r1), (c0, c1), x.dtype, argmax)


def adaptive_max_pool2d_backward(dy, cache):
    """dx[n, c, h, w] = sum of dy[n, c, p, q] over the outputs whose winner is (h, w)."""
    (r0, _), (c0, _) = cache.rows, cache.cols
    N, C, H, W = cache.in_shape
    dy = check_dy(dy, (N, C, r0.size, c0.size), "adaptive_max_pool2d", cache.dtype)
    dx = np.zeros((N, C, H * W), dtype=cache.dtype)
    n, c = np.arange(N)[:, None, None, None], np.arange(C)[None, :, None, None]
    np.add.at(dx, (n, c, cache.argmax), dy)  # dx[n, c, argmax[n, c, p, q]] += dy[n, c, p, q]
    return dx.reshape(N, C, H, W)


def adaptive_max_pool2d_indices(cache):
    """The flat input index ``h * W + w`` of each output's maximum (torch's ``return_indices``),
    from the cache of ``adaptive_max_pool2d_forward``. Shape (N, C, OH, OW), int64."""
    return cache.argmax
