"""2-D convolution on the CPU (Numba + BLAS), forward and backward; like ``F.conv2d``.

Same equation, arguments, validation and results as ``scratchnets.reference.conv`` (read that
file for the math). Three implementations, chosen per call by ``conv_kind``:

* ``depthwise`` (``groups == C_in``): ``depthwise.py`` chooses between two kernels,
  ``depthwise_flat.py`` (small planes: flat shifts with masked weights) and
  ``depthwise_phases.py`` (larger planes: polyphase planes);
* ``pointwise`` (1x1, groups 1, no padding): BLAS GEMMs on the NCHW memory, ``pointwise.py``;
* ``general`` (everything else): im2col + GEMM, ``im2col.py``.

Each file's docstring says what its kernels optimise and why. ``_loops.py`` holds the inner loops
they share.

Thread policy (``_threads``): jitted kernels never call BLAS and BLAS is never called inside a
``prange`` region, so numba's pool and the BLAS pool take turns, each with every core.

Compiled signatures: every jitted kernel sees only C-contiguous float32 or float64 arrays (the
wrappers normalise with ``np.ascontiguousarray``) and int64 scalars, so each compiles at most
twice, and ``cache=True`` keeps the machine code on disk across runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchnets.reference.checks import check_dy
from scratchnets.reference.conv import ConvGeometry, prepare_conv

from .._threads import apply_policy
from .depthwise import _depthwise_backward, _depthwise_forward
from .im2col import _general_backward, _general_forward
from .pointwise import _pointwise_backward, _pointwise_forward, _pointwise_input

apply_policy()


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
