"""GhostNetV3 (Liu et al., arXiv 2404.11202): GhostNetV2 trained with re-parameterisable
branches, laid out and named like timm's ``ghostnetv3_100`` (8,129,028 parameters at width 1 in
the training form; about GhostNetV2's 6.16 M once folded).

Training form: each conv of a Ghost module and the stride-2 depthwise conv of a bottleneck is a
SUM of parallel branches, each ending in its own BN, before the activation:

    primary (kxk, k = 1):   sum_{i<3} BN_i(conv_i(x))
    cheap (3x3 depthwise):  sum_{i<3} BN_i(dw3x3_i(x1)) + BN(dw1x1(x1)) + BN(x1)
                            3 convs, the 1x1 "scale" branch, the BN-only identity branch
    bottleneck dw (kxk, s): sum_{i<3} BN_i(dwkxk_i(h)) + BN(dw1x1 stride s(h))   (no identity)

Names as timm: ``primary_rpr_conv.{0,1,2}``, ``cheap_rpr_conv.{0,1,2}``, ``cheap_rpr_scale``,
``cheap_rpr_skip``, ``dw_rpr_conv.{0,1,2}``, ``dw_rpr_scale`` (each conv branch has ``conv`` and
``bn1``). The DFC attention (on ``ghost1`` of every bottleneck after the first two), SE, shortcut
and head are GhostNetV2's.

Backward of a branch sum y = sum_b f_b(x): every branch receives the same dy and dx adds up,
dx = sum_b f_b^T(dy).

Inference form (``GhostNet.reparameterize()``): in eval mode every branch is affine in x, so each
sum folds into ONE conv with bias (BN folding per branch, 1x1 kernels and the identity zero-padded
to the kxk centre, kernels and biases added), and then every remaining conv -> BN pair folds too.
The outputs equal the training form's eval outputs up to rounding.
"""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..arrays import to_numpy
from ..nn import BatchNorm2d, Conv2d, Identity, Module, Sequential
from .fuse import fold_bn
from .ghostnet import ConvBnAct, GhostBottleneck, GhostNet, relu_or_identity
from .ghostnetv2 import GhostModuleV2, dfc_bottleneck_factory
from .registry import ModelCfg, register_model, timm_preprocessing

NUM_CONV_BRANCHES = 3


def sum_branches_forward(branches, x, backend: str):
    """y = sum_b branch_b(x); every branch keeps its own cache."""
    y = None
    for branch in branches:
        out = branch(x)
        y = out if y is None else F.add_forward(y, out, backend=backend)[0]
    return y


def sum_branches_backward(branches, dy, backend: str):
    """dx = sum_b branch_b^T(dy): the same dy enters every branch, the input gradients add."""
    dx = None
    for branch in branches:
        d = branch.backward(dy)
        dx = d if dx is None else F.add_forward(dx, d, backend=backend)[0]
    return dx


class BranchSum(Module):
    """y = sum of the children applied to the same x; children "0", "1", ... (the state dict
    layout of timm's ``nn.ModuleList`` of branches)."""

    def __init__(self, *branches: Module):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(str(i), branch)

    def __iter__(self):
        return iter(self.children())

    def __getitem__(self, index: int) -> Module:
        return list(self.children())[index]

    def forward(self, x):
        y = sum_branches_forward(self.children(), x, self.backend)
        self._save((), y.shape)
        return y

    def backward(self, dy):
        self._saved(dy)
        return sum_branches_backward(self.children(), dy, self.backend)


def conv_bn_branches(n: int, *args, **kwargs) -> BranchSum:
    """``n`` parallel ``ConvBnAct(*args, relu=False, **kwargs)`` branches."""
    return BranchSum(*(ConvBnAct(*args, relu=False, **kwargs) for _ in range(n)))


def _identity_conv(like: Conv2d) -> Conv2d:
    """A 1x1 bias-free conv with ``like``'s channels and groups that computes y = x."""
    if like.in_channels != like.out_channels or like.stride != (1, 1):
        raise ValueError(
            f"an identity branch needs C_in == C_out and stride 1, got {like.in_channels} -> "
            f"{like.out_channels}, stride {like.stride}"
        )
    c, per_group = like.out_channels, like.in_channels // like.groups
    conv = Conv2d(
        c, c, 1, groups=like.groups, bias=False, rng=np.random.default_rng(0), dtype=like.dtype
    )
    conv.weight.data[...] = 0.0
    conv.weight.data[np.arange(c), np.arange(c) % per_group, 0, 0] = 1.0  # channel i reads x_i
    return conv


