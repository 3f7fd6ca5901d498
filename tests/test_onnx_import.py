"""ONNX in (``models/onnx_import.py``): graphs exported by ``torch.onnx.export`` from torchvision
MobileNetV2 and timm ghostnet_100 / mobilenetv1_100 load as trainable models whose logits are
torch's and whose gradients are torch's (float64: the input gradient of the BN-folded export,
and, with BN kept, every parameter gradient and running statistic in train mode); single
operators built with ``onnx.helper`` (drawn attributes) match ONNX Runtime; our own exports load
back; unsupported or damaged graphs fail by name."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("meta_registrations"))

import timm  # noqa: E402
import torch  # noqa: E402

import scratchnets as sn  # noqa: E402
from scratchnets.models.onnx_import import OnnxImportError  # noqa: E402
from tests.helpers import record_error  # noqa: E402
from tests.model_twins import randomize_bn, randomize_torch_bn, torch_twin  # noqa: E402
from tests.test_train import BACKEND, dataset  # noqa: E402, F401 (a fixture)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper = onnx.helper, onnx.numpy_helper
pytestmark = pytest.mark.torch_models


def _twin(name: str) -> torch.nn.Module:
    """The torch model (float32, eval, random BN statistics and affine parameters)."""
    if name == "mobilenet_v2":
        model = torch_twin("mobilenet_v2", 5, 0.35, torch.float32)
    else:
        model = timm.create_model(name, num_classes=5).float()
    return randomize_torch_bn(model).eval()


def _export(model, path, fold: bool = True, dynamo: bool = False) -> None:
    """torch.onnx.export's TorchScript exporter (batch symbolic), or the dynamo one (torch.export:
    the batch of the example, 2; it needs onnxscript)."""
    if dynamo:
        pytest.importorskip("onnxscript")
        x = torch.randn(2, 3, 64, 64, dtype=torch.float32)
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
        return
    x = torch.randn(1, 3, 64, 64, dtype=torch.float32)
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}},
                      do_constant_folding=fold,
                      training=torch.onnx.TrainingMode.EVAL)  # fmt: skip


TWINS = ["mobilenet_v2", "ghostnet_100", "mobilenetv1_100"]
#: float64 parity through an ONNX file (train-mode BN on small late maps is ill-conditioned)
F64_RTOL = 1e-9


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", TWINS)
def test_torch_exports_load_with_torchs_logits_and_input_gradient(tmp_path, name, exporter):
    twin = _twin(name)
    path = tmp_path / f"{name}.onnx"
    _export(twin, path, dynamo=exporter == "dynamo")
    model = sn.models.load_pretrained(path)
    assert model.pretrained_cfg["source"] == "onnx" and model.pretrained_cfg["num_classes"] == 5
    if exporter == "dynamo":  # its graph reads the batch of the example: 2
        assert {n.op_type for n in onnx.load(path).graph.node} >= {"Conv", "Reshape"}
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64))
    with torch.no_grad():
        expected = twin(torch.from_numpy(x).float()).numpy()
    err = record_error(f"onnx import {name} {exporter} logits float32", model(x.astype(np.float32)),
                       expected)  # fmt: skip
    assert err <= 1e-5 * np.max(np.abs(expected))
    # the folded graph's input gradient is the eval-mode torch model's, up to the float32 rounding
    # of the exporter's BN folding (float64 parity with BN kept: the next test)
    model = model.to(dtype=np.float64)
    twin = twin.double()
    dy = np.random.default_rng(2).standard_normal((2, 5))
    xt = torch.tensor(x, requires_grad=True)
    (twin(xt) * torch.from_numpy(dy)).sum().backward()
    model.eval()(x)
    dx = model.backward(dy)
    record_error(f"onnx import {name} {exporter} eval dx", dx, xt.grad.numpy())
    expected = xt.grad.numpy()
    assert np.max(np.abs(dx - expected)) <= 1e-5 * np.max(np.abs(expected))


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenetv1_100"])
def test_with_bn_kept_training_follows_torch(tmp_path, name):
    """Exported with BatchNormalization nodes: in train mode our graph normalises by the batch
    as torch does; dx, every parameter gradient (matched through the initializer names, torch's
    own) and the updated running statistics agree in float64 (BN's epsilon and momentum are
    float32 attributes in the file, read back as the decimals they stand for)."""
    twin = _twin(name)
    path = tmp_path / f"{name}_bn.onnx"
    _export(twin, path, fold=False)
    model = sn.models.load_pretrained(path).to(dtype=np.float64).train()
    assert any(isinstance(m, sn.nn.BatchNorm2d) for m in model.modules())
    twin = twin.double().train()
    x = np.random.default_rng(3).standard_normal((4, 3, 48, 48))
    dy = np.random.default_rng(4).standard_normal((4, 5))
    xt = torch.tensor(x, requires_grad=True)
    (twin(xt) * torch.from_numpy(dy)).sum().backward()
    model.zero_grad()
    model(x)
    dx = model.backward(dy)
    record_error(f"onnx import {name} train dx", dx, xt.grad.numpy())
    assert np.max(np.abs(dx - xt.grad.numpy())) <= F64_RTOL * np.max(np.abs(xt.grad.numpy()))
    theirs = dict(twin.named_parameters()) | dict(twin.named_buffers())
    ours = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    # some gradients are analytically zero (a linear bottleneck's BN bias before a conv and a
    # train-mode BN): compared against 1e-3 of the model's largest gradient, as model_twins does
    floor = 1e-3 * max(float(p.grad.abs().max()) for p in twin.parameters())
    checked = 0
    for key, source in model.onnx_sources.items():
        if source not in theirs:
            continue
        if key in ours:
            actual, expected = ours[key].grad, theirs[source].grad.numpy()
            scale = max(floor, float(np.max(np.abs(expected))))
        else:  # a running statistic, updated by the train-mode forward
            actual, expected = buffers[key], theirs[source].detach().numpy()
            scale = float(np.max(np.abs(expected)))
        assert np.max(np.abs(actual - expected)) <= F64_RTOL * scale, key
        checked += 1
    assert checked >= len(ours)  # every parameter came from a torch parameter


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
                                  "ghostnet_100", "ghostnetv2_100", "ghostnetv3_100"])  # fmt: skip
def test_every_model_exported_here_loads_back(tmp_path, name):
    """Export then import: GhostNetV2's DFC attention comes back through Shape -> Concat ->
    Resize (nearest, to the traced size) and AveragePool, the ghost modules' Concat and Slice."""
    ours = sn.models.create(name, 4, 0.5, rng=0)
    randomize_bn(ours, np.random.default_rng(1))
    path = tmp_path / f"{name}.onnx"
    sn.export_onnx(ours.eval(), path, (1, 3, 66, 66))
    back = sn.models.load_pretrained(path)
    x = np.random.default_rng(6).standard_normal((2, 3, 66, 66)).astype(np.float32)
    expected = ours(x)
    err = record_error(f"onnx export -> import {name}", back(x), expected)
    assert err <= 1e-5 * np.abs(expected).max()


