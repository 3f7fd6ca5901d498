"""The layers: one per op, named and constructed like their ``torch.nn`` twins.

Each forward checks its input, calls ``scratchnets.functional.<op>_forward(..., backend=self.backend)``
and keeps the op's cache; each backward calls ``<op>_backward`` on that cache, adds the parameter
gradients to ``.grad`` and returns dx. The math lives in ``scratchnets.reference`` (see each op's
docstring); this file is the wiring, argument handling and torch's defaults, plus Conv2d's
inference path (a conv with a BN / activation absorbed by the eval fast path runs the backend's
fused kernel where it has one, with the checked geometry cached per input shape).

Layers with parameters take ``rng`` (a NumPy Generator used by the initialisation; default a fresh
``default_rng()``) and ``dtype`` (float32 by default) as keyword arguments.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import functional as F
from ..arrays import to_numpy
from ..backends import get_backend
from ..reference.batchnorm import eval_scale_shift
from ..reference.conv import prepare_conv
from ..reference.pooling import adaptive_output_size, divisor_rule
from ..reference.upsample import Sampling
from . import init
from .module import Module, Parameter, as_float_dtype

NCHW = ("N", "C", "H", "W")  # layout of an image batch whose channel count any value may take


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count(value, name: str, minimum: int = 1) -> int:
    """An int argument of at least ``minimum``: TypeError for a non-int, ValueError below."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a 2-sequence of ints, each at least ``minimum``, as ``(h, w)`` (how torch
    stores conv arguments): TypeError for a non-int, ValueError below ``minimum``."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2 or not all(map(_is_int, values)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(values) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return int(values[0]), int(values[1])


def _fraction(value, name: str):
    """A real number in [0, 1]: TypeError for a non-number, ValueError outside."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value


def _conv_padding(padding):
    """Conv2d's ``padding`` as stored (torch style): a string, a pair, or our 4-tuple."""
    if isinstance(padding, str):
        return padding
    if isinstance(padding, (tuple, list)) and len(padding) == 4 and all(map(_is_int, padding)):
        if min(padding) < 0:
            raise ValueError(f"padding must be at least 0, got {padding!r}")
        return tuple(int(p) for p in padding)  # (top, bottom, left, right)
    return _pair(padding, "padding", minimum=0)


def _uniform_bias(out_features: int, weight: np.ndarray, rng) -> Parameter:
    """torch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in of the layer's weight."""
    fan_in, _ = init.fan_in_and_fan_out(weight.shape)
    bound = 1.0 / math.sqrt(fan_in)
    return Parameter(init.uniform_(np.empty(out_features, weight.dtype), -bound, bound, rng=rng))


def _default_weight(shape, dtype, rng) -> Parameter:
    """torch's default conv/linear weight: kaiming_uniform_(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in))."""
    return Parameter(init.kaiming_uniform_(np.empty(shape, dtype), a=math.sqrt(5), rng=rng))


