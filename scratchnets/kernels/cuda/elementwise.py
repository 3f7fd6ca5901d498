"""Add / multiply with broadcasting, channel concat and slice on the GPU.

**add, mul**: NumPy broadcasting of arrays with up to 4 dimensions (the models need equal
shapes and (N, C, 1, 1) gates against (N, C, H, W)). Both operands are viewed as 4-D (leading
axes of size 1 prepended, no copy) and a thread computes one output element, reading index 0
along every axis where its operand has size 1. Backward (gather, deterministic): one thread per
element of an input sums the output gradient over every position that element was broadcast to
(loops over the axes where the input has size 1 and the output does not), times the other
operand for mul. More than 4 dimensions raise ValueError.

**concat, slice**: copies of channel slabs. An array is viewed as (outer, axis, inner) around
the concat/slice axis; ``_copy_slab_kernel`` copies ``length`` consecutive positions of that
axis from one array into another (concat forward, concat backward, slice forward); slice
backward writes every element of dx (dy inside start:stop, zero outside), so no zero-filling
pass is needed.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from scratchnets.reference.elementwise import broadcast_pair, normalise_axis

from ._launch import check_float, device_array, device_dy, empty, host_proxy, launch_1d

_MAX_DIMS = 4


def _as_4d(a):
    """The C-contiguous device array ``a`` viewed with 4 dims (size-1 axes prepended)."""
    return a.reshape((1,) * (_MAX_DIMS - len(a.shape)) + tuple(a.shape))


@cuda.jit(device=True)
def _unravel(i, shape):
    """(i0, i1, i2, i3) of flat index i in a C-ordered 4-D ``shape``."""
    return (
        i // (shape[3] * shape[2] * shape[1]),
        (i // (shape[3] * shape[2])) % shape[1],
        (i // shape[3]) % shape[2],
        i % shape[3],
    )


@cuda.jit(device=True)
def _read(a, i0, i1, i2, i3):
    """a at the output index (i0..i3), index 0 along the axes where a has size 1 (broadcast)."""
    return a[
        0 if a.shape[0] == 1 else i0,
        0 if a.shape[1] == 1 else i1,
        0 if a.shape[2] == 1 else i2,
        0 if a.shape[3] == 1 else i3,
    ]


@cuda.jit
def _binary_kernel(a, b, multiply, y):
    # a, b, y: 4-D; a and b broadcast to y's shape
    i = cuda.grid(1)
    if i < y.size:
        i0, i1, i2, i3 = _unravel(i, y.shape)
        va, vb = _read(a, i0, i1, i2, i3), _read(b, i0, i1, i2, i3)
        y[i0, i1, i2, i3] = va * vb if multiply else va + vb


@cuda.jit(device=True)
def _span(j, in_size, out_size):
    """Output positions fed by input position j along one axis: all of them when broadcast."""
    return (0, out_size) if (in_size == 1 and out_size != 1) else (j, j + 1)


@cuda.jit
def _reduce_kernel(dy, other, multiply, dx):
    # dx[j] = sum over the outputs o that input element j was broadcast to of dy[o] (* other[o])
    i = cuda.grid(1)
    if i < dx.size:
        j0, j1, j2, j3 = _unravel(i, dx.shape)
        lo0, hi0 = _span(j0, dx.shape[0], dy.shape[0])
        lo1, hi1 = _span(j1, dx.shape[1], dy.shape[1])
        lo2, hi2 = _span(j2, dx.shape[2], dy.shape[2])
        lo3, hi3 = _span(j3, dx.shape[3], dy.shape[3])
        acc = dx.dtype.type(0)
        for o0 in range(lo0, hi0):
            for o1 in range(lo1, hi1):
                for o2 in range(lo2, hi2):
                    for o3 in range(lo3, hi3):
                        g = dy[o0, o1, o2, o3]
                        acc += (g * _read(other, o0, o1, o2, o3)) if multiply else g
        dx[j0, j1, j2, j3] = acc


def _binary_forward(a, b, op: str, multiply: bool):
    broadcast_pair(host_proxy(a), host_proxy(b), op)  # the reference's dtype / shape errors
    out_shape = np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
    if len(out_shape) > _MAX_DIMS:
        raise ValueError(
            f"{op} on the cuda backend supports up to {_MAX_DIMS} dimensions, got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = device_array(a, "a"), device_array(b, "b")
    y = empty(out_shape, a.dtype)
    launch_1d(_binary_kernel, y.size, _as_4d(a), _as_4d(b), multiply, _as_4d(y))
    return y, a, b


def _reduce_to(dy, shape, other, multiply: bool):
    """dy (times ``other``) summed down to an input's ``shape`` (a new device array)."""
    dx = empty(shape, dy.dtype)
    launch_1d(_reduce_kernel, dx.size, _as_4d(dy), _as_4d(other), multiply, _as_4d(dx))
    return dx


def add_forward(a, b):
    """y = a + b with NumPy broadcasting (up to 4-D); like ``torch.add``. Returns ``(y, cache)``."""
    y, a, b = _binary_forward(a, b, "add", multiply=False)
    return y, (tuple(a.shape), tuple(b.shape), tuple(y.shape))


def add_backward(dy, cache):
    """(da, db) = dy summed to each input's shape (new device arrays)."""
    a_shape, b_shape, y_shape = cache
    dy = device_dy(dy, y_shape, check_float(dy, "dy"), "add_backward")
    return _reduce_to(dy, a_shape, dy, False), _reduce_to(dy, b_shape, dy, False)


