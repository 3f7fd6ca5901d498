"""Training from published weights: ``train --init FILE``, a frozen backbone, a lower backbone lr.

``start_from(path, ...)`` reads any file ``models.load_pretrained`` reads (a uint8 TFLite graph
dequantized to its float twin), builds the same
architecture for the dataset's classes and copies every tensor but the classifier's: the head is
rebuilt, never loaded, since ImageNet's 1000 classes are not the dataset's, with torchvision's
classifier initialisation whatever the architecture's own (weights N(0, 0.01^2), bias 0): it
starts near zero, where timm's MobileNetV1 rule U(+-1 / sqrt(classes)) gives a 2-class head
weights of +-0.7 that Adam's lr-sized steps take some ten epochs to undo (measured from a Keras
MobileNet 0.25 on Cats vs Dogs, head only: validation accuracy 76.5 % after one epoch and 83.8 %
after four with that init, 92.0 % after one with this one).

The head is the module owning the model's last parameter (``classifier.1`` of MobileNetV2,
``classifier`` of GhostNet and timm's MobileNetV1, ``Conv2d_1c_1x1`` of TF-slim's); everything
before it is the backbone. A frozen backbone (``freeze_backbone``):

* its parameters get ``requires_grad = False`` (the optimizer skips them, weight decay included);
* its BatchNorm layers stay in eval mode, so their running statistics and the function they
  compute stay the published ones;
* the backward pass stops at the head (``backward_to_trainable``): nothing before the first
  module with a trainable parameter needs a gradient, so neither the frozen layers' weight
  gradients nor their input gradients are computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import models
from ..nn import BatchNorm2d, Module, Sequential


def head_name(model: Module) -> str:
    """The name of the module owning ``model``'s last parameter (its classifier)."""
    last = list(model.named_parameters())[-1][0]
    return last.rsplit(".", 1)[0]


def float_model(path: str | Path) -> Module:
    """The float model of a weight file: ``load_pretrained``'s, dequantized when the file is a
    uint8 TFLite graph (``QuantizedModel.dequantize``)."""
    from ..models.quantized import QuantizedModel

    model = models.load_pretrained(path)
    return model.dequantize() if isinstance(model, QuantizedModel) else model


#: the model name of a network defined by an ONNX file (``options["file"]``): its graph, with
#: the head replaced, is the architecture, rebuilt from that file whenever a checkpoint is read
ONNX_MODEL = "onnx"


def build(model_name: str, num_classes: int, width_mult: float, rng=None, **options) -> Module:
    """``models.create``'s model, or for ``ONNX_MODEL`` the graph of ``options["file"]`` with a
    fresh ``num_classes`` head (``graph_with_head``)."""
    if model_name == ONNX_MODEL:
        return graph_with_head(options["file"], num_classes, rng)
    return models.create(model_name, num_classes=num_classes, width_mult=width_mult, rng=rng,
                         **options)  # fmt: skip


def graph_with_head(path: str | Path, num_classes: int, rng=None) -> Module:
    """The ONNX file's model with its head (the layer owning the last parameter: a Linear, or a
    1x1 Conv2d classifier) replaced by a new one of ``num_classes`` outputs, initialised as
    ``start_from`` does. The graph must then give (N, num_classes): a constant reshape to the
    file's own class count after the head is a ValueError naming it."""
    from ..nn import Conv2d, Linear

    model = models.load_pretrained(path)
    if not any(True for _ in model.parameters()):
        raise ValueError(f"--init {path}: its graph has no parameters, so no classifier to replace")
    name = head_name(model)
    *path_to, child = name.split(".")
    owner = model
    for part in path_to:
        owner = getattr(owner, part)
    old = getattr(owner, child)
    if isinstance(old, Linear):
        new = Linear(old.in_features, num_classes, bias=True, dtype=old.weight.dtype)
    elif isinstance(old, Conv2d) and old.kernel_size == (1, 1) and old.groups == 1:
        new = Conv2d(old.in_channels, num_classes, 1, bias=True, dtype=old.weight.dtype)
    else:
        raise ValueError(f"--init {path}: its last layer {name} is a {type(old).__name__}, not a "
                         "classifier (a Linear or a 1x1 convolution) to replace")  # fmt: skip
    new.weight.data[...] = np.random.default_rng(rng).normal(0.0, 0.01, new.weight.data.shape)
    new.bias.data[...] = 0.0
    owner.add_module(child, new)  # in the old one's place
    size = int(model.pretrained_cfg.get("size", 224))
    out = np.shape(model.eval()(np.zeros((1, 3, size, size), new.weight.dtype)))
    if out != (1, num_classes):
        raise ValueError(f"--init {path}: with a {num_classes}-class head its graph outputs "
                         f"{out}, not (N, {num_classes}) (a reshape to the file's own classes "
                         "follows the head)")  # fmt: skip
    model.pretrained_cfg = dict(model.pretrained_cfg, num_classes=num_classes)
    return model.train()


def describe_init(path: str | Path) -> dict:
    """What a weight file holds: its ``pretrained_cfg`` (``architecture``, ``width_mult``,
    ``size``, ``mean``, ``std``, ``source`` ...), without keeping the model. An ONNX graph of no
    registered architecture is ``ONNX_MODEL``, with the file as its option."""
    cfg = dict(float_model(path).pretrained_cfg)
    if cfg.get("architecture") is None and cfg.get("source") == "onnx":
        return cfg | {"architecture": ONNX_MODEL, "options": {"file": str(path)}}
    if cfg.get("architecture") is None:
        raise ValueError(
            f"--init {path}: its graph is no registered architecture, so a model fine-tuned from "
            "it could not be rebuilt from its checkpoint"
        )
    return cfg