def _explicit_padding(padding, kernel_size, stride, dilation):
    """The op's padding for a Conv2d ``padding`` argument (int, pair, 4-tuple, "same", "valid").

    "same" (stride 1 only, like torch) pads ``dilation * (k - 1)`` in total along each axis, half
    before and the rest (one more when odd) after: ``(top, bottom, left, right)``.
    """
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return 0
    if padding != "same":
        raise ValueError(f"padding must be 'same', 'valid', an int or a tuple, got {padding!r}")
    if stride != (1, 1):
        raise ValueError(f"padding='same' needs stride 1 (like torch), got stride={stride}")
    totals = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)]
    (top, bottom), (left, right) = ((t // 2, t - t // 2) for t in totals)
    return top, bottom, left, right


class _AcceptsUnbatched:
    """torch's unbatched inputs, for a layer whose input is (N, C, H, W): a (C, H, W) input runs
    as a batch of one and comes back without the batch axis, in forward and in backward, like
    ``torch.nn.Conv2d`` / ``MaxPool2d`` / ``ReflectionPad2d`` on a single image. The layer's
    forward starts with ``x = self._add_batch(x, forward=True)`` and ends with
    ``return self._drop_batch(y)``; its backward does the same with dy and dx."""

    _without_batch = False  # the last forward's input had no batch axis

    def _add_batch(self, a, forward: bool = False):
        if forward:  # a plain attribute, set on every forward: no __setattr__ checks
            self.__dict__["_without_batch"] = len(a.shape) == 3
        return a.reshape((1, *tuple(a.shape))) if self._without_batch else a

    def _drop_batch(self, a):
        return a.reshape(tuple(a.shape)[1:]) if self._without_batch else a


class Conv2d(_AcceptsUnbatched, Module):
    """2-D convolution (cross-correlation), ``torch.nn.Conv2d``.

    y[n, o, p, q] = b[o] + sum_{c in group g of o, i, j} w[o, c - g*Cg, i, j]
                                                      * xpad[n, c, p*sh + i*dh, q*sw + j*dw]

    (c the input channel, ``Cg = C_in / groups``: the weight's second index counts the channels
    within the group).

    Shapes: x (N, C_in, H, W), weight (C_out, C_in / groups, kh, kw), bias (C_out,),
    y (N, C_out, OH, OW). ``padding``: int, (ph, pw), (top, bottom, left, right), "valid" or
    "same" (stride 1). Depthwise: ``groups == in_channels``. See ``reference.conv2d_forward``.
    ``padding_mode``: what the border holds, as torch: "zeros", or "reflect", "replicate",
    "circular" (the input padded by ``pad2d`` first, then convolved without padding; the
    backward scatter-adds the border's gradient back into the pixels it copied).
    """

    PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
                     "circular": "circular"}  # fmt: skip

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        rng: np.random.Generator | None = None,
        dtype=np.float32,
    ):
        super().__init__()
        if padding_mode not in self.PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {', '.join(map(repr, self.PADDING_MODES))}, got "
                f"{padding_mode!r}"
            )
        self.padding_mode = padding_mode
        in_channels, out_channels = (
            _count(in_channels, "in_channels"),
            _count(out_channels, "out_channels"),
        )
        groups = _count(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        self.padding = _conv_padding(padding)  # as torch shows it; the op gets explicit numbers
        self._op_padding = _explicit_padding(
            self.padding, self.kernel_size, self.stride, self.dilation
        )
        self.dtype = as_float_dtype(dtype)
        rng = np.random.default_rng() if rng is None else rng
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = _default_weight(shape, self.dtype, rng)
        if bias:
            self.bias = _uniform_bias(out_channels, self.weight.data, rng)
        else:
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        s += f", stride={self.stride}"
        if isinstance(self.padding, str) or any(self.padding):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.fused_activation is not None:
            s += f", fused_activation={self.fused_activation!r}"
        return s

    #: an activation absorbed by ``models.fuse(..., activations=True)`` ("relu" / "relu6" /
    #: "hard_swish"): the conv then computes act(conv(x) + b) for inference only, with no cache
    #: and no backward. A submodule ``folded_bn`` (an eval-mode BatchNorm2d the eval fast path
    #: attaches) is applied in the same pass: act(BN(conv(x) + b)), reading the BN's current
    #: statistics each call.
    fused_activation: str | None = None

    def _inference_only(self) -> bool:
        return self.fused_activation is not None or "folded_bn" in self._modules

    def forward(self, x):
        cached = self.__dict__.get("_fused_geometry")  # the inference path's last checked input
        if (cached is not None and type(x) is np.ndarray and cached[0] == self._fused_key(x)
                and (self.forward_only or self._inference_only())):  # fmt: skip
            self.__dict__["_without_batch"] = False  # same shape, dtypes, padding: checked before
            if cached[2] is not None:
                return cached[2](x)
            return self._fused_call(x, None if self.bias is None else self.bias.data, cached[1])
        self._check_input(x, ("N", self.in_channels, "H", "W"), match_dtype=True, unbatched=True)
        x = self._add_batch(x, forward=True)
        b = None if self.bias is None else self.bias.data
        padding, pad_cache = self._op_padding, None
        if self.padding_mode != "zeros":  # pad first, then a conv without padding
            x, pad_cache = F.pad2d_forward(x, padding, self.PADDING_MODES[self.padding_mode],
                                           backend=self.backend)  # fmt: skip
            padding = 0
        args = dict(stride=self.stride, padding=padding, dilation=self.dilation,
                    groups=self.groups)  # fmt: skip
        if self._inference_only() or self.forward_only:  # no backward follows: no cache
            return self._drop_batch(self._forward_fused(x, b, args))
        y, cache = F.conv2d_forward(x, self.weight.data, b, **args, backend=self.backend)
        self._save((cache, pad_cache), y.shape)
        return self._drop_batch(y)

    def inference_plan(self, x, channels_last=False):
        """The prepared call (``_prepared_call``) where this layer made one for ``x``; for a
        channels-last ``x`` (N, H, W, C) the backend's channels-last call."""
        if channels_last:
            return self._channels_last_plan(x)
        y = self.forward(x)
        cached = self.__dict__.get("_fused_geometry")
        if (self.planned_as(Conv2d) and cached is not None and cached[2] is not None
                and type(x) is np.ndarray and cached[0] == self._fused_key(x)):  # fmt: skip
            return cached[2], y
        return self.forward, y

    def channels_last_convs(self):
        """1 on the eval fast path's copy (cpu backend) for a depthwise conv or a stride-1
        pointwise one with zero padding (``kernels.cpu.channels_last``); otherwise None."""
        if not (self.forward_only and self.planned_as(Conv2d) and not self.training
                and self.padding_mode == "zeros" and self.backend == "cpu"):  # fmt: skip
            return None
        from ..kernels.cpu.channels_last import channels_last_conv_kind

        kind = channels_last_conv_kind(self.in_channels, self.out_channels, self.groups,
                                       self.kernel_size, self.stride, self._op_padding)  # fmt: skip
        return None if kind is None else 1

    def _channels_last_plan(self, x):
        """``(run, y)`` for a channels-last input (N, H, W, C): the checks of ``forward`` on its
        NCHW view, then the backend's channels-last prepared call."""
        nchw = x.transpose(0, 3, 1, 2)
        self._check_input(nchw, ("N", self.in_channels, "H", "W"), match_dtype=True)
        b = None if self.bias is None else self.bias.data
        _, _, _, g = prepare_conv(nchw, self.weight.data, b, stride=self.stride,
                                  padding=self._op_padding, dilation=self.dilation,
                                  groups=self.groups)  # fmt: skip
        run = self._prepared_call(get_backend(self.backend), g, b, channels_last=True)
        return run, run(x)

    def _fused_key(self, x) -> tuple:
        """What an input's checks, conv geometry and prepared call depend on (the inference path
        caches them): its shape and dtype, the layer's and weight's dtypes, backend, padding,
        mode, fused activation and whether a BN is attached."""
        return (x.shape, x.dtype, self.dtype, self.weight.data.dtype, self.backend,
                self._op_padding, self.training, self.fused_activation,
                "folded_bn" in self._modules)  # fmt: skip

    def _fused_call(self, x, b, geometry):
        """act(BN(conv(x) + b)) by the backend's fused kernel, for a checked input ``x`` with its
        ``geometry``."""
        scale, b = self._bn_scale_shift(b, x.dtype)
        return get_backend(self.backend).conv2d_bias_act_checked(
            x, self.weight.data, b, geometry, self.fused_activation, scale
        )

    def _bn_scale_shift(self, b, dtype) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The attached BN as ``y * scale + shift`` after the conv (its bias ``b`` included):
        scale = gamma / sqrt(running_var + eps), shift = (b - running_mean) * scale + beta, in
        float64, returned in the input's dtype (in one compiled call where the backend has it);
        ``(None, b)`` without an attached BN."""
        if "folded_bn" not in self._modules:
            return None, b
        bn = self._modules["folded_bn"]
        ops = get_backend(self.backend)
        if hasattr(ops, "batch_norm2d_eval_affine"):
            weight, bias = (None if p is None else p.data for p in (bn.weight, bn.bias))
            return ops.batch_norm2d_eval_affine(
                weight, bias, bn.running_mean, bn.running_var, bn.eps, b, dtype
            )
        scale, shift = bn.eval_scale_shift(b)
        return scale.astype(dtype), np.broadcast_to(shift, scale.shape).astype(dtype)

    def _prepared_call(self, ops, g, b, channels_last=False):
        """The backend's call prepared for this layer and geometry ``g``
        (``conv2d_bias_act_prepared``: kernel, tile plan and views chosen once), on the eval
        fast path's copy only: the model rebuilds that copy whenever one of its arrays is
        replaced, so the arrays the call holds stay this layer's. None elsewhere."""
        if not (self.forward_only and hasattr(ops, "conv2d_bias_act_prepared")):
            return None
        bn = self._modules.get("folded_bn")
        if bn is not None:
            weight, bias = (None if p is None else p.data for p in (bn.weight, bn.bias))
            bn = (weight, bias, bn.running_mean, bn.running_var, bn.eps)
        return ops.conv2d_bias_act_prepared(self.weight.data, b, g, self.fused_activation, bn,
                                            channels_last)  # fmt: skip

    def _forward_fused(self, x, b, args: dict):
        """act(BN(conv(x) + b)) with the BN and the activation where present: in one kernel where
        the backend has one (cpu), else op by op."""
        if self.training:
            raise RuntimeError(
                f"{self._get_name()} with a fused BN / activation is for inference (eval mode) "
                "only: train the unfused model"
            )
        ops = get_backend(self.backend)
        if hasattr(ops, "conv2d_bias_act_checked"):
            # the arguments' checks and geometry, once per input shape and dtype
            unpadded = self.padding_mode == "zeros"  # else x was padded here: not forward's x
            key = self._fused_key(x) if unpadded else None
            cached = self.__dict__.get("_fused_geometry")
            if key is None or cached is None or cached[0] != key:
                x, _, _, g = prepare_conv(x, self.weight.data, b, **args)
                cached = (key, g, None if key is None else self._prepared_call(ops, g, b))
                if key is not None and x.ndim == 4:  # forward's shortcut: a batched input
                    self.__dict__["_fused_geometry"] = cached
            if cached[2] is not None:
                return cached[2](x)
            return self._fused_call(x, b, cached[1])
        scale, b = self._bn_scale_shift(b, x.dtype)
        y, _ = ops.conv2d_forward(x, self.weight.data, None if scale is not None else b, **args)
        if scale is not None:
            y = y * scale[None, :, None, None] + b[None, :, None, None]
        if self.fused_activation is None:
            return y
        return getattr(ops, f"{self.fused_activation}_forward")(y)[0]

    def backward(self, dy):
        if self._inference_only():
            raise RuntimeError(
                f"{self._get_name()} with a fused BN / activation has no backward (an "
                "inference-only layer of models.fuse(..., activations=True) or the eval fast path)"
            )
        dy = self._add_batch(dy)
        cache, pad_cache = self._saved(dy)
        dx, dw, db = F.conv2d_backward(dy, cache, backend=self.backend)
        self._accumulate(self.weight, dw)
        self._accumulate(self.bias, db)
        if pad_cache is not None:
            dx = F.pad2d_backward(dx, pad_cache, backend=self.backend)
        return self._drop_batch(dx)


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, ``torch.nn.BatchNorm2d``.

    Training: y = weight * (x - mean) / sqrt(var + eps) + bias with the batch's biased variance;
    running_mean/var (unbiased var) move by ``momentum`` and ``num_batches_tracked`` counts the
    training forwards (``momentum=None``: cumulative average, factor 1 / num_batches_tracked, as in
    torch). Eval: the running statistics replace the batch ones. See ``reference.batch_norm2d_forward``.
    ``affine=False``: no weight and bias (y = xhat); ``bias=False``: a weight only (torch 2.x's
    keyword). ``track_running_stats=False``: no running
    buffers (they are None), and the batch statistics are used in eval mode too, as in torch.
    An empty batch (N = 0) gives an empty output and leaves the statistics as they are.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        dtype=np.float32,
    ):
        super().__init__()
        num_features = _count(num_features, "num_features")
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
            raise TypeError(f"eps must be a number, got {eps!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        if momentum is not None:
            _fraction(momentum, "momentum")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.dtype = as_float_dtype(dtype)
        if self.affine:
            self.weight = Parameter(np.ones(num_features, self.dtype))
        else:
            self.register_parameter("weight", None)
        if self.affine and bias:
            self.bias = Parameter(np.zeros(num_features, self.dtype))
        else:
            self.register_parameter("bias", None)
        tracked = self.track_running_stats
        self.register_buffer(
            "running_mean", np.zeros(num_features, self.dtype) if tracked else None
        )
        self.register_buffer("running_var", np.ones(num_features, self.dtype) if tracked else None)
        self.register_buffer("num_batches_tracked", np.array(0, np.int64) if tracked else None)

    def eval_scale_shift(self, conv_bias=None) -> tuple[np.ndarray, np.ndarray]:
        """This BN in eval mode as ``z * scale + shift`` per channel, float64 host arrays, where z
        is a conv's output without its bias ``conv_bias`` (``reference.batchnorm.eval_scale_shift``):
        what folding it into that conv uses."""

        def host(a):
            return None if a is None else to_numpy(a.data if isinstance(a, Parameter) else a)

        return eval_scale_shift(host(self.weight), host(self.bias), host(self.running_mean),
                                host(self.running_var), self.eps, host(conv_bias))  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def forward(self, x):
        return self._normalize(x, None)

    def absorbs(self, following: Module) -> bool:
        """Whether this BN runs ``following`` in its own passes (``forward_absorbing``): a plain
        ReLU / ReLU6 / Hardswish (``absorbable_activation``) after a plain BatchNorm2d."""
        return (
            self.planned_as(BatchNorm2d, "backward")
            and "forward" not in self.__dict__
            and self.absorbable_activation(following) is not None
        )

    def absorbable_activation(self, activation: Module) -> str | None:
        """The op name of ``activation`` where this BN's backend can run it inside BN's passes
        (``batch_norm2d_act_forward``, the cpu backend's), else None: for a ReLU, ReLU6 or
        Hardswish on the same backend whose forward and backward are the class's own."""
        if (type(activation) in _BN_ACTIVATIONS and activation.backend == self.backend
                and activation.planned_as(_UnaryOp, "backward")
                and "forward" not in activation.__dict__
                and hasattr(get_backend(self.backend), "batch_norm2d_act_forward")):  # fmt: skip
            return activation._op
        return None

    def forward_absorbing(self, x, following: Module):
        """``following(self(x))`` in BN's passes, for an activation ``absorbable_activation``
        accepts; ``backward`` then takes the gradient of the activation's output and goes
        through both (``following`` keeps no cache)."""
        following.__dict__.update(_cache=None, _out_shape=None)  # its backward is BN's now
        return self._normalize(x, following._op)

    def _normalize(self, x, activation: str | None):
        """act(BN(x)): ``batch_norm2d_forward``, or the backend's ``batch_norm2d_act_forward``
        with an ``activation``."""
        self._check_input(x, ("N", self.num_features, "H", "W"), match_dtype=True)
        factor = 0.0 if self.momentum is None else self.momentum  # eval mode does not read it
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1  # in place on the 0-d int64 buffer
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        arguments = (
            x,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            self.running_mean,
            self.running_var,
            self.training or not self.track_running_stats,  # no buffers: batch statistics
            factor,
            self.eps,
        )
        if activation is None:
            y, cache = F.batch_norm2d_forward(*arguments, backend=self.backend)
        else:
            kernels = get_backend(self.backend)
            y, cache = kernels.batch_norm2d_act_forward(*arguments, activation=activation)
        self._save(cache, y.shape)
        return y

    def backward(self, dy):
        dx, dweight, dbias = F.batch_norm2d_backward(dy, self._saved(dy), backend=self.backend)
        self._accumulate(self.weight, dweight)
        self._accumulate(self.bias, dbias)
        return dx


class _UnaryOp(Module):
    """A parameter-free op of one input: ``_op`` names the functional pair, ``_layout`` the
    required input layout (None: any shape)."""

    _op: str
    _layout: tuple | None = None

    def forward(self, x):
        self._check_input(x, self._layout)
        y, cache = getattr(F, f"{self._op}_forward")(x, backend=self.backend)
        self._save(cache, y.shape)
        return y

    def channels_last_convs(self):
        """0 for an op of any layout (elementwise: channels-last arrays run as they are)."""
        return 0 if self._layout is None and self.planned_as(_UnaryOp) else None

    def backward(self, dy):
        return getattr(F, f"{self._op}_backward")(dy, self._saved(dy), backend=self.backend)


class _InplaceFlag(_UnaryOp):
    """Accepts torch's ``inplace`` argument for drop-in compatibility and shows it in the repr.

    The computation is never in place here: backward needs the forward's input or output.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class ReLU(_InplaceFlag):
    """y = max(x, 0); dx = dy * [x > 0]  (``torch.nn.ReLU``)."""

    _op = "relu"


class ReLU6(_InplaceFlag):
    """y = min(max(x, 0), 6); dx = dy * [0 < x < 6]  (``torch.nn.ReLU6``)."""

    _op = "relu6"


class Hardtanh(_InplaceFlag):
    """y = min(max(x, min_val), max_val); dx = dy * [min_val < x < max_val]  (``torch.nn.Hardtanh``,
    ONNX's Clip; ReLU6 is Hardtanh(0, 6))."""

    _op = "clip"

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False):
        super().__init__(inplace)
        if not min_val <= max_val:
            raise ValueError(f"Hardtanh: min_val {min_val} is above max_val {max_val}")
        self.min_val, self.max_val = float(min_val), float(max_val)

    def forward(self, x):
        y, cache = F.clip_forward(x, self.min_val, self.max_val, backend=self.backend)
        self._save(cache, y.shape)
        return y

    def backward(self, dy):
        return F.clip_backward(dy, self._saved(dy), backend=self.backend)

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}" + (
            ", inplace=True" if self.inplace else "")  # fmt: skip


