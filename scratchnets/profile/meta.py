"""The "meta" backend: every op of ``scratchnets.backends.OP_NAMES``, computing only SHAPES.

A forward op checks its arguments the way the real backends do (so a wrongly wired model fails
here too, with a message naming the shapes), works out the output shape and returns
``(np.empty(out_shape, dtype), record)``: no arithmetic, the values are whatever the allocator
left. Running a model's own ``forward`` on this backend therefore propagates shapes through the
real architecture in milliseconds; ``scratchnets.profile.summary`` does exactly that.

The cache every forward returns is an ``OpRecord`` (the op, its activation input shapes, its output
shape and, for conv / linear / pooling, the weight shape or window) and, inside a ``recording()``
block, the record is also appended to the tape. Backward ops raise: there is nothing to
differentiate.

``scratchnets.backends`` knows it as "meta", so ``model.to("meta")`` works too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..arrays import FLOAT_DTYPES
from ..backends import OPS, exported_names
from ..reference.conv import conv_geometry
from ..reference.pad import check_pad
from ..reference.pooling import adaptive_output_size, pool_geometry
from ..reference.windows import pair

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OpRecord:
    """One op call seen by the meta backend.

    ``in_shapes``: the activation inputs (``x``; ``a, b`` for add/mul; every ``xs`` for concat).
    ``weight_shape``: conv ``(C_out, C_in / groups, kh, kw)`` or linear ``(out, in)``, else None.
    ``window``: ``(kh, kw)`` of a windowed pooling, else None.
    """

    op: str
    in_shapes: tuple[Shape, ...]
    out_shape: Shape
    weight_shape: Shape | None = None
    groups: int = 1
    has_bias: bool = False
    window: tuple[int, int] | None = None


_TAPES: list[list[OpRecord]] = []  # the open recording() blocks, innermost last


@contextmanager
def recording() -> Iterator[list[OpRecord]]:
    """Collect the ``OpRecord`` of every meta forward run inside the block, in call order."""
    tape: list[OpRecord] = []
    _TAPES.append(tape)
    try:
        yield tape
    finally:
        _TAPES.remove(tape)


def _shape(a, name: str) -> Shape:
    """The shape of a host or device array, after checking that its dtype is float32/float64."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if np.dtype(a.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {a.dtype}")
    return tuple(int(n) for n in a.shape)


def _nchw(x, op: str) -> Shape:
    shape = _shape(x, "x")
    if len(shape) != 4:
        raise ValueError(f"{op} expects x of shape (N, C, H, W), got shape {shape}")
    return shape


def _emit(record: OpRecord, dtype) -> tuple[np.ndarray, OpRecord]:
    """The op's result: an uninitialised array of the output shape, and the record as cache."""
    for tape in _TAPES:
        tape.append(record)
    return np.empty(record.out_shape, dtype=np.dtype(dtype)), record


def _no_backward(op: str):
    def backward(dy, cache):
        raise NotImplementedError(
            f"{op}_backward: the meta backend only propagates shapes; move the model to "
            "'reference', 'cpu' or 'cuda' to train it"
        )

    backward.__name__ = backward.__qualname__ = f"{op}_backward"
    backward.__doc__ = f"Raises NotImplementedError: ``{op}`` has no backward on the meta backend."
    return backward


# ------------------------------------------------------------------------- weighted ops


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Shape of ``F.conv2d``: x (N, C_in, H, W), w (C_out, C_in/groups, kh, kw) -> (N, C_out, OH, OW),
    from ``reference.conv.conv_geometry`` (the checks and output sizes every backend uses)."""
    x_shape, w_shape = _nchw(x, "conv2d"), _shape(w, "w")
    g = conv_geometry(x_shape, w_shape, stride, padding, dilation, groups)
    if b is not None and _shape(b, "b") != (g.out_channels,):
        raise ValueError(f"conv2d: b must have shape ({g.out_channels},), got {_shape(b, 'b')}")
    record = OpRecord("conv2d", (x_shape,), g.out_shape, w_shape, g.groups, b is not None)
    return _emit(record, x.dtype)


def pad2d_forward(x, padding, mode="constant", value=0.0):
    """Shape of ``F.pad`` on H and W: (N, C, H, W) -> (N, C, top + H + bottom, left + W + right),
    after the reference's checks of the mode and pad sizes."""
    N, C, H, W = _nchw(x, "pad2d")
    (top, bottom, left, right), _ = check_pad((N, C, H, W), padding, mode)
    record = OpRecord("pad2d", ((N, C, H, W),), (N, C, top + H + bottom, left + W + right))
    return _emit(record, x.dtype)


