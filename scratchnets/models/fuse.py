"""Folding BatchNorm into the convolution before it, for inference.

In eval mode BN is an affine map per channel with the running statistics, so conv -> BN is one
conv with new weights and a bias. With s = gamma / sqrt(running_var + eps) (shape (C_out,)):

    BN(conv(x))[o] = s[o] * (sum w[o] * x + b[o] - mean[o]) + beta[o]
                   = sum (s[o] * w[o]) * x + (s[o] * (b[o] - mean[o]) + beta[o])
    w'[o, c, i, j] = s[o] * w[o, c, i, j]        b'[o] = s[o] * (b[o] - mean[o]) + beta[o]

(b = 0 for a conv without bias.) This holds for every stride, padding, dilation and group count:
output channel o only ever reads w[o].

Which pairs fold is declared by the blocks themselves: a module's ``bn_folds`` attribute lists
``(conv path, bn path)`` pairs of dotted names relative to that module, e.g.
``(("conv_dw", "bn1"), ("conv_pw", "bn2"))``. ``fuse`` walks the model, replaces each conv by the
folded one and each BN by what remains of it: ``Identity`` for a plain BN, the activation for a
``BatchNormAct2d``. The result is an eval-mode model whose outputs equal the unfused eval outputs
up to rounding, and that has no BatchNorm left in the declared places.
"""

from __future__ import annotations

import copy

import numpy as np

from ..arrays import is_device_array, to_numpy
from ..nn import BatchNorm2d, Conv2d, Identity, Module
from .blocks import BatchNormAct2d


def fold_bn(conv: Conv2d, bn: BatchNorm2d) -> Conv2d:
    """A new conv (same class, geometry, backend and dtype, with bias) equal to ``bn(conv(x))``
    in eval mode. The folding is computed in float64 and stored in the conv's dtype."""
    if not isinstance(conv, Conv2d) or not isinstance(bn, BatchNorm2d):
        raise TypeError(
            f"fold_bn needs a Conv2d and a BatchNorm2d, got {type(conv).__name__} and "
            f"{type(bn).__name__}"
        )
    if conv.out_channels != bn.num_features:
        raise ValueError(
            f"cannot fold a BatchNorm2d over {bn.num_features} channels into a conv with "
            f"{conv.out_channels} output channels"
        )

    def f64(a):
        return np.asarray(to_numpy(a), dtype=np.float64)

    scale = f64(bn.weight.data) / np.sqrt(f64(bn.running_var) + bn.eps)  # s, (C_out,)
    bias = np.zeros(conv.out_channels) if conv.bias is None else f64(conv.bias.data)
    fused = type(conv)(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        rng=np.random.default_rng(0),  # overwritten below
        dtype=conv.dtype,
    )
    fused.weight.data[...] = f64(conv.weight.data) * scale[:, None, None, None]  # s[o] * w[o]
    fused.bias.data[...] = scale * (bias - f64(bn.running_mean)) + f64(bn.bias.data)
    return fused.to(conv.backend).eval()


def _locate(root: Module, path: str) -> tuple[Module, str, Module]:
    """``(parent, attribute name, module)`` of the dotted ``path`` below ``root``."""
    *parents, name = path.split(".")
    parent = root
    for part in parents:
        parent = getattr(parent, part)
    return parent, name, getattr(parent, name)


def _norm_remainder(bn: BatchNorm2d) -> Module:
    """What stays of a folded BN: its activation for BatchNormAct2d, otherwise nothing."""
    return bn.act if isinstance(bn, BatchNormAct2d) else Identity().to(bn.backend)


def _device_copy(array):
    from numba import cuda  # only reached for a model that lives on the GPU

    copied = cuda.device_array_like(array)
    copied.copy_to_device(array)
    return copied


def _copy_model(model: Module) -> Module:
    """A deep copy of ``model`` without its forward caches.

    numba.cuda device arrays cannot be deep-copied (their memory handles would be shared), so
    every device array among the parameters, gradients and buffers is copied on the device first
    and handed to ``deepcopy`` through its memo. The caches of the last forward are detached
    while copying (they may hold device arrays too) and put back afterwards.
    """
    memo = {}
    arrays = [b for _, b in model.named_buffers()]
    for _, param in model.named_parameters():
        arrays += [param.data, param.grad]
    for array in arrays:
        if is_device_array(array):
            memo[id(array)] = _device_copy(array)
    saved = [(m, m._cache, m._out_shape) for m in model.modules()]
    try:
        for module, _, _ in saved:
            module._cache = module._out_shape = None
        return copy.deepcopy(model, memo)
    finally:
        for module, cache, out_shape in saved:
            module._cache, module._out_shape = cache, out_shape


def fuse(model: Module, inplace: bool = False) -> Module:
    """Fold every declared (conv, BN) pair of ``model`` (see the module docstring).

    Returns the fused model in eval mode: a deep copy unless ``inplace``. Pairs whose BN has
    already been folded are skipped, so fusing twice is harmless.
    """
    fused = model if inplace else _copy_model(model)
    for _, block in list(fused.named_modules()):
        for conv_path, bn_path in getattr(block, "bn_folds", ()):
            conv_parent, conv_name, conv = _locate(block, conv_path)
            bn_parent, bn_name, bn = _locate(block, bn_path)
            if not isinstance(bn, BatchNorm2d):
                continue  # folded before
            setattr(conv_parent, conv_name, fold_bn(conv, bn))
            setattr(bn_parent, bn_name, _norm_remainder(bn))
    return fused.eval()
