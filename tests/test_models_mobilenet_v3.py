"""MobileNetV3 Large / Small against torchvision's ``mobilenet_v3_large`` / ``_small`` (and timm's
``mobilenetv3_*_100`` files): parameter counts at every width, state dict layout, eval logits,
train-mode gradients and running statistics in float64 and float32, the eval fast path with
h-swish fused into the convs, and timm's files loading under their own names."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

# torchvision (imported by timm) registers meta kernels that this torch build lacks
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("meta_registrations"))

import timm  # noqa: E402
import torch  # noqa: E402

import scratchnets as sn  # noqa: E402
from scratchnets.models.mobilenet_v3 import timm_state_dict  # noqa: E402
from scratchnets.nn import BatchNorm2d, Conv2d, Linear  # noqa: E402
from tests.helpers import record_error  # noqa: E402
from tests.model_twins import (  # noqa: E402
    BACKENDS,
    assert_same_layout,
    check_parity,
    randomize_bn,
    randomize_torch_bn,
    torch_twin,
)

pytestmark = pytest.mark.torch_models

ARCHS = ("mobilenet_v3_large", "mobilenet_v3_small")
#: (name, width, input size, classes): odd sizes and small widths keep the float64 runs quick
PARITY_CASES = [("mobilenet_v3_large", 0.5, 41, 7), ("mobilenet_v3_small", 0.75, 38, 5)]


def make_model(name, width, num_classes, dtype, backend="reference", seed=0):
    model = sn.models.create(name, num_classes, width, rng=seed, dtype=dtype, dropout=0.0)
    randomize_bn(model, np.random.default_rng(seed + 1))
    return model.to(backend)


@pytest.mark.parametrize(
    ("name", "expected"), [("mobilenet_v3_large", 5_483_032), ("mobilenet_v3_small", 2_542_856)]
)
def test_parameter_count_at_width_one(name, expected):
    model = sn.models.create(name, rng=0)
    assert sum(p.data.size for p in model.parameters()) == expected


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.25])
@pytest.mark.parametrize("name", ARCHS)
def test_layout_and_count_equal_torchvision_at_every_width(name, width):
    """torchvision's _make_divisible rounding of every width, the head's 1280 / 1024 included."""
    ours, twin = sn.models.create(name, 1000, width, rng=0), torch_twin(name, 1000, width)
    assert_same_layout(ours, twin)
    assert sum(p.data.size for p in ours.parameters()) == sum(p.numel() for p in twin.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "width", "size", "classes"), PARITY_CASES)
def test_float64_parity_with_torchvision(name, width, size, classes, backend):
    model = make_model(name, width, classes, np.float64, backend)
    x = np.random.default_rng(2).standard_normal((2, 3, size, size))
    check_parity(model, torch_twin(name, classes, width), x, np.random.default_rng(3),
                 f"{backend}/{name} f64")  # fmt: skip


@pytest.mark.slow
@pytest.mark.float32_parity
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "width", "size", "classes"), PARITY_CASES)
def test_float32_parity_with_float64_torchvision(name, width, size, classes, backend):
    model = make_model(name, width, classes, np.float32, backend)
    x = np.random.default_rng(4).standard_normal((2, 3, size, size))
    check_parity(model, torch_twin(name, classes, width), x, np.random.default_rng(5),
                 f"{backend}/{name} f32")  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize(("dtype", "rtol"), [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_eval_fast_path_and_fuse_equal_the_training_graph(name, backend, dtype, rtol):
    """The fast path folds every BN and computes each conv's h-swish / ReLU in its epilogue;
    ``fuse`` leaves no BN; both give the training graph's eval logits."""
    model = make_model(name, 0.5, 6, dtype, backend).eval()
    x = np.random.default_rng(6).standard_normal((2, 3, 45, 45)).astype(dtype)
    model.fast_eval = False
    expected = model(x)
    model.fast_eval = True
    fast = model(x)
    copy = model._inference_copy()
    fused_acts = {m.fused_activation for m in copy.modules() if isinstance(m, Conv2d)}
    assert {"hard_swish", "relu"} <= fused_acts
    fused = sn.models.fuse(model, activations=True)
    assert not any(isinstance(m, BatchNorm2d) for m in fused.modules())
    scale = max(1.0, float(np.max(np.abs(expected))))
    for label, actual in (("fast path", fast), ("fuse", fused(x))):
        err = record_error(f"{backend}/{name} {label} {np.dtype(dtype).name}", actual, expected)
        assert err <= rtol * scale, (label, err)