def linear_forward(x, w, b=None):
    """Shape of ``F.linear``: x (N, in), w (out, in) -> (N, out)."""
    x_shape, w_shape = _shape(x, "x"), _shape(w, "w")
    if len(x_shape) != 2 or len(w_shape) != 2 or x_shape[1] != w_shape[1]:
        raise ValueError(f"linear expects x (N, in) and w (out, in), got {x_shape} and {w_shape}")
    if b is not None and _shape(b, "b") != (w_shape[0],):
        raise ValueError(f"linear: b must have shape ({w_shape[0]},), got {_shape(b, 'b')}")
    record = OpRecord(
        "linear", (x_shape,), (x_shape[0], w_shape[0]), w_shape, has_bias=b is not None
    )
    return _emit(record, x.dtype)


def batch_norm2d_forward(
    x, weight, bias, running_mean, running_var, training=True, momentum=0.1, eps=1e-5
):
    """Shape of ``F.batch_norm``: (N, C, H, W) -> (N, C, H, W). The running stats are NOT touched."""
    shape = _nchw(x, "batch_norm2d")
    for name, a in (("weight", weight), ("bias", bias), ("running_mean", running_mean)):
        if a is not None and _shape(a, name) != (shape[1],):
            raise ValueError(
                f"batch_norm2d: {name} must have shape ({shape[1]},) for x of shape {shape}"
            )
    return _emit(OpRecord("batch_norm2d", (shape,), shape), x.dtype)


# ------------------------------------------------------------------ shape-preserving ops


def _same_shape(op: str):
    def forward(x, *args, **kwargs):
        shape = _shape(x, "x")
        return _emit(OpRecord(op, (shape,), shape), x.dtype)

    forward.__name__ = forward.__qualname__ = f"{op}_forward"
    forward.__doc__ = f"Shape of ``{op}``: the output has the input's shape."
    return forward


relu_forward = _same_shape("relu")
relu6_forward = _same_shape("relu6")
clip_forward = _same_shape("clip")  # (x, low, high)
softmax_forward = _same_shape("softmax")  # (x, axis)
sigmoid_forward = _same_shape("sigmoid")
hard_sigmoid_forward = _same_shape("hard_sigmoid")
hard_swish_forward = _same_shape("hard_swish")
silu_forward = _same_shape("silu")
dropout_forward = _same_shape("dropout")  # (x, p=0.5, training=True, seed=None)


# ------------------------------------------------------------------------------- pooling


