"""The counter: meta backend shapes, the MAC formula, summary bookkeeping, conventions, CLI.

Independent oracles: torch's own conv output shapes (the MAC formula is then checked on them),
the reference backend's output shapes, torchvision / timm layer shapes through forward hooks, and
counts worked out by hand for fixed layers.
"""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets as sn
from scratchnets import functional as F
from scratchnets.backends import OP_NAMES, get_backend
from scratchnets.nn.init import skip_init
from scratchnets.profile import meta
from scratchnets.profile.conventions import count_params, param_breakdown
from scratchnets.profile.summary import summary

nn = sn.nn
torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------- meta backend


def test_meta_backend_is_registered_and_complete():
    backend = get_backend("meta")
    assert backend is meta
    assert all(callable(getattr(meta, name)) for name in OP_NAMES)
    with pytest.raises(NotImplementedError, match="shapes"):
        meta.conv2d_backward(np.empty(1), None)


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))  # (top, bottom, left, right)
    h = draw(st.integers(dilation[0] * (kh - 1) + 1, 12))
    w = draw(st.integers(dilation[1] * (kw - 1) + 1, 12))
    n = draw(st.integers(1, 3))
    return n, c_in, c_out, (kh, kw), stride, dilation, pads, groups, (h, w)


@given(conv_cases())
def test_conv_macs_against_torch_output_shape(case):
    """MACs = N*OH*OW*C_out*(C_in/groups)*kh*kw, with OH, OW from torch's own conv (per image)."""
    n, c_in, c_out, (kh, kw), stride, dilation, pads, groups, (h, w) = case
    conv = nn.Conv2d(c_in, c_out, (kh, kw), stride, pads, dilation, groups, bias=True)
    s = summary(conv, (n, c_in, h, w))
    top, bottom, left, right = pads
    x = torch.nn.functional.pad(torch.zeros(n, c_in, h, w), (left, right, top, bottom))
    y = torch.nn.functional.conv2d(
        x, torch.zeros(c_out, c_in // groups, kh, kw), stride=stride, dilation=dilation,
        groups=groups,
    )  # fmt: skip
    assert s.output_shape == tuple(y.shape)
    _, _, oh, ow = y.shape
    assert s.total_macs == oh * ow * c_out * (c_in // groups) * kh * kw
    assert s.rows[0].macs == s.total_macs
    assert s.total_params == c_out * (c_in // groups) * kh * kw + c_out
    assert s.other_ops == {"bias": c_out * oh * ow}


def test_fixed_layers_by_hand():
    """MobileNet's 14x14x512 layer ([V1] Table 3) and a linear layer, computed by hand."""
    dw = nn.Conv2d(512, 512, 3, padding=1, groups=512, bias=False)
    pw = nn.Conv2d(512, 512, 1, bias=False)
    s = summary(nn.Sequential(dw, pw), (1, 512, 14, 14))
    assert [r.macs for r in s.rows] == [3 * 3 * 512 * 14 * 14, 512 * 512 * 14 * 14]
    assert [r.kind for r in s.rows] == ["depthwise 3x3", "pointwise 1x1"]
    assert s.total_macs == 52_283_392 and s.total_params == 266_752
    fc = summary(nn.Linear(1024, 1000), (4, 1024))
    assert fc.total_macs == 1024 * 1000  # per image, whatever the batch
    assert fc.output_shape == (4, 1000)


def _every_layer_model() -> nn.Module:
    class Mixed(nn.Module):
        """Conv/BN/act layers plus the ops composite blocks call themselves."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=(0, 1, 0, 1)), nn.BatchNorm2d(8),
                nn.ReLU6(), nn.MaxPool2d(3, 2, 1), nn.Sigmoid(), nn.Hardsigmoid(), nn.ReLU(),
                nn.AvgPool2d(2), nn.Upsample(size=(5, 7)), nn.Dropout(0.5),
                nn.Upsample(scale_factor=2, mode="bilinear"),
            )  # fmt: skip
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

        def forward(self, x):
            y = self.body(x)  # (N, 8, 10, 14)
            y, _ = F.add_forward(y, y, backend=self.backend)
            y, _ = F.mul_forward(y, y[:, :, :1, :1], backend=self.backend)
            y, _ = F.concat_forward([y, y], axis=1, backend=self.backend)  # (N, 16, 10, 14)
            y, _ = F.slice_forward(y, 0, 8, axis=1, backend=self.backend)
            return self.head(y)

    return Mixed()


def test_meta_shapes_equal_reference_shapes():
    """The same model on the reference backend (real math) and traced on meta: same shapes."""
    model = _every_layer_model()
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 21, 27)).astype(np.float32)
    shapes = {}
    for name, module in model.named_modules():
        module.forward = (lambda f, n: lambda *a: shapes.setdefault(n, f(*a)).view())(
            module.forward, name
        )
    y = model(x)
    for _, module in model.named_modules():
        del module.__dict__["forward"]
    s = summary(model, x.shape)
    assert s.output_shape == y.shape
    for row in s.rows:
        if row.name in shapes:
            assert row.output_shape == shapes[row.name].shape, row.name
    ops = {r.type for r in s.rows}
    assert {"add", "mul", "concat", "slice"} <= ops  # the composite's own ops are rows too
    assert s.other_ops["elementwise"] == 2 * 8 * 10 * 14
    assert s.other_ops["resize"] == 8 * 5 * 7 + 8 * 10 * 14


def test_summary_restores_the_model():
    model = _every_layer_model()
    model.train()
    x = np.zeros((1, 3, 16, 16), np.float32)
    model(x)  # a real forward: leaves caches
    before = {id(m): (m.backend, m.training, m._cache, m._out_shape) for m in model.modules()}
    bn = model.body[1]
    tracked, running = int(bn.num_batches_tracked), bn.running_mean.copy()
    summary(model, (2, 3, 33, 17))
    after = {id(m): (m.backend, m.training, m._cache, m._out_shape) for m in model.modules()}
    assert after == before
    assert all("forward" not in vars(m) for m in model.modules())
    assert int(bn.num_batches_tracked) == tracked and np.array_equal(bn.running_mean, running)
    with pytest.raises(ValueError, match="does not fit"):
        summary(model, (1, 3, 1, 1))  # too small for the 3x3 stride-2 conv
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(m.backend == sn.backends.DEFAULT_BACKEND for m in model.modules())


def test_adaptive_pooling_is_pooling_not_macs():
    s = summary(
        nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.AdaptiveAvgPool2d((2, 3))), (1, 3, 8, 9)
    )
    assert s.total_macs == 4 * 3 * 8 * 9
    assert s.rows[1].macs == 0 and s.other_ops["pooling"] > 0


def test_breakdown_and_conventions_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1), nn.Flatten(),
        nn.Linear(5 * 2 * 2, 6),
    )  # fmt: skip
    b = param_breakdown(model)
    assert (b.conv_fc_weights, b.conv_fc_biases, b.bn_gamma, b.bn_beta, b.bn_running_stats) == (
        108 + 20 + 120, 5 + 6, 4, 4, 8,
    )  # fmt: skip
    expected = {"weights": 248, "slim": 259, "slim_v1": 259 + 4 + 8, "trainable": 267,
                "keras": 275}  # fmt: skip
    assert {k: count_params(model, k) for k in expected} == expected
    s = summary(model, (1, 3, 4, 4))
    assert (s.total_params, s.bn_params, s.bn_buffers, s.bias_params) == (267, 8, 8, 11)
    with pytest.raises(ValueError, match="unknown parameter convention"):
        count_params(model, "flops")


def test_create_without_init_draws_nothing():
    """``create(..., init=False)`` leaves the generator where it was (no weight drawn) and the
    initialisers in place afterwards."""
    rng = np.random.default_rng(0)
    model = sn.models.create("mobilenet_v2", width_mult=0.25, rng=rng, init=False)
    assert rng.random() == np.random.default_rng(0).random()
    assert model.features[0][0].weight.shape == (8, 3, 3, 3)
    drawn = sn.models.create("mobilenet_v2", width_mult=0.25, rng=np.random.default_rng(0))
    assert np.std(drawn.features[0][0].weight.data) > 0


def test_skip_init_leaves_weights_alone_and_restores():
    original = nn.init.normal_
    with skip_init():
        conv = nn.Conv2d(2, 2, 1)
        assert nn.init.normal_ is not original
    assert nn.init.normal_ is original
    assert conv.weight.shape == (2, 2, 1, 1)


# ------------------------------------------------------------ whole models vs torch


def _torch_counts(model, resolution: int) -> tuple[int, int]:
    """(params, conv + FC MACs) of a torch model, from its layers' output shapes (hooks)."""
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, torch.nn.Conv2d):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
        else:
            per_out = module.in_features
        macs += output.numel() * per_out

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for h in handles:
        h.remove()
    return sum(p.numel() for p in model.parameters()), macs


def _ours(name: str, resolution: int, width: float = 1.0):
    model = sn.models.create(name, width_mult=width, init=False)
    return summary(model, (1, 3, resolution, resolution))


@pytest.mark.torch_models
@pytest.mark.parametrize(
    "ours_name, width, theirs, resolution",
    [  # odd resolutions exercise the floor of every strided layer
        ("mobilenet_v2", 1.0, "tv:mobilenet_v2", 131),
        ("mobilenet_v2", 0.35, "tv:mobilenet_v2", 96),
        ("mobilenet_v1", 1.0, "timm:mobilenetv1_100", 97),
        ("ghostnet_100", 1.0, "timm:ghostnet_100", 113),
        ("ghostnetv2_100", 1.0, "timm:ghostnetv2_100", 65),
    ],
)
def test_models_against_torchvision_and_timm(ours_name, width, theirs, resolution):
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    library, name = theirs.split(":")
    if library == "tv":
        torchvision = pytest.importorskip("torchvision")
        model = getattr(torchvision.models, name)(width_mult=width)
    else:
        timm = pytest.importorskip("timm")
        model = timm.create_model(name)
    s = _ours(ours_name, resolution, width)
    assert (s.total_params, s.total_macs) == _torch_counts(model, resolution)


@pytest.mark.parametrize(
    "name, resolution, params, macs",
    [  # exact counts of the torchvision / timm twins (papers.md §7; measured with torch hooks)
        ("mobilenet_v2", 224, 3_504_872, 300_774_272),
        ("mobilenet_v1", 224, 4_231_976, 568_740_352),
        ("ghostnet_100", 224, 5_182_508, 141_150_512),
        ("ghostnetv2_100", 224, 6_156_908, 167_048_288),
        ("ghostnetv3_100", 224, 8_129_028, 404_128_320),
        ("vgg16", 224, 138_357_544, 15_470_264_320),
        ("xception", 299, 22_855_952, 8_357_403_496),
    ],
)
def test_headline_counts(name, resolution, params, macs):
    s = _ours(name, resolution)
    assert (s.total_params, s.total_macs) == (params, macs)


# ----------------------------------------------------------------------------------- CLI


def test_cli_summary_formats(capsys):
    from scratchnets.cli import main

    assert main(["summary", "mobilenet_v2", "--width-mult", "0.5", "--resolution", "96",
                 "--num-classes", "2", "--json"]) == 0  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [1, 3, 96, 96] and data["output_shape"] == [1, 2]
    assert data["total_macs"] == sum(r["macs"] for r in data["rows"])
    assert main(["summary", "vgg16", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| features.0 | Conv2d |" in out and "15,470,264,320" in out
    assert main(["summary", "ghostnetv3_100", "--reparameterize"]) == 0
    assert "167,048,288" in capsys.readouterr().out


@settings(max_examples=5)
@given(st.sampled_from(["mobilenet_v1", "mobilenet_v2", "ghostnet_100"]), st.integers(33, 80))
def test_macs_are_per_image(name, resolution):
    model = sn.models.create(name, init=False)
    one = summary(model, (1, 3, resolution, resolution))
    three = summary(model, (3, 3, resolution, resolution))
    assert one.total_macs == three.total_macs and one.other_ops == three.other_ops
    assert [r.macs for r in one.rows] == [r.macs for r in three.rows]
