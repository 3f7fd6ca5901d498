"""GhostNetV2 (Tang et al., NeurIPS 2022, arXiv 2211.12905): the Ghost module with DFC attention,
laid out and named like timm's ``ghostnetv2_100`` (6,156,908 parameters at width 1).

DFC ("decoupled fully connected") attention gives the cheap Ghost features a long-range gate.
Its fully connected layers along H and along W are implemented, as in the official code and timm,
as depthwise convs with kernels (1, 5) and (5, 1), on features downsampled by 2:

    z = avg_pool2d(x, 2, stride 2)              (N, C_in, floor(H/2), floor(W/2))
    a = BN(dwconv_5x1(BN(dwconv_1x5(BN(conv_1x1(z))))))      short_conv: C_in -> n channels
    g = upsample(sigmoid(a), size=(H', W'))      nearest (default, as the official code / timm)
                                                 or bilinear (``dfc_upsample="bilinear"``)
    y = ghost(x) * g                             (N, n, H', W')

No nonlinearity inside the DFC branch. Odd sizes work: 7x7 pools to 3x3 and is upsampled back to
7x7. Only the expansion module (``ghost1``) of every bottleneck after the first two carries DFC
(14 of 16); everything else is GhostNet V1.

Backward of y = f * g (product rule): df = dy * g goes back through the Ghost module, dg = dy * f
back through the upsample (a scatter-add onto the small map), the sigmoid, short_conv and the
average pool; the two input gradients add up.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..nn import BatchNorm2d, Conv2d, Sequential, Sigmoid
from .ghostnet import GhostBottleneck, GhostModule, GhostNet
from .registry import ModelCfg, register_model, timm_preprocessing

UPSAMPLE_MODES = ("nearest", "bilinear")
DFC_KERNEL = 5  # the (1, 5) and (5, 1) depthwise kernels of the official code


def dfc_short_conv(in_chs: int, out_chs: int, kernel_size: int, stride: int, rng) -> Sequential:
    """conv_kxk -> BN -> dwconv (1, 5) -> BN -> dwconv (5, 1) -> BN: the DFC branch on the pooled
    input, children "0".."5" like timm's ``short_conv``."""
    k, p = DFC_KERNEL, DFC_KERNEL // 2
    return Sequential(
        Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False, rng=rng),
        BatchNorm2d(out_chs),
        Conv2d(out_chs, out_chs, (1, k), 1, (0, p), groups=out_chs, bias=False, rng=rng),  # along W
        BatchNorm2d(out_chs),
        Conv2d(out_chs, out_chs, (k, 1), 1, (p, 0), groups=out_chs, bias=False, rng=rng),  # along H
        BatchNorm2d(out_chs),
    )