def test_squeeze_excitation_children_are_torchvisions():
    model = sn.models.create("mobilenet_v3_small", rng=0)
    se = model.features[1].block[1]
    assert [name for name, _ in se.named_children()] == ["fc1", "activation", "fc2",
                                                         "scale_activation"]  # fmt: skip
    assert (se.fc1.out_channels, se.fc2.out_channels) == (8, 16)  # make_divisible(16 // 4, 8)


def _timm_model(name: str, classes: int) -> torch.nn.Module:
    """timm's own model ``name`` in float32 with random BN affine parameters and statistics."""
    return randomize_torch_bn(timm.create_model(name, num_classes=classes).float().eval())


def _save(twin: torch.nn.Module, path, fmt: str) -> None:
    if fmt == "pth":
        torch.save(twin.state_dict(), path)
    else:  # safetensors sorts its names: the renaming must not depend on their order
        sn.models.save_checkpoint({k: v.numpy() for k, v in twin.state_dict().items()}, path)


def _assert_same_logits(model, twin, key: str, size: int = 64) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    err = record_error(key, model(x), expected)
    assert err <= 1e-5 * np.max(np.abs(expected)), err


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("arch", ["large", "small"])
def test_timm_files_load_renamed_with_timms_numerics(tmp_path, arch, fmt):
    twin = _timm_model(f"mobilenetv3_{arch}_100", 5)
    path = tmp_path / f"mobilenetv3_{arch}_100.{fmt}"
    _save(twin, path, fmt)
    model = sn.models.load_pretrained(path)
    assert model.pretrained_cfg["architecture"] == f"mobilenet_v3_{arch}"
    assert model.pretrained_cfg["source"] == "timm"
    assert model.pretrained_cfg["num_classes"] == 5
    assert model.style == "timm"
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, BatchNorm2d))
    _assert_same_logits(model, twin, f"timm mobilenetv3_{arch}_100 file logits")
    named = sn.models.load_pretrained(path, f"mobilenetv3_{arch}_100")  # timm's name, an alias
    x = np.ones((1, 3, 40, 40), np.float32)
    np.testing.assert_array_equal(named(x), model(x))


@pytest.mark.parametrize(
    ("name", "options", "size"),
    [("mobilenetv3_large_075", {}, 64), ("tf_mobilenetv3_small_075", {"keras_style": True}, 57)],
)
def test_timm_files_at_width_075_load_with_tf_widths(tmp_path, name, options, size):
    """timm's 0.75 models have TF's widths (3,993,528 parameters for Large, not torchvision's
    3,377,576); its tf_ ports of Google's checkpoints also have TF's "same" padding and BN
    epsilon 1e-3, which keras_style=True gives (the file cannot say)."""
    twin = _timm_model(name, 4)
    path = tmp_path / f"{name}.pth"
    _save(twin, path, "pth")
    model = sn.models.load_pretrained(path, **options)
    assert model.pretrained_cfg["width_mult"] == 0.75
    assert sum(p.data.size for p in model.parameters()) == sum(p.numel() for p in twin.parameters())
    _assert_same_logits(model, twin, f"timm {name} file logits", size)


