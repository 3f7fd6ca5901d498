"""2-D convolution (``torch.nn.functional.conv2d``), forward and backward, in two readable forms.

The equation (cross-correlation, as every deep-learning library defines "convolution"), for the
group ``g`` that output channel ``o`` belongs to::

    y[n, o, p, q] = b[o] + sum_{c in group g} sum_{i < kh} sum_{j < kw}
                    xp[n, c, p*sh + i*dh, q*sw + j*dw] * w[o, c - g*Cg, i, j]

with ``xp`` the zero-padded input, ``Cg = C_in / groups`` input and ``Mg = C_out / groups``
output channels per group. Depthwise convolution is ``groups == C_in`` (``Cg = 1``, channel
multiplier ``Mg``); pointwise is a 1x1 kernel. Both are this same op.

* ``conv2d_forward`` / ``conv2d_backward`` (exported): im2col + one GEMM per group, and the
  transposed GEMMs plus col2im (a scatter-add) for the gradients.
* ``conv2d_forward_loops`` / ``conv2d_backward_loops``: the equation above written as plain loops
  over output positions and kernel taps. Slow; kept to teach and tested at tiny shapes.

See docs/conv.md for the derivation of the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_dy, float_array
from .windows import (
    conv_output_size,
    normalize_padding,
    pad_nchw,
    pair,
    scatter_windows,
    sliding_windows,
    unpad_nchw,
)


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about a convolution's shapes that forward and backward both need."""

    batch: int
    in_channels: int
    out_channels: int
    groups: int
    kernel: tuple[int, int]  # (kh, kw)
    stride: tuple[int, int]  # (sh, sw)
    dilation: tuple[int, int]  # (dh, dw)
    pads: tuple[int, int, int, int]  # (top, bottom, left, right)
    padded_hw: tuple[int, int]  # (H + top + bottom, W + left + right)
    out_hw: tuple[int, int]  # (OH, OW)

    @property
    def in_per_group(self) -> int:  # Cg
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:  # Mg
        return self.out_channels // self.groups

    @property
    def out_shape(self) -> tuple[int, int, int, int]:  # (N, C_out, OH, OW)
        return (self.batch, self.out_channels, *self.out_hw)


@dataclass(frozen=True)
class ConvCache:
    """What the backward pass needs: the geometry, the weights and the saved input.

    ``saved`` is the im2col matrix (G, N*OH*OW, Cg*kh*kw) for the GEMM version and the padded
    input (N, C_in, Hp, Wp) for the loop version.
    """

    geometry: ConvGeometry
    saved: np.ndarray
    w: np.ndarray
    has_bias: bool


