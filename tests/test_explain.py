"""``scratchnets explain``: every written-out element equals the op's result at that index (and
torch's, computed here independently), the printed counts equal the model counter's, the quoted
source lines are the file's, bad arguments get the layers' errors, and the CLI prints text / JSON.
"""

from __future__ import annotations

import json
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


def _torch_conv(case: dict, seed_values):
    """torch's y, dx, dw, db for the explained case, from the explanation's own inputs."""
    x, w, b, dy = seed_values
    xt, wt = (torch.tensor(v, requires_grad=True) for v in (x, w))
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    y = F.conv2d(xt, wt, bt, case["stride"], case["padding"], case["dilation"], case["groups"])
    grads = torch.autograd.grad(
        (y * torch.tensor(dy)).sum(), [xt, wt] + ([bt] if b is not None else [])
    )
    return y.detach().numpy(), [g.numpy() for g in grads]


def _conv_values(case: dict):
    """The inputs the explainer draws for ``case`` (same seed, same order, same rounding)."""
    from scratchnets.explain.ops import values

    rng = np.random.default_rng(case["seed"])
    N, C_in, H, W = case["input"]
    kh, kw = case["kernel"]
    C_out = case["out_channels"]
    x, w = values(rng, (N, C_in, H, W)), values(rng, (C_out, C_in // case["groups"], kh, kw), 0.5)
    b = values(rng, (C_out,), 0.1) if case["bias"] else None
    OH = (H + 2 * case["padding"][0] - case["dilation"][0] * (kh - 1) - 1) // case["stride"][0] + 1
    OW = (W + 2 * case["padding"][1] - case["dilation"][1] * (kw - 1) - 1) // case["stride"][1] + 1
    dy = values(rng, (N, C_out, OH, OW))
    return x, w, b, dy


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
def test_conv2d_elements_equal_the_op_and_torch(case):
    e = explain_op("conv2d", **case)
    assert e.all_checked
    y_t, grads_t = _torch_conv(e.case, _conv_values(e.case))
    expected = {"y": y_t, "dx": grads_t[0], "dw": grads_t[1]} | (
        {"db": grads_t[2]} if case["bias"] else {}
    )
    assert [el.name for el in e.elements] == list(expected)
    for element in e.elements:
        truth = expected[element.name][element.index]
        assert element.value == pytest.approx(truth, rel=1e-12, abs=1e-12), element.name
        assert element.reference == pytest.approx(truth, rel=1e-12, abs=1e-12), element.name


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
    unknown = _cli("convolution")
    assert unknown.returncode == 1 and "unknown op 'convolution'" in unknown.stderr
