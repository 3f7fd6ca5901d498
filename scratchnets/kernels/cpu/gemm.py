"""GEMMs on every core, tile by tile, with the epilogue applied while each tile is in cache.

``tiled_matmul(a, b, out)`` computes ``out[n] = op(a) @ b[n]`` (``op(a)`` = a or a.T) for a batch
of row-major matrices, and optionally ``act(out * scale[row] + shift[row])`` (an eval-mode
BatchNorm and a ReLU / ReLU6 / h-swish) in the same pass. It cuts the output into tiles
(``tile_plan``) and runs them in a Numba ``prange`` loop; each tile is **one single-threaded
BLAS call** (SciPy's ``sgemm`` / ``dgemm``, called through its C pointer from the Numba worker),
then the epilogue on that tile, still in L1.

Why not NumPy's ``matmul``: BLAS runs single-threaded here (its own threads fight numba's, see
``_threads``), so a small GEMM used one core, and splitting it over a Python thread pool cost
more than the second core gained (~40 us per hand-off). numba's workers are already awake
between kernels: a tile hand-off costs about a microsecond. Measured on a 2-core EPYC (AVX-512),
the 34 pointwise GEMMs of MobileNetV2 at 224 px, batch 1, alone: one NumPy call each 5.4 ms
(72-100 GFLOP/s), two pool pieces each 5.1 ms, tiles here 3.2 ms (102-187 GFLOP/s).

Why BLAS inside the tiles and not a micro-kernel of our own: a register-blocked Numba
micro-kernel (packed panels, 4-16 accumulators) reached 23-55 GFLOP/s on one core where
OpenBLAS's reaches 66-100 on the same shapes; LLVM does not keep Numba's accumulator blocks in
vector registers reliably (bench/NOTES.md).

BLAS is column-major; a row-major ``C (M, P) = A (M, K) @ B (K, P)`` is the column-major
``C^T = B^T A^T`` on the same memory, so each tile is ``gemm("N", op, P_tile, M_tile, K, B, ...)``
with the row strides as leading dimensions: no copies, any tile of any row-major operand.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
from numba import njit, prange

from ._threads import _blas_controller, apply_policy, planned_threads

#: the activations an epilogue applies, by code
ACTIVATION_CODES = {None: 0, "relu": 1, "relu6": 2, "hard_swish": 3}

#: an output tile is cut until it holds at most this many elements (8 KB of float32: in L1 for
#: the epilogue), unless that would leave it less than ``MIN_TILE_MACS`` of work. Measured on
#: the pointwise GEMMs of MobileNetV2 at 224 px (sum over the 34, medians; 2-core EPYC):
#: 64 Ki elements per tile 3.97 ms at batch 1 / 28.7 ms at batch 8, 16 Ki 3.52 / 26.8, 4 Ki
#: 3.20 / 24.9, 2 Ki 3.12 / 24.7, 1 Ki 2.99 / 24.0 (+-5 %): small tiles win (the output block
#: and the input panel stay in L1 / L2, and the cores finish together).
TILE_ELEMENTS = 2048
#: ... times ``inner / TILE_INNER`` where the inner dimension is longer: BLAS packs a tile's row
#: and column panels ((rows + columns) x inner values) on every call, and thin tiles over a long
#: inner dimension spent more on that than on the product. Sums over the pointwise GEMMs,
#: fastest of 3 (/tmp-style sweep recorded in bench/NOTES.md): MobileNetV1's training GEMMs at
#: b8 128 px 77.5 -> 60.2 ms, its eval GEMMs at 224 px b8 63.4 -> 56.2 ms; MobileNetV1 / V2 at
#: b1 and V2 at b8 and b32 training unchanged within noise.
TILE_INNER = 128
#: a BLAS call costs ~1 us: a tile keeps at least this many multiply-adds (~0.5 us of work)
MIN_TILE_MACS = 32 * 1024
#: tiles are not cut narrower or shorter than this (BLAS loses efficiency below)
MIN_TILE_COLUMNS, MIN_TILE_ROWS = 64, 16
#: column boundaries fall on multiples of this (64 bytes of float32: whole cache lines)
COLUMN_ALIGN = 16


def _fortran_blas(name: str):
    """SciPy's BLAS routine ``name`` (``scipy.linalg.cython_blas``: LP64, every argument by
    reference) as a ctypes function Numba can call: 13 pointers for ?gemm."""
    from scipy.linalg import cython_blas

    capsule = cython_blas.__pyx_capi__[name]
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = (
        ctypes.c_char_p,
        [ctypes.py_object],
    )
    api.PyCapsule_GetPointer.restype, api.PyCapsule_GetPointer.argtypes = (
        ctypes.c_void_p,
        [ctypes.py_object, ctypes.c_char_p],
    )
    address = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    return ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))(address)


@functools.cache
def blas_gemm(dtype):
    """``sgemm`` for float32, ``dgemm`` for float64. Loading SciPy's BLAS library registers it
    with threadpoolctl, so the thread policy (single-threaded BLAS) is applied to it here."""
    gemm = _fortran_blas({np.float32: "sgemm", np.float64: "dgemm"}[np.dtype(dtype).type])
    _blas_controller.cache_clear()  # see the newly loaded library
    apply_policy()
    return gemm


@njit(cache=True, inline="always")
def activate(v, activation, zero, three, six):
    """``ACTIVATION_CODES``' activation of one value, each a select (no branch, no store): the
    activation kernels' own float operations (``cpu.activations``); NaN passes through."""
    if activation == 1:
        return zero if v <= zero else v
    if activation == 2:
        return zero if v <= zero else (six if v >= six else v)
    if activation == 3:  # h-swish: v * min(max(v + 3, 0), 6) / 6
        r = v + three
        r = zero if r <= zero else (six if r >= six else r)
        return v * r / six
    return v