def test_shape_arithmetic_of_a_view_is_folded_into_the_reshape(tmp_path):
    """``y.view(y.size(0), -1)`` exports as Shape -> Gather -> Unsqueeze -> Concat -> Reshape;
    it loads as a Reshape keeping the batch, for any batch."""

    class View(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.view(y.size(0), -1))

    model = View().float().eval()
    path = tmp_path / "view.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8, dtype=torch.float32),), str(path),
                      dynamo=False, input_names=["input"], output_names=["y"],
                      dynamic_axes={"input": {0: "N"}})  # fmt: skip
    assert {"Shape", "Gather", "Concat"} <= {n.op_type for n in onnx.load(path).graph.node}
    ours = sn.models.load_pretrained(path)
    x = np.random.default_rng(10).standard_normal((3, 3, 8, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    assert (
        record_error("onnx import view chain", ours(x), expected) <= 1e-5 * np.abs(expected).max()
    )


def test_a_final_softmax_is_left_out_and_recorded(tmp_path):
    torch_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4),
                                      torch.nn.Softmax(dim=1)).float().eval()  # fmt: skip
    path = tmp_path / "softmax.onnx"
    torch.onnx.export(torch_model, (torch.randn(1, 3, 2, 2, dtype=torch.float32),), str(path),
                      dynamo=False, input_names=["input"], output_names=["p"])  # fmt: skip
    ours = sn.models.load_pretrained(path)
    assert ours.pretrained_cfg["softmax"]
    x = np.random.default_rng(11).standard_normal((1, 3, 2, 2)).astype(np.float32)
    logits = ours(x)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


