"""GhostNet (Han et al., CVPR 2020, arXiv 1911.11907), laid out and named like timm's
``ghostnet_100`` so its checkpoints load unchanged. GhostNetV2 (``ghostnetv2.py``) and GhostNetV3
(``ghostnetv3.py``) reuse the pieces defined here.

Ghost module (the "cheap operations" idea): a 1x1 conv makes m = ceil(n / s) intrinsic maps Y',
a 3x3 depthwise conv makes (s - 1) ghosts of each, and the output is the first n channels of
[Y', ghosts]. With s = 2 it costs about half of a 1x1 conv to n channels.

Ghost bottleneck: ghost module (expansion, ReLU) -> [3x3 / 5x5 depthwise stride 2 + BN] ->
[squeeze-excitation] -> ghost module (projection, no ReLU) + shortcut (identity, or depthwise +
BN + 1x1 + BN when the shape changes).

Network (GhostNet Table 7, ``GHOSTNET_STAGES``): 3x3 stride-2 stem to 16 channels, 16 bottlenecks
in 9 stages, 1x1 conv to 960, global average pool, 1x1 conv to 1280 with bias and ReLU (no BN),
dropout 0.2, linear classifier. Width multiplier w: every channel count c except the 1280 of the
head becomes ``make_divisible(c * w, 4)``. 5,182,508 parameters at w = 1 (BN gamma/beta and all
biases included, running statistics not).

Initialisation: timm leaves GhostNet at PyTorch's layer defaults (``nn.Conv2d`` / ``nn.Linear``:
weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BN weight 1, bias 0), and so do we: the
Conv2d and Linear layers initialise themselves that way from the model's ``rng``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .. import functional as F
from ..nn import (
    AdaptiveAvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Identity,
    Linear,
    Module,
    ReLU,
    Sequential,
)
from ..nn.module import chain_plans, channels_last_convs
from . import blocks
from .blocks import BatchNormAct2d, make_divisible, residual_add
from .fuse import EvalFastPath, fuse, reparameterize_blocks
from .registry import ModelCfg, register_model, timm_preprocessing

#: Ghost bottleneck settings per stage, at width 1: (kernel k, expansion width, output width,
#: SE ratio, stride). GhostNet Table 7, grouped into stages like timm.
GHOSTNET_STAGES = (
    ((3, 16, 16, 0.0, 1),),
    ((3, 48, 24, 0.0, 2),),
    ((3, 72, 24, 0.0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0.0, 2),),
    (
        (3, 200, 80, 0.0, 1),
        (3, 184, 80, 0.0, 1),
        (3, 184, 80, 0.0, 1),
        (3, 480, 112, 0.25, 1),
        (3, 672, 112, 0.25, 1),
    ),
    ((5, 672, 160, 0.25, 2),),
    (
        (5, 960, 160, 0.0, 1),
        (5, 960, 160, 0.25, 1),
        (5, 960, 160, 0.0, 1),
        (5, 960, 160, 0.25, 1),
    ),
)
STEM_CHANNELS = 16
FEATURE_CHANNELS = 960  # the 1x1 conv after the last stage (scaled by the width)
HEAD_CHANNELS = 1280  # the 1x1 conv of the head (never scaled)
CHANNEL_DIVISOR = 4


def ghost_channels(out_chs: int, ratio: int) -> tuple[int, int]:
    """(intrinsic m, ghosts) of a Ghost module with n = ``out_chs`` outputs and ratio s:
    m = ceil(n / s), ghosts = m * (s - 1); m + ghosts >= n (the surplus is sliced off)."""
    if ratio < 2:
        raise ValueError(f"a Ghost module needs ratio >= 2, got {ratio}")
    init_chs = math.ceil(out_chs / ratio)
    return init_chs, init_chs * (ratio - 1)


def relu_or_identity(relu: bool) -> Module:
    return ReLU(inplace=True) if relu else Identity()


class ConvBnAct(Module):
    """conv (no bias) -> BN [-> ReLU]: children ``conv`` and ``bn1``, timm's ``ConvBnAct``.

    With ``relu`` the BN is a ``BatchNormAct2d`` (the ReLU is its child ``act``, as in timm);
    without, a plain ``BatchNorm2d``. Padding: ``kernel_size // 2`` unless given.
    (N, C_in, H, W) -> (N, C_out, H / stride, W / stride).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        relu: bool = True,
        *,
        padding: int | None = None,
        rng: np.random.Generator | None = None,
    ):
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = Conv2d(
            in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False, rng=rng
        )
        self.bn1 = BatchNormAct2d(out_chs, "relu") if relu else BatchNorm2d(out_chs)
        self.bn_folds = (("conv", "bn1"),)

    def forward(self, x):
        y = self.bn1(self.conv(x))
        self._save((), y.shape)
        return y

    def inference_plan(self, x, channels_last=False):
        """The conv's and the BN's (or what the fast path left of it) plans in a chain."""
        if not self.planned_as(ConvBnAct):
            return super().inference_plan(x, channels_last)
        return chain_plans([self.conv, self.bn1], x, channels_last)

    def channels_last_convs(self):
        return channels_last_convs([self.conv, self.bn1]) if self.planned_as(ConvBnAct) else None

    def backward(self, dy):
        self._saved(dy)
        return self.conv.backward(self.bn1.backward(dy))