@njit(cache=True, inline="always")
def epilogue_row(row, s, use_scale, h, activation, zero, three, six):
    """row[i] = act(row[i] * s + h) in place (the multiply only with ``use_scale``; the multiply
    and the add round separately, as the ops in sequence). ``row`` is a 1-D view indexed from 0:
    with a non-zero start numba keeps its negative-index wrap in the loop and LLVM does not
    vectorise it (measured 3x slower in a GEMM tile)."""
    if use_scale:
        for i in range(row.size):
            row[i] = activate(row[i] * s + h, activation, zero, three, six)
    else:
        for i in range(row.size):
            row[i] = activate(row[i] + h, activation, zero, three, six)


@njit(cache=True, inline="always")
def epilogue_channels(pixel, scale, use_scale, shift, use_shift, activation, zero, three, six):
    """pixel[c] = act(pixel[c] * scale[c] + shift[c]) in place: ``epilogue_row`` for a
    channels-last output, where a row holds one pixel's channels (the multiply only with
    ``use_scale``, the add only with ``use_shift``; 1-D views indexed from 0)."""
    if use_scale and use_shift:
        for c in range(pixel.size):
            pixel[c] = activate(pixel[c] * scale[c] + shift[c], activation, zero, three, six)
    elif use_scale:
        for c in range(pixel.size):
            pixel[c] = activate(pixel[c] * scale[c], activation, zero, three, six)
    elif use_shift:
        for c in range(pixel.size):
            pixel[c] = activate(pixel[c] + shift[c], activation, zero, three, six)
    else:
        for c in range(pixel.size):
            pixel[c] = activate(pixel[c], activation, zero, three, six)