class GhostModuleV2(GhostModule):
    """Ghost module whose output is gated by DFC attention computed from the module INPUT (see
    the module docstring). Children: ``primary_conv``, ``cheap_operation``, ``short_conv``,
    ``gate_fn``. With ``attention=False`` it is the plain Ghost module (GhostNetV3 uses this
    class for both). ``dfc_upsample``: "nearest" (default) or "bilinear" (align_corners=False).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        ratio: int = 2,
        dw_size: int = 3,
        stride: int = 1,
        relu: bool = True,
        *,
        attention: bool = True,
        dfc_upsample: str = "nearest",
        rng: np.random.Generator | None = None,
    ):
        if dfc_upsample not in UPSAMPLE_MODES:
            raise ValueError(f"dfc_upsample must be one of {UPSAMPLE_MODES}, got {dfc_upsample!r}")
        super().__init__(in_chs, out_chs, kernel_size, ratio, dw_size, stride, relu, rng=rng)
        self.attention, self.dfc_upsample = attention, dfc_upsample
        if attention:
            self.gate_fn = Sigmoid()
            self.short_conv = dfc_short_conv(in_chs, out_chs, kernel_size, stride, rng)
            self.bn_folds += tuple((f"short_conv.{i}", f"short_conv.{i + 1}") for i in (0, 2, 4))

    def _dfc_forward(self, x, size):
        """The gate g (N, n, *size) from the module input x (N, C_in, H, W), and its caches."""
        h, w = x.shape[2:]
        if h < 2 or w < 2:
            raise ValueError(
                f"DFC attention pools its input by 2 and needs maps of at least 2x2, got an input "
                f"of shape {tuple(x.shape)}; use a larger image"
            )
        z, pool_cache = F.avg_pool2d_forward(x, 2, 2, backend=self.backend)  # (N, C_in, H//2, W//2)
        gate = self.gate_fn(self.short_conv(z))  # (N, n, H//2, W//2), in (0, 1)
        upsample = getattr(F, f"upsample_{self.dfc_upsample}2d_forward")
        g, up_cache = upsample(gate, tuple(size), backend=self.backend)  # (N, n, H', W')
        return g, (pool_cache, up_cache)

    def _dfc_backward(self, dg, cache):
        pool_cache, up_cache = cache
        upsample_backward = getattr(F, f"upsample_{self.dfc_upsample}2d_backward")
        dgate = upsample_backward(dg, up_cache, backend=self.backend)  # scatter-add to small map
        dz = self.short_conv.backward(self.gate_fn.backward(dgate))
        return F.avg_pool2d_backward(dz, pool_cache, backend=self.backend)

    def forward(self, x):
        if not self.attention:
            return super().forward(x)
        out, ghost_cache = self._ghost_forward(x)  # (N, n, H', W')
        g, dfc_cache = self._dfc_forward(x, out.shape[2:])  # (N, n, H', W')
        if self.forward_only and ghost_cache is None:  # out is the module's own buffer
            y = np.multiply(out, g, out=out)
            self._save(None, y.shape)
            return y
        y, mul_cache = F.mul_forward(out, g, backend=self.backend)
        self._save((ghost_cache, dfc_cache, mul_cache), y.shape)
        return y

    def backward(self, dy):
        if not self.attention:
            return super().backward(dy)
        ghost_cache, dfc_cache, mul_cache = self._saved(dy)
        dout, dg = F.mul_backward(dy, mul_cache, backend=self.backend)  # dy * g, dy * ghost(x)
        dx_ghost = self._ghost_backward(dout, ghost_cache)
        dx_dfc = self._dfc_backward(dg, dfc_cache)
        return F.add_forward(dx_ghost, dx_dfc, backend=self.backend)[0]


def has_dfc(layer_idx: int) -> bool:
    """DFC attention on every bottleneck but the first two (timm's ``layer_idx > 1``)."""
    return layer_idx > 1


def dfc_bottleneck_factory(module: type, bottleneck: type, dfc_upsample: str):
    """Bottleneck factory for ``GhostNet``: ``bottleneck``s whose ``ghost1`` is a ``module`` with
    DFC attention after the first two (``has_dfc``). GhostNetV2 and V3 differ only in the two
    classes."""

    def build(layer_idx, in_chs, mid_chs, out_chs, k, stride, se_ratio, rng):
        ghost1 = module(
            in_chs, mid_chs, attention=has_dfc(layer_idx), dfc_upsample=dfc_upsample, rng=rng
        )
        return bottleneck(in_chs, mid_chs, out_chs, k, stride, se_ratio, ghost1=ghost1, rng=rng)

    return build


def ghost_bottleneck_v2(dfc_upsample: str = "nearest"):
    """Bottleneck factory for ``GhostNet``: V1 bottlenecks whose ``ghost1`` has DFC attention."""
    return dfc_bottleneck_factory(GhostModuleV2, GhostBottleneck, dfc_upsample)


@register_model("ghostnetv2_100", aliases=("ghostnetv2",), cfg=ModelCfg(
    preprocessing=timm_preprocessing(), twin=("timm", "ghostnetv2_100"), paper="arXiv:2211.12905",
    benchmarked=True, mobile=True,
))  # fmt: skip
def ghostnetv2_100(
    num_classes: int = 1000, width_mult: float = 1.0, dfc_upsample: str = "nearest", **kwargs
) -> GhostNet:
    """GhostNetV2 with width ``width_mult``; ``dfc_upsample`` "nearest" (default) or "bilinear";
    kwargs: ``drop_rate`` (0.2), ``in_chans``, ``rng``."""
    return GhostNet(num_classes, width_mult, bottleneck=ghost_bottleneck_v2(dfc_upsample), **kwargs)