class SqueezeExcite(blocks.SqueezeExcite):
    """GhostNet's squeeze-excite (timm's ``SqueezeExcite`` as GhostNet configures it): the block
    of ``blocks.SqueezeExcite`` with R = ``make_divisible(C * se_ratio, 4)`` channels inside."""

    def __init__(self, in_chs: int, se_ratio: float = 0.25, *, rng=None):
        super().__init__(in_chs, make_divisible(in_chs * se_ratio, CHANNEL_DIVISOR), rng=rng)


class GhostModule(Module):
    """Ghost module (timm's ``GhostModule``): n = ``out_chs`` outputs from m intrinsic maps.

        x1 = act(BN(conv_kxk(x)))                 primary_conv:    (N, C_in, H, W) -> (N, m, H', W')
        x2 = act(BN(dwconv_3x3(x1)))              cheap_operation: (N, m, H', W') -> (N, m(s-1), H', W')
        y  = concat([x1, x2], channels)[:, :n]    (N, n, H', W')

    act is ReLU (``relu=True``) or the identity. Backward: slice^T pads dy with zeros, concat^T
    splits it into dx1 and dx2, and x1 collects both its own gradient and the one coming back
    through the cheap operation: dx1_total = dx1 + cheap^T(dx2); dx = primary^T(dx1_total).

    Subclasses change how x1 and x2 are computed by overriding ``_make_convs`` and the
    ``_primary_*`` / ``_cheap_*`` hooks (GhostNetV3's re-parameterised branches).
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
        rng: np.random.Generator | None = None,
    ):
        super().__init__()
        self.in_chs, self.out_chs = in_chs, out_chs
        self.kernel_size, self.dw_size, self.stride, self.relu = kernel_size, dw_size, stride, relu
        self.init_chs, self.new_chs = ghost_channels(out_chs, ratio)
        self._make_convs(rng)

    def _make_convs(self, rng) -> None:
        k, d = self.kernel_size, self.dw_size
        self.primary_conv = Sequential(
            Conv2d(self.in_chs, self.init_chs, k, self.stride, k // 2, bias=False, rng=rng),
            BatchNorm2d(self.init_chs),
            relu_or_identity(self.relu),
        )
        self.cheap_operation = Sequential(
            Conv2d(
                self.init_chs, self.new_chs, d, 1, d // 2, groups=self.init_chs, bias=False, rng=rng
            ),
            BatchNorm2d(self.new_chs),
            relu_or_identity(self.relu),
        )
        self.bn_folds = (
            ("primary_conv.0", "primary_conv.1"),
            ("cheap_operation.0", "cheap_operation.1"),
        )

    # x1 = primary(x) and x2 = cheap(x1): each module keeps its own cache
    def _primary_forward(self, x):
        return self.primary_conv(x)

    def _primary_backward(self, dx1):
        return self.primary_conv.backward(dx1)

    def _cheap_forward(self, x1):
        return self.cheap_operation(x1)

    def _cheap_backward(self, dx2):
        return self.cheap_operation.backward(dx2)

    def _ghost_forward(self, x):
        """The Ghost output (N, n, H', W') and the cache of its concat and slice (None in the
        eval fast path's copy, which writes x1 and the first n - m ghosts into the output once:
        two copies instead of the concat's two and the slice's one of everything)."""
        x1 = self._primary_forward(x)  # (N, m, H', W') intrinsic maps
        x2 = self._cheap_forward(x1)  # (N, m(s-1), H', W') ghosts
        if self.forward_only and isinstance(x1, np.ndarray):
            out = np.empty((x1.shape[0], self.out_chs, *x1.shape[2:]), x1.dtype)
            m = min(x1.shape[1], self.out_chs)
            out[:, :m] = x1[:, :m]
            out[:, m:] = x2[:, : self.out_chs - m]
            return out, None
        both, concat_cache = F.concat_forward([x1, x2], axis=1, backend=self.backend)
        out, slice_cache = F.slice_forward(both, 0, self.out_chs, axis=1, backend=self.backend)
        return out, (concat_cache, slice_cache)

    def _ghost_backward(self, dout, cache):
        concat_cache, slice_cache = cache
        dboth = F.slice_backward(dout, slice_cache, backend=self.backend)  # zeros past n
        dx1, dx2 = F.concat_backward(dboth, concat_cache, backend=self.backend)
        dx1 = F.add_forward(dx1, self._cheap_backward(dx2), backend=self.backend)[0]
        return self._primary_backward(dx1)

    def forward(self, x):
        out, cache = self._ghost_forward(x)
        self._save(cache, out.shape)
        return out

    def _planned(self) -> bool:
        hooks = ("_ghost_forward", "_primary_forward", "_cheap_forward")
        return self.forward_only and self.planned_as(GhostModule, *hooks)

    def inference_plan(self, x, channels_last=False):
        """The primary and cheap operations' plans, and the two copies into the output (along
        the last axis for channels-last arrays)."""
        if not self._planned():
            return super().inference_plan(x, channels_last)
        primary, x1 = self.primary_conv.inference_plan(x, channels_last)  # m intrinsic maps
        cheap, x2 = self.cheap_operation.inference_plan(x1, channels_last)  # m(s-1) ghosts
        axis = 3 if channels_last else 1
        n, m = self.out_chs, min(x1.shape[axis], self.out_chs)
        first, rest = ([slice(None)] * axis + [part] for part in (slice(0, m), slice(m, None)))
        ghosts = [slice(None)] * axis + [slice(0, n - m)]

        def assemble(x1, x2):
            shape = list(x1.shape)
            shape[axis] = n
            out = np.empty(shape, x1.dtype)
            out[tuple(first)] = x1[tuple(first)]
            out[tuple(rest)] = x2[tuple(ghosts)]
            return out

        def run(x):
            x1 = primary(x)
            return assemble(x1, cheap(x1))

        return run, assemble(x1, x2)

    def channels_last_convs(self):
        if not self._planned():
            return None
        return channels_last_convs([self.primary_conv, self.cheap_operation])

    def backward(self, dy):
        return self._ghost_backward(dy, self._saved(dy))


class GhostBottleneck(Module):
    """Ghost bottleneck (timm's ``GhostBottleneck``), (N, C_in, H, W) -> (N, C_out, H/s, W/s):

        h = ghost1(x)                              expansion to ``mid_chs``, ReLU
        h = BN(dwconv_kxk stride s (h))            only when s > 1 (``conv_dw``, ``bn_dw``, no ReLU)
        h = se(h)                                  only when ``se_ratio`` > 0
        y = ghost2(h) + shortcut(x)                projection to ``out_chs``, no ReLU

    shortcut: identity when C_in == C_out and s == 1, else dwconv_kxk stride s -> BN -> 1x1 -> BN.
    Backward: the residual sends dy down both paths and adds what comes back,
    dx = main^T(dy) + shortcut^T(dy), each path in reverse order.

    ``ghost1`` replaces the expansion module (GhostNetV2 passes a DFC-attention one). Subclasses
    set ``ghost_module`` (the class of the default expansion and of the projection) and override
    the ``_make_dw`` / ``_dw_*`` hooks (GhostNetV3).
    """

    ghost_module: type[GhostModule] = GhostModule

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        *,
        ghost1: GhostModule | None = None,
        rng: np.random.Generator | None = None,
    ):
        super().__init__()
        self.stride, self.dw_kernel_size = stride, dw_kernel_size
        self.ghost1 = self.ghost_module(in_chs, mid_chs, rng=rng) if ghost1 is None else ghost1
        folds = self._make_dw(mid_chs, rng)
        self.se = SqueezeExcite(mid_chs, se_ratio, rng=rng) if se_ratio > 0 else Identity()
        self.ghost2 = self.ghost_module(mid_chs, out_chs, relu=False, rng=rng)
        if in_chs == out_chs and stride == 1:
            self.shortcut = Identity()
        else:
            k = dw_kernel_size
            self.shortcut = Sequential(
                Conv2d(in_chs, in_chs, k, stride, (k - 1) // 2, groups=in_chs, bias=False, rng=rng),
                BatchNorm2d(in_chs),
                Conv2d(in_chs, out_chs, 1, bias=False, rng=rng),
                BatchNorm2d(out_chs),
            )
            folds += (("shortcut.0", "shortcut.1"), ("shortcut.2", "shortcut.3"))
        self.bn_folds = folds

    def _make_dw(self, mid_chs: int, rng) -> tuple:
        """The stride-s depthwise conv + BN; returns its (conv, BN) fold pair (none at s = 1)."""
        if self.stride == 1:
            return ()
        k = self.dw_kernel_size
        self.conv_dw = Conv2d(
            mid_chs, mid_chs, k, self.stride, (k - 1) // 2, groups=mid_chs, bias=False, rng=rng
        )
        self.bn_dw = BatchNorm2d(mid_chs)
        return (("conv_dw", "bn_dw"),)

    def _dw_forward(self, h):
        return h if self.stride == 1 else self.bn_dw(self.conv_dw(h))

    def _dw_backward(self, dh):
        return dh if self.stride == 1 else self.conv_dw.backward(self.bn_dw.backward(dh))

    def forward(self, x):
        h = self.ghost2(self.se(self._dw_forward(self.ghost1(x))))  # (N, C_out, H/s, W/s)
        if self.forward_only:
            y = residual_add(self, h, self.shortcut(x), x)
            self._save(None, y.shape)
            return y
        y, add_cache = F.add_forward(h, self.shortcut(x), backend=self.backend)
        self._save(add_cache, y.shape)
        return y

    def _main_path(self) -> list[Module] | None:
        """ghost1 -> the strided depthwise conv -> squeeze-excite -> ghost2, where the plan can
        run them as such; else None."""
        if not (self.forward_only and self.planned_as(GhostBottleneck, "_dw_forward")):
            return None
        dw = [self.conv_dw, self.bn_dw] if self.stride != 1 else []
        return [self.ghost1, *dw, self.se, self.ghost2]

    def inference_plan(self, x, channels_last=False):
        """The main path as one chain of plans, the shortcut's, and the residual add."""
        path = self._main_path()
        if path is None:
            return super().inference_plan(x, channels_last)
        main, h = chain_plans(path, x, channels_last)
        shortcut, s = chain_plans([self.shortcut], x, channels_last)

        def run(x):
            return residual_add(self, main(x), shortcut(x), x)

        return run, residual_add(self, h, s, x)

    def channels_last_convs(self):
        path = self._main_path()
        return None if path is None else channels_last_convs([*path, self.shortcut])

    def backward(self, dy):
        dh, dskip = F.add_backward(dy, self._saved(dy), backend=self.backend)  # both get dy
        dx_main = self.ghost1.backward(
            self._dw_backward(self.se.backward(self.ghost2.backward(dh)))
        )
        dx_skip = self.shortcut.backward(dskip)
        return F.add_forward(dx_main, dx_skip, backend=self.backend)[0]


#: builds bottleneck number ``layer_idx`` (0-based over the whole net) from
#: (layer_idx, in_chs, mid_chs, out_chs, kernel, stride, se_ratio, rng)
BottleneckFactory = Callable[..., Module]


def ghost_bottleneck_v1(layer_idx, in_chs, mid_chs, out_chs, k, stride, se_ratio, rng):
    """Bottleneck factory for ``GhostNet``: the V1 bottleneck everywhere (``layer_idx`` unused)."""
    return GhostBottleneck(in_chs, mid_chs, out_chs, k, stride, se_ratio, rng=rng)


class GhostNet(EvalFastPath, Sequential):
    """x (N, 3, H, W) -> logits (N, num_classes), for any H, W that survive the 32x downsampling
    (GhostNetV2/V3's DFC attention needs at least 2x2 maps at stride 32, so H, W >= 33).

    Children, as in timm's ``GhostNet``: ``conv_stem``, ``bn1``, ``act1``, ``blocks`` (the stages
    of bottlenecks, then ``ConvBnAct`` to 960 * w), ``global_pool``, ``conv_head`` (1x1 with bias,
    no BN), ``act2``, ``flatten``, ``head_drop`` (when ``drop_rate > 0``), ``classifier``.
    ``bottleneck`` builds each block (V1, V2 or V3 flavour); ``rng`` (a Generator or a seed)
    drives the initialisation.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        drop_rate: float = 0.2,
        in_chans: int = 3,
        bottleneck: BottleneckFactory = ghost_bottleneck_v1,
        rng: np.random.Generator | int | None = None,
    ):
        rng = np.random.default_rng(rng)
        chs = make_divisible(STEM_CHANNELS * width_mult, CHANNEL_DIVISOR)
        layers = {
            "conv_stem": Conv2d(in_chans, chs, 3, 2, 1, bias=False, rng=rng),  # (N, 16w, H/2, W/2)
            "bn1": BatchNorm2d(chs),
            "act1": ReLU(inplace=True),
        }
        stages, layer_idx = [], 0
        for stage in GHOSTNET_STAGES:
            blocks = []
            for k, exp, c, se_ratio, s in stage:
                out_chs = make_divisible(c * width_mult, CHANNEL_DIVISOR)
                mid_chs = make_divisible(exp * width_mult, CHANNEL_DIVISOR)
                blocks.append(bottleneck(layer_idx, chs, mid_chs, out_chs, k, s, se_ratio, rng))
                chs, layer_idx = out_chs, layer_idx + 1
            stages.append(Sequential(*blocks))
        features = make_divisible(FEATURE_CHANNELS * width_mult, CHANNEL_DIVISOR)
        stages.append(Sequential(ConvBnAct(chs, features, 1, rng=rng)))  # (N, 960w, H/32, W/32)
        layers["blocks"] = Sequential(*stages)
        layers["global_pool"] = AdaptiveAvgPool2d(1)  # (N, 960w, 1, 1)
        layers["conv_head"] = Conv2d(features, HEAD_CHANNELS, 1, bias=True, rng=rng)
        layers["act2"] = ReLU(inplace=True)
        layers["flatten"] = Flatten(1)  # (N, 1280)
        classifier = Linear(HEAD_CHANNELS, num_classes, rng=rng)  # (N, num_classes)
        if drop_rate > 0:  # its seed is drawn last: the weights do not depend on drop_rate
            layers["head_drop"] = Dropout(drop_rate, seed=int(rng.integers(2**31)))
        layers["classifier"] = classifier
        super().__init__(layers)
        self.num_features = features
        self.bn_folds = (("conv_stem", "bn1"),)

    def reparameterize(self) -> GhostNet:
        """Inference form, in place: every block with re-parameterisable branches (GhostNetV3)
        folds them into one conv, then every declared conv -> BN pair is folded
        (``scratchnets.models.fuse``). Returns self in eval mode; eval outputs are unchanged up to
        rounding."""
        return fuse(reparameterize_blocks(self), inplace=True)


@register_model("ghostnet_100", aliases=("ghostnet",), cfg=ModelCfg(
    preprocessing=timm_preprocessing(), twin=("timm", "ghostnet_100"), paper="arXiv:1911.11907",
    benchmarked=True, mobile=True,
))  # fmt: skip
def ghostnet_100(num_classes: int = 1000, width_mult: float = 1.0, **kwargs) -> GhostNet:
    """GhostNet V1 with width ``width_mult``; kwargs: ``drop_rate`` (0.2), ``in_chans``, ``rng``."""
    return GhostNet(num_classes, width_mult, bottleneck=ghost_bottleneck_v1, **kwargs)
