"""Deterministic per-channel reductions of NCHW arrays: the statistics of BatchNorm, the bias
gradients of conv and linear, ``sum(dy * xhat)``.

    out[c] = scale * sum_{n, h, w} term(a, b, shift, n, c, h, w)

with ``term`` one of ``term_value`` (a), ``term_product`` (a * b) or ``term_centered_square``
((a - shift[c])^2, the two-pass variance). No float atomics: every output is summed in a fixed
order, so two runs give bit-identical results. Two variants:

* ``v1_thread_per_channel``: one thread per channel loops over n, h, w. Readable; only C threads
  work, each through N*H*W values in sequence.
* ``v2_block_per_channel``: one block per channel; thread t sums the elements t, t + B, t + 2B, ...
  (B = ``REDUCE_THREADS``) of the channel, then the B partial sums are added pairwise in shared
  memory (``block_tree_sum``). B times more threads and coalesced reads.

``CHANNEL_REDUCTION`` picks the variant every op uses.
"""

from __future__ import annotations

import functools

from numba import cuda

from ._launch import REDUCE_THREADS, empty

VARIANTS = ("v1_thread_per_channel", "v2_block_per_channel")
#: Not yet measured on a GPU: v2 is expected to win (C threads cannot fill a GPU for the few
#: hundred channels of MobileNetV2). A GPU session flips this after ``bench/cuda_commands.md``.
CHANNEL_REDUCTION = "v2_block_per_channel"


@cuda.jit(device=True)
def block_tree_sum(partial, tid):
    """Sum ``partial[0:REDUCE_THREADS]`` (shared memory) into ``partial[0]``, in a fixed order.

    Every thread of the block must call it (it synchronises). Step s adds partial[t + s] into
    partial[t] for t < s, s = B/2, B/4, ..., 1: the same pairing on every run (deterministic).
    """
    cuda.syncthreads()
    step = REDUCE_THREADS // 2
    while step > 0:
        if tid < step:
            partial[tid] += partial[tid + step]
        cuda.syncthreads()
        step //= 2


@cuda.jit(device=True)
def term_value(a, b, shift, n, c, h, w):
    return a[n, c, h, w]


@cuda.jit(device=True)
def term_product(a, b, shift, n, c, h, w):
    return a[n, c, h, w] * b[n, c, h, w]


@cuda.jit(device=True)
def term_centered_square(a, b, shift, n, c, h, w):
    d = a[n, c, h, w] - shift[c]
    return d * d


@functools.cache
def _kernels(term):
    """The two reduction kernels for one ``term`` (compiled once per term and dtype)."""

    @cuda.jit
    def thread_per_channel(a, b, shift, scale, out):
        # a, b: (N, C, H, W); shift, out: (C,); one thread per channel c
        c = cuda.grid(1)
        if c < out.size:
            acc = out.dtype.type(0)
            for n in range(a.shape[0]):
                for h in range(a.shape[2]):
                    for w in range(a.shape[3]):
                        acc += term(a, b, shift, n, c, h, w)
            out[c] = acc * scale

    @cuda.jit
    def block_per_channel(a, b, shift, scale, out):
        # one block per channel c = blockIdx.x; thread t strides through the N*H*W values
        partial = cuda.shared.array(REDUCE_THREADS, dtype=out.dtype)
        c, tid = cuda.blockIdx.x, cuda.threadIdx.x
        H, W = a.shape[2], a.shape[3]
        acc = out.dtype.type(0)
        for k in range(tid, a.shape[0] * H * W, REDUCE_THREADS):
            n, hw = k // (H * W), k % (H * W)
            acc += term(a, b, shift, n, c, hw // W, hw % W)
        partial[tid] = acc
        block_tree_sum(partial, tid)
        if tid == 0:
            out[c] = partial[0] * scale

    return {"v1_thread_per_channel": thread_per_channel, "v2_block_per_channel": block_per_channel}


def channel_reduce(term, a, b=None, shift=None, scale=1.0, variant=None):
    """``out[c] = scale * sum_{n,h,w} term(...)`` for a C-contiguous device array ``a`` (N, C, H, W);
    ``b`` (like a) and ``shift`` (C,) as the term needs them. Returns a device array (C,) of
    a's dtype. ``variant`` None means ``CHANNEL_REDUCTION``."""
    variant = CHANNEL_REDUCTION if variant is None else variant
    if variant not in VARIANTS:
        raise ValueError(f"unknown channel reduction {variant!r}; expected one of {VARIANTS}")
    channels = a.shape[1]
    out = empty((channels,), a.dtype)
    if channels == 0:
        return out
    # unused operands: pass `a` itself, the kernels never read them
    b = a if b is None else b
    shift = out if shift is None else shift
    kernel = _kernels(term)[variant]
    scale = a.dtype.type(scale)
    if variant == "v1_thread_per_channel":
        per_block = min(128, channels)
        kernel[-(-channels // per_block), per_block](a, b, shift, scale, out)
    else:
        kernel[channels, REDUCE_THREADS](a, b, shift, scale, out)
    return out
