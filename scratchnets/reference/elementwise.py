"""Elementwise add / multiply with broadcasting, channel concat and slice: the glue of blocks.

Residual connections add two tensors of one shape; squeeze-excitation and GhostNet V2's DFC
attention multiply (N, C, H, W) by a gate of shape (N, C, 1, 1); the Ghost module concatenates
and slices channels. The backward rules (docs/elementwise.md):

* a broadcast input receives the SUM of the gradient over every position it was copied to;
* concat and slice are each other's adjoint: concat's backward slices, slice's backward pads
  with zeros (and so concatenates).
"""

from __future__ import annotations

import numpy as np

from .checks import check_dy, float_array


def broadcast_pair(a, b, op: str):
    a, b = float_array(a, "a"), float_array(b, "b")
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: a and b must share one dtype, got {a.dtype} and {b.dtype}")
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} do not broadcast") from None
    return a, b


def sum_to_shape(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum the broadcast gradient ``g`` back down to an input's ``shape``.

    Axes that broadcasting prepended are summed away; axes where the input had size 1 are summed
    with keepdims. E.g. g (N, C, H, W) -> shape (N, C, 1, 1) sums over H and W.
    """
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))  # drop prepended axes
    ones = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=ones, keepdims=True) if ones else g


def add_forward(a, b):
    """y = a + b with NumPy broadcasting (like ``torch.add``). Returns ``(y, cache)``."""
    a, b = broadcast_pair(a, b, "add")
    y = a + b
    return y, (a.shape, b.shape, y.shape)


def add_backward(dy, cache):
    """(da, db) = (dy, dy), each summed to its input's shape. A residual splits dy into both paths."""
    a_shape, b_shape, y_shape = cache
    dy = check_dy(dy, y_shape, "add")
    return sum_to_shape(dy, a_shape), sum_to_shape(dy, b_shape)


def mul_forward(a, b):
    """y = a * b with NumPy broadcasting (like ``torch.mul``). Returns ``(y, cache)``."""
    a, b = broadcast_pair(a, b, "mul")
    return a * b, (a, b)


def mul_backward(dy, cache):
    """(da, db) = (dy * b, dy * a), each summed to its input's shape.

    For a gate s (N, C, 1, 1) times features f (N, C, H, W): ds = sum_{h,w} dy * f.
    """
    a, b = cache
    dy = check_dy(dy, np.broadcast_shapes(a.shape, b.shape), "mul")
    return sum_to_shape(dy * b, a.shape), sum_to_shape(dy * a, b.shape)


def normalise_axis(axis: int, ndim: int, op: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def concat_forward(xs, axis=1):
    """y = the inputs joined along ``axis`` (like ``torch.cat(xs, dim=axis)``).

    All inputs must agree in every dimension except ``axis``. Returns ``(y, cache)``.
    """
    xs = [float_array(x, f"xs[{i}]") for i, x in enumerate(xs)]
    if not xs:
        raise ValueError("concat needs at least one array")
    if len({x.dtype for x in xs}) != 1:
        raise TypeError(f"concat: inputs must share one dtype, got {[str(x.dtype) for x in xs]}")
    axis = normalise_axis(axis, xs[0].ndim, "concat")
    shapes = [x.shape for x in xs]
    if len({len(s) for s in shapes}) != 1 or len({s[:axis] + s[axis + 1 :] for s in shapes}) != 1:
        raise ValueError(f"concat along axis {axis}: shapes {shapes} differ in other dimensions")
    y = np.concatenate(xs, axis=axis)
    sizes = [s[axis] for s in shapes]  # each input's extent along axis
    return y, (axis, sizes, y.shape)


def concat_backward(dy, cache):
    """Tuple of dx, one per input: dy cut back into the pieces along the concat axis."""
    axis, sizes, y_shape = cache
    dy = check_dy(dy, y_shape, "concat")
    bounds = np.cumsum(sizes)[:-1]  # split points between consecutive inputs
    return tuple(piece.copy() for piece in np.split(dy, bounds, axis=axis))


def _axis_slice(axis: int, start: int, stop: int) -> tuple:
    """Index selecting start:stop along ``axis`` and everything along the other axes."""
    return (slice(None),) * axis + (slice(start, stop),)


def slice_forward(x, start, stop, axis=1):
    """y = x[..., start:stop, ...] along ``axis`` (a copy), with 0 <= start <= stop <= x.shape[axis].

    Like ``torch.narrow(x, axis, start, stop - start)``. Returns ``(y, cache)``.
    """
    x = float_array(x, "x")
    axis = normalise_axis(axis, x.ndim, "slice")
    if not 0 <= start <= stop <= x.shape[axis]:
        raise ValueError(
            f"slice: need 0 <= start <= stop <= {x.shape[axis]} along axis {axis} of x with "
            f"shape {x.shape}, got start={start}, stop={stop}"
        )
    index = _axis_slice(axis, start, stop)
    y = x[index].copy()
    return y, (x.shape, index, y.shape)


def slice_backward(dy, cache):
    """dx: dy placed at start:stop along the axis, zeros elsewhere (the dropped part gets no gradient)."""
    x_shape, index, y_shape = cache
    dy = check_dy(dy, y_shape, "slice")
    dx = np.zeros(x_shape, dtype=dy.dtype)
    dx[index] = dy
    return dx
