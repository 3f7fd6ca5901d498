"""The models: MobileNetV1, MobileNetV2, MobileNetV3 Large / Small, GhostNet V1/V2/V3, VGG16 and Xception.

Build one by name (parameter names match torchvision / timm, so their checkpoints load)::

    import scratchnets as sn
    model = sn.models.create("mobilenet_v2", num_classes=2, width_mult=0.5, rng=0)
    sn.models.load_checkpoint(model, "weights.safetensors")
    logits = model(x)                     # x: (N, 3, H, W)
    fast = sn.models.fuse(model)          # BN folded into the convs, eval mode

``list_models()`` names every registered model; a model file registers its factories with
``@register_model(name, cfg=ModelCfg(...))``, the model's facts (published weights'
preprocessing, classifier key, torch / timm twin, paper) beside it: ``model_cfg(name)``.
"""

# importing a model module registers its factories
from . import (
    ghostnet,
    ghostnetv2,
    ghostnetv3,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    tf_mobilenet_v1,
    tf_mobilenet_v2,
    vgg,
    xception,
)
from .checkpoint import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint
from .fuse import fold_bn, fuse
from .mobilenet_v1 import MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .mobilenet_v3 import MobileNetV3
from .pretrained import load_pretrained
from .registry import ModelCfg, create, list_models, model_cfg, register_model
from .vgg import VGG
from .xception import Xception

__all__ = [
    "create",
    "list_models",
    "register_model",
    "model_cfg",
    "ModelCfg",
    "fuse",
    "fold_bn",
    "load_checkpoint",
    "save_checkpoint",
    "read_state_dict",
    "load_pretrained",
    "CheckpointError",
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3",
    "VGG",
    "Xception",
    "mobilenet_v1",
    "mobilenet_v2",
    "vgg",
    "xception",
]