class Softmax(Module):
    """y = exp(x) / sum exp(x) along ``dim``; dx = y * (dy - sum(dy * y))  (``torch.nn.Softmax``).
    Models here return logits (cross-entropy takes them); this is for a softmax inside a network
    (an attention map)."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x):
        y, cache = F.softmax_forward(x, self.dim, backend=self.backend)
        self._save(cache, y.shape)
        return y

    def backward(self, dy):
        return F.softmax_backward(dy, self._saved(dy), backend=self.backend)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Sigmoid(_UnaryOp):
    """y = 1 / (1 + exp(-x)); dx = dy * y * (1 - y)  (``torch.nn.Sigmoid``)."""

    _op = "sigmoid"


class Hardsigmoid(_InplaceFlag):
    """y = relu6(x + 3) / 6; dx = dy / 6 * [-3 < x < 3]  (``torch.nn.Hardsigmoid``)."""

    _op = "hard_sigmoid"


class Hardswish(_InplaceFlag):
    """y = x * relu6(x + 3) / 6; dx = dy * (0, x / 3 + 1/2, 1 for x <= -3, inside, >= 3)
    (``torch.nn.Hardswish``, MobileNetV3's h-swish)."""

    _op = "hard_swish"


#: the activations ``BatchNorm2d.absorbs``: their ops are ``batch_norm2d_act_forward``'s
_BN_ACTIVATIONS = (ReLU, ReLU6, Hardswish)


class SiLU(_InplaceFlag):
    """y = x * sigmoid(x); dx = dy * s * (1 + x (1 - s)), s = sigmoid(x) (``torch.nn.SiLU``)."""

    _op = "silu"


class _Pad2d(_AcceptsUnbatched, Module):
    """Pads H and W of an NCHW input (``torch.nn.{Zero,Constant,Reflection,Replication,
    Circular}Pad2d``). ``padding``: an int (every side) or, as torch orders it, ``(left, right,
    top, bottom)``. See ``reference.pad`` for each mode's source index and the backward."""

    _mode: str

    def __init__(self, padding, value: float = 0.0):
        super().__init__()
        if _is_int(padding):
            padding = (padding,) * 4
        if not (isinstance(padding, (tuple, list)) and len(padding) == 4
                and all(_is_int(p) and p >= 0 for p in padding)):  # fmt: skip
            raise ValueError(
                f"padding must be an int or (left, right, top, bottom) of ints >= 0, got {padding!r}"
            )
        self.padding, self.value = tuple(int(p) for p in padding), float(value)

    def extra_repr(self) -> str:
        return f"{self.padding}"

    def forward(self, x):
        self._check_input(x, NCHW, unbatched=True)
        x = self._add_batch(x, forward=True)
        left, right, top, bottom = self.padding
        y, cache = F.pad2d_forward(x, (top, bottom, left, right), self._mode, self.value,
                                   backend=self.backend)  # fmt: skip
        self._save(cache, y.shape)
        return self._drop_batch(y)

    def backward(self, dy):
        dy = self._add_batch(dy)
        return self._drop_batch(F.pad2d_backward(dy, self._saved(dy), backend=self.backend))


class ZeroPad2d(_Pad2d):
    """Zeros around H and W (``torch.nn.ZeroPad2d``)."""

    _mode = "constant"

    def __init__(self, padding):
        super().__init__(padding)


class ConstantPad2d(_Pad2d):
    """``value`` around H and W (``torch.nn.ConstantPad2d(padding, value)``)."""

    _mode = "constant"

    def __init__(self, padding, value: float):
        super().__init__(padding, value)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class ReflectionPad2d(_Pad2d):
    """The input mirrored at its edges, the edge not repeated (``torch.nn.ReflectionPad2d``)."""

    _mode = "reflect"


class ReplicationPad2d(_Pad2d):
    """The edge pixels repeated (``torch.nn.ReplicationPad2d``)."""

    _mode = "replicate"


class CircularPad2d(_Pad2d):
    """The input wrapped around, as on a torus (``torch.nn.CircularPad2d``)."""

    _mode = "circular"


class _Pool2d(_AcceptsUnbatched, Module):
    """Shared argument handling of MaxPool2d and AvgPool2d (``stride=None`` means kernel_size;
    ``ceil_mode`` rounds the number of windows up, as torch)."""

    _op: str

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False):
        super().__init__()
        self.ceil_mode = bool(ceil_mode)
        kernel = _pair(kernel_size, "kernel_size")
        _pair(kernel_size if stride is None else stride, "stride")
        pads = _pair(padding, "padding", minimum=0)
        if any(2 * p > k for p, k in zip(pads, kernel, strict=True)):
            raise ValueError(
                f"padding must be at most half the kernel size, got padding={padding!r} for "
                f"kernel_size={kernel_size!r}"
            )
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def _op_kwargs(self) -> dict:
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    ceil_mode=self.ceil_mode)  # fmt: skip

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def forward(self, x):
        self._check_input(x, NCHW, unbatched=True)
        x = self._add_batch(x, forward=True)
        y, cache = getattr(F, f"{self._op}_forward")(x, **self._op_kwargs(), backend=self.backend)
        self._save(cache, y.shape)
        return self._drop_batch(y)

    def backward(self, dy):
        dy = self._add_batch(dy)
        dx = getattr(F, f"{self._op}_backward")(dy, self._saved(dy), backend=self.backend)
        return self._drop_batch(dx)