def conv_geometry(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1) -> ConvGeometry:
    """The shapes of ``conv2d(x, w, stride=..., padding=..., dilation=..., groups=...)``, checked.

    x (N, C_in, H, W) and w (C_out, C_in/groups, kh, kw) -> y (N, C_out, OH, OW), with

        OH = floor((H + top + bottom - dh*(kh - 1) - 1) / sh) + 1      (likewise OW)

    ``padding`` an int, a pair (ph, pw) or (top, bottom, left, right). Every backend, the
    counter's meta backend, receptive fields and explain call this one function; ValueError
    names the shapes when they do not fit.
    """
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if len(x_shape) != 4:
        raise ValueError(f"conv2d expects x of shape (N, C_in, H, W), got shape {x_shape}")
    if len(w_shape) != 4:
        raise ValueError(f"conv2d expects w of shape (C_out, C_in/groups, kh, kw), got {w_shape}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    N, C_in, H, W = x_shape
    C_out, Cg, kh, kw = w_shape
    if C_in != Cg * groups:
        raise ValueError(
            f"conv2d: x has {C_in} channels (x shape {x_shape}) but w of shape {w_shape} with "
            f"groups={groups} expects C_in = {Cg} * {groups} = {Cg * groups}"
        )
    if C_out % groups:
        raise ValueError(
            f"conv2d: C_out = {C_out} (w shape {w_shape}) is not divisible by groups={groups}"
        )
    stride = pair(stride, "stride", minimum=1)
    dilation = pair(dilation, "dilation", minimum=1)
    pads = normalize_padding(padding)
    top, bottom, left, right = pads
    OH = conv_output_size(H, kh, stride[0], top, bottom, dilation[0])
    OW = conv_output_size(W, kw, stride[1], left, right, dilation[1])
    if OH < 1 or OW < 1:
        raise ValueError(
            f"conv2d: kernel {(kh, kw)} with dilation {dilation} does not fit the padded input: "
            f"x {x_shape} padded by (top, bottom, left, right) = {pads} gives output {(OH, OW)}"
        )
    return ConvGeometry(
        batch=N,
        in_channels=C_in,
        out_channels=C_out,
        groups=int(groups),
        kernel=(kh, kw),
        stride=stride,
        dilation=dilation,
        pads=pads,
        padded_hw=(H + top + bottom, W + left + right),
        out_hw=(OH, OW),
    )


def prepare_conv(x, w, b, stride, padding, dilation, groups):
    """Check the arrays (float32 / float64, one dtype, b of shape (C_out,)) and work out their
    ``conv_geometry``; returns ``(x, w, b, geometry)``."""
    x, w = float_array(x, "x"), float_array(w, "w")
    geometry = conv_geometry(np.shape(x), np.shape(w), stride, padding, dilation, groups)
    if x.dtype != w.dtype:
        raise TypeError(f"conv2d: x is {x.dtype} but w is {w.dtype}; use one float dtype")
    if b is not None:
        b = float_array(b, "b")
        if b.shape != (geometry.out_channels,):
            raise ValueError(f"conv2d: b must have shape ({geometry.out_channels},), got {b.shape}")
        if b.dtype != x.dtype:
            raise TypeError(f"conv2d: b is {b.dtype} but x and w are {x.dtype}")
    return x, w, b, geometry


# ---------------------------------------------------------------------------------------------
# im2col + GEMM (the exported version)
# ---------------------------------------------------------------------------------------------


def im2col(xp: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Unfold the padded input into one row per output pixel, one matrix per group.

    ``cols[grp, (n, p, q), (c, i, j)] = xp[n, grp*Cg + c, p*sh + i*dh, q*sw + j*dw]``

    Shapes: ``xp`` (N, C_in, Hp, Wp) -> ``cols`` (G, N*OH*OW, Cg*kh*kw).
    """
    G, Cg, (OH, OW), (kh, kw) = g.groups, g.in_per_group, g.out_hw, g.kernel
    # windows[n, c, p, q, i, j] = xp[n, c, p*sh + i*dh, q*sw + j*dw]: (N, C_in, OH, OW, kh, kw)
    windows = sliding_windows(xp, g.kernel, g.stride, g.dilation, g.out_hw)
    windows = windows.reshape(g.batch, G, Cg, OH, OW, kh, kw)  # split channels into groups
    # rows = (n, p, q), columns = (c, i, j), the same (c, i, j) order as a row of w.reshape(C_out, -1)
    return windows.transpose(1, 0, 3, 4, 2, 5, 6).reshape(G, g.batch * OH * OW, Cg * kh * kw)


def col2im(dcols: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """Adjoint of ``im2col``: add every entry of ``dcols`` back onto the pixel it was copied from.

    Shapes: ``dcols`` (G, N*OH*OW, Cg*kh*kw) -> ``dxp`` (N, C_in, Hp, Wp). A pixel read by several
    windows (overlap when stride < kernel span) receives the sum of their contributions.
    """
    G, Cg, (OH, OW), (kh, kw) = g.groups, g.in_per_group, g.out_hw, g.kernel
    windows = dcols.reshape(G, g.batch, OH, OW, Cg, kh, kw)
    windows = windows.transpose(1, 0, 4, 2, 3, 5, 6).reshape(g.batch, G * Cg, OH, OW, kh, kw)
    return scatter_windows(windows, g.padded_hw, g.stride, g.dilation)  # (N, C_in, Hp, Wp)


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """y = conv2d(x, w, b) as a matrix product per group; like ``F.conv2d``.

    Shapes: ``x`` (N, C_in, H, W), ``w`` (C_out, C_in/groups, kh, kw), ``b`` (C_out,) or None
    -> ``y`` (N, C_out, OH, OW) with ``OH = floor((H + top + bottom - dh*(kh-1) - 1) / sh) + 1``
    (likewise OW). ``stride``/``dilation``: int or (h, w); ``padding``: int, (ph, pw) or
    (top, bottom, left, right). Per group ``grp``::

        Y_grp (N*OH*OW, Mg) = cols_grp (N*OH*OW, Cg*kh*kw) @ W_grp.T (Cg*kh*kw, Mg)

    Returns ``(y, cache)``; ``y`` has the dtype of ``x`` (float32 or float64).
    """
    x, w, b, g = prepare_conv(x, w, b, stride, padding, dilation, groups)
    G, Mg, (OH, OW) = g.groups, g.out_per_group, g.out_hw
    xp = pad_nchw(x, g.pads)  # (N, C_in, Hp, Wp)
    cols = im2col(xp, g)  # (G, N*OH*OW, Cg*kh*kw)
    w_mat = w.reshape(G, Mg, -1)  # (G, Mg, Cg*kh*kw)
    y_mat = cols @ w_mat.transpose(0, 2, 1)  # (G, N*OH*OW, Mg): one GEMM per group
    y = y_mat.reshape(G, g.batch, OH, OW, Mg).transpose(1, 0, 4, 2, 3)  # (N, G, Mg, OH, OW)
    y = y.reshape(g.batch, g.out_channels, OH, OW)  # channel o = grp*Mg + m
    if b is not None:
        y += b[None, :, None, None]  # (C_out,) broadcast over n, p, q
    return y, ConvCache(g, cols, w, b is not None)


def conv2d_backward(dy, cache):
    """Gradients of ``conv2d_forward``: ``(dx, dw, db or None)``.

    With ``dY_grp`` (N*OH*OW, Mg) the rows of dy that belong to group ``grp``::

        dW_grp (Mg, Cg*kh*kw)      = dY_grp.T @ cols_grp       (correlation of x with dy)
        dcols_grp (N*OH*OW, Cg*kh*kw) = dY_grp @ W_grp          then dx = col2im(dcols)
        db[o]                      = sum_{n, p, q} dy[n, o, p, q]

    col2im of ``dY @ W`` is the transposed convolution of dy with w (a full correlation with the
    flipped kernel); see docs/conv.md. Shapes: dx like x, dw like w, db (C_out,).
    """
    dy = check_dy(dy, cache.geometry.out_shape, "conv2d", cache.w.dtype)
    g, cols, w = cache.geometry, cache.saved, cache.w
    G, Mg, (OH, OW) = g.groups, g.out_per_group, g.out_hw
    dy_mat = dy.reshape(g.batch, G, Mg, OH, OW).transpose(1, 0, 3, 4, 2)  # (G, N, OH, OW, Mg)
    dy_mat = dy_mat.reshape(G, g.batch * OH * OW, Mg)  # same row order as cols
    w_mat = w.reshape(G, Mg, -1)  # (G, Mg, Cg*kh*kw)
    dw = (dy_mat.transpose(0, 2, 1) @ cols).reshape(w.shape)  # (G, Mg, Cg*kh*kw) -> w.shape
    dcols = dy_mat @ w_mat  # (G, N*OH*OW, Cg*kh*kw)
    dx = unpad_nchw(col2im(dcols, g), g.pads)  # (N, C_in, H, W); padding gets no gradient
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None  # (C_out,)
    return np.ascontiguousarray(dx), dw, db


# ---------------------------------------------------------------------------------------------
# Direct loops (teaching version, not exported from scratchnets.reference)
# ---------------------------------------------------------------------------------------------


def _taps(g: ConvGeometry):
    """Every (group, output pixel, kernel tap) of the convolution, with the input pixel it reads.

    Yields ``(in_ch, out_ch, p, q, i, j, r, s)``: channel slices of the group, the output position
    (p, q), the tap (i, j) and the padded-input position ``r = p*sh + i*dh``, ``s = q*sw + j*dw``.
    """
    (OH, OW), (kh, kw), (sh, sw), (dh, dw) = g.out_hw, g.kernel, g.stride, g.dilation
    Cg, Mg = g.in_per_group, g.out_per_group
    for grp in range(g.groups):
        in_ch = slice(grp * Cg, (grp + 1) * Cg)
        out_ch = slice(grp * Mg, (grp + 1) * Mg)
        for p in range(OH):
            for q in range(OW):
                for i in range(kh):
                    for j in range(kw):
                        yield in_ch, out_ch, p, q, i, j, p * sh + i * dh, q * sw + j * dw


def conv2d_forward_loops(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """``conv2d_forward`` written as the defining sum, one kernel tap at a time.

    ``y[n, o, p, q] += sum_c xp[n, c, r, s] * w[o, c, i, j]`` for every tap, vectorised only over
    the batch and the channels of the group. Same arguments, shapes and result as
    ``conv2d_forward``; the cache holds the padded input instead of im2col columns.
    """
    x, w, b, g = prepare_conv(x, w, b, stride, padding, dilation, groups)
    xp = pad_nchw(x, g.pads)  # (N, C_in, Hp, Wp)
    y = np.zeros((g.batch, g.out_channels, *g.out_hw), dtype=x.dtype)
    for in_ch, out_ch, p, q, i, j, r, s in _taps(g):
        # (N, Cg) @ (Cg, Mg) -> (N, Mg): every output channel of the group at pixel (p, q)
        y[:, out_ch, p, q] += xp[:, in_ch, r, s] @ w[out_ch, :, i, j].T
    if b is not None:
        y += b[None, :, None, None]
    return y, ConvCache(g, xp, w, b is not None)


def conv2d_backward_loops(dy, cache):
    """``conv2d_backward`` as loops: each forward term ``xp[n,c,r,s] * w[o,c,i,j]`` sends
    ``dy[n,o,p,q] * w[o,c,i,j]`` to ``dxp[n,c,r,s]`` and ``dy[n,o,p,q] * xp[n,c,r,s]`` to
    ``dw[o,c,i,j]``. Returns ``(dx, dw, db or None)``.
    """
    dy = check_dy(dy, cache.geometry.out_shape, "conv2d", cache.w.dtype)
    g, xp, w = cache.geometry, cache.saved, cache.w
    dxp = np.zeros(xp.shape, dtype=w.dtype)  # (N, C_in, Hp, Wp)
    dw = np.zeros(w.shape, dtype=w.dtype)  # (C_out, Cg, kh, kw)
    for in_ch, out_ch, p, q, i, j, r, s in _taps(g):
        g_out = dy[:, out_ch, p, q]  # (N, Mg)
        dxp[:, in_ch, r, s] += g_out @ w[out_ch, :, i, j]  # (N, Mg) @ (Mg, Cg) -> (N, Cg)
        dw[out_ch, :, i, j] += g_out.T @ xp[:, in_ch, r, s]  # (Mg, N) @ (N, Cg) -> (Mg, Cg)
    dx = np.ascontiguousarray(unpad_nchw(dxp, g.pads))
    db = dy.sum(axis=(0, 2, 3)) if cache.has_bias else None
    return dx, dw, db
