"""Fully connected layer on the CPU, ``y = x @ w.T + b`` (``F.linear``): NumPy's BLAS GEMM.

Nothing to write in Numba here: the forward and both weight/input gradients are single GEMMs
(``x @ w.T``, ``dy @ w``, ``dy.T @ x``), which BLAS does far faster than any loop nest Numba
generates; BLAS reads the transposed operands through their strides, so no transposing copy is
made. The bias add and ``db = dy.sum(0)`` are single memory-bound passes. The reference
implementation is exactly these calls, so the CPU backend uses it as is (same validation, same
results). Under the backend's thread policy (``_threads``) these GEMMs run on one core; in the
models here they are small (MobileNetV2's classifier at batch 32: 32 x 1280 x 1000, 41 MFLOP,
~1 ms), so they are not split over the cores like the convolutions' GEMMs.
"""

from scratchnets.reference.linear import linear_backward, linear_forward

__all__ = ["linear_forward", "linear_backward"]