def mul_forward(a, b):
    """y = a * b with NumPy broadcasting (up to 4-D); like ``torch.mul``. Returns ``(y, cache)``."""
    y, a, b = _binary_forward(a, b, "mul", multiply=True)
    return y, (a, b, tuple(y.shape))


def mul_backward(dy, cache):
    """(da, db) = (dy * b, dy * a), each summed to its input's shape."""
    a, b, y_shape = cache
    dy = device_dy(dy, y_shape, a.dtype, "mul_backward")
    return _reduce_to(dy, tuple(a.shape), b, True), _reduce_to(dy, tuple(b.shape), a, True)


# ---------------------------------------------------------------------------------------------
# concat and slice
# ---------------------------------------------------------------------------------------------


def _slab_view(a, axis: int):
    """The contiguous device array ``a`` as (outer, a.shape[axis], inner)."""
    shape = tuple(a.shape)
    return a.reshape(math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :]))


@cuda.jit
def _copy_slab_kernel(src, src_start, dst, dst_start, length):
    # dst[a, dst_start + k, c] = src[a, src_start + k, c] for k < length
    i = cuda.grid(1)
    inner = src.shape[2]
    if i < src.shape[0] * length * inner:
        a, k, c = i // (length * inner), (i // inner) % length, i % inner
        dst[a, dst_start + k, c] = src[a, src_start + k, c]


@cuda.jit
def _pad_slab_kernel(src, start, dst):
    # dst[a, k, c] = src[a, k - start, c] inside start:start+len, 0 elsewhere
    i = cuda.grid(1)
    if i < dst.size:
        inner, length = dst.shape[2], dst.shape[1]
        a, k, c = i // (length * inner), (i // inner) % length, i % inner
        inside = start <= k < start + src.shape[1]
        dst[a, k, c] = src[a, k - start, c] if inside else dst.dtype.type(0)


def _copy_slab(src, src_start: int, dst, dst_start: int, length: int, axis: int) -> None:
    s, d = _slab_view(src, axis), _slab_view(dst, axis)
    launch_1d(
        _copy_slab_kernel, s.shape[0] * length * s.shape[2], s, src_start, d, dst_start, length
    )


def concat_forward(xs, axis=1):
    """y = the inputs joined along ``axis``; like ``torch.cat(xs, dim=axis)``. Returns
    ``(y, cache)``, y a device array."""
    if not len(xs):
        raise ValueError("concat needs at least one array")
    dtypes = [check_float(x, f"xs[{i}]") for i, x in enumerate(xs)]
    if len(set(dtypes)) != 1:
        raise TypeError(f"concat: inputs must share one dtype, got {[str(d) for d in dtypes]}")
    shapes = [tuple(x.shape) for x in xs]
    axis = normalise_axis(axis, len(shapes[0]), "concat")
    if len({len(s) for s in shapes}) != 1 or len({s[:axis] + s[axis + 1 :] for s in shapes}) != 1:
        raise ValueError(f"concat along axis {axis}: shapes {shapes} differ in other dimensions")
    sizes = [s[axis] for s in shapes]
    y = empty(shapes[0][:axis] + (sum(sizes),) + shapes[0][axis + 1 :], dtypes[0])
    offset = 0
    for x, size in zip(xs, sizes, strict=True):
        _copy_slab(device_array(x, "x"), 0, y, offset, size, axis)
        offset += size
    return y, (axis, sizes, tuple(y.shape))


def concat_backward(dy, cache):
    """Tuple of dx, one per input: dy cut back into the pieces along the concat axis."""
    axis, sizes, y_shape = cache
    dy = device_dy(dy, y_shape, check_float(dy, "dy"), "concat_backward")
    pieces, offset = [], 0
    for size in sizes:
        piece = empty(y_shape[:axis] + (size,) + y_shape[axis + 1 :], dy.dtype)
        _copy_slab(dy, offset, piece, 0, size, axis)
        pieces.append(piece)
        offset += size
    return tuple(pieces)


def slice_forward(x, start, stop, axis=1):
    """y = x[..., start:stop, ...] along ``axis`` (a copy), 0 <= start <= stop <= x.shape[axis];
    like ``torch.narrow``. Returns ``(y, cache)``, y a device array."""
    check_float(x, "x")
    shape = tuple(x.shape)
    axis = normalise_axis(axis, len(shape), "slice")
    if not 0 <= start <= stop <= shape[axis]:
        raise ValueError(
            f"slice: need 0 <= start <= stop <= {shape[axis]} along axis {axis} of x with "
            f"shape {shape}, got start={start}, stop={stop}"
        )
    x = device_array(x, "x")
    y = empty(shape[:axis] + (stop - start,) + shape[axis + 1 :], x.dtype)
    _copy_slab(x, start, y, 0, stop - start, axis)
    return y, (shape, axis, start, tuple(y.shape))


def slice_backward(dy, cache):
    """dx: dy at start:stop along the axis, zeros elsewhere."""
    x_shape, axis, start, y_shape = cache
    dy = device_dy(dy, y_shape, check_float(dy, "dy"), "slice_backward")
    dx = empty(x_shape, dy.dtype)
    launch_1d(_pad_slab_kernel, dx.size, _slab_view(dy, axis), start, _slab_view(dx, axis))
    return dx
