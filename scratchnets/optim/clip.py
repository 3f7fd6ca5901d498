"""Gradient clipping by global norm, ``torch.nn.utils.clip_grad_norm_``."""

from __future__ import annotations

import math

import numpy as np

from .optimizers import to_host, write_back

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(
    parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> float:
    """Scale all gradients by one factor so that their joint norm is at most ``max_norm``.

    total = || (||g_1||_q, ..., ||g_n||_q) ||_q   over the parameters whose grad is not None
    c     = min(1, max_norm / (total + 1e-6))
    g_i   = c * g_i   for every i (also when c == 1, like torch)

    ``q`` is ``norm_type`` (2 by default; ``math.inf`` for the largest absolute value). Norms are
    summed in float64; the factor is applied in the gradient's dtype, in place (device gradients
    make one host round trip). Returns ``total`` as a float. With ``error_if_nonfinite`` a NaN or
    infinite total raises RuntimeError instead of scaling.
    """
    if hasattr(parameters, "grad"):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    norm_type = float(norm_type)
    hosts = [to_host(p.grad) for p in params]
    norms = [np.linalg.norm(np.asarray(g, np.float64).ravel(), ord=norm_type) for g in hosts]
    total = float(np.linalg.norm(np.array(norms), ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"the total norm of order {norm_type} of the gradients is non-finite ({total}), so "
            "it cannot be clipped; pass error_if_nonfinite=False to scale by it anyway"
        )
    coef = min(float(max_norm) / (total + 1e-6), 1.0)
    for param, host in zip(params, hosts, strict=True):
        host *= host.dtype.type(coef)
        write_back(param.grad, host)
    return total