def test_our_exports_load_back_and_train(tmp_path):
    ours = sn.models.create("mobilenet_v3_small", 4, 0.5, keras_style=True, rng=0)
    randomize_bn(ours, np.random.default_rng(1))
    path = tmp_path / "v3.onnx"
    sn.export_onnx(ours.eval(), path, (1, 3, 48, 48), fold=False)
    back = sn.models.load_pretrained(path)
    x = np.random.default_rng(5).standard_normal((2, 3, 48, 48)).astype(np.float32)
    expected = ours(x)
    assert record_error("onnx export -> import", back(x), expected) <= 1e-5 * np.abs(expected).max()
    back.train()
    y = back(x)
    assert back.backward(np.ones_like(y)).shape == x.shape
    assert all(p.grad is not None for p in back.parameters())
    summary = sn.profile.summary(back, (1, 3, 48, 48))
    assert summary.total_macs == sn.profile.summary(ours, (1, 3, 48, 48)).total_macs


# ---------------------------------------------------------------- operators against ORT


def _single(op_type, inputs, attributes, initializers, x_shape, out_name="y", opset=17):
    """A one-node graph (``x`` the input; the output's rank that of x, 2 for the ops that
    flatten, x's less or more the axes for Squeeze / Unsqueeze) and its model."""
    rank = 2 if op_type in ("Flatten", "Reshape", "Gemm") else len(x_shape)
    if op_type in ("Squeeze", "Unsqueeze"):
        axes = attributes.get("axes", next(iter(initializers.values()), None))
        count = x_shape.count(1) if axes is None else len(axes)
        rank += count if op_type == "Unsqueeze" else -count
    node = helper.make_node(op_type, inputs, [out_name], name="the_node", **attributes)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT,
                                       [f"d{k}" for k in range(rank)])],
        [numpy_helper.from_array(v.astype(np.float32) if v.dtype.kind == "f" else v, k)
         for k, v in initializers.items()],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _check_against_ort(model_proto, x, tmp_path, key, exact=False):
    """The file loaded here gives ONNX Runtime's output (bit-exact for selections: ``exact``)."""
    path = tmp_path / "op.onnx"
    onnx.save(model_proto, path)
    expected = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    model = sn.models.load_pretrained(path)
    actual = model(x)
    dx = model.train().backward(np.ones_like(actual))  # it trains: a gradient of x's shape
    assert dx.shape == x.shape and np.isfinite(dx).all(), key
    if exact:
        np.testing.assert_array_equal(actual, expected, err_msg=key)
    err = record_error(key, actual, expected)
    assert err <= 1e-5 * max(1e-6, float(np.max(np.abs(expected)))), err


@settings(max_examples=12, deadline=None)
@given(
    kernel=st.sampled_from([(1, 1), (3, 3), (1, 5), (3, 1)]),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    dilations=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    auto_pad=st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    depthwise=st.booleans(),
    bias=st.booleans(),
    size=st.integers(6, 11),
)
def test_conv_attributes_match_onnx_runtime(kernel, strides, dilations, pads, auto_pad,
                                            depthwise, bias, size, tmp_path_factory):  # fmt: skip
    if auto_pad.startswith("SAME"):
        dilations = (1, 1)  # ONNX Runtime refuses dilation with auto_pad SAME_*
    padded = (size + (pads[0] + pads[1] if auto_pad == "NOTSET" else 0),
              size + 1 + (pads[2] + pads[3] if auto_pad == "NOTSET" else 0))  # fmt: skip
    assume(all(d * (k - 1) + 1 <= p for d, k, p in zip(dilations, kernel, padded, strict=True)))
    rng = np.random.default_rng(0)
    c_in, c_out = 4, (4 if depthwise else 3)
    weights = {"w": rng.standard_normal((c_out, 1 if depthwise else c_in, *kernel))}
    if bias:
        weights["b"] = rng.standard_normal(c_out)
    attributes = dict(kernel_shape=list(kernel), strides=list(strides), dilations=list(dilations),
                      group=c_in if depthwise else 1, auto_pad=auto_pad)  # fmt: skip
    if auto_pad == "NOTSET":
        attributes["pads"] = [pads[0], pads[2], pads[1], pads[3]]
    proto = _single("Conv", ["x", *weights], attributes, weights, [2, c_in, size, size + 1])
    x = rng.standard_normal((2, c_in, size, size + 1)).astype(np.float32)
    _check_against_ort(proto, x, tmp_path_factory.mktemp("conv"), "onnx import Conv")


