"""Batched matrix products on the GPU for pointwise (1x1) convolutions and linear layers.

    out[z, i, j] = sum_{k < K} A(z, i, k) * B(z, k, j)        out: (Z, M, N)

``A`` and ``B`` are *loaders*: device functions that read the logical matrix element from an
array laid out as the layer has it, so no transposed or reshaped copy is ever made:

* ``plain(m)[r, c] = m[r, c]`` and ``transposed(m)[r, c] = m[c, r]`` for 2-D arrays;
* ``batched(m)[r, c] = m[z, r, c]``: image z of an (N, C, H*W) activation;
* ``channels_by_pixels(m)`` (C, N*P) and ``pixels_by_channels(m)`` (N*P, C): an (N, C, P)
  activation with the batch folded into the pixel axis, for weight gradients that sum over the
  batch and the pixels in one product.

Two variants, compiled per (loader pair, dtype):

* ``v1_naive``: one thread per output element, a plain loop over k.
* ``v2_tiled``: TILE x TILE output tiles; per step the block stages a TILE x TILE tile of A and
  of B in shared memory, so each global element is read once per tile instead of once per
  product.

Both sum over k in increasing order (deterministic). ``GEMM`` picks the variant.
"""

from __future__ import annotations

import functools

from numba import cuda

from ._launch import SIMULATED, flat, launch_1d

#: tile edge: 16 x 16 = 256 threads per block and two 1 KiB (float32) shared tiles on a GPU;
#: 4 x 4 under the simulator, so that tiny test matrices still span several tiles
TILE = 4 if SIMULATED else 16
VARIANTS = ("v1_naive", "v2_tiled")
#: Not yet measured on a GPU: tiling is expected to win for every MobileNetV2 pointwise layer
#: (K = C_in >= 16). A GPU session flips this after ``bench/cuda_commands.md``.
GEMM = "v2_tiled"


@cuda.jit(device=True)
def plain(m, z, r, c):
    return m[r, c]


@cuda.jit(device=True)
def transposed(m, z, r, c):
    return m[c, r]


@cuda.jit(device=True)
def batched(m, z, r, c):
    return m[z, r, c]


@cuda.jit(device=True)
def channels_by_pixels(m, z, r, c):
    # m (N, C, P) as the matrix (C, N*P): column c is pixel c % P of image c // P
    return m[c // m.shape[2], r, c % m.shape[2]]


@cuda.jit(device=True)
def pixels_by_channels(m, z, r, c):
    # m (N, C, P) as the matrix (N*P, C)
    return m[r // m.shape[2], c, r % m.shape[2]]


@functools.cache
def _kernels(load_a, load_b):
    @cuda.jit
    def naive(a, b, out, K):
        j, i = cuda.grid(2)  # x runs along the columns, y along the rows
        z = cuda.blockIdx.z
        if i < out.shape[1] and j < out.shape[2]:
            acc = out.dtype.type(0)
            for k in range(K):
                acc += load_a(a, z, i, k) * load_b(b, z, k, j)
            out[z, i, j] = acc

    @cuda.jit
    def tiled(a, b, out, K):
        tile_a = cuda.shared.array((TILE, TILE), dtype=out.dtype)  # A[block rows, k0:k0+TILE]
        tile_b = cuda.shared.array((TILE, TILE), dtype=out.dtype)  # B[k0:k0+TILE, block cols]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        j, i = cuda.grid(2)
        z = cuda.blockIdx.z
        M, N = out.shape[1], out.shape[2]
        zero = out.dtype.type(0)
        acc = zero
        for k0 in range(0, K, TILE):
            # each thread stages one element of each tile (zero outside the matrices)
            ka, kb = k0 + tx, k0 + ty
            tile_a[ty, tx] = load_a(a, z, i, ka) if (i < M and ka < K) else zero
            tile_b[ty, tx] = load_b(b, z, kb, j) if (kb < K and j < N) else zero
            cuda.syncthreads()
            for kk in range(TILE):
                acc += tile_a[ty, kk] * tile_b[kk, tx]
            cuda.syncthreads()  # the tiles are overwritten by the next step
        if i < M and j < N:
            out[z, i, j] = acc

    return {"v1_naive": naive, "v2_tiled": tiled}


def matmul(load_a, a, load_b, b, out, K: int, variant: str | None = None):
    """Fill ``out`` (Z, M, N) with ``A @ B`` per z, ``K`` the inner dimension (see module doc)."""
    variant = GEMM if variant is None else variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown GEMM variant {variant!r}; expected one of {VARIANTS}")
    Z, M, N = out.shape
    if out.size == 0:
        return out
    grid = (-(-N // TILE), -(-M // TILE), Z)
    _kernels(load_a, load_b)[variant][grid, (TILE, TILE)](a, b, out, K)
    return out


@cuda.jit
def _bias_kernel(y, b, inner):
    # y: flat (outer * C * inner,), b: (C,); element i belongs to channel (i // inner) % C
    i = cuda.grid(1)
    if i < y.size:
        y[i] += b[(i // inner) % b.size]


def add_channel_bias(y, b, inner: int) -> None:
    """In place: ``y[..., c, <inner elements>] += b[c]`` for a C-contiguous device array ``y``
    whose channel axis is followed by ``inner`` elements (H*W for NCHW, 1 for (N, out))."""
    launch_1d(_bias_kernel, y.size, flat(y), b, inner)
