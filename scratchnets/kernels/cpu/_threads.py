"""Thread policy of the CPU backend: one pool of busy threads at a time, and only one kind of pool.

A process running the CPU kernels would hold two pools of worker threads:

* numba's, which runs the ``prange`` loops (OpenMP layer here; TBB or workqueue elsewhere);
* the BLAS library's behind ``numpy.matmul`` (OpenBLAS in NumPy's wheels), for the GEMMs of the
  pointwise and im2col convolutions.

Idle workers do not sleep at once: OpenBLAS workers keep polling for new work for a long while
after each GEMM (its thread timeout is 2^28 cycles, about 0.1 s), and libgomp's workers spin
after each parallel region. A training step alternates a numba kernel and a GEMM about 300
times, so with both pools at one thread per core every numba kernel ran next to a spinning BLAS
worker on a 2-core machine. Measured (MobileNetV2 training step, batch 32, 128 px, 2 cores,
``python /tmp/step_time.py``-style median of 5; see bench/NOTES.md "Threads"): 1829 ms with both
pools at 2 threads, 690 ms with ``OPENBLAS_NUM_THREADS=1``, 781 ms with numba at 1 thread.

The policy:

1. **BLAS runs single-threaded** (``threadpoolctl``, applied when this backend is imported), so
   no BLAS worker ever polls. This also applies to NumPy GEMMs elsewhere in the process.
2. **GEMMs are split over the cores by this module** (``matmul``, ``sum_of_matmuls``,
   ``over_cores``): the batch of
   a batched product (or the rows of a single one) is cut into one contiguous piece per core,
   and each piece is one single-threaded BLAS call on a thread of a small pool; NumPy releases
   the GIL inside BLAS, so the pieces run in parallel. These threads block on a queue when idle
   (no spinning), and the numba pool is idle while they work: kernels never call BLAS and BLAS
   is never called inside a ``prange`` region.
3. **numba threads = usable cores.** numba sizes its pool from the host's CPU count; inside a
   container or under ``taskset`` fewer cores may be usable (``os.sched_getaffinity``);
   ``apply_policy`` lowers numba's active thread count to the usable cores (never raises it).

4. **numba's OpenMP workers spin briefly** (``GOMP_SPINCOUNT``, set to ``SPIN_COUNT`` when this
   module is imported unless the user set it; libgomp reads it once, when numba first loads it).
   libgomp's default spins for about 300 000 iterations after each parallel region, so a GEMM
   piece started right after a numba kernel found its core taken by a spinning worker: in the
   eval forward, splitting the GEMMs over 2 cores gained nothing (MobileNetV2 224 px batch 32:
   454 ms split, 396 ms unsplit). With 30 000 spins, back-to-back kernels still find their workers
   awake and the split pays: 275-290 ms (see bench/NOTES.md, "Spinning workers").
5. **Small GEMMs run on one core** (``SPLIT_MIN_MACS``): handing a piece to the pool and waiting
   for it costs more than the second core gains below a few 10^7 multiply-adds (every pointwise
   conv of MobileNetV2 at batch 1, 224 px: 5.3 ms split, 3.9 ms unsplit, measured alone).

Splitting a product into pieces changes only which BLAS calls compute which outputs; sums over
the pieces (``over_cores`` partial results) are added in piece order, so results are
deterministic on a given machine (the number of pieces follows its core count).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

import numba
import numpy as np

T = TypeVar("T")

#: libgomp's spin count for numba's idle workers (policy 4); a user's own setting wins
SPIN_COUNT = "30000"
_SPIN_COUNT_APPLIED = "GOMP_SPINCOUNT" not in os.environ
os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)

#: a GEMM with fewer multiply-adds than this runs as one BLAS call (policy 5)
SPLIT_MIN_MACS = 30_000_000


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), falling back to ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        return os.cpu_count() or 1


@cache
def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries loaded in this process (NumPy's, SciPy's)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def apply_policy() -> int:
    """BLAS single-threaded; numba's active threads capped at the usable cores (returned)."""
    _blas_controller().limit(limits=1)
    cores = usable_cores()
    if numba.get_num_threads() > cores:
        numba.set_num_threads(cores)
    return numba.get_num_threads()


