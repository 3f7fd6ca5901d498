"""Our TFLite flatbuffer reader against TensorFlow Lite's own interpreter (ai-edge-litert) on
Google's published MobileNets in ``../shared/weights``: every tensor's name, shape, type,
quantization and constant data, every operator's op, inputs and outputs. Damaged files fail with
a TFLiteError, never another exception."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchnets.formats import TFLiteError, read_tflite

WEIGHTS = (
    Path(__file__).resolve().parents[2] / "shared" / "weights"
)  # ../shared beside the checkout
FILES = sorted(WEIGHTS.glob("*.tflite")) if WEIGHTS.is_dir() else []
FLOAT = WEIGHTS / "mobilenet_v1_0.25_224_float.tflite"
needs_files = pytest.mark.skipif(not FILES, reason="../shared/weights is not on this machine")


@needs_files
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_reader_matches_the_tflite_interpreter(path):
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = interpreter_module.Interpreter(model_path=str(path))
    model = read_tflite(path)
    details = interpreter.get_tensor_details()
    assert len(model.tensors) == len(details)
    for ours, theirs in zip(model.tensors, details, strict=True):
        assert ours.name == theirs["name"]
        assert ours.shape == tuple(theirs["shape"])
        assert np.dtype(ours.dtype) == np.dtype(theirs["dtype"])
        q = theirs["quantization_parameters"]
        np.testing.assert_array_equal(np.asarray(ours.scale, np.float32), q["scales"])
        np.testing.assert_array_equal(ours.zero_point, q["zero_points"])
    ops = interpreter._get_ops_details()
    assert [(o.op, o.inputs, o.outputs) for o in model.operators] == [
        (d["op_name"], tuple(d["inputs"]), tuple(d["outputs"])) for d in ops
    ]
    assert (model.inputs, model.outputs) == (
        tuple(d["index"] for d in interpreter.get_input_details()),
        tuple(d["index"] for d in interpreter.get_output_details()),
    )
    interpreter.allocate_tensors()
    for index, tensor in enumerate(model.tensors):
        if tensor.data is not None:  # constants: the interpreter hands back the file's bytes
            np.testing.assert_array_equal(tensor.data, interpreter.get_tensor(index))


@needs_files
def test_float_mobilenet_v1_graph_and_options():
    """The float TF-slim MobileNetV1 0.25: 27 convs with ReLU6 and TF "SAME" padding, a 7x7
    average pool, the 1x1 conv classifier, squeeze and softmax over 1001 classes."""
    model = read_tflite(FLOAT)
    ops = [o.op for o in model.operators]
    assert ops == ["CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * 13 + [
        "AVERAGE_POOL_2D", "CONV_2D", "SQUEEZE", "SOFTMAX"
    ]  # fmt: skip
    first = model.operators[0].options
    assert (first["padding"], first["stride_h"], first["activation"]) == ("SAME", 2, "RELU6")
    assert model.tensors[model.outputs[0]].shape == (1, 1001)
    assert sum(t.data.size for t in model.tensors if t.data is not None) == 467_593


def test_not_a_tflite_file(tmp_path):
    (tmp_path / "x.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(TFLiteError, match="no 'TFL3' identifier"):
        read_tflite(tmp_path / "x.tflite")


@needs_files
@pytest.mark.parametrize("keep", [12, 1000, 100_000, 1_000_000])
def test_truncated_file(tmp_path, keep):
    (tmp_path / "cut.tflite").write_bytes(FLOAT.read_bytes()[:keep])
    with pytest.raises(TFLiteError, match="outside the .*-byte file"):
        read_tflite(tmp_path / "cut.tflite")


@functools.cache
def _structure_bytes() -> list[int]:
    """The byte positions of the float file that are not weight data."""
    raw = FLOAT.read_bytes()
    is_data = np.zeros(len(raw), bool)
    for tensor in read_tflite(FLOAT).tensors:
        if tensor.data is not None:
            start = raw.find(tensor.data.tobytes())
            is_data[start : start + tensor.data.nbytes] = True
    return np.flatnonzero(~is_data).tolist()


@needs_files
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_corrupted_bytes_fail_cleanly(tmp_path_factory, data):
    """Overwrite a few bytes anywhere in the tables (not in the weight data, where any bytes are
    valid floats): the result is a model or a TFLiteError, never another exception."""
    original = bytearray(FLOAT.read_bytes())
    structure = _structure_bytes()
    picks = st.integers(0, len(structure) - 1).map(structure.__getitem__)
    spots = data.draw(st.lists(picks, min_size=1, max_size=4))
    for spot in spots:
        original[spot] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("bad") / "bad.tflite"
    path.write_bytes(bytes(original))
    try:
        read_tflite(path)
    except TFLiteError:
        pass


@needs_files
def test_float_tflite_model_reproduces_tflite_probabilities():
    """Google's float MobileNetV1 0.25 as a scratchnets model: on the exact input tensors TFLite
    was given, softmax of our logits equals TFLite's probabilities for every photo (TFLite's own
    resolvers agree within 2.5e-6), and the model trains like any other."""
    import scratchnets as sn

    model = sn.models.load_pretrained(FLOAT)
    assert model.pretrained_cfg["num_classes"] == 1001 and model.pretrained_cfg["softmax"]
    expected = np.load(WEIGHTS / "expected_tflite.npz")
    prefix = "mobilenet_v1_0.25_224_float/"
    images = sorted({k.split("/")[1] for k in expected.files if k.startswith(prefix)})
    assert len(images) == 5
    for image in images:
        x = expected[f"{prefix}{image}/input"].transpose(2, 0, 1)[None].copy()  # HWC -> NCHW
        logits = model(x)[0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        theirs = expected[f"{prefix}{image}/output"]
        assert np.max(np.abs(probabilities - theirs)) <= 1e-5, image
        assert probabilities.argmax() == theirs.argmax()
    model.train().zero_grad()
    model.backward(np.random.default_rng(0).standard_normal((1, 1001)).astype(np.float32))
    assert all(np.any(p.grad != 0) for p in model.parameters())


@needs_files
def test_quantized_tflite_is_not_imported_as_float():
    """The float importer refuses a uint8 graph; ``load_pretrained`` gives it to the integer
    model (tests/test_quantized.py)."""
    import scratchnets as sn
    from scratchnets.models.quantized import QuantizedModel
    from scratchnets.models.tflite_import import model_from_tflite

    path = WEIGHTS / "mobilenet_v2_1.0_224_quant.tflite"
    with pytest.raises(ValueError, match="quantized TFLite graph.*uint8 model"):
        model_from_tflite(path)
    assert isinstance(sn.models.load_pretrained(path), QuantizedModel)


@needs_files
@pytest.mark.parametrize(
    "change, message",
    [
        (dict(op="HARD_SWISH", options={}), "TFLite op HARD_SWISH {} is not mapped"),
        (dict(options_change={"activation": "TANH"}), "fused activation TANH is not mapped"),
        (dict(options_change={"dilation_h": 2}), r"CONV_2D with dilation \(2, 1\)"),
    ],
    ids=["op", "activation", "dilation"],
)
def test_a_graph_we_do_not_map_names_what(monkeypatch, change, message):
    """The real float graph with one CONV_2D changed into something we do not map: the error
    names the op (or its option)."""
    import dataclasses

    import scratchnets as sn
    from scratchnets.models import pretrained

    graph = read_tflite(FLOAT)
    ops = list(graph.operators)
    conv = next(i for i, op in enumerate(ops) if op.op == "CONV_2D" and i > 2)
    change = dict(change)
    new_options = dict(ops[conv].options) | change.pop("options_change", {})
    ops[conv] = dataclasses.replace(ops[conv], **({"options": new_options} | change))
    changed = dataclasses.replace(graph, operators=ops)
    monkeypatch.setattr(
        pretrained, "read_tflite", lambda path: changed
    )  # what load_pretrained reads
    with pytest.raises(ValueError, match=message):
        sn.models.load_pretrained(FLOAT)