@pytest.mark.parametrize(
    ("op_type", "attributes", "extra"),
    [
        ("Relu", {}, {}), ("Sigmoid", {}, {}), ("HardSwish", {}, {}),
        ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, {}), ("HardSigmoid", {}, {}),
        ("HardSigmoid", {"alpha": 0.5, "beta": 0.0}, {}),
        ("HardSigmoid", {"alpha": -0.25, "beta": 0.75}, {}),
        ("Clip", {}, {"lo": np.array(0.0), "hi": np.array(6.0)}),
        ("Clip", {}, {"lo": np.array(-1.5), "hi": np.array(2.25)}),
        ("Clip", {}, {"": None, "hi": np.array(0.5)}),
        ("Softmax", {"axis": 1}, {}), ("Softmax", {}, {}), ("Softmax", {"axis": -2}, {}),
        ("GlobalAveragePool", {}, {}),
        ("ReduceMean", {"keepdims": 1}, {"axes": np.array([2, 3], np.int64)}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                         "count_include_pad": 0, "ceil_mode": 1}, {}),
        ("MaxPool", {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 1, 0, 1]}, {}),
        ("Flatten", {"axis": 1}, {}), ("Flatten", {"axis": 0}, {}), ("Flatten", {"axis": 3}, {}),
        ("Flatten", {"axis": -1}, {}), ("Flatten", {"axis": -3}, {}),
        ("Unsqueeze", {}, {"ax": np.array([0, -1], np.int64)}),
        ("Unsqueeze", {}, {"ax": np.array([2], np.int64)}),
        ("Pad", {"mode": "wrap"}, {"p": np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64)}),
        ("Reshape", {}, {"shape": np.array([0, -1], np.int64)}),
        ("Add", {}, {"c": np.full((1, 3, 1, 1), 0.5)}),
        ("Mul", {}, {"c": np.arange(3.0).reshape(1, 3, 1, 1)}),
        ("Slice", {}, {"s": np.array([1], np.int64), "e": np.array([2**62], np.int64),
                       "ax": np.array([1], np.int64)}),
        ("GlobalMaxPool", {}, {}),
        ("Pad", {"mode": "reflect"}, {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}),
        ("Pad", {"mode": "edge"}, {"p": np.array([0, 0, 0, 1, 0, 0, 2, 0], np.int64)}),
        ("Pad", {"mode": "constant"}, {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                                       "v": np.array(0.5, np.float32)}),
        ("Resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                    "nearest_mode": "floor"}, {"": None, " ": None,
                                               "sz": np.array([2, 3, 14, 13], np.int64)}),
        ("Resize", {"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
         {"": None, " ": None, "sz": np.array([2, 3, 11, 16], np.int64)}),
    ],
)  # fmt: skip
def test_each_operator_matches_onnx_runtime(tmp_path, op_type, attributes, extra):
    inputs = ["x", *(k.strip() for k in extra)]  # "" and " ": inputs left out (Resize's)
    extra = {k: v for k, v in extra.items() if v is not None}
    if op_type == "ReduceMean":  # opset 17: axes is an attribute
        attributes, extra, inputs = {**attributes, "axes": [2, 3]}, {}, ["x"]
    proto = _single(op_type, inputs, attributes, extra, [2, 3, 7, 8])
    x = (4 * np.random.default_rng(6).standard_normal((2, 3, 7, 8))).astype(np.float32)
    _check_against_ort(proto, x, tmp_path, f"onnx import {op_type}")