def _with_indices(layer, y):
    """``y``, or ``(y, indices)`` for a max pooling with ``return_indices``: torch's flat input
    index ``h * W + w`` of each output's maximum (int64, the batch axis dropped like y's)."""
    if not layer.return_indices:
        return y
    indices = getattr(get_backend(layer.backend), f"{layer._op}_indices")(layer._cache)
    return y, layer._drop_batch(indices)


class MaxPool2d(_Pool2d):
    """y = max over each (padded with -inf) window, its taps ``dilation`` apart; dx routes dy to
    the first maximum in scan order (``torch.nn.MaxPool2d``, its arguments in torch's order).
    With ``return_indices`` the forward returns ``(y, indices)``."""

    _op = "max_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False):  # fmt: skip
        super().__init__(kernel_size, stride, padding, ceil_mode)
        _pair(dilation, "dilation")
        self.dilation, self.return_indices = dilation, bool(return_indices)

    def _op_kwargs(self) -> dict:
        return dict(super()._op_kwargs(), dilation=self.dilation)

    def forward(self, x):
        return _with_indices(self, super().forward(x))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dilation={self.dilation}, ceil_mode={self.ceil_mode}"


class AvgPool2d(_Pool2d):
    """y = mean over each window; padded zeros count in the divisor unless
    ``count_include_pad=False``; ``divisor_override`` replaces the divisor
    (``torch.nn.AvgPool2d``, arguments in torch's order)."""

    _op = "avg_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None):  # fmt: skip
        super().__init__(kernel_size, stride, padding, ceil_mode)
        divisor_rule(padding, count_include_pad, divisor_override)
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def _op_kwargs(self) -> dict:
        return dict(super()._op_kwargs(), count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override)  # fmt: skip


