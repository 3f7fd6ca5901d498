"""2-D convolution on the GPU (numba.cuda), forward and backward; like ``F.conv2d``.

Same equation, arguments, validation and results as ``scratchnets.reference.conv`` (read that
file for the math)::

    y[n, o, p, q] = b[o] + sum_{c < Cg, i < kh, j < kw} x[n, g*Cg + c, p*sh + i*dh - top,
                                                         q*sw + j*dw - left] * w[o, c, i, j]

(g = o // Mg the group of o; taps that fall on the padding read zero). The padding is never
materialised: a thread skips the taps outside the image.

General kernels, one thread per output element, for any geometry (depthwise included):

* forward: a thread computes one ``y[n, o, p, q]`` over its group's channels and kernel taps;
* dx (gather, no atomics): a thread computes one ``dx[n, c, h, w]`` by visiting the taps (i, j)
  and the group's output channels whose window reads (h, w): ``p = (h + top - i*dh) / sh`` when
  that is a whole number inside [0, OH);
* dw: a reduction over n, p, q per weight element, ``CONV_DW`` picks
  ``v1_thread_per_weight`` (one thread loops over all N*OH*OW terms) or
  ``v2_block_per_weight`` (one block per weight element, the threads split the terms, then a
  fixed-order shared-memory tree sum). Both deterministic.

Pointwise convolutions (1x1 kernel, stride 1, no padding, one group: the bulk of MobileNetV2's
multiply-adds) are matrix products per image, ``y[n] (C_out, HW) = W (C_out, C_in) @ x[n]``,
``dx[n] = W.T @ dy[n]`` and ``dW = sum_n dy[n] @ x[n].T``; ``POINTWISE_CONV`` sends them to
``_gemm.matmul`` (``v1_naive`` or ``v2_tiled``) or to the general kernels (``general``).
db is a per-channel sum of dy (``_reduce``).
"""

from __future__ import annotations

from dataclasses import dataclass

from numba import cuda

from scratchnets.reference.conv import ConvGeometry, prepare_conv

from . import _gemm
from ._launch import (
    REDUCE_THREADS,
    device_array,
    device_dy,
    empty,
    flat,
    host_proxy,
    launch_1d,
)
from ._reduce import block_tree_sum, channel_reduce, term_value

POINTWISE_VARIANTS = ("general", "v1_naive", "v2_tiled")
#: Not yet measured on a GPU: the tiled GEMM is expected to be fastest (shared-memory reuse of
#: both operands). A GPU session flips this after ``bench/cuda_commands.md``.
POINTWISE_CONV = "v2_tiled"

DW_VARIANTS = ("v1_thread_per_weight", "v2_block_per_weight")
#: Not yet measured on a GPU: a depthwise layer has only C*9 weights, each summing N*OH*OW
#: terms, so one thread per weight leaves the GPU idle; v2 is expected to win.
CONV_DW = "v2_block_per_weight"


@dataclass(frozen=True)
class CudaConvCache:
    """What ``conv2d_backward`` needs: the geometry and the device arrays x (N, C_in, H, W) and
    w (C_out, C_in/groups, kh, kw), contiguous, of one dtype."""

    geometry: ConvGeometry
    x: object
    w: object
    has_bias: bool


def _window(g: ConvGeometry) -> tuple[int, int, int, int, int, int]:
    """``(sh, sw, dh, dw, top, left)``: the numbers every kernel needs besides the shapes."""
    return (*g.stride, *g.dilation, g.pads[0], g.pads[2])


def _is_pointwise(g: ConvGeometry) -> bool:
    return g.kernel == (1, 1) and g.stride == (1, 1) and not any(g.pads) and g.groups == 1


def _pointwise_variant(g: ConvGeometry) -> str:
    if POINTWISE_CONV not in POINTWISE_VARIANTS:
        raise ValueError(
            f"unknown POINTWISE_CONV {POINTWISE_CONV!r}; expected one of {POINTWISE_VARIANTS}"
        )
    return POINTWISE_CONV if _is_pointwise(g) else "general"


# ---------------------------------------------------------------------------------------------
# general kernels: one thread per output element
# ---------------------------------------------------------------------------------------------


