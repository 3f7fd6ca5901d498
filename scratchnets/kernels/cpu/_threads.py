"""Thread policy of the CPU backend: one thread pool busy at a time, each using every core.

A process running the CPU kernels holds two thread pools:

* numba's, which runs the ``prange`` loops (OpenMP layer here; TBB or workqueue elsewhere);
* the BLAS library's behind ``numpy.matmul`` (OpenBLAS in NumPy's wheels), used by the GEMMs of
  the pointwise and im2col convolutions.

If both pools ran at once with one thread per core each, a 2-core machine would carry 4 busy
threads and every kernel would slow down by context switches and evicted caches. The policy:

1. **No nesting.** Jitted kernels never call BLAS, and BLAS is never called from inside a
   ``prange`` region: the Python wrappers alternate "numba pass" (im2col, col2im, depthwise) and
   "BLAS call" (``np.matmul``). Only one pool works at any moment, so each may use all cores.
2. **numba threads = usable cores.** numba sizes its pool from the host's CPU count; inside a
   container or under ``taskset`` fewer cores may be usable (``os.sched_getaffinity``).
   ``apply_policy`` lowers numba's active thread count to the usable cores (never raises it).
3. **BLAS threads are left at the library's default** (one per core; OpenBLAS reads
   ``OPENBLAS_NUM_THREADS``). ``threadpoolctl``, when installed, reports what BLAS uses; it is
   not a dependency.

Idle pools do not sleep at once: libgomp threads spin for a while after a parallel region and
OpenBLAS workers yield-spin after a GEMM, so right after a switch the idle pool still takes
some CPU. No wait policy (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) is forced here: it would
also change torch's OpenMP pool in the same process, and its effect has not been measured on a
quiet machine yet (bench/NOTES.md).
"""

from __future__ import annotations

import os

import numba


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), falling back to ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        return os.cpu_count() or 1


def apply_policy() -> int:
    """Cap numba's active threads at the usable cores; returns the thread count in effect."""
    cores = usable_cores()
    if numba.get_num_threads() > cores:
        numba.set_num_threads(cores)
    return numba.get_num_threads()


def _blas_description() -> str:
    """BLAS library and thread count (threadpoolctl if installed, else NumPy's build info)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        import numpy as np

        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
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
    }