class _AdaptivePool2d(_AcceptsUnbatched, Module):
    """torch's adaptive pooling: the output size is given and each output reads a window of
    ``reference.pooling.adaptive_windows`` (int or (OH, OW); None keeps that axis)."""

    _op: str

    def __init__(self, output_size):
        super().__init__()
        sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
        if not (len(sizes) in (1, 2) and all(s is None or (_is_int(s) and s >= 1) for s in sizes)):
            raise ValueError(
                f"output_size must be an int >= 1 or a pair of them (None keeps the input's "
                f"size), got {output_size!r}"
            )
        self.output_size = output_size

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def _pool(self, x) -> tuple[str, np.ndarray, object]:
        """``(op name, y, cache)`` of the op that pools the batched input x."""
        y, cache = getattr(F, f"{self._op}_forward")(x, self.output_size, backend=self.backend)
        return self._op, y, cache

    def forward(self, x):
        self._check_input(x, NCHW, unbatched=True)
        self._active_op, y, cache = self._pool(self._add_batch(x, forward=True))
        self._save(cache, y.shape)
        return self._drop_batch(y)

    def backward(self, dy):
        dy = self._add_batch(dy)
        dx = getattr(F, f"{self._active_op}_backward")(dy, self._saved(dy), backend=self.backend)
        return self._drop_batch(dx)


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """y[n, c, p, q] = mean of x over window (p, q) (``torch.nn.AdaptiveAvgPool2d``); an output
    of 1 x 1 (every model's head) runs as the global average pooling op."""

    _op = "adaptive_avg_pool2d"

    def _pool(self, x) -> tuple[str, np.ndarray, object]:
        if adaptive_output_size(self.output_size, tuple(x.shape)[2:]) != (1, 1):
            return super()._pool(x)
        return "global_avg_pool2d", *F.global_avg_pool2d_forward(x, backend=self.backend)


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """y[n, c, p, q] = max of x over window (p, q); dx routes dy to the window's first maximum
    (``torch.nn.AdaptiveMaxPool2d``). With ``return_indices`` the forward returns
    ``(y, indices)``."""

    _op = "adaptive_max_pool2d"

    def __init__(self, output_size, return_indices: bool = False):
        super().__init__(output_size)
        self.return_indices = bool(return_indices)

    def forward(self, x):
        return _with_indices(self, super().forward(x))