@settings(max_examples=40, deadline=None)
@given(
    op_type=st.sampled_from(["AveragePool", "MaxPool"]),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    dilation=st.integers(1, 2),
    ceil_mode=st.integers(0, 1),
    count_include_pad=st.integers(0, 1),
    size=st.integers(5, 9),
)
def test_pool_attributes_match_onnx_runtime(op_type, kernel, strides, pads, auto_pad, dilation,
                                            ceil_mode, count_include_pad, size,
                                            tmp_path_factory):  # fmt: skip
    """Symmetric and asymmetric pads (each below the kernel, as ONNX Runtime requires), auto_pad,
    ceil_mode, count_include_pad, MaxPool's dilations."""
    top, left, bottom, right = (min(p, k - 1) for p, k in zip(pads, kernel * 2, strict=True))
    if auto_pad.startswith("SAME"):  # ONNX Runtime's own "same" padding fails when it is negative
        assume(all((-(-n // s) - 1) * s + k >= n for n, s, k in
                   zip((size, size + 2), strides, kernel, strict=True)))  # fmt: skip
    attributes = dict(kernel_shape=list(kernel), strides=list(strides), ceil_mode=ceil_mode,
                      auto_pad=auto_pad)  # fmt: skip
    if auto_pad == "NOTSET":
        attributes["pads"] = [top, left, bottom, right]
    if op_type == "AveragePool":
        attributes["count_include_pad"] = count_include_pad
    elif not auto_pad.startswith("SAME"):  # ONNX Runtime refuses dilation with auto_pad SAME_*
        attributes["dilations"] = [dilation, dilation]
    proto = _single(op_type, ["x"], attributes, {}, [2, 3, size, size + 2])
    x = np.random.default_rng(8).standard_normal((2, 3, size, size + 2)).astype(np.float32)
    _check_against_ort(proto, x, tmp_path_factory.mktemp("pool"), f"onnx import {op_type}")


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["nearest", "linear"]),
    coordinates=st.sampled_from(["half_pixel", "pytorch_half_pixel", "align_corners",
                                 "asymmetric", "tf_half_pixel_for_nn"]),
    rounding=st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]),
    given_as=st.sampled_from(["sizes", "scales"]),
    hw=st.tuples(st.integers(1, 7), st.integers(1, 7)),
    out=st.tuples(st.integers(1, 13), st.integers(1, 13)),
    scales=st.tuples(*[st.sampled_from([0.5, 0.75, 1.0, 1.5, 2.0, 3.0])] * 2),
    opset=st.sampled_from([11, 13, 19]),
)  # fmt: skip
def test_resize_attributes_match_onnx_runtime(mode, coordinates, rounding, given_as, hw, out,
                                              scales, opset, tmp_path_factory):  # fmt: skip
    """Resize in every coordinate mode but crop-and-resize, nearest's four roundings, sizes or
    scales: ONNX Runtime's output (bit-exact for nearest)."""
    assume(not (mode == "linear" and coordinates == "tf_half_pixel_for_nn"))  # ORT refuses it
    # opsets 11 and 12: roi and scales are required inputs (empty ones), not left out
    roi = {"roi": np.zeros(0, np.float32)} if opset < 13 else {"": None}
    if given_as == "scales":
        assume(
            all(int(np.float32(s) * np.float32(n)) >= 1 for s, n in zip(scales, hw, strict=True))
        )
        extra = {**roi, "sc": np.array([1, 1, *scales], np.float32)}
    else:
        no_scales = {"sc": np.zeros(0, np.float32)} if opset < 13 else {" ": None}
        extra = {**roi, **no_scales, "sz": np.array([2, 3, *out], np.int64)}
    attributes = dict(mode=mode, coordinate_transformation_mode=coordinates, nearest_mode=rounding)
    proto = _single("Resize", ["x", *(k.strip() for k in extra)], attributes,
                    {k: v for k, v in extra.items() if v is not None}, [2, 3, *hw], opset=opset)  # fmt: skip
    x = np.random.default_rng(12).standard_normal((2, 3, *hw)).astype(np.float32)
    _check_against_ort(proto, x, tmp_path_factory.mktemp("resize"), f"onnx import Resize {mode}",
                       exact=mode == "nearest")  # fmt: skip