def _pool(op: str, x, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    g = pool_geometry(_nchw(x, op), kernel_size, stride, padding, op, dilation, ceil_mode)
    return _emit(OpRecord(op, (g.in_shape,), g.out_shape, window=g.kernel), x.dtype)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Shape of ``F.max_pool2d``: (N, C, H, W) -> (N, C, OH, OW)."""
    return _pool("max_pool2d", x, kernel_size, stride, padding, dilation, ceil_mode)


def avg_pool2d_forward(
    x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None,
):  # fmt: skip
    """Shape of ``F.avg_pool2d``: (N, C, H, W) -> (N, C, OH, OW)."""
    return _pool("avg_pool2d", x, kernel_size, stride, padding, ceil_mode=ceil_mode)


def global_avg_pool2d_forward(x):
    """Shape of ``F.adaptive_avg_pool2d(x, 1)``: (N, C, H, W) -> (N, C, 1, 1)."""
    N, C, H, W = _nchw(x, "global_avg_pool2d")
    record = OpRecord("global_avg_pool2d", ((N, C, H, W),), (N, C, 1, 1), window=(H, W))
    return _emit(record, x.dtype)


def _adaptive(op: str, x, output_size):
    N, C, H, W = _nchw(x, op)
    OH, OW = adaptive_output_size(output_size, (H, W))
    return _emit(OpRecord(op, ((N, C, H, W),), (N, C, OH, OW)), x.dtype)


def adaptive_avg_pool2d_forward(x, output_size):
    """Shape of ``F.adaptive_avg_pool2d``: (N, C, H, W) -> (N, C, OH, OW)."""
    return _adaptive("adaptive_avg_pool2d", x, output_size)


def adaptive_max_pool2d_forward(x, output_size):
    """Shape of ``F.adaptive_max_pool2d``: (N, C, H, W) -> (N, C, OH, OW)."""
    return _adaptive("adaptive_max_pool2d", x, output_size)


def max_pool2d_indices(record: OpRecord) -> np.ndarray:
    """Shape of torch's ``return_indices``: the output's shape, int64 (values undefined)."""
    return np.empty(record.out_shape, dtype=np.int64)


adaptive_max_pool2d_indices = max_pool2d_indices


# ------------------------------------------------------------------------------ resizing


def _resize(op: str):
    def forward(x, size, sampling=None):
        N, C, H, W = _nchw(x, op)
        OH, OW = pair(size, "size", minimum=1)
        return _emit(OpRecord(op, ((N, C, H, W),), (N, C, OH, OW)), x.dtype)

    forward.__name__ = forward.__qualname__ = f"{op}_forward"
    forward.__doc__ = f"Shape of ``{op}``: (N, C, H, W) -> (N, C, *size)."
    return forward


upsample_nearest2d_forward = _resize("upsample_nearest2d")
upsample_bilinear2d_forward = _resize("upsample_bilinear2d")


# -------------------------------------------------------------------------- glue of blocks


def _broadcast(op: str):
    def forward(a, b):
        a_shape, b_shape = _shape(a, "a"), _shape(b, "b")
        if np.dtype(a.dtype) != np.dtype(b.dtype):
            raise TypeError(f"{op}: a and b must share one dtype, got {a.dtype} and {b.dtype}")
        try:
            out = tuple(np.broadcast_shapes(a_shape, b_shape))
        except ValueError:
            raise ValueError(f"{op}: shapes {a_shape} and {b_shape} do not broadcast") from None
        return _emit(OpRecord(op, (a_shape, b_shape), out), a.dtype)

    forward.__name__ = forward.__qualname__ = f"{op}_forward"
    forward.__doc__ = f"Shape of ``torch.{op}``: the broadcast shape of a and b."
    return forward


add_forward = _broadcast("add")
mul_forward = _broadcast("mul")


def _axis(axis: int, ndim: int, op: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def concat_forward(xs, axis=1):
    """Shape of ``torch.cat(xs, dim=axis)``: the sizes along ``axis`` add up."""
    shapes = [_shape(x, f"xs[{i}]") for i, x in enumerate(xs)]
    if not shapes:
        raise ValueError("concat needs at least one array")
    axis = _axis(axis, len(shapes[0]), "concat")
    if len({len(s) for s in shapes}) != 1 or len({s[:axis] + s[axis + 1 :] for s in shapes}) != 1:
        raise ValueError(f"concat along axis {axis}: shapes {shapes} differ in other dimensions")
    out = shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1 :]
    return _emit(OpRecord("concat", tuple(shapes), out), xs[0].dtype)


def slice_forward(x, start, stop, axis=1):
    """Shape of ``x[..., start:stop, ...]`` along ``axis``."""
    shape = _shape(x, "x")
    axis = _axis(axis, len(shape), "slice")
    if not 0 <= start <= stop <= shape[axis]:
        raise ValueError(
            f"slice: need 0 <= start <= stop <= {shape[axis]} along axis {axis} of x with shape "
            f"{shape}, got start={start}, stop={stop}"
        )
    out = shape[:axis] + (stop - start,) + shape[axis + 1 :]
    return _emit(OpRecord("slice", (shape,), out), x.dtype)


def cross_entropy_forward(logits, target, label_smoothing=0.0):
    """Shape of ``F.cross_entropy``: logits (N, K) -> a 0-d loss."""
    shape = _shape(logits, "logits")
    if len(shape) != 2 or shape[0] == 0:
        raise ValueError(f"cross_entropy expects logits of shape (N, K) with N >= 1, got {shape}")
    if tuple(np.shape(target)) != (shape[0],):
        raise ValueError(
            f"cross_entropy: target must have shape ({shape[0]},), got {np.shape(target)}"
        )
    return _emit(OpRecord("cross_entropy", (shape,), ()), logits.dtype)


for _op in OPS:
    globals()[f"{_op}_backward"] = _no_backward(_op)

__all__ = list(exported_names("meta"))