class Linear(Module):
    """y = x @ weight.T + bias  (``torch.nn.Linear``). Shapes: x (N, in_features),
    weight (out_features, in_features), bias (out_features,), y (N, out_features). As in torch,
    x may also have any number of leading axes, (*, in_features) -> (*, out_features), including
    none: (in_features,) -> (out_features,)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rng: np.random.Generator | None = None,
        dtype=np.float32,
    ):
        super().__init__()
        in_features, out_features = (
            _count(in_features, "in_features"),
            _count(out_features, "out_features"),
        )
        self.in_features, self.out_features = in_features, out_features
        self.dtype = as_float_dtype(dtype)
        rng = np.random.default_rng() if rng is None else rng
        self.weight = _default_weight((out_features, in_features), self.dtype, rng)
        if bias:
            self.bias = _uniform_bias(out_features, self.weight.data, rng)
        else:
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        has_bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={has_bias}"

    def forward(self, x):
        self._check_input(x, None, match_dtype=True)
        shape = tuple(x.shape)
        if not shape or shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r} expects an input of shape (*, {self.in_features}), got {shape}"
            )
        self._leading = shape[:-1]  # the ops see (N, in_features), N = prod(leading)
        b = None if self.bias is None else self.bias.data
        rows = math.prod(self._leading)
        y, cache = F.linear_forward(x.reshape((rows, self.in_features)), self.weight.data, b,
                                    backend=self.backend)  # fmt: skip
        self._save(cache, (*self._leading, self.out_features))
        return y.reshape((*self._leading, self.out_features))

    def backward(self, dy):
        cache = self._saved(dy)  # dy checked against the output shape
        rows = math.prod(self._leading)
        dx, dw, db = F.linear_backward(dy.reshape((rows, self.out_features)), cache,
                                       backend=self.backend)  # fmt: skip
        self._accumulate(self.weight, dw)
        self._accumulate(self.bias, db)
        return dx.reshape((*self._leading, self.in_features))


class Dropout(Module):
    """Training: y = x * mask / (1 - p), mask ~ Bernoulli(1 - p) per element; eval: y = x
    (``torch.nn.Dropout``). The module's Generator (``seed``) draws a fresh op seed per forward,
    so a seeded module replays the same masks; backward reuses the forward's mask. ``inplace``
    is accepted for torch compatibility; the computation is never in place."""

    def __init__(self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None):
        super().__init__()
        _fraction(p, "dropout probability p")  # p = 1 drops everything, as in torch
        self.p, self.inplace = p, inplace
        self._rng = np.random.default_rng(seed)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"

    def forward(self, x):
        self._check_input(x)
        seed = int(self._rng.integers(2**31)) if self.training else None
        y, cache = F.dropout_forward(
            x, p=self.p, training=self.training, seed=seed, backend=self.backend
        )
        self._save(cache, y.shape)
        return y

    def backward(self, dy):
        return F.dropout_backward(dy, self._saved(dy), backend=self.backend)


class Flatten(Module):
    """Merge dims ``start_dim..end_dim`` into one (a reshape); backward reshapes dy back
    (``torch.nn.Flatten``). (N, C, H, W) -> (N, C*H*W) with the defaults."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def forward(self, x):
        self._check_input(x)
        shape, ndim = tuple(x.shape), x.ndim
        if not (-ndim <= self.start_dim < ndim and -ndim <= self.end_dim < ndim):
            raise ValueError(f"{self!r}: dims out of range for an input of shape {shape}")
        start, end = self.start_dim % ndim, self.end_dim % ndim
        if start > end:
            raise ValueError(
                f"{self!r}: start_dim comes after end_dim for an input of shape {shape}"
            )
        y = x.reshape(shape[:start] + (math.prod(shape[start : end + 1]),) + shape[end + 1 :])
        self._save(shape, y.shape)
        return y

    def backward(self, dy):
        return dy.reshape(self._saved(dy))