@pytest.mark.parametrize(
    ("op_type", "attributes", "scales", "opset"),
    [("Upsample", {"mode": "nearest", "scales": [1.0, 1.0, 2.0, 3.0]}, None, 7),
     ("Upsample", {"mode": "linear", "scales": [1.0, 1.0, 1.5, 2.0]}, None, 7),
     ("Upsample", {"mode": "nearest"}, [1.0, 1.0, 2.5, 1.5], 9),
     ("Upsample", {"mode": "linear"}, [1.0, 1.0, 3.0, 2.0], 9),
     ("Resize", {"mode": "nearest"}, [1.0, 1.0, 0.5, 0.75], 10),
     ("Resize", {"mode": "nearest"}, [1.0, 1.0, 1.75, 2.5], 10),
     ("Resize", {"mode": "linear"}, [1.0, 1.0, 1.5, 0.5], 10)],
)  # fmt: skip
def test_opset_7_to_10_upsample_and_resize(tmp_path, op_type, attributes, scales, opset):
    """Before opset 11: scales only (an attribute in Upsample-7), asymmetric coordinates, and
    nearest's "simple" rounding (floor when enlarging, ceil when shrinking)."""
    extra = {} if scales is None else {"sc": np.array(scales, np.float32)}
    proto = _single(op_type, ["x", *extra], attributes, extra, [2, 3, 5, 6], opset=opset)
    x = np.random.default_rng(13).standard_normal((2, 3, 5, 6)).astype(np.float32)
    _check_against_ort(proto, x, tmp_path, f"onnx import {op_type} opset {opset}",
                       exact=attributes["mode"] == "nearest")  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["constant", "reflect", "edge", "wrap"]),
    pads=st.tuples(*[st.integers(0, 3)] * 4),
    value=st.sampled_from([None, 0.0, -1.5, 2.25]),
    opset=st.sampled_from([10, 11, 13, 19]),
    hw=st.tuples(st.integers(4, 7), st.integers(4, 7)),
)  # fmt: skip
def test_pad_attributes_match_onnx_runtime(mode, pads, value, opset, hw, tmp_path_factory):
    """Pad's modes with drawn pads and constant values, as attributes (opset 10) or inputs."""
    assume(mode != "wrap" or opset >= 19)  # wrap is new in opset 19
    top, left, bottom, right = pads
    full = [0, 0, top, left, 0, 0, bottom, right]
    attributes, extra = {"mode": mode}, {}
    if opset < 11:
        attributes["pads"] = full
        if value is not None:
            attributes["value"] = value
    else:
        extra["p"] = np.array(full, np.int64)
        if value is not None:
            extra["v"] = np.array(value, np.float32)
    proto = _single("Pad", ["x", *extra], attributes, extra, [2, 3, *hw], opset=opset)
    x = np.random.default_rng(14).standard_normal((2, 3, *hw)).astype(np.float32)
    _check_against_ort(proto, x, tmp_path_factory.mktemp("pad"), f"onnx import Pad {mode}",
                       exact=True)  # fmt: skip


@pytest.mark.parametrize(
    ("op_type", "attributes", "opset"),
    [("Slice", {"starts": [1], "ends": [3], "axes": [1]}, 9),
     ("Pad", {"mode": "reflect", "pads": [0, 0, 1, 2, 0, 0, 2, 1]}, 10),
     ("Pad", {"mode": "constant", "pads": [0, 0, 1, 0, 0, 0, 0, 1], "value": 2.0}, 10),
     ("Clip", {"min": 0.0, "max": 6.0}, 9), ("Clip", {"min": -2.0}, 9),
     ("Softmax", {"axis": 1}, 11), ("Softmax", {"axis": 3}, 11), ("Softmax", {}, 12)],
)  # fmt: skip
def test_older_opsets_attribute_forms(tmp_path, op_type, attributes, opset):
    """Before opsets 10 / 11 Slice's and Pad's (and before 11 Clip's) arguments were attributes;
    before 13 Softmax took the dims from its axis (default 1) on as one."""
    proto = _single(op_type, ["x"], attributes, {}, [2, 4, 6, 7], opset=opset)
    x = (4 * np.random.default_rng(9).standard_normal((2, 4, 6, 7))).astype(np.float32)
    _check_against_ort(proto, x, tmp_path, f"onnx import {op_type} opset {opset}")


@pytest.mark.parametrize(("axes", "opset"), [([1, 3], 13), ([-3], 13), (None, 13), ([1], 11)])
def test_squeeze_of_drawn_axes_matches_onnx_runtime(tmp_path, axes, opset):
    """Squeeze of given (negative too) or all size-1 axes, as an input (opset 13) or an
    attribute (11)."""
    attributes, extra = {}, {}
    if axes is not None and opset < 13:
        attributes["axes"] = axes
    elif axes is not None:
        extra["ax"] = np.array(axes, np.int64)
    proto = _single("Squeeze", ["x", *extra], attributes, extra, [2, 1, 4, 1], opset=opset)
    x = np.random.default_rng(15).standard_normal((2, 1, 4, 1)).astype(np.float32)
    _check_against_ort(proto, x, tmp_path, "onnx import Squeeze", exact=True)


