"""``load_pretrained`` on torchvision / timm weight files: the architecture, width and class count
inferred from the tensors, every file format, the source's preprocessing recorded, and the
loaded model computing what the torch model that wrote the file computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scratchnets as sn
from tests.model_twins import torch_twin
from tests.test_models_ghostnet import ghostnet_twin

pytestmark = pytest.mark.torch_models

#: (architecture, width, classes, the torch model that writes the file)
TWINS = {
    "mobilenet_v2": (0.35, 7, lambda: torch_twin("mobilenet_v2", 7, 0.35, torch.float32)),
    "mobilenet_v1": (0.25, 5, lambda: torch_twin("mobilenet_v1", 5, 0.25, torch.float32)),
    "mobilenet_v3_large": (0.5, 6, lambda: torch_twin("mobilenet_v3_large", 6, 0.5, torch.float32)),
    "mobilenet_v3_small": (
        0.75,
        4,
        lambda: torch_twin("mobilenet_v3_small", 4, 0.75, torch.float32),
    ),
    "ghostnet_100": (0.5, 3, lambda: ghostnet_twin("ghostnet_100", 0.5, 3).float()),
    "ghostnetv2_100": (0.5, 3, lambda: ghostnet_twin("ghostnetv2_100", 0.5, 3).float()),
    "ghostnetv3_100": (0.5, 3, lambda: ghostnet_twin("ghostnetv3_100", 0.5, 3).float()),
}


def write(state: dict, path, fmt: str) -> None:
    """``state`` (torch tensors) as the file a user would download or train."""
    if fmt == "pth":
        torch.save(state, path)
    elif fmt == "pth.tar":  # a training script's checkpoint of a DataParallel model
        torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        sn.models.save_checkpoint({k: v.numpy() for k, v in state.items()}, path)


def assert_same_logits(model, twin, size: int = 64) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = twin.eval()(torch.from_numpy(x)).numpy()
    actual = model(x)
    assert np.max(np.abs(actual - expected)) <= 1e-4 * np.max(np.abs(expected))


@pytest.mark.parametrize("arch", TWINS)
def test_architecture_width_and_classes_inferred(tmp_path, arch):
    width, classes, make = TWINS[arch]
    twin = make()
    path = tmp_path / "weights.pth"
    write(twin.state_dict(), path, "pth")
    model = sn.models.load_pretrained(path)
    assert not model.training
    assert model.pretrained_cfg["architecture"] == arch
    assert model.pretrained_cfg["num_classes"] == classes
    reference = sn.models.create(arch, classes, width, rng=0)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    assert_same_logits(model, twin)


@pytest.mark.parametrize("fmt", ["pth", "pth.tar", "safetensors", "npz"])
def test_every_file_format(tmp_path, fmt):
    twin = TWINS["mobilenet_v2"][2]()
    path = tmp_path / f"weights.{fmt}"
    write(twin.state_dict(), path, fmt)
    model = sn.models.load_pretrained(path)
    cfg = model.pretrained_cfg
    assert (cfg["source"], cfg["resize"], cfg["size"]) == ("torchvision", 256, 224)
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["file"] == str(path)
    assert_same_logits(model, twin)


def test_files_without_batch_counters_load(tmp_path):
    """torchvision's original MobileNetV2 file predates BN's num_batches_tracked."""
    twin = TWINS["mobilenet_v2"][2]()
    state = {k: v for k, v in twin.state_dict().items() if "num_batches" not in k}
    write(state, tmp_path / "old.pth", "pth")
    assert_same_logits(sn.models.load_pretrained(tmp_path / "old.pth"), twin)


def test_timm_preprocessing_recorded(tmp_path):
    write(TWINS["ghostnet_100"][2]().state_dict(), tmp_path / "g.safetensors", "safetensors")
    cfg = sn.models.load_pretrained(tmp_path / "g.safetensors").pretrained_cfg
    assert (cfg["source"], cfg["crop_pct"], cfg["interpolation"]) == ("timm", 0.875, "bicubic")


def test_model_given_by_name_options_or_instance(tmp_path):
    twin = TWINS["mobilenet_v2"][2]()
    path = tmp_path / "w.npz"
    write(twin.state_dict(), path, "npz")
    by_name = sn.models.load_pretrained(path, "mobilenet_v2", width_mult=0.35)
    assert_same_logits(by_name, twin)
    into = sn.models.create("mobilenet_v2", 7, 0.35, rng=1)
    assert sn.models.load_pretrained(path, into) is into
    assert_same_logits(into, twin)
    with pytest.raises(TypeError, match="only apply when"):
        sn.models.load_pretrained(path, into, width_mult=0.35)


def test_a_file_that_fits_no_model_says_what_differs(tmp_path):
    state = TWINS["mobilenet_v2"][2]().state_dict()
    state["features.99.weight"] = state.pop("features.0.0.weight")
    write(state, tmp_path / "renamed.pth", "pth")
    with pytest.raises(ValueError, match=r"closest mobilenet_v2.*features\.0\.0\.weight"):
        sn.models.load_pretrained(tmp_path / "renamed.pth")
    write(TWINS["mobilenet_v2"][2]().state_dict(), tmp_path / "w.pth", "pth")
    # x0.35 and x0.5 share their first layers (channels rounded up to 16): the first misfit
    with pytest.raises(ValueError, match=r"features\.2\.conv\.2\.weight is \(8, 48, 1, 1\) in the "
                       r"file but \(16, 48, 1, 1\) in a mobilenet_v2 with"):  # fmt: skip
        sn.models.load_pretrained(tmp_path / "w.pth", "mobilenet_v2", width_mult=0.5)


def test_a_width_no_model_has_names_the_first_misfit(tmp_path):
    """A MobileNetV2 x0.3 (no published width): the error names the first tensor that does not
    fit, with the file's shape and ours."""
    twin = torch_twin("mobilenet_v2", 7, 0.3, torch.float32)
    write(twin.state_dict(), tmp_path / "w030.pth", "pth")
    with pytest.raises(ValueError) as error:
        sn.models.load_pretrained(tmp_path / "w030.pth")
    message = str(error.value)
    assert "any width multiplier" in message
    name = message.split(": ")[1].split(" is ")[0]
    assert f"{name} is {tuple(twin.state_dict()[name].shape)} in the file but" in message


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_a_truncated_weight_file_is_a_clear_error(tmp_path, fmt):
    path = tmp_path / f"w.{fmt}"
    write(TWINS["mobilenet_v2"][2]().state_dict(), path, fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(sn.models.CheckpointError, match=str(path.name)):
        sn.models.load_pretrained(path)