@cuda.jit
def _forward_kernel(x, w, b, has_bias, window, y):
    # x (N, C_in, H, W), w (C_out, Cg, kh, kw), b (C_out,), y (N, C_out, OH, OW)
    sh, sw, dh, dw, top, left = window
    i = cuda.grid(1)
    N, C_out, OH, OW = y.shape
    if i >= N * C_out * OH * OW:
        return
    q, p, o, n = i % OW, (i // OW) % OH, (i // (OW * OH)) % C_out, i // (OW * OH * C_out)
    Cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    groups = x.shape[1] // Cg
    first_in = (o // (C_out // groups)) * Cg  # first input channel of o's group
    acc = y.dtype.type(0)
    for c in range(Cg):
        for ki in range(kh):
            r = p * sh + ki * dh - top  # input row read by tap ki
            if 0 <= r < x.shape[2]:
                for kj in range(kw):
                    s = q * sw + kj * dw - left
                    if 0 <= s < x.shape[3]:
                        acc += x[n, first_in + c, r, s] * w[o, c, ki, kj]
    if has_bias:
        acc += b[o]
    y[n, o, p, q] = acc


@cuda.jit
def _dx_kernel(dy, w, window, dx):
    # dy (N, C_out, OH, OW), w (C_out, Cg, kh, kw), dx (N, C_in, H, W); gather, no atomics
    sh, sw, dh, dw, top, left = window
    i = cuda.grid(1)
    N, C_in, H, W = dx.shape
    if i >= N * C_in * H * W:
        return
    col, row, ci, n = i % W, (i // W) % H, (i // (W * H)) % C_in, i // (W * H * C_in)
    C_out, Cg, kh, kw = w.shape
    Mg = C_out // (C_in // Cg)  # output channels per group
    grp, c = ci // Cg, ci % Cg
    acc = dx.dtype.type(0)
    for ki in range(kh):
        rr = row + top - ki * dh  # = p * sh for the output row p whose tap ki reads `row`
        if rr >= 0 and rr % sh == 0 and rr // sh < dy.shape[2]:
            p = rr // sh
            for kj in range(kw):
                ss = col + left - kj * dw
                if ss >= 0 and ss % sw == 0 and ss // sw < dy.shape[3]:
                    q = ss // sw
                    for m in range(Mg):
                        o = grp * Mg + m
                        acc += dy[n, o, p, q] * w[o, c, ki, kj]
    dx[n, ci, row, col] = acc


@cuda.jit(device=True)
def _dw_term(dy, x, window, k, o, ci, ki, kj):
    """Term k (flat over n, p, q) of dw[o, c, ki, kj] = sum dy[n, o, p, q] * x[n, ci, r, s]."""
    sh, sw, dh, dw, top, left = window
    OH, OW = dy.shape[2], dy.shape[3]
    n, p, q = k // (OH * OW), (k // OW) % OH, k % OW
    r, s = p * sh + ki * dh - top, q * sw + kj * dw - left
    if 0 <= r < x.shape[2] and 0 <= s < x.shape[3]:
        return dy[n, o, p, q] * x[n, ci, r, s]
    return dy.dtype.type(0)  # the tap read padding


@cuda.jit(device=True)
def _weight_position(dw_, x, e):
    """(o, c, ki, kj, ci) of flat element e of dw (C_out, Cg, kh, kw); ci = input channel."""
    C_out, Cg, kh, kw = dw_.shape
    kj, ki, c, o = e % kw, (e // kw) % kh, (e // (kw * kh)) % Cg, e // (kw * kh * Cg)
    Mg = C_out // (x.shape[1] // Cg)  # output channels per group
    return o, c, ki, kj, (o // Mg) * Cg + c


@cuda.jit
def _dw_thread_kernel(dy, x, window, dw_):
    # one thread per weight element, summing its N*OH*OW terms in order
    e = cuda.grid(1)
    if e >= dw_.size:
        return
    o, c, ki, kj, ci = _weight_position(dw_, x, e)
    acc = dw_.dtype.type(0)
    for k in range(dy.shape[0] * dy.shape[2] * dy.shape[3]):
        acc += _dw_term(dy, x, window, k, o, ci, ki, kj)
    dw_[o, c, ki, kj] = acc


@cuda.jit
def _dw_block_kernel(dy, x, window, dw_):
    # one block per weight element; thread t sums terms t, t + B, ...; then a tree sum
    partial = cuda.shared.array(REDUCE_THREADS, dtype=dw_.dtype)
    e, tid = cuda.blockIdx.x, cuda.threadIdx.x
    o, c, ki, kj, ci = _weight_position(dw_, x, e)
    acc = dw_.dtype.type(0)
    for k in range(tid, dy.shape[0] * dy.shape[2] * dy.shape[3], REDUCE_THREADS):
        acc += _dw_term(dy, x, window, k, o, ci, ki, kj)
    partial[tid] = acc
    block_tree_sum(partial, tid)
    if tid == 0:
        dw_[o, c, ki, kj] = partial[0]


# ---------------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------------


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y = conv2d(x, w, b) on the GPU; like ``F.conv2d``. Arguments, shapes and errors as
    ``reference.conv2d_forward``; x, w, b may be NumPy or device arrays. Returns ``(y, cache)``
    with y a device array (N, C_out, OH, OW) of x's dtype."""
    proxy_b = None if b is None else host_proxy(b)
    _, _, _, g = prepare_conv(
        host_proxy(x), host_proxy(w), proxy_b, stride, padding, dilation, groups
    )
    x, w = device_array(x, "x"), device_array(w, "w")
    b = None if b is None else device_array(b, "b")
    N, (OH, OW), C_out = g.batch, g.out_hw, g.out_channels
    y = empty((N, C_out, OH, OW), x.dtype)
    variant = _pointwise_variant(g)
    if variant == "general":
        bias = flat(w) if b is None else b  # any 1-D array: unread when there is no bias
        launch_1d(_forward_kernel, y.size, x, w, bias, b is not None, _window(g), y)
    else:  # y[n] (C_out, HW) = W (C_out, C_in) @ x[n] (C_in, HW)
        HW = OH * OW
        _gemm.matmul(
            _gemm.plain,
            w.reshape(C_out, g.in_channels),
            _gemm.batched,
            x.reshape(N, g.in_channels, HW),
            y.reshape(N, C_out, HW),
            g.in_channels,
            variant,
        )
        if b is not None:
            _gemm.add_channel_bias(y, b, HW)
    return y, CudaConvCache(g, x, w, b is not None)


def _dw_general(dy, x, g: ConvGeometry, dw_) -> None:
    if CONV_DW not in DW_VARIANTS:
        raise ValueError(f"unknown CONV_DW {CONV_DW!r}; expected one of {DW_VARIANTS}")
    if CONV_DW == "v1_thread_per_weight":
        launch_1d(_dw_thread_kernel, dw_.size, dy, x, _window(g), dw_)
    elif dw_.size:
        _dw_block_kernel[dw_.size, REDUCE_THREADS](dy, x, _window(g), dw_)


def conv2d_backward(dy, cache):
    """Gradients of ``conv2d_forward``: ``(dx, dw, db or None)`` as device arrays (see the
    module docstring for the kernels). Shapes: dx like x, dw like w, db (C_out,)."""
    g, x, w = cache.geometry, cache.x, cache.w
    N, C_out, (OH, OW) = g.batch, g.out_channels, g.out_hw
    dy = device_dy(dy, (N, C_out, OH, OW), w.dtype, "conv2d_backward")
    dx, dw_ = empty(x.shape, x.dtype), empty(w.shape, w.dtype)
    variant = _pointwise_variant(g)
    if variant == "general":
        launch_1d(_dx_kernel, dx.size, dy, w, _window(g), dx)
        _dw_general(dy, x, g, dw_)
    else:
        C_in, HW = g.in_channels, OH * OW
        dy3, x3 = dy.reshape(N, C_out, HW), x.reshape(N, C_in, HW)
        w2 = w.reshape(C_out, C_in)
        # dx[n] (C_in, HW) = W.T (C_in, C_out) @ dy[n] (C_out, HW)
        _gemm.matmul(
            _gemm.transposed, w2, _gemm.batched, dy3, dx.reshape(N, C_in, HW), C_out, variant
        )
        # dW (C_out, C_in) = dY (C_out, N*HW) @ X (N*HW, C_in): batch and pixels in one sum
        _gemm.matmul(
            _gemm.channels_by_pixels,
            dy3,
            _gemm.pixels_by_channels,
            x3,
            dw_.reshape(1, C_out, C_in),
            N * HW,
            variant,
        )
    db = channel_reduce(term_value, dy) if cache.has_bias else None  # (C_out,)
    return dx, dw_, db
