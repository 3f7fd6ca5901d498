"""ONNX out (``formats/onnx.py``, ``scratchnets export onnx``): every mobile model, in every
style, exported from its traced ops and run in ONNX Runtime gives our logits within float32
rounding, BN folded or kept; single ops with drawn attributes likewise; a fine-tuned checkpoint
exported gives its predictions; what cannot be exported is refused by name."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets as sn
from scratchnets import nn
from scratchnets.cli import main
from scratchnets.reference.upsample import Sampling
from tests.helpers import record_error
from tests.model_twins import randomize_bn
from tests.test_train import BACKEND, dataset  # noqa: F401 (a fixture)

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

#: (model, create options): every mobile architecture, and the Keras-style numerics
MODELS = [("mobilenet_v1", {}), ("mobilenet_v1", {"keras_style": True}), ("mobilenet_v2", {}),
          ("mobilenet_v2", {"keras_style": True}), ("mobilenet_v3_large", {}),
          ("mobilenet_v3_small", {"keras_style": True}), ("ghostnet_100", {}),
          ("ghostnetv2_100", {}), ("ghostnetv3_100", {})]  # fmt: skip


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def assert_close(actual, expected, key: str, rtol: float = 1e-5) -> None:
    err = record_error(key, actual, expected)
    assert err <= rtol * max(1e-30, float(np.max(np.abs(expected)))), err


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "bn"])
@pytest.mark.parametrize(("name", "options"), MODELS,
                         ids=[f"{n}{'-keras' if o else ''}" for n, o in MODELS])  # fmt: skip
def test_every_model_runs_in_onnx_runtime_as_ours(tmp_path, name, options, fold):
    model = sn.models.create(name, 7, 0.5, rng=0, **options)
    randomize_bn(model, np.random.default_rng(1))
    model.eval()
    path = tmp_path / "model.onnx"
    info = sn.export_onnx(model, path, (1, 3, 66, 66), fold=fold)  # 66: odd maps deeper in
    assert ("BatchNormalization" in info["ops"]) is not fold
    assert not model.training and model.backend == "cpu" and model.fast_eval  # restored
    x = np.random.default_rng(2).standard_normal((3, 3, 66, 66)).astype(np.float32)  # N = 3
    assert_close(run_onnx(path, x), model(x), f"onnx export {name} {options} fold={fold}")


@settings(max_examples=10, deadline=None)
@given(
    kernel=st.sampled_from([(1, 1), (3, 3), (5, 5), (1, 3), (3, 1)]),
    stride=st.integers(1, 2),
    padding=st.one_of(st.integers(0, 2), st.tuples(*[st.integers(0, 2)] * 4)),
    depthwise=st.booleans(),
    bias=st.booleans(),
    activation=st.sampled_from(
        [nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU]
    ),  # fmt: skip
    size=st.integers(5, 12),
)
def test_a_conv_and_activation_with_drawn_attributes(kernel, stride, padding, depthwise, bias,
                                                     activation, size, tmp_path_factory):  # fmt: skip
    channels = 4
    model = nn.Sequential(
        nn.Conv2d(channels, channels if depthwise else 6, kernel, stride, padding,
                  groups=channels if depthwise else 1, bias=bias,
                  rng=np.random.default_rng(0)),
        activation(),
    )  # fmt: skip
    path = tmp_path_factory.mktemp("op") / "op.onnx"
    sn.export_onnx(model, path, (1, channels, size, size + 1))
    x = 3 * np.random.default_rng(1).standard_normal((2, channels, size, size + 1))
    x = x.astype(np.float32)
    assert_close(run_onnx(path, x), model(x), f"onnx conv + {activation.__name__}")


@settings(max_examples=10, deadline=None)
@given(
    pool=st.sampled_from(["avg", "max"]),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 1),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
    size=st.integers(4, 9),
)
def test_pooling_with_drawn_attributes(pool, kernel, stride, padding, ceil_mode,
                                       count_include_pad, size, tmp_path_factory):  # fmt: skip
    if 2 * padding > kernel:
        padding = kernel // 2  # torch's (and ours) rule: padding at most half the kernel
    layer = (nn.AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad)
             if pool == "avg" else nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode))  # fmt: skip
    path = tmp_path_factory.mktemp("pool") / "pool.onnx"
    sn.export_onnx(nn.Sequential(layer), path, (1, 3, size, size))
    x = np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32)
    assert_close(run_onnx(path, x), nn.Sequential(layer)(x), f"onnx {pool} pool")


def test_reshapes_concat_slice_add_mul_and_resize(tmp_path):
    """GhostNetV2's DFC path (average pool, 1xK / Kx1 depthwise, sigmoid, nearest upsample)
    and the ghost module's concat and slice are in the model tests; the linear head after a
    Flatten here: a reshape between ops becomes a Reshape node."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, rng=np.random.default_rng(0)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 5, rng=np.random.default_rng(1)))  # fmt: skip
    path = tmp_path / "head.onnx"
    info = sn.export_onnx(model, path, (1, 3, 9, 9))
    assert "Reshape" in info["ops"] and "Gemm" in info["ops"]
    x = np.random.default_rng(4).standard_normal((4, 3, 9, 9)).astype(np.float32)
    assert_close(run_onnx(path, x), model(x), "onnx conv pool flatten linear")