def fold_branches(branches, like: Conv2d) -> Conv2d:
    """One conv with bias equal, in eval mode, to the sum of ``branches`` (``ConvBnAct`` without
    activation, or a bare ``BatchNorm2d`` meaning BN(x)); ``like`` gives the geometry.

    Each branch becomes (W_b, bias_b) by BN folding; a kernel smaller than ``like``'s (1x1 scale
    branch, identity) is zero-padded around the centre (with padding k // 2 the centre tap of a
    kxk conv reads the pixel a 1x1 conv at the same stride reads). Then
    sum_b BN_b(conv_b(x)) = (sum_b W_b) * x + sum_b bias_b.
    """
    kh, kw = like.kernel_size
    weight = np.zeros((like.out_channels, like.in_channels // like.groups, kh, kw))
    bias = np.zeros(like.out_channels)
    for branch in branches:
        if isinstance(branch, ConvBnAct):
            folded = fold_bn(branch.conv, branch.bn1)
        else:
            folded = fold_bn(_identity_conv(like), branch)
        w = np.asarray(to_numpy(folded.weight.data), dtype=np.float64)  # (C_out, C_in/g, h, w)
        top, left = (kh - w.shape[2]) // 2, (kw - w.shape[3]) // 2
        weight[:, :, top : top + w.shape[2], left : left + w.shape[3]] += w
        bias += np.asarray(to_numpy(folded.bias.data), dtype=np.float64)
    conv = Conv2d(
        like.in_channels,
        like.out_channels,
        like.kernel_size,
        like.stride,
        like.padding,
        like.dilation,
        like.groups,
        bias=True,
        rng=np.random.default_rng(0),  # overwritten below
        dtype=like.dtype,
    )
    conv.weight.data[...] = weight
    conv.bias.data[...] = bias
    return conv.to(like.backend)


class GhostModuleV3(GhostModuleV2):
    """Ghost module with re-parameterisable branches (timm's ``GhostModuleV3``), optionally with
    DFC attention (``attention=True``, timm's ``mode="shortcut"``).

    x1 = act(sum of 3 primary conv+BN branches), x2 = act(3 depthwise conv+BN branches + the 1x1
    scale branch + BN(x1)); the rest is ``GhostModuleV2``. ``reparameterize()`` folds both sums
    into single convs (``primary_conv``, ``cheap_operation``, each conv -> act).
    """

    def __init__(self, in_chs: int, out_chs: int, *args, attention: bool = False, **kwargs):
        super().__init__(in_chs, out_chs, *args, attention=attention, **kwargs)

    def _make_convs(self, rng) -> None:
        k, d, m, g = self.kernel_size, self.dw_size, self.init_chs, self.new_chs
        self.reparameterized = False
        self.primary_conv = Identity()  # filled in by reparameterize()
        self.cheap_operation = Identity()
        self.primary_rpr_conv = conv_bn_branches(
            NUM_CONV_BRANCHES, self.in_chs, m, k, self.stride, rng=rng
        )
        self.primary_activation = relu_or_identity(self.relu)
        if m == g:  # identity branch where shapes allow (always for ratio 2)
            self.cheap_rpr_skip = BatchNorm2d(m)
        self.cheap_rpr_conv = conv_bn_branches(NUM_CONV_BRANCHES, m, g, d, 1, groups=m, rng=rng)
        self.cheap_rpr_scale = ConvBnAct(m, g, 1, 1, groups=m, relu=False, rng=rng)
        self.cheap_activation = relu_or_identity(self.relu)
        self.bn_folds = ()  # the branch BNs fold in reparameterize(), not pairwise

    def _cheap_branches(self) -> list[Module]:
        skip = getattr(self, "cheap_rpr_skip", None)  # absent when m != ghosts (ratio > 2)
        return [self.cheap_rpr_scale, *([skip] if skip is not None else []), *self.cheap_rpr_conv]

    def _primary_forward(self, x):
        if self.reparameterized:
            return super()._primary_forward(x)
        return self.primary_activation(self.primary_rpr_conv(x))

    def _primary_backward(self, dx1):
        if self.reparameterized:
            return super()._primary_backward(dx1)
        return self.primary_rpr_conv.backward(self.primary_activation.backward(dx1))

    def _cheap_forward(self, x1):
        if self.reparameterized:
            return super()._cheap_forward(x1)
        return self.cheap_activation(sum_branches_forward(self._cheap_branches(), x1, self.backend))

    def _cheap_backward(self, dx2):
        if self.reparameterized:
            return super()._cheap_backward(dx2)
        dsum = self.cheap_activation.backward(dx2)
        return sum_branches_backward(self._cheap_branches(), dsum, self.backend)

    def reparameterize(self) -> None:
        """Fold the branches: primary_conv = conv -> act, cheap_operation = dwconv -> act."""
        if self.reparameterized:
            return
        primary_branches = list(self.primary_rpr_conv)
        primary = fold_branches(primary_branches, like=primary_branches[0].conv)
        cheap_branches = self._cheap_branches()
        cheap = fold_branches(cheap_branches, like=self.cheap_rpr_conv[0].conv)
        self.primary_conv = Sequential(primary, self.primary_activation).to(self.backend)
        self.cheap_operation = Sequential(cheap, self.cheap_activation).to(self.backend)
        for name in ("primary_rpr_conv", "primary_activation", "cheap_rpr_conv", "cheap_rpr_scale"):
            delattr(self, name)
        if getattr(self, "cheap_rpr_skip", None) is not None:
            del self.cheap_rpr_skip
        del self.cheap_activation
        self.reparameterized = True
        self.eval()


class GhostBottleneckV3(GhostBottleneck):
    """Ghost bottleneck with GhostModuleV3 modules and, at stride 2, the depthwise conv as a sum of
    3 kxk conv+BN branches and a 1x1 stride-2 conv+BN branch (timm's ``GhostBottleneckV3``);
    ``reparameterize()`` folds them into ``conv_dw`` (with bias; ``bn_dw`` stays the identity)."""

    ghost_module = GhostModuleV3

    def _make_dw(self, mid_chs: int, rng) -> tuple:
        self.reparameterized = False
        self.conv_dw = Identity()  # filled in by reparameterize()
        self.bn_dw = Identity()
        if self.stride > 1:
            k, s = self.dw_kernel_size, self.stride
            pad = (k - 1) // 2
            self.dw_rpr_conv = conv_bn_branches(
                NUM_CONV_BRANCHES, mid_chs, mid_chs, k, s, groups=mid_chs, padding=pad, rng=rng
            )
            self.dw_rpr_scale = ConvBnAct(
                mid_chs, mid_chs, 1, s, groups=mid_chs, relu=False, rng=rng
            )
        return ()

    def _dw_branches(self) -> list[Module]:
        return [self.dw_rpr_scale, *self.dw_rpr_conv]

    def _dw_forward(self, h):
        if self.stride == 1 or self.reparameterized:
            return super()._dw_forward(h)
        return sum_branches_forward(self._dw_branches(), h, self.backend)

    def _dw_backward(self, dh):
        if self.stride == 1 or self.reparameterized:
            return super()._dw_backward(dh)
        return sum_branches_backward(self._dw_branches(), dh, self.backend)

    def reparameterize(self) -> None:
        """Fold the stride-s depthwise branches into ``conv_dw``."""
        if self.stride == 1 or self.reparameterized:
            return
        branches = self._dw_branches()
        self.conv_dw = fold_branches(branches, like=self.dw_rpr_conv[0].conv)
        del self.dw_rpr_conv, self.dw_rpr_scale
        self.reparameterized = True
        self.eval()


def ghost_bottleneck_v3(dfc_upsample: str = "nearest"):
    """Bottleneck factory for ``GhostNet``: V3 bottlenecks, DFC on ``ghost1`` after the first two."""
    return dfc_bottleneck_factory(GhostModuleV3, GhostBottleneckV3, dfc_upsample)


@register_model("ghostnetv3_100", aliases=("ghostnetv3",), cfg=ModelCfg(
    preprocessing=timm_preprocessing(), twin=("timm", "ghostnetv3_100"), paper="arXiv:2404.11202",
    benchmarked=True, mobile=True,
))  # fmt: skip
def ghostnetv3_100(
    num_classes: int = 1000, width_mult: float = 1.0, dfc_upsample: str = "nearest", **kwargs
) -> GhostNet:
    """GhostNetV3 (training form) with width ``width_mult``; ``model.reparameterize()`` gives the
    inference form. ``dfc_upsample`` "nearest" (default) or "bilinear"; kwargs: ``drop_rate``
    (0.2), ``in_chans``, ``rng``."""
    return GhostNet(num_classes, width_mult, bottleneck=ghost_bottleneck_v3(dfc_upsample), **kwargs)
