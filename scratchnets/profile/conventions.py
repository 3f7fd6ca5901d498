"""Parameter-count conventions: the same network, counted the way each source counts it.

Papers and frameworks print different "parameter" numbers for one architecture because they count
different things (each source's convention is named with it in ``papers.SOURCES``). A count is a sum over a ``ParamBreakdown``:

=================  ==================================================================  ===========
convention         what is counted                                                     used by
=================  ==================================================================  ===========
``weights``        conv + FC weights only: no BN, no biases                            [V1] tables
``slim``           conv + FC weights and biases, no BN (run with 1001 classes)         [slim-V2]
``slim_v1``        conv + FC weights and biases, BN beta + moving mean + moving var    [slim-V1]
                   (no gamma; 1001 classes)
``trainable``      every parameter: conv/FC weights and biases, BN gamma and beta      torchvision,
                                                                                       timm, papers
``keras``          ``trainable`` + the BN moving mean and variance (Keras' "Total      Keras
                   params" = trainable + non-trainable)
=================  ==================================================================  ===========

Multiply-adds have one convention everywhere (``MACS``): multiply-accumulates of conv and FC
layers per image; BN, bias adds, activations, pooling and residual adds are not counted. One
source adds a term (``MACS_SE_SCALE``): MobileNetV3's Table 3 reproduces only with the
squeeze-excite gates' channel-scale multiplies (x * g, one per gated element) counted too.

Notes on the less obvious rows:

* ``slim_v1`` is inferred here, not printed by the source: slim's ``batch_norm`` defaults to
  ``scale=False`` (no gamma) and the released checkpoints hold beta and both moving statistics.
  With 1001-class logits this is the only one of the combinations tried (2, 3 or 4 BN vectors per
  channel) that reproduces all four published sizes 4.24 / 2.59 / 1.34 / 0.47 M.
* Keras MobileNet (V1) ends in ``conv_preds``, a 1x1 conv with bias on the pooled 1x1 map. It has
  exactly the parameters (in*out + out) and multiply-adds (in*out) of a Linear layer with bias, so
  the timm-style model with the ``keras`` convention reproduces Keras' 4,253,864; no model flag
  is needed for counting.
* Keras' BN epsilon / momentum and ReLU6-vs-ReLU differences change no count either.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..nn import BatchNorm2d, Conv2d, Linear, Module

#: the multiply-add convention of every source (but one)
MACS = (
    "multiply-adds = multiply-accumulates of conv and FC layers per image "
    "(conv: H_out*W_out*C_out*(C_in/groups)*kh*kw; FC: in*out); "
    "BN, bias adds, activations, pooling and residual adds are not counted"
)

#: [V3] Table 3's: MACS plus the SE gates' channel-scale multiplies
MACS_SE_SCALE = (
    "macs + the channel-scale multiplies of squeeze-excite gates (y = x * g: one multiply per "
    "element of x), the convention that reproduces [V3] Table 3"
)


@dataclass(frozen=True)
class ParamBreakdown:
    """Every parameter and buffer element of a model, by what it is (shared arrays once)."""

    conv_fc_weights: int = 0  # Conv2d / Linear ``weight``
    conv_fc_biases: int = 0  # Conv2d / Linear ``bias``
    bn_gamma: int = 0  # BatchNorm2d ``weight``
    bn_beta: int = 0  # BatchNorm2d ``bias``
    bn_running_stats: int = 0  # BatchNorm2d ``running_mean`` + ``running_var`` (buffers)
    other_params: int = 0  # parameters of any other module type
    other_buffers: int = 0  # floating buffers of other module types
    frozen_params: int = 0  # parameters with requires_grad=False (included above)

    @property
    def total_params(self) -> int:
        return (
            self.conv_fc_weights + self.conv_fc_biases + self.bn_gamma + self.bn_beta
            + self.other_params
        )  # fmt: skip

    @property
    def bn_params(self) -> int:
        return self.bn_gamma + self.bn_beta


def param_breakdown(model: Module) -> ParamBreakdown:
    """Classify every parameter and buffer of ``model`` by owning layer type and role.

    ``num_batches_tracked`` is a step counter, not a model quantity: no source counts it.
    """
    if not isinstance(model, Module):
        raise TypeError(f"expected a scratchnets.nn.Module, got {type(model).__name__}")
    counts = dict.fromkeys(ParamBreakdown.__dataclass_fields__, 0)
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, (Conv2d, Linear)) and name in ("weight", "bias"):
                key = "conv_fc_weights" if name == "weight" else "conv_fc_biases"
            elif isinstance(module, BatchNorm2d) and name in ("weight", "bias"):
                key = "bn_gamma" if name == "weight" else "bn_beta"
            else:
                key = "other_params"
            counts[key] += math.prod(param.shape)
            counts["frozen_params"] += 0 if param.requires_grad else math.prod(param.shape)
        for name, buffer in module._buffers.items():
            if buffer is None or id(buffer) in seen or name == "num_batches_tracked":
                continue
            seen.add(id(buffer))
            bn_stat = isinstance(module, BatchNorm2d) and name in ("running_mean", "running_var")
            counts["bn_running_stats" if bn_stat else "other_buffers"] += math.prod(buffer.shape)
    return ParamBreakdown(**counts)


@dataclass(frozen=True)
class Convention:
    """A way of counting parameters: ``count(breakdown)`` and the words for the legend."""

    key: str
    label: str
    sources: str
    count: Callable[[ParamBreakdown], int]

    def __call__(self, model_or_breakdown) -> int:
        b = model_or_breakdown
        return self.count(b if isinstance(b, ParamBreakdown) else param_breakdown(b))


CONVENTIONS: dict[str, Convention] = {
    c.key: c
    for c in (
        Convention(
            "weights",
            "conv + FC weights only (no BN, no biases)",
            "[V1] Tables 2-7",
            lambda b: b.conv_fc_weights,
        ),
        Convention(
            "slim",
            "conv + FC weights and biases, no BN, 1001-class logits",
            "[slim-V2] checkpoint table",
            lambda b: b.conv_fc_weights + b.conv_fc_biases,
        ),
        Convention(
            "slim_v1",
            "conv + FC weights and biases + BN beta and moving mean/var (no gamma), 1001 classes",
            "[slim-V1] checkpoint table (inferred)",
            lambda b: b.conv_fc_weights + b.conv_fc_biases + b.bn_beta + b.bn_running_stats,
        ),
        Convention(
            "trainable",
            "all trainable parameters incl. BN gamma/beta (no running stats)",
            "torchvision num_params, timm, GhostNet papers",
            lambda b: b.total_params,
        ),
        Convention(
            "keras",
            "trainable + non-trainable: adds the BN moving mean/var",
            "Keras Applications table",
            lambda b: b.total_params + b.bn_running_stats,
        ),
    )
}


def count_params(model: Module, convention: str) -> int:
    """Parameters of ``model`` counted under ``convention`` (a key of ``CONVENTIONS``)."""
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown parameter convention {convention!r}; expected one of {sorted(CONVENTIONS)}"
        )
    return CONVENTIONS[convention](model)
