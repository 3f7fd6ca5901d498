"""``scratchnets explain``: every written-out element equals the op's result at that index (and
torch's, computed here independently), the printed counts equal the model counter's, the quoted
source lines are the file's, bad arguments get the layers' errors, and the CLI prints text / JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scratchnets import nn
from scratchnets.explain import Element, Explanation, explain_op
from scratchnets.profile.summary import summary

REPO = Path(__file__).resolve().parents[1]


def _torch_relu6_like(name):
    return lambda a, case: getattr(F, name)(a["x"])


#: op -> torch's forward of an explanation's drawn inputs (float64 tensors) and its case
ORACLES = {
    "conv2d": lambda a, c: F.conv2d(a["x"], a["w"], a.get("b"), c["stride"], c["padding"],
                                    c["dilation"], c["groups"]),
    "linear": lambda a, c: F.linear(a["x"], a["w"], a.get("b")),
    "batch_norm2d": lambda a, c: F.batch_norm(a["x"], a["running_mean"], a["running_var"],
                                              a["weight"], a["bias"], c["mode"] == "train",
                                              c["momentum"], c["eps"]),
    "max_pool2d": lambda a, c: F.max_pool2d(a["x"], c["kernel"], c["stride"], c["padding"],
                                            c["dilation"], c["ceil_mode"]),
    "avg_pool2d": lambda a, c: F.avg_pool2d(a["x"], c["kernel"], c["stride"], c["padding"],
                                            c["ceil_mode"], c["count_include_pad"],
                                            c["divisor_override"]),
    "global_avg_pool2d": lambda a, c: F.adaptive_avg_pool2d(a["x"], 1),
    "adaptive_avg_pool2d": lambda a, c: F.adaptive_avg_pool2d(a["x"], c["output_size"]),
    "adaptive_max_pool2d": lambda a, c: F.adaptive_max_pool2d(a["x"], c["output_size"]),
    "pad2d": lambda a, c: F.pad(a["x"], [c["padding"][k] for k in (2, 3, 0, 1)], c["mode"],
                                *([c["value"]] if c["mode"] == "constant" else [])),
    "upsample_nearest2d": lambda a, c: F.interpolate(a["x"], size=c["size"], mode="nearest"),
    "upsample_bilinear2d": lambda a, c: F.interpolate(a["x"], size=c["size"], mode="bilinear",
                                                      align_corners=False),
    "add": lambda a, c: a["a"] + a["b"],
    "mul": lambda a, c: a["a"] * a["b"],
    "concat": lambda a, c: torch.cat([a["x0"], a["x1"]], 1),
    "slice": lambda a, c: a["x"].narrow(1, c["start"], c["stop"] - c["start"]),
    "dropout": lambda a, c: a["x"] * a["mask"] / (1 - c["p"]) if c["mode"] == "train" else a["x"],
    "clip": lambda a, c: F.hardtanh(a["x"], c["low"], c["high"]),
    "softmax": lambda a, c: F.softmax(a["x"], c["axis"]),
    "cross_entropy": lambda a, c: F.cross_entropy(a["logits"], a["target"],
                                                  label_smoothing=c["label_smoothing"]),
    **{op: _torch_relu6_like(name) for op, name in [
        ("relu", "relu"), ("relu6", "relu6"), ("sigmoid", "sigmoid"),
        ("hard_sigmoid", "hardsigmoid"), ("hard_swish", "hardswish"), ("silu", "silu")]},
}  # fmt: skip

#: an input's name -> the name of its gradient's elements
GRADIENT_NAMES = {"x": "dx", "w": "dw", "b": "db", "weight": "dgamma", "bias": "dbeta",
                  "a": "da", "x0": "dx0", "x1": "dx1", "logits": "dlogits"}  # fmt: skip
#: inputs that are state or data, not differentiated (torch updates the statistics in place)
BUFFERS = ("running_mean", "running_var", "mask", "target")


def torch_truth(e: Explanation) -> dict[str, np.ndarray]:
    """torch's float64 y, gradients and updated buffers for the explanation's own inputs,
    computed here independently of the explainer, by element name."""
    tensors = {k: torch.tensor(v, dtype=torch.int64 if k == "target" else torch.float64)
               for k, v in e.inputs.items() if k != "dy"}  # fmt: skip
    for name, tensor in tensors.items():
        tensor.requires_grad_(name not in BUFFERS)
    y = ORACLES[e.op](tensors, e.case)
    differentiable = [k for k in tensors if k not in BUFFERS]
    grads = torch.autograd.grad(
        (y * torch.tensor(e.inputs["dy"])).sum(), [tensors[k] for k in differentiable]
    )
    truth = {"loss" if e.op == "cross_entropy" else "y": y.detach().numpy()}
    truth |= {GRADIENT_NAMES[k]: g.numpy() for k, g in zip(differentiable, grads, strict=True)}
    truth |= {k: tensors[k].numpy() for k in BUFFERS[:2] if k in tensors}
    return truth


def assert_elements_are_torchs(e: Explanation):
    assert e.all_checked, e.text()
    truth = torch_truth(e)
    for element in e.elements:
        expected = truth[element.name][element.index]
        rel = 1e-7 if e.op == "hard_sigmoid" and element.name == "dx" else 1e-12  # torch's 1/6
        assert element.value == pytest.approx(expected, rel=rel, abs=1e-12), element.name
        assert element.reference == pytest.approx(element.value, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("op", sorted(ORACLES))
def test_every_element_equals_torchs_at_its_index(op, seed):
    assert_elements_are_torchs(explain_op(op, seed=seed))


@pytest.mark.parametrize("arguments", [dict(low=0.0, high=6.0), dict(low=-np.inf, high=0.5),
                                       dict(low=1.5, high=1.5)])  # fmt: skip
def test_clip_with_other_bounds_places_them_and_equals_torch(arguments):
    e = explain_op("clip", **arguments)
    assert_elements_are_torchs(e)
    x = e.inputs["x"].reshape(-1)
    assert all(b in x for b in arguments.values() if np.isfinite(b))  # the kinks were placed


def test_clip_with_crossed_bounds_is_refused_by_name():
    with pytest.raises(ValueError, match="--low 2.0 is above --high -1.0"):
        explain_op("clip", low=2.0, high=-1.0)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_softmax_along_each_axis_equals_torch(axis):
    assert_elements_are_torchs(explain_op("softmax", input=(2, 3, 2, 4), axis=axis, seed=4))


QUANTIZED = ["quantized_conv2d", "quantized_add", "quantized_avg_pool2d", "quantized_softmax"]


def test_every_op_of_the_reference_has_an_explainer_checked_here():
    from scratchnets.backends import OPS
    from scratchnets.explain import EXPLAINERS

    assert set(OPS) == set(ORACLES)  # the float ops, each against torch
    assert set(EXPLAINERS) == set(OPS) | set(QUANTIZED)  # and the uint8 ops of reference.quantized


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("op", QUANTIZED)
def test_quantized_elements_equal_the_integer_ops(op, seed):
    """The integer pipeline written out equals TFLite's reference kernel as ours computes it
    (tests/test_quantized.py checks that against TensorFlow Lite itself), exactly."""
    arguments = (
        {"activation": "RELU6"} if op in ("quantized_conv2d", "quantized_add") and seed % 2 else {}
    )
    e = explain_op(op, seed=seed, **arguments)
    assert e.all_checked and e.elements
    for element in e.elements:
        assert element.value == element.reference and float(element.value).is_integer()


def test_quantized_conv_element_is_the_float_conv_within_a_step():
    for seed in range(10):
        y = explain_op("quantized_conv2d", seed=seed).elements[0]
        real, floats = (
            float(v)
            for v in re.findall(
                r"S_y \(y - Z_y\) = (\S+); the float conv of "
                r"the reals gives (\S+?)[,( ]",
                y.note,
            )[0]
        )
        if "clamped" not in y.note:
            assert abs(real - floats) <= 0.25  # one output step S_y


def test_batch_norm_in_eval_mode_and_its_three_term_dx():
    assert_elements_are_torchs(explain_op("batch_norm2d", training=False, seed=4))
    text = explain_op("batch_norm2d", input=(2, 2, 3, 3)).text()
    assert (
        "through mu" in text and "through var" in text and "M = N * H * W = 2 * 3 * 3 = 18" in text
    )


@pytest.mark.parametrize(
    "op, arguments",
    [
        ("max_pool2d", dict(input=(2, 2, 6, 6), kernel=3, stride=2, padding=1, ceil_mode=True)),
        ("max_pool2d", dict(input=(1, 2, 7, 6), kernel=(3, 2), stride=1, padding=1, dilation=2)),
        ("avg_pool2d", dict(input=(1, 2, 6, 6), kernel=3, stride=2, padding=1, ceil_mode=True)),
        ("avg_pool2d", dict(input=(1, 1, 5, 5), kernel=3, stride=1, padding=1,
                            count_include_pad=False)),
        ("avg_pool2d", dict(input=(1, 1, 5, 4), kernel=2, divisor_override=3)),
        ("adaptive_max_pool2d", dict(input=(2, 1, 4, 9), output_size=(3, 2))),
        ("adaptive_avg_pool2d", dict(input=(1, 2, 3, 3), output_size=(4, 5))),
    ],
)  # fmt: skip
def test_pooling_options_are_explained_and_checked(op, arguments):
    assert_elements_are_torchs(explain_op(op, **arguments))


@pytest.mark.parametrize(
    "op, arguments",
    [
        ("pad2d", dict(mode="constant", value=1.5)),
        ("pad2d", dict(input=(1, 2, 3, 3), padding=(3, 3, 0, 2), mode="circular")),
        ("pad2d", dict(mode="replicate", padding=(1, 2, 3, 0))),
        ("upsample_bilinear2d", dict(input=(1, 2, 5, 4), size=(2, 3))),
        ("upsample_nearest2d", dict(input=(2, 1, 14, 3), size=(46, 5))),  # torch's float32 index
        ("dropout", dict(training=False)),
        ("dropout", dict(p=0.2, input=(2, 3, 2, 2), seed=5)),
        ("slice", dict(start=0, stop=2)),
        ("cross_entropy", dict(input=(3, 5), label_smoothing=0.1)),
    ],
)
def test_data_movement_and_loss_options_are_explained_and_checked(op, arguments):
    assert_elements_are_torchs(explain_op(op, **arguments))


def test_ceil_mode_says_whether_the_last_window_overhangs_or_is_dropped():
    kept = explain_op("max_pool2d", input=(1, 1, 6, 6), kernel=3, stride=2, padding=1,
                      ceil_mode=True).text()  # fmt: skip
    assert "ceil(5 / 2) + 1 = 4" in kept and "overhangs the padded input" in kept
    dropped = explain_op("avg_pool2d", input=(1, 1, 5, 5), kernel=2, stride=2, padding=1,
                         ceil_mode=True).text()  # fmt: skip
    assert "past the input: dropped, OH = 3" in dropped


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
def test_pooling_defaults_are_torchs_and_ceil_mode_shows_the_overhanging_window(op):
    assert explain_op(op).case["padding"] == (0, 0)  # torch's default padding
    e = explain_op(op, input=(1, 1, 6, 6), kernel=3, stride=2, padding=1, ceil_mode=True)
    y = next(el for el in e.elements if el.name == "y")
    assert y.index == (0, 0, 3, 3)  # the window ceil mode adds, which overhangs the padded input
    assert any("past the padded input (ceil mode's overhang)" in term for term in y.terms)
    assert any(term.startswith("(5, 6): padding") or "at (5, 6): padding" in term
               for term in y.terms)  # fmt: skip


def test_relu6_default_inputs_reach_past_6():
    e = explain_op("relu6")
    above = [el for el in e.elements if float(e.inputs["x"][el.index]) > 6]
    assert {el.name for el in above} == {"y", "dx"}
    assert next(el.value for el in above if el.name == "y") == 6.0
    assert next(el.value for el in above if el.name == "dx") == 0.0


def test_relu6_shows_its_mask_at_0_and_6():
    e = explain_op("relu6")
    kinks = {float(e.inputs["x"][el.index]): el for el in e.elements if el.name == "dx"}
    assert kinks[0.0].value == kinks[6.0].value == 0.0
    assert "slope(6) = " in kinks[6.0].terms[0]
    assert "at exactly x = 0 and at exactly x = 6" in e.text()


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    hw = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    assume(all(s + 2 * p >= d * (k - 1) + 1 for s, p, d, k in
               zip(hw, padding, dilation, (kh, kw), strict=True)))  # fmt: skip
    return dict(input=(draw(st.integers(1, 2)), c_in, *hw), out_channels=c_out, kernel=(kh, kw),
                stride=stride, padding=padding, dilation=dilation, groups=groups,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 1000)))  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_conv2d_elements_equal_torchs_for_any_geometry(case):
    assert_elements_are_torchs(explain_op("conv2d", **case))


@settings(max_examples=10, deadline=None)
@given(conv_cases())
def test_conv2d_counts_equal_the_counter(case):
    e = explain_op("conv2d", **case)
    N, C_in, H, W = case["input"]
    layer = nn.Conv2d(C_in, case["out_channels"], case["kernel"], case["stride"], case["padding"],
                      case["dilation"], case["groups"], case["bias"])  # fmt: skip
    report = summary(layer, case["input"])
    assert e.counts["params"] == e.counts["counter_params"] == report.total_params
    assert e.counts["mult_adds"] == e.counts["counter_mult_adds"] == report.total_macs * N
    text = e.text()
    assert f"{report.total_params:,} params" in text and "equal" in text


def test_quoted_source_lines_are_the_files_lines():
    e = explain_op("conv2d")
    assert e.sources
    for source in e.sources:
        file_lines = (REPO / source.path).read_text().splitlines()
        assert (
            source.lines
            == file_lines[source.body_line - 1 : source.body_line - 1 + len(source.lines)]
        )
        assert source.lines[-1].strip().startswith("return")


def test_the_written_out_y_element_is_the_sum_of_its_printed_products():
    e = explain_op("conv2d", input=(1, 2, 5, 5), out_channels=2, kernel=3, padding=1, seed=3)
    y = e.elements[0]
    products = [float(t.rsplit("= ", 1)[1]) for t in y.terms]
    assert sum(products) == pytest.approx(y.value, abs=5e-4 * len(products))  # 4 printed digits
    assert len(y.terms) == 2 * 9 + 1  # two input channels x 3x3 taps, plus the bias


def test_depthwise_and_pointwise_say_what_changes():
    depthwise = explain_op("conv2d", input=(1, 4, 7, 7), out_channels=4, kernel=3, groups=4).text()
    assert "depthwise" in depthwise and "1/M + 1/9" in depthwise
    pointwise = explain_op("conv2d", input=(1, 4, 5, 5), out_channels=6, kernel=1).text()
    assert "pointwise" in pointwise and "matrix-vector product" in pointwise


def test_strided_dx_names_the_taps_that_reach_no_output():
    e = explain_op("conv2d", input=(1, 1, 7, 7), out_channels=1, kernel=3, stride=2, padding=1)
    dx = next(el for el in e.elements if el.name == "dx")
    assert "reach no output" in dx.note and dx.checked


def test_a_mismatch_is_reported_not_hidden():
    element = Element("y", (0,), "x", ["x[0] = 1"], value=1.0, reference=1.5)
    explanation = Explanation("demo", {}, elements=[element])
    assert not explanation.all_checked
    assert "MISMATCH" in explanation.text() and "does NOT match" in explanation.text()


@pytest.mark.parametrize(
    "arguments, error",
    [
        (dict(input=(1, 4, 5, 5), out_channels=4, kernel=3, groups=3), r"divisible by groups"),
        (dict(input=(1, 2, 2, 2), out_channels=2, kernel=5, padding=1), r"kernel"),
        (dict(input=(1, 4, 5), out_channels=4), r"N x C x H x W"),
        (dict(input=(1, 2, 5, 5), out_channels=2, at=(0, 2, 0, 0)), r"not an index"),
    ],
)
def test_bad_arguments_get_the_layers_errors(arguments, error):
    with pytest.raises(ValueError, match=error) as caught:
        explain_op("conv2d", **arguments)
    if "kernel" in error:  # the very message the layer gives for the same input
        layer = nn.Conv2d(2, 2, 5, padding=1, dtype=np.float64)
        with pytest.raises(ValueError) as from_layer:
            layer(np.zeros((1, 2, 2, 2)))
        assert str(caught.value) == str(from_layer.value)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "scratchnets.cli", "explain", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip


def test_cli_prints_the_walkthrough_and_json():
    args = ["conv2d", "--input", "1x4x7x7", "--out-channels", "4", "--kernel", "3", "--stride",
            "2", "--padding", "1", "--groups", "4", "--seed", "0"]  # fmt: skip
    text = _cli(*args)
    assert text.returncode == 0, text.stderr
    assert "floor(6 / 2) + 1 = 4" in text.stdout and "every element checked" in text.stdout
    data = json.loads(_cli(*args, "--json").stdout)
    assert data["all_checked"] and data["counts"]["mult_adds"] == 576
    assert {e["name"] for e in data["elements"]} == {"y", "dx", "dw", "db"}
    bad = _cli("conv2d", "--input", "1x4x5x5", "--out-channels", "4", "--groups", "3")
    assert bad.returncode == 1 and "divisible by groups" in bad.stderr
    bn = _cli("batch_norm2d", "--input", "2x2x3x3", "--eval")
    assert bn.returncode == 0 and "mode=eval" in bn.stdout
    misplaced = _cli("relu6", "--groups", "2")
    assert misplaced.returncode == 1 and "--groups does not apply to relu6" in misplaced.stderr
    pad = _cli("pad2d", "--input", "1x1x3x3", "--padding", "2x1x0x3", "--mode", "circular")
    assert pad.returncode == 0 and "every element checked" in pad.stdout, pad.stderr
    unknown = _cli("convolution")
    assert unknown.returncode == 1 and "unknown op or model 'convolution'" in unknown.stderr


def test_a_1xk_depthwise_is_explained_as_half_of_a_factorised_pair():
    """A DFC branch's 1x5 depthwise conv is not a depthwise-separable block's 3x3: its text says
    what it is (issue 39), and the square kernel keeps MobileNet's 1/M + 1/k^2."""
    text = explain_op("conv2d", input=(1, 4, 7, 7), out_channels=4, kernel=(1, 5),
                      padding=(0, 2), groups=4).text()  # fmt: skip
    assert "one of a factorised pair (with a 5x1 one" in text and "1/M + 1/5" not in text
    square = explain_op("conv2d", input=(1, 4, 7, 7), out_channels=4, kernel=3, padding=1,
                        groups=4).text()  # fmt: skip
    assert "1/M + 1/9 of a standard 3x3 conv" in square