def test_clip_and_a_softmax_inside_export_and_load_back(tmp_path):
    """Hardtanh as Clip(min, max), a channel softmax as Softmax(axis 1): ONNX Runtime computes
    ours, and the file loads back as the same layers."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1, rng=np.random.default_rng(0)),
                          nn.Hardtanh(-0.5, 0.75), nn.Softmax(1))  # fmt: skip
    path = tmp_path / "clip_softmax.onnx"
    info = sn.export_onnx(model, path, (1, 3, 6, 6))
    assert {"Clip", "Softmax"} <= set(info["ops"])
    x = np.random.default_rng(6).standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert_close(run_onnx(path, x), model(x), "onnx clip softmax")
    back = sn.models.load_pretrained(path)
    assert {type(m).__name__ for m in back.modules()} >= {"Hardtanh", "Softmax"}
    assert_close(back(x), model(x), "onnx clip softmax loaded back")


@pytest.mark.parametrize(
    "layer",
    [nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True),
     nn.Upsample(size=(4, 11), sampling=Sampling("half_pixel", "round_prefer_ceil")),
     nn.Upsample(scale_factor=(1.5, 2.5), sampling=Sampling("asymmetric", "floor", (1.5, 2.5)))],
    ids=["align_corners", "half_pixel_round_up", "scales"],
)  # fmt: skip
def test_resize_placements_export_as_resize_attributes(tmp_path, layer):
    model = nn.Sequential(layer)
    path = tmp_path / "resize.onnx"
    sn.export_onnx(model, path, (1, 3, 5, 6))
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 6)).astype(np.float32)
    assert_close(run_onnx(path, x), model(x), "onnx resize placement")
    assert_close(sn.models.load_pretrained(path)(x), model(x), "onnx resize loaded back")


def test_export_onnx_of_a_fine_tuned_checkpoint_gives_its_predictions(dataset, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert main(["train", "--data", str(dataset), "--model", "mobilenet_v3_small", "--width-mult",
                 "0.5", "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--backend",
                 BACKEND, "--time-limit", "0", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    path = tmp_path / "cats_dogs.onnx"
    assert main(["export", "onnx", str(out / "best.npz"), "-o", str(path)]) == 0
    from scratchnets.train.evaluate import load_for_inference

    model, meta = load_for_inference(out / "best.npz", BACKEND)
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ours, theirs = model(x), run_onnx(path, x)
    assert_close(theirs, ours, "onnx export of a checkpoint")
    assert (theirs.argmax(1) == ours.argmax(1)).all()
    cfg = sn.models.load_pretrained(path).pretrained_cfg  # the file says how to use it
    assert cfg["class_names"] == meta["classes"] == ["cat", "dog"]
    assert cfg["size"] == 32 and cfg["mean"] == meta["normalize"]["mean"]


def test_what_cannot_be_exported_is_refused_by_name(tmp_path, monkeypatch):
    class Outside(nn.Module):  # computes with NumPy between ops: not exportable
        def forward(self, x):
            return x * 2.0

    model = nn.Sequential(nn.Conv2d(3, 4, 1, rng=np.random.default_rng(0)), Outside(), nn.ReLU())
    with pytest.raises(ValueError, match=r"op \d+ \(relu\): an argument of shape \(1, 4, 8, 8\) "
                       "was computed outside scratchnets' ops"):  # fmt: skip
        sn.export_onnx(model, tmp_path / "x.onnx", (1, 3, 8, 8))
    adaptive = nn.Sequential(nn.AdaptiveAvgPool2d(2))
    with pytest.raises(ValueError, match="op 0 \\(adaptive_avg_pool2d\\): op 'adaptive_avg_pool2d' "
                       "has no ONNX export here"):  # fmt: skip
        sn.export_onnx(adaptive, tmp_path / "y.onnx", (1, 3, 8, 8))
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnx"):
        sn.export_onnx(adaptive, tmp_path / "z.onnx", (1, 3, 8, 8))
