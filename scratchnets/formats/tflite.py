"""A TensorFlow Lite model file read with a small FlatBuffers reader of our own: tensors (name,
shape, type, data, quantization), operators (op name, inputs, outputs, options) and the graph's
inputs and outputs, as plain Python and NumPy objects. No TensorFlow needed.

FlatBuffers in brief (what ``_Table`` implements): the file starts with a uint32 offset to the
root table; a table starts with an int32 ``soffset`` back to its vtable, whose uint16 entries
give each field's position inside the table (0: absent, so the schema default). Offsets to
sub-tables, vectors and strings are uint32 relative to where they are stored; a vector is a
uint32 length followed by its elements. The field numbers below are the order of the fields in
TensorFlow Lite's ``schema.fbs``. Every read is bounds-checked: a damaged file is a
``TFLiteError`` naming what was out of range, never a crash or a huge allocation.

    model = read_tflite("mobilenet_v1_0.25_224_float.tflite")
    model.operators[0]   # Operator(op="CONV_2D", inputs=(87, 0, 32), outputs=(33,), options={...})
    model.tensors[0]     # Tensor(name="MobilenetV1/Conv2d_0/weights", shape=(8, 3, 3, 3), ...)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class TFLiteError(ValueError):
    """A file that is not a well-formed TensorFlow Lite flatbuffer."""


#: TensorType -> NumPy dtype (the types MobileNet files use, and their neighbours)
TENSOR_TYPES = {
    0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
    7: np.int16, 9: np.int8,
}  # fmt: skip
#: BuiltinOperator codes of the ops in mobile CNN graphs
BUILTIN_OPS = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL",
    19: "RELU", 21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 34: "PAD",
    40: "MEAN", 43: "SQUEEZE", 97: "RESIZE_NEAREST_NEIGHBOR", 114: "QUANTIZE",
    117: "HARD_SWISH",
}  # fmt: skip
PADDING = {0: "SAME", 1: "VALID"}
ACTIVATIONS = {0: None, 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH"}
#: builtin options tables: op -> fields as (name, field number, kind); kinds "i" int32,
#: "b" int8 / enum, "f" float32, "vi" vector of int32
_OPTIONS = {
    "CONV_2D": (("padding", 0, "b"), ("stride_w", 1, "i"), ("stride_h", 2, "i"),
                ("activation", 3, "b"), ("dilation_w", 4, "i"), ("dilation_h", 5, "i")),
    "DEPTHWISE_CONV_2D": (("padding", 0, "b"), ("stride_w", 1, "i"), ("stride_h", 2, "i"),
                          ("depth_multiplier", 3, "i"), ("activation", 4, "b"),
                          ("dilation_w", 5, "i"), ("dilation_h", 6, "i")),
    "AVERAGE_POOL_2D": (("padding", 0, "b"), ("stride_w", 1, "i"), ("stride_h", 2, "i"),
                        ("filter_w", 3, "i"), ("filter_h", 4, "i"), ("activation", 5, "b")),
    "MAX_POOL_2D": (("padding", 0, "b"), ("stride_w", 1, "i"), ("stride_h", 2, "i"),
                    ("filter_w", 3, "i"), ("filter_h", 4, "i"), ("activation", 5, "b")),
    "ADD": (("activation", 0, "b"),),
    "FULLY_CONNECTED": (("activation", 0, "b"),),
    "RESHAPE": (("new_shape", 0, "vi"),),
    "SOFTMAX": (("beta", 0, "f"),),
    "SQUEEZE": (("squeeze_dims", 0, "vi"),),
}  # fmt: skip
#: schema defaults of the option fields that are not 0
_OPTION_DEFAULTS = {"dilation_w": 1, "dilation_h": 1, "beta": 0.0}
_SCALARS = {"i": "<i", "b": "<b", "B": "<B", "I": "<I", "f": "<f", "q": "<q", "Q": "<Q"}


class _Table:
    """One FlatBuffers table of ``buf`` at byte ``pos``, its fields read by number."""

    def __init__(self, buf: bytes, pos: int, what: str):
        self.buf, self.pos, self.what = buf, pos, what
        vtable = pos - _read(buf, pos, "i", what)
        self.vtable_size = _read(buf, vtable, "H", f"{what} vtable")
        self.vtable = vtable

    def _field(self, number: int) -> int | None:
        """The absolute position of field ``number``, or None when the table omits it."""
        slot = 4 + 2 * number
        if slot >= self.vtable_size:
            return None
        offset = _read(self.buf, self.vtable + slot, "H", f"{self.what} vtable")
        return self.pos + offset if offset else None

    def scalar(self, number: int, kind: str, default=0):
        at = self._field(number)
        return default if at is None else _read(self.buf, at, kind, self.what)

    def _target(self, number: int) -> int | None:
        at = self._field(number)
        return None if at is None else at + _read(self.buf, at, "I", self.what)

    def table(self, number: int, what: str) -> _Table | None:
        at = self._target(number)
        return None if at is None else _Table(self.buf, at, what)

    def vector(self, number: int, what: str) -> tuple[int, int]:
        """``(start, length)`` of vector field ``number`` ((0, 0) when absent)."""
        at = self._target(number)
        if at is None:
            return 0, 0
        length = _read(self.buf, at, "I", what)
        return at + 4, length

    def scalars(self, number: int, kind: str, what: str) -> tuple:
        start, length = self.vector(number, what)
        size = struct.calcsize(_SCALARS[kind])
        _check_range(self.buf, start, length * size, what)
        return struct.unpack_from(f"<{length}{_SCALARS[kind][1]}", self.buf, start)

    def tables(self, number: int, what: str) -> list[_Table]:
        start, length = self.vector(number, what)
        _check_range(self.buf, start, 4 * length, what)
        return [
            _Table(self.buf, start + 4 * i + _read(self.buf, start + 4 * i, "I", what), what)
            for i in range(length)
        ]

    def string(self, number: int, what: str) -> str:
        start, length = self.vector(number, what)
        _check_range(self.buf, start, length, what)
        return self.buf[start : start + length].decode("utf-8", errors="replace")

    def bytes_(self, number: int, what: str) -> memoryview:
        start, length = self.vector(number, what)
        _check_range(self.buf, start, length, what)
        return memoryview(self.buf)[start : start + length]


def _check_range(buf: bytes, start: int, size: int, what: str) -> None:
    if start < 0 or size < 0 or start + size > len(buf):
        raise TFLiteError(
            f"{what}: bytes {start}..{start + size} lie outside the {len(buf)}-byte file "
            "(truncated or not a TFLite model)"
        )


def _read(buf: bytes, pos: int, kind: str, what: str):
    fmt = _SCALARS.get(kind, f"<{kind}")
    _check_range(buf, pos, struct.calcsize(fmt), what)
    return struct.unpack_from(fmt, buf, pos)[0]


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: type
    data: np.ndarray | None  # the constant's values (weights, biases), None for activations
    scale: tuple[float, ...] = ()  # quantization: real = scale * (q - zero_point)
    zero_point: tuple[int, ...] = ()


@dataclass(frozen=True)
class Operator:
    op: str
    inputs: tuple[int, ...]  # tensor indices; -1 = an omitted optional input
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TFLiteModel:
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    description: str


def _options(op: str, table: _Table | None) -> dict:
    out = {}
    for name, number, kind in _OPTIONS.get(op, ()):
        default = _OPTION_DEFAULTS.get(name, 0)
        if kind == "vi":
            value = () if table is None else table.scalars(number, "i", f"{op} {name}")
        else:
            value = default if table is None else table.scalar(number, kind, default)
        out[name] = value
    if "padding" in out:
        out["padding"] = PADDING.get(out["padding"], out["padding"])
    if "activation" in out:
        out["activation"] = ACTIVATIONS.get(out["activation"], out["activation"])
    return out


def _tensor(table: _Table, buffers: list[_Table], index: int) -> Tensor:
    what = f"tensor {index}"
    shape = tuple(int(d) for d in table.scalars(0, "i", f"{what} shape"))
    type_code = table.scalar(1, "B")
    if type_code not in TENSOR_TYPES:
        raise TFLiteError(f"{what}: tensor type {type_code} is not supported")
    dtype = TENSOR_TYPES[type_code]
    buffer_index = table.scalar(2, "I")
    if buffer_index >= len(buffers):
        raise TFLiteError(f"{what}: buffer {buffer_index} of {len(buffers)}")
    raw = buffers[buffer_index].bytes_(0, f"{what} data")
    data = None
    if len(raw):
        count = int(np.prod(shape, dtype=np.int64))
        if count * np.dtype(dtype).itemsize != len(raw):
            raise TFLiteError(
                f"{what} ({table.string(3, what)!r}): shape {shape} of {np.dtype(dtype).name} "
                f"needs {count * np.dtype(dtype).itemsize} bytes, its buffer holds {len(raw)}"
            )
        data = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    quantization = table.table(4, f"{what} quantization")
    scale = () if quantization is None else quantization.scalars(2, "f", f"{what} scale")
    zero = () if quantization is None else quantization.scalars(3, "q", f"{what} zero point")
    return Tensor(table.string(3, what), shape, dtype, data, tuple(scale), tuple(zero))


def read_tflite(path) -> TFLiteModel:
    """The first subgraph of the TFLite file ``path``: its tensors, operators, inputs, outputs."""
    buf = Path(path).read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise TFLiteError(f"{str(path)!r} is not a TFLite model (no 'TFL3' identifier at byte 4)")
    model = _Table(buf, _read(buf, 0, "I", "root offset"), "model")
    codes = []
    for code in model.tables(1, "operator codes"):
        builtin = max(code.scalar(0, "b"), code.scalar(3, "i"))  # the old byte field, or the int
        codes.append(BUILTIN_OPS.get(builtin) or code.string(1, "custom code") or f"OP_{builtin}")
    subgraphs = model.tables(2, "subgraphs")
    if not subgraphs:
        raise TFLiteError(f"{str(path)!r} has no subgraph")
    graph, buffers = subgraphs[0], model.tables(4, "buffers")
    tensors = [_tensor(t, buffers, i) for i, t in enumerate(graph.tables(0, "tensors"))]
    operators = []
    for i, op in enumerate(graph.tables(3, "operators")):
        index = op.scalar(0, "I")
        if index >= len(codes):
            raise TFLiteError(f"operator {i}: opcode {index} of {len(codes)}")
        ins, outs = op.scalars(1, "i", f"op {i} inputs"), op.scalars(2, "i", f"op {i} outputs")
        if any(t >= len(tensors) for t in ins + outs):
            raise TFLiteError(f"operator {i} ({codes[index]}) names a tensor past {len(tensors)}")
        options = _options(codes[index], op.table(4, f"op {i} options"))
        operators.append(Operator(codes[index], tuple(ins), tuple(outs), options))
    return TFLiteModel(
        tensors,
        operators,
        tuple(graph.scalars(1, "i", "graph inputs")),
        tuple(graph.scalars(2, "i", "graph outputs")),
        model.string(3, "description"),
    )