@cache
def _gemm_pool() -> ThreadPoolExecutor:
    """Worker threads for the pieces of a split GEMM (the caller's thread runs one piece)."""
    return ThreadPoolExecutor(max_workers=max(1, usable_cores() - 1), thread_name_prefix="gemm")


def over_cores(n: int, work: Callable[[int, int], T]) -> list[T]:
    """``[work(lo, hi) for each piece]``: ``range(n)`` cut into one contiguous piece per usable
    core (at most n pieces), run concurrently; results in piece order. ``work`` should spend
    its time in code that releases the GIL (BLAS calls)."""
    pieces = min(n, usable_cores())
    if pieces <= 1:
        return [work(0, n)]
    bounds = [(k * n // pieces, (k + 1) * n // pieces) for k in range(pieces)]
    others = [_gemm_pool().submit(work, lo, hi) for lo, hi in bounds[1:]]
    first = work(*bounds[0])
    return [first, *(future.result() for future in others)]


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` on every core; ``a`` (M, K) or (B, M, K), ``b`` (K, P) or
    (B, K, P), ``out`` (M, P) or (B, M, P).

    One BLAS call below ``SPLIT_MIN_MACS`` multiply-adds; above, split along the batch axis B
    when it has at least one item per core (each piece a batch of independent GEMMs), else along
    the rows M of ``out`` (pieces of one GEMM). Returns ``out``.
    """
    batch = out.shape[0] if out.ndim == 3 else 1
    if out.size * a.shape[-1] < SPLIT_MIN_MACS:
        np.matmul(a, b, out=out)
    elif out.ndim == 3 and batch >= usable_cores():

        def piece(lo: int, hi: int) -> None:
            a_part = a[lo:hi] if a.ndim == 3 else a
            b_part = b[lo:hi] if b.ndim == 3 else b
            np.matmul(a_part, b_part, out=out[lo:hi])

        over_cores(batch, piece)
    else:
        over_cores(
            out.shape[-2],
            lambda lo, hi: np.matmul(a[..., lo:hi, :], b, out=out[..., lo:hi, :]),
        )
    return out


def sum_of_matmuls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_i a[i] @ b[i]`` for ``a`` (B, M, K), ``b`` (B, K, P) -> (M, P), on every core.

    With at least one item per core, each piece of the batch sums its own products and the
    pieces' sums are added in order; otherwise each piece takes a block of the M output rows.
    """
    if a.shape[0] >= usable_cores():
        partial_sums = over_cores(
            a.shape[0], lambda lo, hi: np.matmul(a[lo:hi], b[lo:hi]).sum(axis=0)
        )
        return functools.reduce(np.add, partial_sums)
    out = np.empty((a.shape[1], b.shape[2]), dtype=np.result_type(a, b))

    def rows(lo: int, hi: int) -> None:
        out[lo:hi] = np.matmul(a[:, lo:hi], b).sum(axis=0)

    over_cores(a.shape[1], rows)
    return out


def _blas_description() -> str:
    """BLAS libraries and their thread counts, as threadpoolctl reports them."""
    pools = _blas_controller().info()
    return ", ".join(f"{p['internal_api']} ({p['num_threads']} threads)" for p in pools) or "none"


def describe() -> dict:
    """The thread setup, for benchmark headers: cores, numba layer and threads, BLAS."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet, so no layer is loaded
        layer = f"not loaded yet (config: {numba.config.THREADING_LAYER})"
    return {
        "usable_cores": usable_cores(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": layer,
        "blas": _blas_description(),
        "gemm_threads": usable_cores(),
        "gemm_split_min_macs": SPLIT_MIN_MACS,
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")
        + ("" if _SPIN_COUNT_APPLIED else " (the user's)"),
    }
