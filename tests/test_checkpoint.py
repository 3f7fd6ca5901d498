"""Saving and loading weights (.npz, .safetensors, torch .pth) and building models by name."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import scratchnets as sn
from scratchnets.models import CheckpointError, load_checkpoint, read_state_dict, save_checkpoint
from tests.helpers import assert_close_f64, t
from tests.model_twins import randomize_bn, torch_twin


def small_model(seed: int, dtype=np.float32, name="mobilenet_v2"):
    model = sn.models.create(name, 3, 0.35, rng=seed, dtype=dtype)
    randomize_bn(model, np.random.default_rng(seed))
    return model


def assert_same_state(a: dict, b: dict):
    assert sorted(a) == sorted(b)  # safetensors stores its keys sorted
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    source = small_model(0)
    source.train()(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    path = save_checkpoint(source, tmp_path / f"weights{suffix}")
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    target = small_model(1)
    load_checkpoint(target, path)
    assert_same_state(target.state_dict(), source.state_dict())  # incl. num_batches_tracked
    x = np.random.default_rng(2).standard_normal((1, 3, 40, 40)).astype(np.float32)
    np.testing.assert_array_equal(target.eval()(x), source.eval()(x))


def test_save_accepts_a_plain_state_dict(tmp_path):
    state = {"a.weight": np.arange(6.0).reshape(2, 3), "a.n": np.array(3, np.int64)}
    assert_same_state(read_state_dict(save_checkpoint(state, tmp_path / "s.safetensors")), state)


def test_load_torch_pth_from_the_twin(tmp_path):
    """torchvision's MobileNetV2 saves a .pth; ours loads it and computes the same logits."""
    twin = torch_twin("mobilenet_v2", 3, 0.35)
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    torch.save(twin.state_dict(), tmp_path / "tv.pth")
    model = sn.models.create("mobilenet_v2", 3, 0.35, rng=0, dtype=np.float64)
    load_checkpoint(model, tmp_path / "tv.pth")
    x = np.random.default_rng(3).standard_normal((2, 3, 35, 35))
    with torch.no_grad():
        expected = twin.eval()(t(x)).numpy()
    assert_close_f64(model.eval()(x), expected)


def test_load_nested_and_data_parallel_pth(tmp_path):
    """Training scripts nest the weights ({"state_dict": ...}) and DataParallel prefixes
    "module."; both are unwrapped."""
    source = small_model(4, np.float64)
    state = {f"module.{k}": torch.from_numpy(v) for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": state}, tmp_path / "run.pt")
    target = small_model(5, np.float64)
    load_checkpoint(target, tmp_path / "run.pt")
    assert_same_state(target.state_dict(), source.state_dict())


def test_load_from_mapping_of_tensors():
    twin = torch_twin("mobilenet_v1", 3, 0.25)
    model = sn.models.create("mobilenet_v1", 3, 0.25, rng=0, dtype=np.float64)
    load_checkpoint(model, twin.state_dict())
    ours = model.state_dict()
    for name, value in twin.state_dict().items():
        np.testing.assert_array_equal(ours[name], value.numpy(), err_msg=name)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_file_is_a_clear_error(tmp_path, suffix, keep):
    model = small_model(0)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        twin = torch_twin("mobilenet_v2", 3, 0.35, dtype=torch.float32)
        torch.save(twin.state_dict(), path)
    else:
        save_checkpoint(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"cannot read .*w\.\w+.* truncated or corrupt"):
        load_checkpoint(model, path)


def test_wrong_architecture_names_the_keys(tmp_path):
    path = save_checkpoint(small_model(0, name="mobilenet_v1"), tmp_path / "v1.safetensors")
    with pytest.raises(ValueError, match=r"Missing key\(s\).*features\.0\.0\.weight"):
        load_checkpoint(small_model(0), path)
    with pytest.raises(ValueError, match=r"Unexpected key\(s\).*conv_stem\.weight"):
        load_checkpoint(small_model(0), path)


def test_wrong_width_names_the_shapes(tmp_path):
    path = save_checkpoint(small_model(0), tmp_path / "w035.npz")  # width 0.35
    wider = sn.models.create("mobilenet_v2", 3, 0.5, rng=0)
    shapes = r"\(8, 48, 1, 1\) from the state dict.* model is \(16, 48, 1, 1\)"
    with pytest.raises(
        ValueError, match=r"size mismatch for features\.2\.conv\.2\.weight.*" + shapes
    ):
        load_checkpoint(wider, path)


def test_file_errors(tmp_path, monkeypatch):
    model = small_model(0)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_checkpoint(model, tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="suffix '.ckpt'"):
        load_checkpoint(model, tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match="does not write pickled .pth"):
        save_checkpoint(model, tmp_path / "weights.pth")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match="needs torch"):
        load_checkpoint(model, tmp_path / "w.pth")


# ------------------------------------------------------------------------------ registry


def test_list_models_and_aliases():
    names = sn.models.list_models()
    assert {"mobilenet_v1", "mobilenet_v2", "vgg16", "xception"} <= set(names)
    assert "mobilenetv1_100" in sn.models.list_models("mobilenetv1*", include_aliases=True)
    model = sn.models.create("mobilenetv1_100", 2, 0.25, rng=0)
    assert isinstance(model, sn.models.MobileNetV1)
    assert isinstance(sn.models.create("legacy_xception", 2, rng=0), sn.models.Xception)


def test_create_errors():
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v3'.*did you mean"):
        sn.models.create("mobilenet_v3")
    with pytest.raises(ValueError, match="fixed width"):
        sn.models.create("vgg16", width_mult=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        sn.models.create("mobilenet_v2", num_classes=0)
    with pytest.raises(ValueError, match="already registered"):
        sn.models.register_model("mobilenet_v2")(lambda num_classes=1000: None)


def test_create_dtype_seed_and_backend():
    a = sn.models.create("mobilenet_v2", 2, 0.35, rng=7, dtype=np.float64)
    b = sn.models.create("mobilenet_v2", 2, 0.35, rng=7, dtype=np.float64)
    assert_same_state(a.state_dict(), b.state_dict())
    assert a.features[0][0].weight.data.dtype == np.float64
    a.to("reference")
    assert a.eval()(np.zeros((1, 3, 8, 8))).shape == (1, 2)
