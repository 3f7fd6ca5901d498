"""Knowledge distillation loss (Hinton et al. 2015): cross-entropy plus a softened KL term."""

from __future__ import annotations

import numpy as np

from ..arrays import is_device_array, to_numpy
from ..nn import Module
from ..reference.loss import cross_entropy_backward, cross_entropy_forward, log_softmax

__all__ = ["DistillationLoss"]


class DistillationLoss(Module):
    """loss = alpha * CE(z_s, target) + (1 - alpha) * tau^2 * KL(p_t || p_s)

    for student logits z_s and teacher logits z_t (N, K), integer targets (N,), with the
    temperature-softened distributions p_s = softmax(z_s / tau), p_t = softmax(z_t / tau) and

        KL(p_t || p_s) = (1 / N) sum_{n, k} p_t[n, k] * (log p_t[n, k] - log p_s[n, k])

    (the batch mean of torch's ``F.kl_div(log p_s, log p_t, reduction="batchmean",
    log_target=True)``). CE is ``F.cross_entropy`` with ``label_smoothing``. tau^2 keeps the
    soft term's gradient on the scale of the hard one as tau grows. Defaults alpha=0.5, tau=1.

    Gradient (hand-derived; the teacher is a constant)::

        d CE / d z_s             = (softmax(z_s) - q) / N          (q: the smoothed one-hot)
        d tau^2 KL / d z_s       = tau^2 * (1 / tau) * (p_s - p_t) / N = tau * (p_s - p_t) / N

    because d log p_s[k] / d z_s[j] = ([j = k] - p_s[j]) / tau and each row of p_t sums to 1.

    ``loss = kd(z_s, z_t, target)`` returns a float; ``kd.backward(dloss=1.0)`` returns
    dloss/dz_s in z_s's dtype. The (N, K) logits are small and the loss is computed on the host;
    device logits come back to the host and the gradient goes back to the device.
    """

    def __init__(self, alpha: float = 0.5, tau: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not tau > 0.0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.alpha, self.tau, self.label_smoothing = alpha, tau, label_smoothing

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, tau={self.tau}, label_smoothing={self.label_smoothing}"

    def forward(self, student_logits, teacher_logits, target):
        z_s = to_numpy(student_logits)
        z_t = np.asarray(to_numpy(teacher_logits), dtype=z_s.dtype)
        if z_s.ndim != 2 or z_t.shape != z_s.shape:
            raise ValueError(
                f"DistillationLoss: student and teacher logits must both be (N, K), got "
                f"{z_s.shape} and {z_t.shape}"
            )
        ce, ce_cache = cross_entropy_forward(z_s, to_numpy(target), self.label_smoothing)
        log_p_s = log_softmax(z_s / self.tau)  # (N, K)
        log_p_t = log_softmax(z_t / self.tau)  # (N, K)
        p_t = np.exp(log_p_t)
        n = z_s.shape[0]
        kl = float((p_t * (log_p_t - log_p_s)).sum()) / n
        loss = self.alpha * float(ce) + (1 - self.alpha) * self.tau**2 * kl
        soft_grad = (np.exp(log_p_s) - p_t) * (self.tau / n)  # d(tau^2 KL)/dz_s, (N, K)
        self._save((ce_cache, soft_grad, is_device_array(student_logits)), ())
        return loss

    def backward(self, dloss=1.0):
        ce_cache, soft_grad, on_device = self._saved(dloss)
        dloss = float(np.asarray(to_numpy(dloss)).reshape(()))
        hard = cross_entropy_backward(np.asarray(dloss), ce_cache)  # (N, K)
        grad = dloss * (1 - self.alpha) * soft_grad + self.alpha * hard
        grad = grad.astype(soft_grad.dtype, copy=False)
        if on_device:
            from numba import cuda  # only when the student runs on the GPU

            return cuda.to_device(grad)
        return grad
