"""Launch geometry and host/device array handling shared by every numba.cuda kernel.

* ``launch_1d(kernel, n, *args)``: one thread per element of a flat range ``0 <= i < n``.
* ``device_array(a, name, dtype)``: any float array (NumPy or device) as a C-contiguous device
  array of the requested float dtype; the kernels can then assume one layout per dtype.
* ``host_proxy(a)``: a zero-stride NumPy array with the shape and dtype of ``a`` (host or
  device), so that the reference backend's argument validation runs unchanged on device arrays
  without copying them back (only shapes and dtypes are read).

Only features of real devices are used (``cuda.grid``, ``cuda.to_device``, ``device_array``,
``copy_to_device``), so everything here behaves the same under the simulator
(``NUMBA_ENABLE_CUDASIM=1``) and on a GPU.
"""

from __future__ import annotations

import numpy as np
from numba import config, cuda

from scratchnets.arrays import is_device_array
from scratchnets.reference.checks import float_array

#: True when numba runs kernels in its Python simulator (no GPU). The simulator runs every thread
#: as a Python thread (about 0.3 ms each), so block-wide reductions and GEMM tiles then use small
#: blocks: the same code paths (several tree levels, several tiles) at a fraction of the threads.
SIMULATED = bool(config.ENABLE_CUDASIM)

#: threads per block of the flat (one thread per element) kernels
THREADS = 256

#: threads per block of the block-wide tree reductions (a power of two, a compile-time constant
#: because it sizes a shared-memory array)
REDUCE_THREADS = 8 if SIMULATED else 256


def blocks_and_threads(n: int, threads: int = THREADS) -> tuple[int, int]:
    """``(blocks, threads_per_block)`` covering ``n`` threads; small ``n`` gets a small block
    (a multiple of the 32-thread warp) instead of a mostly idle one."""
    per_block = min(threads, max(32, -(-n // 32) * 32))
    return -(-n // per_block), per_block


def launch_1d(kernel, n: int, *args) -> None:
    """Run ``kernel`` with at least ``n`` threads in a 1-D grid (nothing to do when n == 0)."""
    if n > 0:
        blocks, per_block = blocks_and_threads(n)
        kernel[blocks, per_block](*args)


@cuda.jit(device=True)
def nchw_index(i, shape):
    """(n, c, h, w) of flat index i of a C-contiguous NCHW array of ``shape`` (device code)."""
    N, C, H, W = shape
    return i // (W * H * C), (i // (W * H)) % C, (i // W) % H, i % W


def host_proxy(a) -> np.ndarray:
    """A read-only NumPy array of ``a``'s shape and dtype whose elements all share one zero.

    The reference backend's checks (``float_array``, conv's ``prepare_conv``, ...) only look at
    shapes and dtypes; handing them a proxy validates device arrays without a transfer.
    """
    if is_device_array(a):
        return np.broadcast_to(np.zeros((), dtype=a.dtype), tuple(a.shape))
    return np.asarray(a)


def check_float(a, name: str) -> np.dtype:
    """The dtype of ``a`` (host or device), TypeError unless float32/float64 (reference message)."""
    return float_array(host_proxy(a), name).dtype


def empty(shape, dtype):
    """An uninitialised C-contiguous device array (every kernel here writes all its outputs)."""
    return cuda.device_array(tuple(shape), dtype=np.dtype(dtype))


@cuda.jit
def _cast_kernel(src, dst):
    # src, dst: flat (size,) arrays of different dtypes
    i = cuda.grid(1)
    if i < src.size:
        dst[i] = src[i]


def device_array(a, name: str, dtype=None):
    """``a`` (NumPy or device, float32/float64) as a C-contiguous device array of ``dtype`` (0-d
    arrays stay 0-d).

    ``dtype`` None keeps the array's own dtype. No copy when ``a`` already qualifies. A
    contiguous device array of another float dtype is cast on the device; a non-contiguous
    device view (never produced by this backend) makes a round trip through the host.
    """
    own = check_float(a, name)
    dtype = own if dtype is None else np.dtype(dtype)
    if not is_device_array(a):
        return cuda.to_device(np.asarray(a, dtype=dtype, order="C"))
    if not a.is_c_contiguous():
        return cuda.to_device(np.asarray(a.copy_to_host(), dtype=dtype, order="C"))
    if own == dtype:
        return a
    out = empty(a.shape, dtype)
    launch_1d(_cast_kernel, a.size, flat(a), flat(out))
    return out


def device_copy(a):
    """A new device array holding the values of the C-contiguous device array ``a``."""
    out = empty(a.shape, a.dtype)
    if a.size:
        out.copy_to_device(a)  # device-to-device transfer
    return out


def flat(a):
    """The C-contiguous device array ``a`` viewed as 1-D (no copy)."""
    return a.reshape(a.size)


def device_dy(dy, expected_shape: tuple, dtype, op: str):
    """The upstream gradient as a C-contiguous device array in the forward's ``dtype``, after
    checking that it has the shape of the forward output (ValueError naming both shapes)."""
    check_float(dy, "dy")
    if tuple(dy.shape) != tuple(expected_shape):
        raise ValueError(
            f"{op}: dy has shape {tuple(dy.shape)}, y had shape {tuple(expected_shape)}"
        )
    return device_array(dy, "dy", dtype)