def test_softmax_inside_a_graph_trains_like_torchs(tmp_path):
    """An attention-like graph, x * softmax over the channels (opset 17) and the same over the
    flattened C, H, W (opset 11's coercion): float64 input gradients equal torch's."""
    for opset, axis, torch_softmax in [(17, 1, lambda t: torch.softmax(t, 1)),
                                       (11, 1, lambda t: torch.softmax(t.flatten(1), 1)
                                        .reshape(t.shape))]:  # fmt: skip
        nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=axis),
                 helper.make_node("Mul", ["x", "p"], ["y"])]  # fmt: skip
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4, 5])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3, 4, 5])])  # fmt: skip
        path = tmp_path / f"attention{opset}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
        ours = sn.models.load_pretrained(path).to(dtype=np.float64).train()
        rng = np.random.default_rng(opset)
        x, dy = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
        xt = torch.tensor(x, requires_grad=True)
        yt = xt * torch_softmax(xt)
        yt.backward(torch.tensor(dy))
        y = ours(x)
        assert record_error(f"onnx import softmax opset {opset} y", y, yt.detach().numpy()) < 1e-12
        dx = ours.backward(dy)
        assert record_error(f"onnx import softmax opset {opset} dx", dx, xt.grad.numpy()) < 1e-12


@settings(max_examples=24, deadline=None)
@given(trans_a=st.booleans(), trans_b=st.booleans(), alpha=st.sampled_from([1.0, 0.5]),
       beta=st.sampled_from([1.0, 2.0]),
       bias_shape=st.sampled_from([None, (), (5,), (1, 5), (3, 5), (3, 1), (1, 1)]))  # fmt: skip
