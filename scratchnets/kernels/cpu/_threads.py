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
2. **GEMMs are split over the cores as numba tiles** (``gemm.py``): each output tile is one
   single-threaded BLAS call made from a numba worker inside a ``prange`` loop, so the GEMMs use
   the same pool as every other kernel. (Before, the pieces went to a Python thread pool: ~40 us
   per hand-off, more than the second core gained on a small GEMM, so GEMMs below 3e7
   multiply-adds ran on one core; bench/NOTES.md.)
3. **numba threads = usable cores.** numba sizes its pool from the host's CPU count; inside a
   container or under ``taskset`` fewer cores may be usable (``os.sched_getaffinity``);
   ``apply_policy`` lowers numba's active thread count to the usable cores (never raises it).

4. **numba's OpenMP workers spin briefly** (``GOMP_SPINCOUNT``, set to ``SPIN_COUNT`` when this
   module is imported unless the user set it; libgomp reads it once, when numba first loads it).
   libgomp's default spins for about 300 000 iterations after each parallel region, which kept
   a core busy that a GEMM on a Python thread needed (bench/NOTES.md, "Spinning workers"). With
   30 000 spins, back-to-back kernels still find their workers awake.
"""

from __future__ import annotations

import os
from functools import cache

import numba

#: libgomp's spin count for numba's idle workers (policy 4); a user's own setting wins
SPIN_COUNT = "30000"
_SPIN_COUNT_APPLIED = "GOMP_SPINCOUNT" not in os.environ
os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), falling back to ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        return os.cpu_count() or 1


@cache
def planned_threads() -> int:
    """The threads a kernel's work is cut for (GEMM tiles, depthwise spans): numba's pool size
    capped at the usable cores, read once. ``numba.get_num_threads()`` costs ~1.6 us a call,
    paid by every GEMM; a user who lowers the count later still gets every thread busy (the
    work is cut into at least as many pieces as needed)."""
    return min(numba.config.NUMBA_NUM_THREADS, usable_cores())


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
        "gemm": "one single-threaded BLAS call per output tile, tiles on numba's threads",
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")
        + ("" if _SPIN_COUNT_APPLIED else " (the user's)"),
    }
