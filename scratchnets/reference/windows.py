"""Window geometry shared by convolution and pooling (NumPy only).

Argument normalisation (``pair``, ``normalize_padding``), the output-size rule
(``conv_output_size``), padding an NCHW array (``pad_nchw`` / ``unpad_nchw``) and the two moves
that every sliding-window op is built from:

* ``sliding_windows``: gather, for each output position (p, q), the kh x kw input values it reads
  (a read-only strided view, no copy);
* ``scatter_windows``: the adjoint of that gather, adding per-window values back onto the input
  positions they came from (overlapping windows accumulate).

Other backends import the normalisation helpers so that every backend accepts the same arguments.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _as_int(v, name: str) -> int:
    # bool is an int subclass, but stride=True is almost certainly a mistake
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(v)


def pair(v, name: str, minimum: int = 0) -> tuple[int, int]:
    """``v`` as ``(height, width)``: an int is used for both, a 2-sequence is taken as is.

    Raises TypeError for non-integers and ValueError for values below ``minimum``
    (1 for kernel sizes, strides and dilations; 0 for paddings).
    """
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        values = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2:
        values = (_as_int(v[0], name), _as_int(v[1], name))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if min(values) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return values


def normalize_padding(padding) -> tuple[int, int, int, int]:
    """Padding as ``(top, bottom, left, right)``.

    Accepts an int (all four sides), a pair ``(ph, pw)`` (PyTorch: ph rows above and below, pw
    columns left and right) or an explicit 4-tuple ``(top, bottom, left, right)``, which expresses
    TensorFlow's asymmetric "same" padding (the extra row/column goes at the bottom/right).
    Note the order differs from ``torch.nn.functional.pad``, which takes (left, right, top, bottom).
    """
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        sides = tuple(_as_int(p, "padding") for p in padding)
        if min(sides) < 0:
            raise ValueError(f"padding must be >= 0, got {padding!r}")
        return sides
    try:
        ph, pw = pair(padding, "padding", minimum=0)
    except TypeError:
        raise TypeError(
            f"padding must be an int, a pair (ph, pw) or (top, bottom, left, right), got {padding!r}"
        ) from None
    return ph, ph, pw, pw


def conv_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    pad_before: int = 0,
    pad_after: int = 0,
    dilation: int = 1,
) -> int:
    """Number of window positions along one axis (floor mode, as in PyTorch):

        out = floor((size + pad_before + pad_after - dilation * (kernel - 1) - 1) / stride) + 1

    ``dilation * (kernel - 1) + 1`` is the span of a dilated kernel. The result is < 1 when the
    kernel does not fit; callers turn that into an error that names the shapes.
    """
    span = dilation * (kernel - 1) + 1
    return (size + pad_before + pad_after - span) // stride + 1


def pad_nchw(x: np.ndarray, pads: tuple[int, int, int, int], value: float = 0.0) -> np.ndarray:
    """Pad the two spatial axes of ``x`` (N, C, H, W) by ``(top, bottom, left, right)``.

    Returns ``x`` itself when all pads are 0 (no copy).
    """
    top, bottom, left, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def unpad_nchw(xp: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of ``pad_nchw`` on the shape: drop the padded border (a view)."""
    top, bottom, left, right = pads
    H, W = xp.shape[2] - top - bottom, xp.shape[3] - left - right
    return xp[:, :, top : top + H, left : left + W]


def sliding_windows(
    xp: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """All (dilated, strided) kh x kw windows of an already padded ``xp``, as a read-only view.

    ``windows[n, c, p, q, i, j] = xp[n, c, p*sh + i*dh, q*sw + j*dw]``

    Shapes: ``xp`` (N, C, Hp, Wp) -> (N, C, OH, OW, kh, kw). ``out_hw`` = (OH, OW) from
    ``conv_output_size``; rows/columns of ``xp`` that no window reaches are simply not read.
    """
    (kh, kw), (sh, sw), (dh, dw), (OH, OW) = kernel, stride, dilation, out_hw
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    # every window of the full (undilated) span, at every offset: (N, C, Hp-span_h+1, Wp-span_w+1, span_h, span_w)
    full = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
    # keep every stride-th window and every dilation-th tap
    return full[:, :, : (OH - 1) * sh + 1 : sh, : (OW - 1) * sw + 1 : sw, ::dh, ::dw]


def scatter_windows(
    windows: np.ndarray,
    padded_hw: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> np.ndarray:
    """Adjoint of ``sliding_windows``: add each window value back where it was read from.

    ``out[n, c, p*sh + i*dh, q*sw + j*dw] += windows[n, c, p, q, i, j]`` for all p, q, i, j.

    Shapes: ``windows`` (N, C, OH, OW, kh, kw) -> (N, C, Hp, Wp). One strided slice-add per kernel
    tap (i, j): within a tap the output positions p, q land on distinct pixels, so no two terms
    of a single ``+=`` collide; overlaps between windows are summed across taps.
    """
    N, C, OH, OW, kh, kw = windows.shape
    (sh, sw), (dh, dw) = stride, dilation
    out = np.zeros((N, C, *padded_hw), dtype=windows.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (OH - 1) * sh + 1, sh)  # OH rows hit by tap i
            cols = slice(j * dw, j * dw + (OW - 1) * sw + 1, sw)  # OW columns hit by tap j
            out[:, :, rows, cols] += windows[:, :, :, :, i, j]
    return out