def test_gemm_attributes_match_onnx_runtime(trans_a, trans_b, alpha, beta, bias_shape,
                                            tmp_path_factory):  # fmt: skip
    """Gemm's alpha, beta, transA, transB and a bias of any shape that broadcasts to (N, out);
    the loaded layer trains (its input gradient is the transposed product)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((5, 6) if trans_b else (6, 5))
    weights = {"w": w} | ({} if bias_shape is None else {"c": rng.standard_normal(bias_shape)})
    proto = _single("Gemm", ["x", *weights], dict(alpha=alpha, beta=beta, transA=int(trans_a),
                                                  transB=int(trans_b)), weights,
                    [6, 3] if trans_a else [3, 6])  # fmt: skip
    x = rng.standard_normal((6, 3) if trans_a else (3, 6)).astype(np.float32)
    path = tmp_path_factory.mktemp("gemm")
    _check_against_ort(proto, x, path, "onnx import Gemm")
    model = sn.models.load_pretrained(path / "op.onnx").to(dtype=np.float64).train()
    dy = rng.standard_normal((3, 5))
    model(x.astype(np.float64))
    a_t, b = (x.T if trans_a else x).astype(np.float64), (w.T if trans_b else w)
    expected = alpha * dy @ b.T  # d/dA' of alpha A' B'
    np.testing.assert_allclose(model.backward(dy), expected.T if trans_a else expected, rtol=1e-6)
    assert a_t.shape == (3, 6)


def test_unsupported_operators_attributes_and_damaged_files_fail_by_name(tmp_path):
    cases = [
        (_single("LeakyRelu", ["x"], {}, {}, [1, 3, 4, 4]), "'the_node' (LeakyRelu): this op type"),
        (_single("Conv", ["x", "w"], {"auto_pad": "SAME_LOWER"},
                 {"w": np.ones((2, 3, 3, 3))}, [1, 3, "H", "W"]),
         "auto_pad=SAME_LOWER needs the input's H and W"),
        (_single("Clip", ["x", "lo", "hi"], {}, {"lo": np.array(1.0), "hi": np.array(-1.0)},
                 [1, 3, 4, 4]), "bounds [1.0, -1.0]: min above max"),
    ]  # fmt: skip
    for proto, message in cases:
        path = tmp_path / "bad.onnx"
        onnx.save(proto, path)
        with pytest.raises(OnnxImportError, match=re.escape(message)):
            sn.models.load_pretrained(path)
    absurd = _single("Conv", ["x", "w"], {}, {"w": np.ones((2, 3, 1, 1))}, [1, 3, 4, 4])
    absurd.graph.initializer[0].dims[:] = [1 << 20, 1 << 20, 1, 1]  # 4 TB declared, 24 bytes held
    huge_input = _single("Relu", ["x"], {}, {}, [1, 3, 1 << 30, 1 << 30])
    cases += [
        (absurd, "is too small for the declared shape"),
        (huge_input, "sides above 16,384 pixels"),
        (_single("Resize", ["x", "", "", "sz"], {}, {"sz": np.array([1, 3, 1 << 20, 4])},
                 [1, 3, 4, 4]), "sizes [1048576, 4]: each side must be 1 to 16,384"),
        (_single("Pad", ["x", "p"], {}, {"p": np.array([0, 0, -1, 0, 0, 0, 0, 0])}, [1, 3, 4, 4]),
         "negative pads, crops, are not supported"),
    ]  # fmt: skip
    for proto, message in cases[3:]:
        path = tmp_path / "bad.onnx"
        onnx.save(proto, path)
        with pytest.raises(OnnxImportError, match=re.escape(message)):
            sn.models.load_pretrained(path)
    good = tmp_path / "good.onnx"
    onnx.save(_single("Relu", ["x"], {}, {}, [1, 3, 4, 4]), good)
    data = good.read_bytes()
    for cut in (0, 5, len(data) // 2, len(data) - 3):
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
            sn.models.load_pretrained(tmp_path / "cut.onnx")
    outside = _single("Conv", ["x", "w"], {}, {"w": np.ones((2, 3, 1, 1))}, [1, 3, 4, 4])
    weight = outside.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../etc/passwd")
    onnx.save(outside, tmp_path / "outside.onnx")
    with pytest.raises(OnnxImportError, match="outside the model's folder"):
        sn.models.load_pretrained(tmp_path / "outside.onnx")
    cyclic = helper.make_graph(  # b reads c, c reads b
        [helper.make_node("Relu", ["c"], ["b"]), helper.make_node("Relu", ["b"], ["c"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
    )  # fmt: skip
    onnx.save(helper.make_model(cyclic, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "cyclic.onnx")  # fmt: skip
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        sn.models.load_pretrained(tmp_path / "cyclic.onnx")


def test_train_init_from_an_onnx_graph_fine_tunes_and_its_checkpoint_rebuilds(
    dataset,  # noqa: F811
    tmp_path,
    capsys,
):
    """``train --init model.onnx`` of a torch export (no registered twin named in the file): the
    graph with a fresh 2-class head trains, the checkpoint records the file as the architecture,
    and evaluate / predict / export rebuild it from that file; a file whose graph gives no
    classifier to replace fails by name before training."""
    from scratchnets.cli import main
    from scratchnets.train.evaluate import load_for_inference

    twin = _twin("mobilenet_v2")
    path = tmp_path / "mnv2.onnx"
    x = torch.randn(1, 3, 32, 32, dtype=torch.float32)
    torch.onnx.export(twin, (x,), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}})  # fmt: skip
    out = tmp_path / "run"
    assert main(["train", "--data", str(dataset), "--init", str(path), "--epochs", "1",
                 "--image-size", "32", "--batch-size", "8", "--backend", BACKEND,
                 "--time-limit", "0", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    model, meta = load_for_inference(out / "best.npz", BACKEND)
    assert meta["name"] == "onnx" and meta["options"] == {"file": str(path)}
    assert meta["init"]["replaced_head"] and meta["classes"] == ["cat", "dog"]
    head = meta["init"]["replaced_head"]
    assert model.state_dict()[f"{head}.weight"].shape[0] == 2
    assert np.any(model.state_dict()[f"{head}.bias"] != 0)  # the new head (bias 0 at first) trained
    assert model(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 2)
    assert main(["evaluate", str(out / "best.npz"), "--data", str(dataset / "val"), "--backend",
                 BACKEND]) == 0  # fmt: skip
    relu = tmp_path / "relu.onnx"
    onnx.save(_single("Relu", ["x"], {}, {}, [1, 3, 4, 4]), relu)
    assert main(["train", "--data", str(dataset), "--init", str(relu), "--epochs", "1",
                 "--out", str(tmp_path / "bad"), "--quiet"]) == 1  # fmt: skip
    assert "its graph has no parameters, so no classifier to replace" in capsys.readouterr().err


def test_explain_walks_a_layer_of_an_onnx_graph(tmp_path, capsys):
    """``scratchnets explain model.onnx``: the layer table of the graph's named layers, and
    ``--layer`` one conv and one activation on their real weights, every element checked."""
    from scratchnets.cli import main

    path = tmp_path / "mnv2.onnx"
    _export(_twin("mobilenet_v2"), path)
    model = sn.models.load_pretrained(path)
    names = [name for name, _ in model.named_children()]
    conv = next(n for n in names if n.endswith("_Conv") and "features_2" in n)
    clip = next(n for n in names if n.endswith("_Clip"))
    assert main(["explain", str(path)]) == 0
    assert conv in capsys.readouterr().out
    for layer in (conv, clip):
        assert main(["explain", str(path), "--layer", layer]) == 0
        assert "every element checked" in capsys.readouterr().out
    assert main(["explain", str(path), "--weights", str(path)]) == 1
    assert "is a model file: give it alone" in capsys.readouterr().err
