"""Fully connected layer on the CPU, ``y = x @ w.T + b`` (``F.linear``): NumPy's BLAS GEMM.

Nothing to write in Numba here: the forward and both weight/input gradients are single GEMMs
(``x @ w.T``, ``dy @ w``, ``dy.T @ x``), which NumPy hands to its multithreaded BLAS (OpenBLAS in
the wheels), far faster than any loop nest Numba generates; BLAS reads the transposed operands
through their strides, so no transposing copy is made. The bias add and ``db = dy.sum(0)`` are
single memory-bound passes. The reference implementation is exactly these calls, so the CPU
backend uses it as is (same validation, same results).
"""

from scratchnets.reference.linear import linear_backward, linear_forward

__all__ = ["linear_forward", "linear_backward"]