class Upsample(Module):
    """Spatial upsampling, ``torch.nn.Upsample`` with mode "nearest" or "bilinear" (and
    ``align_corners``).

    Output size: ``size`` (int or (OH, OW)), or ``floor(in * scale_factor)`` per axis. The source
    coordinates then use in / out, which equals torch's ``1 / scale_factor`` for integer scale
    factors; for fractional ones it matches torch with ``recompute_scale_factor=True``.
    Nearest: src = floor(dst * in / out). See ``reference.upsample_*2d_forward``.
    ``sampling`` (a ``reference.upsample.Sampling``): ONNX's Resize's placement of the samples
    instead (an ONNX file's; with its scales, the output size is ONNX Runtime's).
    """

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest",
                 align_corners: bool | None = None, *, sampling: Sampling | None = None):  # fmt: skip
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample needs exactly one of size and scale_factor")
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"Upsample supports mode 'nearest' or 'bilinear', got {mode!r}")
        if align_corners is not None and mode == "nearest":
            raise ValueError("align_corners applies to mode 'bilinear' only (as in torch)")
        if align_corners and sampling is not None:
            raise ValueError("give align_corners or a sampling, not both")
        self.size = size
        if isinstance(scale_factor, (tuple, list)):
            scale_factor = tuple(float(s) for s in scale_factor)
        elif scale_factor is not None:
            scale_factor = float(scale_factor)
        self.scale_factor = scale_factor
        self.mode, self.align_corners = mode, align_corners
        self.sampling = Sampling("align_corners") if align_corners else sampling

    def extra_repr(self) -> str:
        what = (f"scale_factor={self.scale_factor!r}" if self.scale_factor is not None
                else f"size={self.size!r}")  # fmt: skip
        if self.align_corners is not None:
            return f"{what}, mode={self.mode!r}, align_corners={self.align_corners}"
        if self.sampling is not None:
            return f"{what}, mode={self.mode!r}, sampling={self.sampling}"
        return f"{what}, mode={self.mode!r}"

    def output_size(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """(OH, OW) for an input of spatial size ``in_hw``."""
        if self.size is not None:
            return _pair(self.size, "size")
        if self.sampling is not None and self.sampling.scales is not None:
            out = tuple(self.sampling.output_size(n, axis) for axis, n in enumerate(in_hw))
            if min(out) < 1:
                raise ValueError(f"{self!r}: input size {in_hw} gives an empty output {out}")
            return out
        scales = (
            self.scale_factor if isinstance(self.scale_factor, tuple) else (self.scale_factor,) * 2
        )
        out = tuple(math.floor(n * s) for n, s in zip(in_hw, scales, strict=True))
        if min(out) < 1:
            raise ValueError(f"{self!r}: input size {in_hw} gives an empty output {out}")
        return out

    def forward(self, x):
        self._check_input(x, NCHW)
        op = (
            F.upsample_nearest2d_forward
            if self.mode == "nearest"
            else F.upsample_bilinear2d_forward
        )
        y, cache = op(x, self.output_size(tuple(x.shape[2:])), self.sampling, backend=self.backend)
        self._save(cache, y.shape)
        return y

    def backward(self, dy):
        op = (
            F.upsample_nearest2d_backward
            if self.mode == "nearest"
            else F.upsample_bilinear2d_backward
        )
        return op(dy, self._saved(dy), backend=self.backend)


class CrossEntropyLoss(Module):
    """Mean softmax cross-entropy of logits (N, K) against integer targets (N,), with optional
    label smoothing (``torch.nn.CrossEntropyLoss(label_smoothing=...)``).

    ``loss = ce(logits, target)`` returns a Python float; ``dlogits = ce.backward()`` is the
    gradient of the loss (times ``dloss``, default 1) with respect to the logits, shape (N, K).
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""

    def forward(self, logits, target):
        self._check_input(logits, ("N", "K"))
        target = target if hasattr(target, "dtype") else np.asarray(target)
        if not np.issubdtype(np.dtype(target.dtype), np.integer):
            raise TypeError(
                f"CrossEntropyLoss expects integer class indices as target, got dtype {target.dtype}"
            )
        if tuple(target.shape) != (logits.shape[0],):
            raise ValueError(
                f"CrossEntropyLoss: target must have shape ({logits.shape[0]},) for logits of "
                f"shape {tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        loss, cache = F.cross_entropy_forward(
            logits, target, label_smoothing=self.label_smoothing, backend=self.backend
        )
        self._save(cache, ())
        return float(to_numpy(loss))

    def backward(self, dloss=1.0):
        return F.cross_entropy_backward(dloss, self._saved(dloss), backend=self.backend)


#: every layer class of this file (the public ones, in order of definition)
__all__ = [
    name
    for name, value in list(globals().items())
    if isinstance(value, type) and issubclass(value, Module) and value.__module__ == __name__
    and not name.startswith("_")
]  # fmt: skip
