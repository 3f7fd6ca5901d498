"""``explain MODEL --block NAME``: every block kind of the five architectures as its chain of ops,
its counts equal to the counter's, its output and input gradient equal to the same chain
replayed in torch (float64)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scratchnets.explain import trace
from scratchnets.explain.model import explain_model

REPO = Path(__file__).resolve().parents[1]

#: (model, block, ops the chain must contain): one of each block kind
BLOCKS = [
    ("mobilenet_v1", "blocks.0", ["conv2d 3x3 depthwise", "conv2d 1x1", "relu6"]),
    ("mobilenet_v2", "features.2", ["conv2d 3x3 depthwise stride 2", "relu6"]),  # no residual
    ("mobilenet_v2", "features.3", ["conv2d 3x3 depthwise", "add"]),  # inverted residual
    ("mobilenet_v3_small", "features.5",  # h-swish + SE inverted residual
     ["conv2d 5x5 depthwise", "hard_swish", "global_avg_pool2d", "hard_sigmoid", "mul", "add"]),
    ("ghostnet_100", "blocks.3.0.ghost1", ["concat", "slice"]),  # ghost module
    ("ghostnet_100", "blocks.3.0.se", ["mul"]),  # squeeze-excite gate
    ("ghostnet_100", "blocks.3.0", ["concat", "mul", "add"]),  # bottleneck with SE and shortcut
    ("ghostnetv2_100", "blocks.3.0.ghost1",  # DFC attention
     ["avg_pool2d 2x2", "conv2d 1x5 depthwise", "conv2d 5x1 depthwise", "sigmoid",
      "upsample_nearest2d", "mul"]),
    ("ghostnetv3_100", "blocks.3.0.ghost1", ["add", "concat"]),  # re-parameterisable branches
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "block", "contains"), BLOCKS, ids=[f"{m}:{b}" for m, b, _ in BLOCKS]
)
def test_every_block_kind_is_walked_counted_and_checked(model, block, contains):
    result = explain_model(model, resolution=64, block=block)
    b = result.block
    assert b.all_checked and result.all_checked
    assert b.counts["params"] == b.counts["counter_params"] > 0
    assert b.counts["mult_adds"] == b.counts["counter_mult_adds"] > 0
    names = [f"{o['op']} {o['detail']}".strip() for o in b.ops]
    for op in contains:
        assert op in names, (op, names)
    # every op's backward, in reverse (plus the adds that sum a branch's dx with another's)
    assert b.backward and {op for op in b.backward if "(of gradients)" not in op} <= {
        o["op"] for o in b.ops
    }
    assert "every element checked" in b.text() and block in result.text()


def test_a_wrong_backward_in_the_chain_is_caught(monkeypatch):
    """The torch replay is an oracle that can fail: a ReLU6 backward off by a factor of 2 (on the
    trace backend only) makes dx a MISMATCH."""
    right = trace.relu6_backward
    monkeypatch.setattr(trace, "relu6_backward", lambda dy, cache: 2 * right(dy, cache))
    b = explain_model("mobilenet_v2", resolution=64, block="features.3").block
    assert not b.all_checked
    assert [c["ok"] for c in b.checks] == [True, False]  # y is right, dx is not
    assert "MISMATCH" in b.text()


def test_cli_block():
    done = subprocess.run(
        [sys.executable, "-m", "scratchnets.cli", "explain", "mobilenet_v2", "--block",
         "features.3", "--resolution", "64", "--at", "0,1,2,3"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "== block features.3 (InvertedResidual)" in done.stdout
    assert "add (of gradients)" in done.stdout  # the shortcut's dy joins the branch's dx
    assert "y[0, 1, 2, 3]" in done.stdout and "every element checked" in done.stdout
    both = subprocess.run(
        [sys.executable, "-m", "scratchnets.cli", "explain", "mobilenet_v2", "--block",
         "features.3", "--layer", "features.3.conv.0.0"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert both.returncode == 1 and "--block walks a whole block" in both.stderr
    as_json = subprocess.run(
        [sys.executable, "-m", "scratchnets.cli", "explain", "mobilenet_v2", "--block",
         "features.3", "--resolution", "64", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    block = __import__("json").loads(as_json.stdout)["block"]
    assert as_json.returncode == 0 and block["all_checked"] and len(block["path"]) == 9


def test_the_trace_backend_computes_what_the_reference_does():
    import scratchnets as sn

    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5))
    conv = sn.nn.Conv2d(
        4, 4, 3, padding=1, groups=4, dtype=np.float64, rng=np.random.default_rng(0)
    )
    expected = conv.to("reference")(x)
    with trace.recording() as tape:
        got = conv.to("trace")(x)
    np.testing.assert_array_equal(got, expected)
    assert [call.function for call in tape] == ["conv2d_forward"]


def test_the_dfc_branch_says_it_runs_at_half_resolution():
    text = explain_model("ghostnetv2_100", resolution=64, block="blocks.3.0.ghost1").text()
    line = next(k for k, t in enumerate(text.splitlines()) if "conv2d 1x5 depthwise" in t)
    assert "at 8x8, 1/4 of the block's 16x16 map" in text.splitlines()[line + 1]


def test_ghostnetv3_branches_and_the_fused_conv_they_become_give_the_same_output():
    b = explain_model("ghostnetv3_100", resolution=64, block="blocks.3.0").block
    assert b.reparameterized is not None and len(b.reparameterized) < len(b.ops)
    assert b.all_checked and len(b.checks) == 3  # y, dx, and y of the re-parameterised block
    assert "re-parameterised for inference" in b.text()


def test_one_output_element_is_followed_through_every_op_of_the_branch():
    b = explain_model("mobilenet_v2", resolution=64, block="features.3").block
    assert [s["op"] for s in b.path] == [
        "conv2d 1x1", "batch_norm2d", "relu6", "conv2d 3x3 depthwise", "batch_norm2d", "relu6",
        "conv2d 1x1", "batch_norm2d", "add",
    ]  # fmt: skip
    assert all(s["ok"] for s in b.path)
    assert b.path[-1]["index"] == tuple(
        int(i) for i in b.checks[0]["what"][1:].strip("[]").split(", ")
    )
    for before, after in zip(b.path, b.path[1:], strict=False):
        assert after["from"] == before["index"]  # each step reads what the one before wrote
    assert "largest:" in b.path[0]["how"] and "sum of 24 products" in b.path[0]["how"]
    # the gradient of that element, op by op back to the input, ours against torch's
    assert all(s["grad_ok"] for s in b.path) and b.path[0]["from_grad"] == pytest.approx(
        b.path[0]["from_torch_grad"], rel=1e-9)  # fmt: skip
    assert "its gradient traced back" in b.text()


def test_a_wrong_forward_is_caught_on_the_followed_element(monkeypatch):
    """A ReLU6 forward 1.5x too large (the trace backend runs it): the followed element's ReLU6
    step, recomputed from its formula, disagrees, and so does torch's y."""
    import scratchnets.reference as reference

    right = reference.relu6_forward
    monkeypatch.setattr(reference, "relu6_forward",
                        lambda x: (lambda y, c: (y * 1.5, c))(*right(x)))  # fmt: skip
    b = explain_model("mobilenet_v2", resolution=64, block="features.3").block
    relu6 = [s for s in b.path if s["op"] == "relu6"]
    assert relu6 and not any(s["ok"] for s in relu6 if s["value"] != 0)
    assert not b.checks[0]["ok"] and not b.all_checked and "MISMATCH" in b.text()
