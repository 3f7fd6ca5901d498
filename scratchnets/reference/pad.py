"""Spatial padding of an NCHW tensor: ``torch.nn.functional.pad`` on the last two axes.

Every mode is a *gather* along each axis: output row p reads input row ``rows[p]`` and output
column q reads input column ``cols[q]``, where the source index of an output index i of the
padded axis (i counted from the first padded element, so the input starts at ``before``) is

    constant:   s = i - before             if 0 <= i - before < size, else none (the value)
    reflect:    s = |i - before| mirrored at 0 and size-1, the edge not repeated:  d c b | a b c d | c b a
    replicate:  s = clamp(i - before, 0, size - 1):                                a a a | a b c d | d d d
    circular:   s = (i - before) mod size:                                         b c d | a b c d | a b c

so, with ``rows`` (OH,) and ``cols`` (OW,) from ``pad_source_index``::

    y[n, c, p, q] = x[n, c, rows[p], cols[q]]      (value where rows[p] or cols[q] is none)

The backward is the adjoint of that gather, a scatter-add: every input pixel receives the sum of
the upstream gradients of the output pixels that copied it (reflect: up to 2 per axis, circular
up to 3, replicate a whole border strip, constant exactly 1 or none)::

    dx[n, c, h, w] = sum_{p : rows[p] = h} sum_{q : cols[q] = w} dy[n, c, p, q]

Torch's limits are kept: reflect needs each pad < the axis size (a mirror of a mirror is not
defined), circular each pad <= the size. Negative pads (torch crops) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import float_array
from .windows import normalize_padding

PAD_MODES = ("constant", "reflect", "replicate", "circular")

#: the source index that means "not read from the input": the constant value
OUTSIDE = -1


def pad_source_index(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """The input index each of the ``before + size + after`` output indices of one axis reads
    (``OUTSIDE`` for the constant's border). Shape (before + size + after,), int64."""
    i = np.arange(-before, size + after)  # output index, relative to the input's first element
    if mode == "constant":
        return np.where((i >= 0) & (i < size), i, OUTSIDE)
    if mode == "reflect":
        i = np.abs(i)  # mirror at 0
        return np.where(i > size - 1, 2 * (size - 1) - i, i)  # mirror at size - 1
    if mode == "replicate":
        return np.clip(i, 0, size - 1)
    if mode == "circular":
        return i % size
    raise ValueError(f"pad mode must be one of {', '.join(map(repr, PAD_MODES))}, got {mode!r}")


def pad_readers(source: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The backward's tables for a gather (used by the cpu and cuda kernels): the output indices
    that read input index h are ``readers[offsets[h]:offsets[h + 1]]``, ascending. ``source``
    from ``pad_source_index``; shapes (size + 1,) and (number of inside outputs,), int64."""
    inside = np.flatnonzero(source != OUTSIDE)
    readers = inside[np.argsort(source[inside], kind="stable")]  # by input index, then output
    offsets = np.searchsorted(source[readers], np.arange(size + 1))
    return offsets, readers


@dataclass(frozen=True)
class PadCache:
    in_shape: tuple[int, int, int, int]
    rows: np.ndarray  # (OH,) source row of each output row
    cols: np.ndarray  # (OW,) source column of each output column


def check_pad(x_shape, padding, mode) -> tuple[tuple[int, int, int, int], str]:
    """``(top, bottom, left, right)`` and the mode, after torch's checks on them (every backend
    calls this): a 4-D input, a known mode, and each pad within what the mode can fill."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {', '.join(map(repr, PAD_MODES))}, got {mode!r}")
    if len(x_shape) != 4:
        raise ValueError(f"pad2d expects x of shape (N, C, H, W), got shape {tuple(x_shape)}")
    pads = normalize_padding(padding)
    top, bottom, left, right = pads
    H, W = x_shape[2:]
    for axis, size, (before, after) in (("H", H, (top, bottom)), ("W", W, (left, right))):
        if mode == "reflect" and max(before, after) >= size:
            raise ValueError(
                f"reflect padding must be smaller than the input along each axis: pads "
                f"({before}, {after}) along {axis} of size {size}"
            )
        if mode == "circular" and max(before, after) > size:
            raise ValueError(
                f"circular padding must not exceed the input along each axis: pads "
                f"({before}, {after}) along {axis} of size {size}"
            )
        if mode == "replicate" and size == 0 and before + after:
            raise ValueError(f"replicate padding of the empty axis {axis}: nothing to repeat")
    return pads, mode


def check_pad_gradient(dy_shape, cache: PadCache) -> None:
    """ValueError unless dy has the forward output's shape (every backend calls this)."""
    expected = (*cache.in_shape[:2], cache.rows.size, cache.cols.size)
    if tuple(dy_shape) != expected:
        raise ValueError(f"pad2d_backward: dy has shape {tuple(dy_shape)}, expected {expected}")


def pad2d_forward(x, padding, mode="constant", value=0.0):
    """y = x padded by ``padding`` in ``mode`` (see the module docstring).

    ``padding``: an int, a pair (ph, pw) or ``(top, bottom, left, right)`` like ``conv2d``'s
    (note: ``torch.nn.functional.pad`` orders them (left, right, top, bottom)); ``value`` fills
    the constant mode's border. Shapes: x (N, C, H, W) -> y (N, C, top + H + bottom, left + W + right).
    """
    x = float_array(x, "x")
    (top, bottom, left, right), mode = check_pad(x.shape, padding, mode)
    N, C, H, W = x.shape
    rows = pad_source_index(H, top, bottom, mode)  # (OH,)
    cols = pad_source_index(W, left, right, mode)  # (OW,)
    y = np.full((N, C, rows.size, cols.size), value, dtype=x.dtype)
    p, q = np.flatnonzero(rows != OUTSIDE), np.flatnonzero(cols != OUTSIDE)  # read from x
    y[:, :, p[:, None], q] = x[
        :, :, rows[p][:, None], cols[q]
    ]  # y[n, c, p, q] = x[n, c, rows[p], cols[q]]
    return y, PadCache(x.shape, rows, cols)


def pad2d_backward(dy, cache):
    """dx[n, c, h, w] = sum over the output pixels (p, q) that read (h, w) of dy[n, c, p, q]:
    the columns folded first, then the rows. Shapes: dy (N, C, OH, OW) -> dx (N, C, H, W)."""
    dy = float_array(dy, "dy")
    check_pad_gradient(dy.shape, cache)
    N, C, H, W = cache.in_shape
    dx_cols = np.zeros((N, C, dy.shape[2], W), dtype=dy.dtype)  # (N, C, OH, W)
    for q, w in enumerate(cache.cols):
        if w != OUTSIDE:
            dx_cols[:, :, :, w] += dy[:, :, :, q]
    dx = np.zeros((N, C, H, W), dtype=dy.dtype)
    for p, h in enumerate(cache.rows):
        if h != OUTSIDE:
            dx[:, :, h, :] += dx_cols[:, :, p, :]
    return dx