@njit(cache=True, inline="always")
def _gemm_tile(gemm, a, transpose_a, b, transpose_b, out, r0, r1, c0, c1, beta):
    """out[r0:r1, c0:c1] = op(a)[r0:r1] @ op(b)[:, c0:c1] + beta * out[r0:r1, c0:c1] for 2-D
    row-major operands with unit column stride; op(a) = a.T (a stored (K, M)) with
    ``transpose_a``, op(b) = b.T (b stored (P, K)) with ``transpose_b``."""
    itemsize = out.itemsize
    sizes = np.empty(6, np.int32)  # m, n, k, ldb, lda, ldc of the column-major call
    sizes[0], sizes[1] = c1 - c0, r1 - r0
    sizes[2] = b.shape[1] if transpose_b else b.shape[0]
    # leading dimensions: the row strides (a one-row array's stride may be anything numpy chose)
    sizes[3] = max(b.strides[0] // itemsize, b.shape[1], 1)
    sizes[4] = max(a.strides[0] // itemsize, a.shape[1], 1)
    sizes[5] = max(out.strides[0] // itemsize, out.shape[1], 1)
    scalars = np.empty(2, out.dtype)
    scalars[0], scalars[1] = 1, beta
    flags = np.empty(2, np.uint8)
    flags[0] = ord("T") if transpose_b else ord("N")
    flags[1] = ord("T") if transpose_a else ord("N")
    a_tile = a[:, r0:] if transpose_a else a[r0:]
    b_tile = b[c0:] if transpose_b else b[:, c0:]
    out_tile = out[r0:, c0:]
    # column-major C^T (P, M) = op(B)^T (P, K) @ op(A)^T (K, M), each read through its row stride
    gemm(flags[0:].ctypes, flags[1:].ctypes, sizes[0:].ctypes, sizes[1:].ctypes,
         sizes[2:].ctypes, scalars[0:].ctypes, b_tile.ctypes, sizes[3:].ctypes, a_tile.ctypes,
         sizes[4:].ctypes, scalars[1:].ctypes, out_tile.ctypes, sizes[5:].ctypes)  # fmt: skip


@njit(parallel=True, cache=True)
def _tiled_gemm(
    gemm, a, transpose_a, b, transpose_b, out, tiles, per_column,
    scale, use_scale, shift, use_shift, activation, zero, three, six,
):  # fmt: skip
    """out[n] = act(op(a) @ op(b[n]) * scale[:, None] + shift[:, None]) for b (N, K, P) (or
    (N, P, K) with ``transpose_b``), out (N, M, P), one tile (n, r0, r1, c0, c1) per step; the
    multiply only with ``use_scale``, the add only with ``use_shift``, ``activation`` an
    ``ACTIVATION_CODES`` value (``zero``, ``three``, ``six`` in out's dtype). With
    ``per_column`` the scale and shift are per column instead (``scale[None, :]``: a
    channels-last output, pixels in rows). The multiply and the add round separately, as the
    ops in sequence."""
    one, nothing = out.dtype.type(1), out.dtype.type(0)
    plain = not use_scale and not use_shift and activation == 0
    for t in prange(tiles.shape[0]):
        n, r0, r1, c0, c1 = tiles[t, 0], tiles[t, 1], tiles[t, 2], tiles[t, 3], tiles[t, 4]
        _gemm_tile(gemm, a, transpose_a, b[n], transpose_b, out[n], r0, r1, c0, c1, 0.0)
        if plain:
            continue
        if per_column:
            column_scale = scale[c0:c1] if use_scale else scale
            column_shift = shift[c0:c1] if use_shift else shift
            for r in range(r0, r1):
                epilogue_channels(out[n, r, c0:c1], column_scale, use_scale, column_shift,
                                  use_shift, activation, zero, three, six)  # fmt: skip
            continue
        for r in range(r0, r1):
            s = scale[r] if use_scale else one
            h = shift[r] if use_shift else nothing
            epilogue_row(out[n, r, c0:c1], s, use_scale, h, activation, zero, three, six)


@njit(parallel=True, cache=True)
def _tiled_gemm_sum(gemm, a, b, transpose_b, out, tiles):
    """out = sum_n a[n] @ op(b[n]) for a (N, M, K), b (N, K, P) (or (N, P, K) with
    ``transpose_b``), out (M, P): each tile sums the batch in place (BLAS's beta = 1 after the
    first image), so there are no partial sums to add."""
    for t in prange(tiles.shape[0]):
        r0, r1, c0, c1 = tiles[t, 1], tiles[t, 2], tiles[t, 3], tiles[t, 4]
        for n in range(a.shape[0]):
            _gemm_tile(gemm, a[n], False, b[n], transpose_b, out, r0, r1, c0, c1,
                       0.0 if n == 0 else 1.0)  # fmt: skip


#: the epilogue's unused scale / shift arguments, per dtype (read by no one)
_NOTHING = {t: np.zeros(1, t) for t in (np.float32, np.float64)}


@functools.cache
def _epilogue_constants(dtype_type, activation) -> tuple:
    return (ACTIVATION_CODES[activation], *map(dtype_type, (0, 3, 6)))


def epilogue_arguments(dtype, scale, shift, activation) -> tuple:
    """The epilogue arguments of ``_tiled_gemm`` (and ``fused``'s plane epilogue) for
    ``act(y * scale + shift)`` per row: ``(scale, use_scale, shift, use_shift, activation code,
    zero, three, six)``; ``scale`` / ``shift`` contiguous (M,) arrays of ``dtype`` or None,
    ``activation`` a key of ``ACTIVATION_CODES``."""
    nothing = _NOTHING[dtype.type]
    return (
        nothing if scale is None else scale, scale is not None,
        nothing if shift is None else shift, shift is not None,
        *_epilogue_constants(dtype.type, activation),
    )  # fmt: skip


def _contiguous(vector, dtype):
    return None if vector is None else np.ascontiguousarray(vector, dtype)


def _cuts(length: int, pieces: int, align: int) -> list[int]:
    """``pieces`` + 1 boundaries of ``range(length)``, as even as possible on multiples of
    ``align`` (the last is ``length``)."""
    bounds = [min(length, round(k * length / pieces / align) * align) for k in range(pieces)]
    return [*bounds, length]


def most_tile_elements(inner: int) -> float:
    """How many output elements a tile is cut down to, for ``inner`` terms per element."""
    return TILE_ELEMENTS * max(1.0, inner / TILE_INNER)


@functools.lru_cache(maxsize=4096)
def tile_plan(batch: int, rows: int, columns: int, inner: int, cores: int) -> np.ndarray:
    """The tiles (n, r0, r1, c0, c1) of a (batch, rows, columns) output with ``inner`` terms per
    element: every image cut into the same grid, columns first (the weights' packed rows are then
    reused), until there are at least ``cores`` tiles (a multiple of ``cores`` while there are
    few) and each holds at most ``most_tile_elements(inner)``, as long as a tile keeps
    ``MIN_TILE_MACS`` of work and ``MIN_TILE_COLUMNS`` x ``MIN_TILE_ROWS`` elements."""
    row_pieces = column_pieces = 1
    most = most_tile_elements(inner)

    def wanted() -> bool:
        count, pieces = batch * row_pieces * column_pieces, row_pieces * column_pieces
        elements = rows * columns / pieces
        too_big = elements > most and elements * inner >= 2 * MIN_TILE_MACS
        return count < cores or too_big or (count < 4 * cores and count % cores != 0)

    while wanted():
        if columns >= MIN_TILE_COLUMNS * (column_pieces + 1):
            column_pieces += 1
        elif rows >= MIN_TILE_ROWS * (row_pieces + 1):
            row_pieces += 1
        else:
            break
    row_cuts = _cuts(rows, row_pieces, 1)
    column_cuts = _cuts(columns, column_pieces, COLUMN_ALIGN)
    tiles = [(n, row_cuts[i], row_cuts[i + 1], column_cuts[j], column_cuts[j + 1])
             for n in range(batch) for i in range(row_pieces) for j in range(column_pieces)
             if row_cuts[i] < row_cuts[i + 1] and column_cuts[j] < column_cuts[j + 1]]  # fmt: skip
    plan = np.array(tiles, dtype=np.int64).reshape(-1, 5)
    plan.flags.writeable = False
    return plan


def _rows_ready(m: np.ndarray) -> bool:
    """Whether BLAS can read the matrices of ``m`` (its last two axes) through a row stride:
    unit stride along a row, rows at least a row's length apart."""
    unit = m.strides[-1] == m.itemsize or m.shape[-1] == 1
    return unit and (m.shape[-2] == 1 or m.strides[-2] >= m.shape[-1] * m.itemsize)


def _stored(m: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(stored, transposed)``: ``m`` as BLAS reads it, either itself or, for a transposed view
    (``w.T``, ``x.transpose(0, 2, 1)``), the array under it with ``transposed``; otherwise a
    contiguous copy."""
    if _rows_ready(m):
        return m, False
    flipped = m.swapaxes(-1, -2)
    if _rows_ready(flipped):
        return flipped, True
    return np.ascontiguousarray(m), False


def _check_float(*arrays) -> np.dtype:
    dtype = arrays[-1].dtype
    if dtype not in (np.float32, np.float64) or any(a.dtype != dtype for a in arrays):
        names = ", ".join(str(a.dtype) for a in arrays)
        raise TypeError(f"tiled GEMM: float32 or float64 operands of one dtype, got {names}")
    return dtype


def tiled_matmul(a, b, out, scale=None, shift=None, activation=None) -> np.ndarray:
    """``out[n] = act(a @ b[n] * scale[:, None] + shift[:, None])`` in place, returned: ``a``
    (M, K), ``b`` (N, K, P) or (K, P) (transposed views such as ``w.T`` are read as they lie),
    ``out`` (N, M, P) or (M, P) with rows of unit stride, one float dtype; ``scale`` /
    ``shift`` (M,) or None, ``activation`` a key of ``ACTIVATION_CODES``."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {list(ACTIVATION_CODES)}, got {activation!r}")
    dtype = _check_float(a, b, out)
    (a, transpose_a), (b, transpose_b) = _stored(a), _stored(b)
    b3, out3 = (b, out) if out.ndim == 3 else (b[None], out[None])
    rows, inner = (a.shape[1], a.shape[0]) if transpose_a else a.shape
    b_inner, columns = (b3.shape[2], b3.shape[1]) if transpose_b else b3.shape[1:]
    if (len(b3), b_inner) != (out3.shape[0], inner) or out3.shape[1:] != (rows, columns):
        raise ValueError(f"tiled_matmul: shapes {a.shape}, {b.shape} -> {out.shape} do not fit")
    if out.size == 0:
        return out
    if not _rows_ready(out3):
        raise ValueError("tiled_matmul: out's rows must have unit stride and not overlap")
    tiles = tile_plan(out3.shape[0], rows, out3.shape[2], inner, planned_threads())
    _tiled_gemm(blas_gemm(dtype), a, transpose_a, b3, transpose_b, out3, tiles, False,
                *epilogue_arguments(dtype, _contiguous(scale, dtype), _contiguous(shift, dtype),
                                    activation))  # fmt: skip
    return out


def matmul(a, b, out) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` on every core for ``a`` (M, K), ``b`` (K, P) or (N, K, P):
    ``tiled_matmul`` without an epilogue. Returns ``out``."""
    return tiled_matmul(a, b, out)


def sum_of_matmuls(a, b) -> np.ndarray:
    """``sum_n a[n] @ b[n]`` for ``a`` (N, M, K), ``b`` (N, K, P) -> (M, P), on every core: each
    output tile accumulates the batch in BLAS (``x.transpose(0, 2, 1)`` is read as it lies)."""
    dtype = _check_float(a, b)
    a = a if _rows_ready(a) else np.ascontiguousarray(a)
    b, transpose_b = _stored(b)
    rows, columns = a.shape[1], b.shape[1] if transpose_b else b.shape[2]
    inner = b.shape[2] if transpose_b else b.shape[1]
    if a.ndim != 3 or b.ndim != 3 or len(a) != len(b) or a.shape[2] != inner:
        raise ValueError(f"sum_of_matmuls: shapes {a.shape} and {b.shape} do not fit")
    out = np.empty((rows, columns), dtype)
    if a.shape[0] == 0:
        out[...] = 0
        return out
    tiles = tile_plan(1, rows, columns, inner * len(a), planned_threads())
    _tiled_gemm_sum(blas_gemm(dtype), a, b, transpose_b, out, tiles)
    return out