def folded_batchnorm(model: Module) -> bool:
    """Whether every BatchNorm of ``model`` has running mean 0 and variance 1 - eps: no
    statistics, only an affine map (a folded conv bias written as a BN layer)."""
    norms = [m for m in model.modules() if isinstance(m, BatchNorm2d) and m.track_running_stats]
    return bool(norms) and all(
        not np.any(bn.running_mean) and np.allclose(bn.running_var, 1.0 - bn.eps, rtol=0, atol=1e-7)
        for bn in norms
    )


def start_from(
    path: str | Path, model_name: str, width_mult: float, num_classes: int, rng,
    options: dict | None = None, frozen: bool = False,
) -> tuple[Module, dict]:  # fmt: skip
    """``(model, info)``: ``model_name`` at ``width_mult`` with ``num_classes`` outputs (and
    ``options``, more of ``models.create``'s: a Keras file's ``keras_style``), every tensor but
    the head's from the file at ``path``; ``info`` records the source. A file of another
    architecture or width is a ValueError naming what differs (before any training), and so is
    one whose BatchNorm layers hold no statistics (``folded_batchnorm``) unless the backbone stays
    ``frozen`` (in eval mode) for the whole run."""
    pretrained = float_model(path)
    cfg = pretrained.pretrained_cfg
    arch, width = cfg.get("architecture"), cfg.get("width_mult")
    if arch is None and cfg.get("source") == "onnx":
        arch = ONNX_MODEL
    elif model_name == ONNX_MODEL:
        raise ValueError(f"--init {path} holds a {arch}; --model {ONNX_MODEL} is for ONNX graphs")
    if model_name != ONNX_MODEL and (
        arch != models.registry.resolve_name(model_name)
        or (width is not None and abs(float(width) - float(width_mult)) > 1e-9)
    ):
        raise ValueError(
            f"--init {path} holds a {arch} with width_mult {width}; it does not fit --model "
            f"{model_name} --width-mult {width_mult} (leave both out to take the file's)"
        )
    options = dict(options or {}, **({"file": str(path)} if arch == ONNX_MODEL else {}))
    model = build(model_name, num_classes, width_mult, rng, **options)
    head = head_name(model) + "."
    for name, param in model.named_parameters():  # the head: N(0, 0.01^2) weights, zero bias
        if name.startswith(head):
            param.data[...] = (np.random.default_rng(rng).normal(0.0, 0.01, param.data.shape)
                               if name.endswith("weight") else 0.0)  # fmt: skip
    theirs = pretrained.state_dict()
    ours = model.state_dict()
    if set(k for k in theirs if not k.startswith(head)) != set(
        k for k in ours if not k.startswith(head)
    ):
        raise ValueError(f"--init {path}: its tensors are not those of {model_name}'s backbone")
    body = {k: v for k, v in theirs.items() if not k.startswith(head)}
    model.load_state_dict(ours | body)
    if not frozen and folded_batchnorm(model):
        raise ValueError(
            f"--init {path}: its BatchNorm layers hold folded biases, not statistics (running "
            "mean 0 and variance 1 - eps in every one: a folded graph written as BN layers, such "
            "as `scratchnets export keras` of a .tflite file); training them in train mode would "
            "normalise by batch statistics the weights never saw. Keep them as they are with "
            "--freeze-backbone, or start from the .tflite file itself"
        )
    info = {
        "file": str(path),
        "source": cfg.get("source"),
        "architecture": arch,
        "width_mult": width,
        "replaced_head": head[:-1],
        "file_classes": cfg.get("num_classes"),
    }
    return model, info


def freeze_backbone(model: Module, frozen: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the head; see the module docstring."""
    head = head_name(model) + "."
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(head) or not frozen


def set_frozen_modes(model: Module) -> None:
    """BatchNorm layers whose parameters are all frozen to eval mode (fixed running statistics);
    call after ``model.train()``."""
    for module in model.modules():
        if isinstance(module, BatchNorm2d):
            params = [p for p in module.parameters() if p is not None]
            if params and not any(p.requires_grad for p in params):
                module.eval()


def frozen_split(model: Module) -> int | None:
    """The index of the first child of a ``Sequential`` model holding a trainable parameter
    (the head starts there; every child before it is frozen), or None when the model is no
    ``Sequential`` or has no frozen child in front."""
    if not isinstance(model, Sequential):
        return None
    children = list(model.children())
    trainable = [any(p.requires_grad for p in c.parameters()) for c in children]
    if not any(trainable) or trainable.index(True) == 0:
        return None
    return trainable.index(True)


def backward_to_trainable(model: Module, dy) -> None:
    """``model.backward(dy)`` for a ``Sequential`` model, stopping once no earlier child holds a
    trainable parameter (the input gradient is not computed, ``frozen_split``). Other models,
    and one with nothing frozen in front: a full backward."""
    first = frozen_split(model)
    if first is None:
        model.backward(dy)
        return
    for child in reversed(list(model.children())[first:]):
        dy = child.backward(dy)