def test_a_file_of_the_other_size_names_what_it_is(tmp_path):
    """A timm Small file asked to load as Large: not translated into a wrong model, and the
    error says which model the file is."""
    path = tmp_path / "small.pth"
    torch.save(timm.create_model("mobilenetv3_small_100", num_classes=3).state_dict(), path)
    with pytest.raises(
        ValueError, match=r"not those of mobilenet_v3_large.*it is a mobilenet_v3_small"
    ):
        sn.models.load_pretrained(path, "mobilenet_v3_large")
    assert timm_state_dict({"features.0.0.weight": np.zeros(1)}, "small") is None


# ------------------------------------------------------------------ Keras' MobileNetV3 numerics


def keras_weights_into(model, keras_model, rng: np.random.Generator) -> None:
    """Random weights and BN statistics in the Keras model, copied into ours layer by layer: both
    list their conv / BN / dense layers in the same order. Keras' layouts: Conv2D (kh, kw, in,
    out), DepthwiseConv2D (kh, kw, C, 1), BN (gamma, beta, moving mean, moving variance); its
    1x1 convs on the pooled map are our Linear layers."""
    theirs = [layer for layer in keras_model.layers if layer.weights]
    ours = [m for m in model.modules() if isinstance(m, (Conv2d, BatchNorm2d, Linear))]
    assert len(theirs) == len(ours), (len(theirs), len(ours))
    for layer, module in zip(theirs, ours, strict=True):
        arrays = layer.get_weights()
        if isinstance(module, BatchNorm2d):
            c = module.num_features
            arrays = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                      rng.uniform(0.5, 2.0, c)]  # fmt: skip
            layer.set_weights([a.astype(np.float32) for a in arrays])
            for target, value in zip(("weight", "bias"), arrays[:2], strict=True):
                getattr(module, target).data[...] = value
            module.running_mean[...], module.running_var[...] = arrays[2], arrays[3]
            continue
        kernel = arrays[0]
        if type(layer).__name__ == "DepthwiseConv2D":
            module.weight.data[...] = kernel.transpose(2, 3, 0, 1)  # (C, 1, kh, kw)
        elif isinstance(module, Linear):
            module.weight.data[...] = kernel.reshape(kernel.shape[-2:]).T  # (out, in)
        else:
            module.weight.data[...] = kernel.transpose(3, 2, 0, 1)  # (out, in, kh, kw)
        if module.bias is not None:
            module.bias.data[...] = arrays[1]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras' own
@pytest.mark.parametrize(("arch", "alpha"), [("large", 0.75), ("small", 1.0), ("small", 0.75)])
def test_keras_style_equals_keras_applications(keras, arch, alpha):
    """keras_style=True against Keras' own MobileNetV3 (random weights, random BN statistics):
    the same parameter count and the same float32 logits on an even and an odd input size
    (TF "same" padding is asymmetric on even maps)."""
    builder = {"large": keras.applications.MobileNetV3Large,
               "small": keras.applications.MobileNetV3Small}[arch]  # fmt: skip
    model = sn.models.create(f"mobilenet_v3_{arch}", 10, alpha, keras_style=True, rng=0)
    weights = None
    for size in (64, 57):  # Keras pads a stride-2 depthwise conv for the input size it was built
        keras_model = builder(alpha=alpha, weights=None, include_preprocessing=False, classes=10,
                              input_shape=(size, size, 3), classifier_activation=None)  # fmt: skip
        if weights is None:
            trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
            assert sum(p.data.size for p in model.parameters()) == trainable
            keras_weights_into(model, keras_model, np.random.default_rng(1))
            weights = keras_model.get_weights()
        keras_model.set_weights(weights)
        x = np.random.default_rng(size).standard_normal((2, 3, size, size)).astype(np.float32)
        expected = keras.ops.convert_to_numpy(keras_model(x.transpose(0, 2, 3, 1), training=False))
        err = record_error(f"keras MobileNetV3{arch.title()} {alpha} @{size}", model.eval()(x),
                           expected)  # fmt: skip
        assert err <= 1e-5 * np.max(np.abs(expected)), err
