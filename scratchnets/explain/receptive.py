"""Receptive fields of every layer of a model: the standard recurrence, run on the model's graph.

Along one axis a layer with kernel k, stride s, padding p and dilation d maps the receptive field
(size r, jump j, start c) of its input to ::

    r_out = r_in + d*(k - 1) * j_in      j_out = j_in * s      c_out = c_in + (d*(k - 1)/2 - p) * j_in

(r: input pixels one unit sees; j: input pixels between neighbouring units; c: the centre of the
first unit's field, in input pixels; the input itself is r = 1, j = 1, c = 0). Written per unit,
this says that output unit i sees the union of the fields of the units its taps read. That
per-unit form is what is computed here, so that branches work too: every activation carries, for
each of its rows and columns, the first and last input pixel it depends on (``Axis``), and each
op combines the bounds of what it reads: a conv or a pooling its taps, a resize its source
pixels, add / mul / concat the union of their inputs (an SE gate's global pooling makes every
later unit see the whole image). Padding taps read virtual pixels past the image's edge,
continuing the outermost unit's field by the jump, as the recurrence does; the measured field of
a unit is its field clipped to the image.

The pass runs the model's own forward on the "receptive" backend (this module): like the
meta backend it computes no values, its arrays (``FieldArray``) carry the bounds instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backends import OPS, exported_names
from ..profile import meta
from ..profile.summary import ForwardSwap
from ..reference.conv import conv_geometry
from ..reference.pad import OUTSIDE, pad_source_index
from ..reference.pooling import adaptive_output_size, adaptive_windows, pool_geometry
from ..reference.upsample import linear_taps, nearest_taps
from ..reference.windows import normalize_padding, pair


@dataclass(frozen=True)
class Axis:
    """Receptive-field bounds along one axis: ``bounds[i] = (first, last)`` input pixel that unit
    i depends on (virtual pixels outside the image allowed), and the jump between units."""

    bounds: np.ndarray  # (n, 2) float
    jump: float
    image: int  # the input's extent along this axis
    whole_image: bool = False  # reached through a global pooling: every unit sees everything

    @classmethod
    def identity(cls, n: int) -> Axis:
        i = np.arange(n, dtype=float)
        return cls(np.stack([i, i], axis=1), 1.0, n)

    def _with(self, bounds: np.ndarray, jump: float) -> Axis:
        return Axis(bounds, jump, self.image, self.whole_image)

    def at(self, index: np.ndarray) -> np.ndarray:
        """Bounds of units at ``index`` (any ints): past either end, the outermost unit's field
        moved on by the jump (a padding tap's virtual field). Shape (*index.shape, 2)."""
        n = len(self.bounds)
        inside = np.clip(index, 0, n - 1)
        shift = (index - inside)[..., None] * self.jump
        return self.bounds[inside] + shift

    def windows(self, first: np.ndarray, taps: int, dilation: int, stride: int) -> Axis:
        """Unit p reads units ``first[p] + t*dilation``, t < taps: the union of their fields."""
        read = self.at(first[:, None] + dilation * np.arange(taps)[None, :])  # (out, taps, 2)
        return self._with(np.stack([read[..., 0].min(1), read[..., 1].max(1)], 1),
                          self.jump * stride)  # fmt: skip

    def gather(self, sources: list[np.ndarray], out: int) -> Axis:
        """Unit p reads the units ``source[p]`` of every source array: the union."""
        read = np.stack([self.at(s) for s in sources], axis=1)  # (out, sources, 2)
        jump = self.jump * len(self.bounds) / out
        return self._with(np.stack([read[..., 0].min(1), read[..., 1].max(1)], 1), jump)

    def union(self, other: Axis) -> Axis:
        """Elementwise union with broadcasting (a 1-unit axis against an n-unit one)."""
        lo = np.minimum(self.bounds[:, 0], other.bounds[:, 0])
        hi = np.maximum(self.bounds[:, 1], other.bounds[:, 1])
        jump = self.jump if len(self.bounds) >= len(other.bounds) else other.jump
        whole_image = self.whole_image or other.whole_image
        return Axis(np.stack([lo, hi], 1), jump, self.image, whole_image)

    def whole(self) -> Axis:
        """One unit that sees the whole image (a global pooling: no virtual pixels remain)."""
        bounds = np.array([[0.0, self.image - 1.0]])
        return Axis(bounds, float(self.image), self.image, whole_image=True)


class FieldArray(np.ndarray):
    """An activation of the receptive-field pass: a shape, meaningless values, and the ``rows`` /
    ``cols`` ``Axis`` of its last two dimensions (a flattened or pooled array keeps the last
    spatial ones it had)."""

    rows: Axis
    cols: Axis

    def __array_finalize__(self, obj):
        self.rows = getattr(obj, "rows", None)
        self.cols = getattr(obj, "cols", None)


def field_array(shape, dtype, rows: Axis, cols: Axis) -> FieldArray:
    out = np.empty(shape, dtype=dtype).view(FieldArray)
    out.rows, out.cols = rows, cols
    return out


def _like(x, shape, rows: Axis, cols: Axis):
    """The op's result: an array of ``shape`` with the new bounds, and a cache (unused)."""
    return field_array(shape, x.dtype, rows, cols), None


# ------------------------------------------------------------------------------------- ops


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    g = conv_geometry(x.shape, w.shape, stride, padding, dilation, groups)
    (kh, kw), (sh, sw), (dh, dw), (top, _, left, _) = g.kernel, g.stride, g.dilation, g.pads
    OH, OW = g.out_hw
    rows = x.rows.windows(np.arange(OH) * sh - top, kh, dh, sh)
    cols = x.cols.windows(np.arange(OW) * sw - left, kw, dw, sw)
    return _like(x, g.out_shape, rows, cols)


def _pool(x, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    g = pool_geometry(x.shape, kernel_size, stride, padding, "pool", dilation, ceil_mode)
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = g.kernel, g.stride, g.dilation, g.padding
    OH, OW = g.out_hw
    rows = x.rows.windows(np.arange(OH) * sh - ph, kh, dh, sh)
    cols = x.cols.windows(np.arange(OW) * sw - pw, kw, dw, sw)
    return _like(x, g.out_shape, rows, cols)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    return _pool(x, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, divisor_override=None):  # fmt: skip
    return _pool(x, kernel_size, stride, padding, ceil_mode=ceil_mode)


def global_avg_pool2d_forward(x):
    return _like(x, (*x.shape[:2], 1, 1), x.rows.whole(), x.cols.whole())


def _adaptive(x, output_size):
    OH, OW = adaptive_output_size(output_size, x.shape[2:])

    def axis(a: Axis, size: int, out: int) -> Axis:
        start, end = adaptive_windows(size, out)
        width = int((end - start).max())
        first = np.minimum(start[:, None] + np.arange(width)[None, :], (end - 1)[:, None])
        return a.gather([first[:, t] for t in range(width)], out)

    return _like(x, (*x.shape[:2], OH, OW), axis(x.rows, x.shape[2], OH),
                 axis(x.cols, x.shape[3], OW))  # fmt: skip


def adaptive_avg_pool2d_forward(x, output_size):
    return _adaptive(x, output_size)


def adaptive_max_pool2d_forward(x, output_size):
    return _adaptive(x, output_size)


def pad2d_forward(x, padding, mode="constant", value=0.0):
    y, _ = meta.pad2d_forward(x, padding, mode, value)
    top, bottom, left, right = normalize_padding(padding)

    def axis(a: Axis, size: int, before: int, after: int) -> Axis:
        source = pad_source_index(size, before, after, mode)
        virtual = np.arange(-before, size + after)  # the constant's border: virtual pixels
        return a.gather([np.where(source == OUTSIDE, virtual, source)], len(source))

    return _like(x, y.shape, axis(x.rows, x.shape[2], top, bottom),
                 axis(x.cols, x.shape[3], left, right))  # fmt: skip


def _resize(x, size, taps_of, sampling):
    OH, OW = pair(size, "size", minimum=1)

    def axis(a: Axis, n: int, out: int, index: int) -> Axis:
        taps = taps_of(n, out, sampling, index)
        first = taps[0][0]  # a tap of weight 0 reads nothing: count the first tap instead
        sources = [index if weight is None else np.where(weight != 0, index, first)
                   for index, weight in taps]  # fmt: skip
        return a.gather(sources, out)

    return _like(x, (*x.shape[:2], OH, OW), axis(x.rows, x.shape[2], OH, 0),
                 axis(x.cols, x.shape[3], OW, 1))  # fmt: skip


def upsample_nearest2d_forward(x, size, sampling=None):
    return _resize(x, size, nearest_taps, sampling)


def upsample_bilinear2d_forward(x, size, sampling=None):
    return _resize(x, size, linear_taps, sampling)


def _elementwise(x, *args, **kwargs):
    return _like(x, x.shape, x.rows, x.cols)


batch_norm2d_forward = relu_forward = relu6_forward = sigmoid_forward = _elementwise
hard_sigmoid_forward = hard_swish_forward = silu_forward = dropout_forward = _elementwise
clip_forward = _elementwise


def softmax_forward(x, axis=-1):
    """Elementwise except along ``axis``: a softmax over the rows or columns of a map (N, C, H, W)
    makes each unit see all of them."""
    axis %= x.ndim
    rows = x.rows.whole() if (x.ndim, axis) == (4, 2) else x.rows
    cols = x.cols.whole() if (x.ndim, axis) == (4, 3) else x.cols
    return _like(x, x.shape, rows, cols)


def _broadcast(a, b):
    shape = tuple(np.broadcast_shapes(a.shape, b.shape))
    if not isinstance(b, FieldArray) or b.rows is None:  # a constant
        return _like(a, shape, a.rows, a.cols)
    if not isinstance(a, FieldArray) or a.rows is None:
        return _like(b, shape, b.rows, b.cols)
    return _like(a, shape, a.rows.union(b.rows), a.cols.union(b.cols))


def add_forward(a, b):
    return _broadcast(a, b)


def mul_forward(a, b):
    return _broadcast(a, b)


def concat_forward(xs, axis=1):
    y, _ = meta.concat_forward(xs, axis)
    rows, cols = xs[0].rows, xs[0].cols
    for x in xs[1:]:
        rows, cols = rows.union(x.rows), cols.union(x.cols)
    return _like(xs[0], y.shape, rows, cols)


def slice_forward(x, start, stop, axis=1):
    y, _ = meta.slice_forward(x, start, stop, axis)
    axis %= x.ndim
    rows, cols = x.rows, x.cols
    if axis == x.ndim - 2:
        rows = rows._with(rows.bounds[start:stop], rows.jump)
    elif axis == x.ndim - 1:
        cols = cols._with(cols.bounds[start:stop], cols.jump)
    return _like(x, y.shape, rows, cols)


def linear_forward(x, w, b=None):
    y, _ = meta.linear_forward(x, w, b)
    return _like(x, y.shape, x.rows.whole(), x.cols.whole())


def cross_entropy_forward(logits, target, label_smoothing=0.0):
    return _like(logits, (), logits.rows.whole(), logits.cols.whole())


def _no_backward(op: str):
    def backward(*args, **kwargs):
        raise RuntimeError(f"{op}_backward: the receptive-field pass has no backward")

    return backward


for _op in OPS:
    globals()[f"{_op}_backward"] = _no_backward(_op)

__all__ = list(exported_names("receptive"))


# ------------------------------------------------------------------------------- per layer


@dataclass(frozen=True)
class LayerField:
    """The receptive field of one layer's output (per axis: rows, then columns)."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    size: tuple[float, float]  # input pixels the centre unit sees (virtual ones included)
    jump: tuple[float, float]  # input pixels between neighbouring units
    start: tuple[float, float]  # centre of the first unit's field
    centre: tuple[int, int]  # the centre unit (OH // 2, OW // 2)
    seen: tuple[tuple[int, int], tuple[int, int]]  # its field clipped to the image: rows, cols
    whole_image: bool  # through a global pooling (an SE / attention gate): sees everything


def _describe(name: str, module, out: FieldArray, image_hw) -> LayerField:
    axes = (out.rows, out.cols)
    centre = tuple(len(a.bounds) // 2 for a in axes)
    bounds = [a.bounds[c] for a, c in zip(axes, centre, strict=True)]
    return LayerField(
        name=name,
        type=type(module).__name__,
        output_shape=tuple(out.shape),
        size=tuple(float(hi - lo + 1) for lo, hi in bounds),
        jump=tuple(float(a.jump) for a in axes),
        start=tuple(float(a.bounds[0].mean()) for a in axes),
        centre=centre,
        seen=tuple(
            (int(max(lo, 0)), int(min(hi, n - 1)))
            for (lo, hi), n in zip(bounds, image_hw, strict=True)
        ),  # fmt: skip
        whole_image=out.rows.whole_image or out.cols.whole_image,
    )


def receptive_fields(model, input_shape) -> list[LayerField]:
    """The receptive field of every leaf layer's output (a map, or the features of a linear
    layer), in the order the layers ran (a layer called twice appears twice), for an input of
    ``input_shape`` (N, C, H, W). Runs the model's forward on the "receptive" backend
    (``profile.summary.ForwardSwap``); its backends, modes and caches are restored."""
    N, C, H, W = input_shape
    fields: list[LayerField] = []

    def wrap(name, module, forward):
        if any(True for _ in module.children()):
            return None  # composite: its leaves report

        def recorded(*args, **kwargs):
            out = forward(*args, **kwargs)
            if isinstance(out, FieldArray) and out.rows is not None and out.ndim in (2, 4):
                fields.append(_describe(name, module, out, (H, W)))
            return out

        return recorded

    swap = ForwardSwap(model, "receptive", wrap)
    try:
        model(field_array(input_shape, model.dtype, Axis.identity(H), Axis.identity(W)))
    finally:
        swap.restore()
    return fields
