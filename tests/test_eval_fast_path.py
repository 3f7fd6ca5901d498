"""The eval fast path (``models.fuse.EvalFastPath``): in eval mode a model runs its BN-folded,
activation-fused inference copy; its logits equal the training graph's within float32 rounding
on every model (random BN statistics), a changed parameter is seen, ``train()`` returns to the
training graph, and a backward after a fast forward is a clear error.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import scratchnets as sn
from scratchnets.kernels.cpu import (
    batch_norm2d_eval_affine,
    conv2d_bias_act_checked,
    conv2d_bias_act_forward,
    conv2d_bias_act_prepared,
    conv2d_forward,
    hard_swish_forward,
    relu6_forward,
    relu_forward,
)
from scratchnets.models.blocks import residual_add
from scratchnets.models.fuse import LAYOUT_TRIALS, PLANS_KEPT, Snapshot
from scratchnets.nn import BatchNorm2d, Conv2d
from scratchnets.reference.batchnorm import eval_scale_shift
from scratchnets.reference.conv import prepare_conv
from tests.model_twins import randomize_bn

#: the module (``scratchnets.models.fuse`` the name is the function ``fuse``)
fuse_module = importlib.import_module("scratchnets.models.fuse")

#: (model, create options, input size): every registered architecture with BatchNorm, small
MODELS = [
    ("mobilenet_v1", dict(width_mult=0.25), 48),
    ("mobilenet_v2", dict(width_mult=0.35), 48),
    ("mobilenet_v3_large", dict(width_mult=0.35), 48),
    ("mobilenet_v3_small", dict(width_mult=0.5, keras_style=True), 47),
    ("ghostnet_100", dict(width_mult=0.25), 48),
    ("ghostnetv2_100", dict(width_mult=0.25), 48),
    ("ghostnetv3_100", dict(width_mult=0.25), 48),
    ("vgg16_bn", dict(), 32),
    ("xception", dict(), 71),
]
EPS32 = float(np.finfo(np.float32).eps)


def make(name: str, options: dict, dtype, backend: str = "cpu"):
    model = sn.models.create(name, num_classes=10, rng=0, dtype=dtype, **options)
    randomize_bn(model, np.random.default_rng(1))
    return model.to(backend).eval()


def graph_eval(model, x):
    """The training graph's eval-mode output (the fast path switched off for one call)."""
    model.fast_eval = False
    try:
        return model(x)
    finally:
        model.fast_eval = True


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(("name", "options", "size"), MODELS, ids=[m[0] for m in MODELS])
def test_fast_path_logits_equal_the_training_graph(name, options, size, layout):
    """float64: the same function (1e-10). float32: the fast path's error against the float64
    training graph is at most 4x the float32 training graph's own, or a few float32 ulps of the
    logits: folding and fusing reorder roundings, they do not add error. In either layout of
    the plan (channels-last: every chain of depthwise / pointwise convs on planes of at most
    ``CHANNELS_LAST_PIXELS``)."""
    x = np.random.default_rng(2).standard_normal((2, 3, size, size))
    model64 = make(name, options, np.float64)
    model64.inference_layout = layout
    exact = graph_eval(model64, x)
    fast64 = model64(x)
    assert np.max(np.abs(fast64 - exact)) <= 1e-10 * max(1.0, np.max(np.abs(exact)))
    copy = model64.__dict__["_fast_eval_state"][-1]
    bns = {id(m) for m in copy.modules() if isinstance(m, BatchNorm2d)}
    attached = {id(m._modules["folded_bn"]) for m in copy.modules() if "folded_bn" in m._modules}
    assert bns == attached, "a BN runs on its own instead of inside its conv's output pass"
    model32 = make(name, options, np.float32)
    model32.inference_layout = layout
    x32 = x.astype(np.float32)
    graph_error = np.max(np.abs(graph_eval(model32, x32) - exact))
    fast_error = np.max(np.abs(model32(x32) - exact))
    assert fast_error <= 4 * max(graph_error, 8 * EPS32 * np.max(np.abs(exact))), (
        fast_error,
        graph_error,
    )


@pytest.mark.parametrize(("name", "options", "size"), MODELS, ids=[m[0] for m in MODELS])
def test_the_compiled_plan_repeats_the_first_forward_bit_for_bit(name, options, size):
    """The first input of a shape runs the copy's forward and builds its plan
    (``Module.inference_plan``); later inputs of that shape run the plan: the same bytes,
    another input's shape gets a plan of its own, and a weight changed in place is seen."""
    model = make(name, options, np.float32)
    rng = np.random.default_rng(7)
    x, other = (rng.standard_normal((n, 3, size, size)).astype(np.float32) for n in (2, 1))
    first, first_other = model(x), model(other)  # forward, plans made
    plans = model._inference_copy().__dict__["_plans"]
    assert {key[:2] for key in plans} == {(x.shape, x.dtype), (other.shape, other.dtype)}
    np.testing.assert_array_equal(model(x), first)
    np.testing.assert_array_equal(model(other), first_other)
    conv = next(m for m in model.modules() if isinstance(m, Conv2d))
    conv.weight.data[...] *= 0.5
    np.testing.assert_allclose(model(x), graph_eval(model, x), rtol=1e-4, atol=1e-4)
    assert not np.array_equal(model(x), first)


@pytest.mark.parametrize("faster", ["nchw", "channels_last"])
def test_auto_layout_keeps_the_faster_plan_and_times_an_architecture_once(monkeypatch, faster):
    """ "auto" builds both plans, times them (here a clock that favours ``faster``) and keeps
    that one: its outputs are the forced layout's, bit for bit; a copy rebuilt for the same
    architecture reuses the choice without timing; a model whose chains never turn is built
    once, NCHW; an unknown layout is a clear error."""
    monkeypatch.setattr(fuse_module, "_LAYOUTS_TIMED", {})
    model = make("mobilenet_v2", dict(width_mult=0.35), np.float32)
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    forced = {}
    for layout in ("nchw", "channels_last"):
        model.inference_layout = layout
        forced[layout] = model(x)
    assert not np.array_equal(forced["nchw"], forced["channels_last"])  # other roundings
    timed = []

    def clock(run, x):  # which plan ran, told by its output
        channels_last = np.array_equal(run(x), forced["channels_last"])
        timed.append(channels_last)
        return 1.0 if channels_last == (faster == "channels_last") else 2.0

    monkeypatch.setattr(fuse_module, "_seconds", clock)
    model.inference_layout = "auto"
    np.testing.assert_array_equal(model(x), forced[faster])
    assert sorted(timed) == [False] * LAYOUT_TRIALS + [True] * LAYOUT_TRIALS
    plans = model._inference_copy().__dict__["_plans"]
    assert plans[(x.shape, x.dtype, "auto")][1] == faster
    conv = next(m for m in model.modules() if isinstance(m, Conv2d))
    conv.weight.data = conv.weight.data.copy()  # a new copy of the model, the same function
    np.testing.assert_array_equal(model(x), forced[faster])
    assert len(timed) == 2 * LAYOUT_TRIALS
    plain = make("vgg16_bn", {}, np.float32)  # no depthwise conv: no chain turns
    assert plain(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)
    assert len(timed) == 2 * LAYOUT_TRIALS
    plain.inference_layout = "nhwc"
    with pytest.raises(ValueError, match="inference_layout must be one of"):
        plain(np.zeros((1, 3, 32, 32), np.float32))


def test_a_plan_keeps_a_subclass_that_has_its_own_forward_on_that_forward():
    """``planned_as``: a Sequential or conv subclass with its own forward is planned as that
    forward, not as its parent's plan (Conv2dSame pads its own way)."""

    class Doubled(sn.nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    layer = Doubled(sn.nn.ReLU())
    x = np.array([[[[-1.0, 3.0]]]], np.float32)
    run, y = layer.inference_plan(x)
    np.testing.assert_array_equal(y, [[[[0.0, 6.0]]]])
    np.testing.assert_array_equal(run(x), y)
    same = sn.models.blocks.Conv2dSame(2, 2, 3, stride=2, rng=np.random.default_rng(0)).eval()
    same.fused_activation, same.forward_only = "relu", True
    z = np.random.default_rng(1).standard_normal((1, 2, 6, 6)).astype(np.float32)
    run, y = same.inference_plan(z)
    assert run == same.forward
    np.testing.assert_array_equal(run(z), y)


def test_an_inference_copy_keeps_a_bounded_number_of_plans():
    model = make("mobilenet_v1", dict(width_mult=0.25), np.float32)
    for size in range(32, 32 + PLANS_KEPT + 3):
        model(np.zeros((1, 3, size, size), np.float32))
    plans = model._inference_copy().__dict__["_plans"]
    shapes = {key[0] for key in plans}
    assert len(plans) == PLANS_KEPT and (1, 3, 32, 32) not in shapes


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_mobilenet_v2_fuses_every_relu6_into_its_conv(backend):
    model = make("mobilenet_v2", dict(width_mult=0.35), np.float32, backend)
    model(np.zeros((1, 3, 32, 32), np.float32))
    copy = model.__dict__["_fast_eval_state"][-1]
    fused = [m for m in copy.modules() if isinstance(m, Conv2d) and m.fused_activation]
    assert len(fused) == 35  # stem, 17 depthwise, 16 expansions, last 1x1 (projections: linear)
    assert not any(isinstance(m, sn.nn.ReLU6) for m in copy.modules())


def test_a_changed_parameter_invalidates_the_folded_copy():
    model = make("mobilenet_v2", dict(width_mult=0.35), np.float64)
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32))
    before = model(x)
    first_copy = model.__dict__["_fast_eval_state"][-1]
    assert model.__dict__["_fast_eval_state"][-1] is first_copy and np.array_equal(model(x), before)
    # an in-place write into a weight, a BN statistic, and a new array assigned
    for change in (
        lambda: model.features[1].conv[0][0].weight.data.__setitem__((0, 0, 1, 1), 3.0),
        lambda: model.features[2].conv[1][1].running_var.__setitem__(0, 9.0),
        lambda: setattr(model.classifier[1].bias, "data", model.classifier[1].bias.data + 1.0),
    ):
        change()
        after = model(x)
        np.testing.assert_allclose(after, graph_eval(model, x), rtol=1e-12, atol=1e-12)
        assert not np.array_equal(after, before)
        before = after
    state = model.state_dict()
    state["classifier.1.weight"] = state["classifier.1.weight"] * 2  # every weight, one factor
    model.load_state_dict(state)
    np.testing.assert_allclose(model(x), graph_eval(model, x), rtol=1e-12, atol=1e-12)
    model.classifier.add_module(
        "1", sn.nn.Linear(model.classifier[1].in_features, 4, dtype=np.float64)
    )
    assert model(x).shape == (1, 4)  # a new layer: the layout changed, the copy is rebuilt


def test_train_returns_to_the_training_graph_and_backward_needs_it():
    model = make("mobilenet_v1", dict(width_mult=0.25), np.float64)
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32))
    y = model(x)
    with pytest.raises(RuntimeError, match="fast_eval = False"):
        model.backward(np.ones_like(y))
    model.train()
    assert "_fast_eval_state" not in model.__dict__
    y_train = model(x)
    assert model.backward(np.ones_like(y_train)).shape == x.shape
    model.eval()
    model.fast_eval = False
    assert model.backward(np.ones_like(model(x))).shape == x.shape  # gradients in eval mode


def test_fused_conv_refuses_training_and_backward():
    conv = Conv2d(4, 4, 3, padding=1, rng=np.random.default_rng(0))
    conv.fused_activation = "relu6"
    with pytest.raises(RuntimeError, match="inference"):
        conv(np.zeros((1, 4, 5, 5), np.float32))
    conv.eval()
    conv(np.zeros((1, 4, 5, 5), np.float32))
    with pytest.raises(RuntimeError, match="no backward"):
        conv.backward(np.zeros((1, 4, 5, 5), np.float32))


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "groups"),
    [(8, 16, 1, 1, 1), (8, 16, 1, 2, 1), (8, 8, 3, 2, 8), (8, 8, 3, 1, 8), (3, 8, 3, 2, 1)],
    ids=["pointwise", "pointwise-s2", "depthwise-s2", "depthwise", "general"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("activation", "separate"),
    [("relu6", relu6_forward), ("relu", relu_forward), ("hard_swish", hard_swish_forward)],
)
def test_conv2d_bias_act_equals_conv_then_activation_bit_for_bit(
    c_in, c_out, kernel, stride, groups, dtype, activation, separate
):
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal((2, c_in, 9, 9))).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups, kernel, kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    y = conv2d_bias_act_forward(x, w, b, stride, kernel // 2, 1, groups, activation)
    expected, _ = separate(conv2d_forward(x, w, b, stride, kernel // 2, 1, groups)[0])
    np.testing.assert_array_equal(y, expected)
    with pytest.raises(ValueError, match="activation must be one of"):
        conv2d_bias_act_forward(x, w, b, stride, 0, 1, groups, "tanh")


@pytest.mark.parametrize(("size", "stride"), [(9, 1), (9, 2), (24, 1), (47, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu6", "hard_swish"])
def test_the_depthwise_kernels_apply_bn_and_activation_as_the_ops_in_sequence(
    size, stride, dtype, activation
):
    """The depthwise kernels apply the inference epilogue to each output plane inside the
    kernel (the flat kernel up to 400 output pixels, the polyphase one above, multiplier 2):
    bit for bit the conv, then ``* scale``, then ``+ shift``, then the activation, each rounded
    as its own op."""
    rng = np.random.default_rng(9)
    x = (3 * rng.standard_normal((2, 6, size, size))).astype(dtype)
    w = rng.standard_normal((12, 1, 3, 3)).astype(dtype)
    scale, shift = rng.uniform(0.5, 2, 12).astype(dtype), rng.standard_normal(12).astype(dtype)
    x, w, _, g = prepare_conv(x, w, None, stride, 1, 1, 6)
    y = conv2d_bias_act_checked(x, w, shift, g, activation, scale)
    z = conv2d_forward(x, w, None, stride, 1, 1, 6)[0] * scale[:, None, None]
    z = z + shift[:, None, None]
    expected = z if activation is None else {"relu6": relu6_forward,
                                             "hard_swish": hard_swish_forward}[activation](z)[0]  # fmt: skip
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "groups"),
    [(8, 40, 1, 1, 1), (8, 16, 1, 2, 1), (8, 8, 3, 2, 8), (3, 8, 3, 2, 1)],
    ids=["pointwise", "pointwise-s2", "depthwise-s2", "general"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bn", [True, False])
@pytest.mark.parametrize("activation", [None, "relu6", "hard_swish"])
def test_a_prepared_conv_call_equals_the_checked_kernel_and_sees_changes(
    c_in, c_out, kernel, stride, groups, dtype, with_bn, activation
):
    """The eval fast path's per-layer plan (``conv2d_bias_act_prepared``): bit for bit the
    checked kernel's result, with and without an attached BN, and still after the weights, the
    bias and the BN's statistics change in place (it reads them on every call)."""
    rng = np.random.default_rng(6)
    x = (3 * rng.standard_normal((2, c_in, 12, 12))).astype(dtype)
    w = rng.standard_normal((c_out, c_in // groups, kernel, kernel)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    bn = (
        rng.standard_normal(c_out).astype(dtype),
        rng.standard_normal(c_out).astype(dtype),
        rng.standard_normal(c_out).astype(dtype),
        rng.uniform(0.5, 2, c_out).astype(dtype),
        1e-3,
    )
    x, w, b, g = prepare_conv(x, w, b, stride, kernel // 2, 1, groups)
    run = conv2d_bias_act_prepared(w, b, g, activation, bn if with_bn else None)

    def checked():
        scale, shift = batch_norm2d_eval_affine(*bn, b, dtype) if with_bn else (None, b)
        return conv2d_bias_act_checked(x, w, shift, g, activation, scale)

    for change in (lambda: None, lambda: w.__setitem__(0, 2 * w[0]),
                   lambda: b.__setitem__(-1, 5.0), lambda: bn[3].__setitem__(0, 9.0)):  # fmt: skip
        change()
        np.testing.assert_array_equal(run(x), checked())
    with pytest.raises(ValueError, match="activation must be one of"):
        conv2d_bias_act_prepared(w, b, g, "tanh")


def test_the_fast_paths_convs_run_prepared_calls_on_the_cpu_backend_only(monkeypatch):
    """On the cpu backend a planned forward runs no conv's ``_forward_fused`` (every conv is a
    prepared call, NCHW or channels-last); on the reference backend each conv runs it."""
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    for backend, prepared in (("cpu", True), ("reference", False)):
        model = make("mobilenet_v2", dict(width_mult=0.35), np.float32, backend)
        model(x)  # the plan made
        convs = [m for m in model._inference_copy().modules() if isinstance(m, Conv2d)]
        forwards = []

        def counted(self, *args, forwards=forwards, unprepared=Conv2d._forward_fused):
            forwards.append(self)
            return unprepared(self, *args)

        with monkeypatch.context() as patch:
            patch.setattr(Conv2d, "_forward_fused", counted)
            model(x)
        assert len(forwards) == (0 if prepared else len(convs)), (backend, len(forwards))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "present", [(True, True, True), (False, False, False), (True, False, True)]
)
def test_bn_eval_affine_equals_the_reference_scale_shift(dtype, present):
    """The compiled BN scale / shift of the eval fast path: the reference's float64 values, cast,
    bit for bit, with and without BN weight, BN bias and conv bias."""
    rng = np.random.default_rng(8)
    weight, bias, conv_bias = (rng.standard_normal(37).astype(dtype) if there else None
                               for there in present)  # fmt: skip
    mean = rng.standard_normal(37).astype(dtype)
    var = rng.uniform(0, 3, 37).astype(dtype)
    scale, shift = batch_norm2d_eval_affine(weight, bias, mean, var, 1e-3, conv_bias, dtype)
    ref_scale, ref_shift = eval_scale_shift(weight, bias, mean, var, 1e-3, conv_bias)
    assert scale.dtype == shift.dtype == dtype
    np.testing.assert_array_equal(scale, ref_scale.astype(dtype))
    np.testing.assert_array_equal(shift, np.broadcast_to(ref_shift, (37,)).astype(dtype))


def test_an_inference_convs_shortcut_still_checks_what_changed():
    """After one checked call an inference conv skips its input checks for inputs of the same
    shape and dtypes; anything else (another dtype or shape, training mode, the fused activation
    taken away) goes through the full path and its errors."""
    conv = Conv2d(4, 6, 3, padding=1, rng=np.random.default_rng(0))
    conv.fused_activation = "relu6"
    conv.eval()
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    first = conv(x)
    np.testing.assert_array_equal(conv(x), first)  # the shortcut, same result
    with pytest.raises(TypeError, match="float32 arrays but got a float64 input"):
        conv(x.astype(np.float64))
    with pytest.raises(ValueError, match="expects an input of shape"):
        conv(np.zeros((2, 3, 5, 5), np.float32))
    assert conv(x[:1]).shape == (1, 6, 5, 5)  # another shape: checked, new geometry
    conv.fused_activation = None  # an ordinary conv again: its eval forward keeps a cache
    conv(x)
    assert conv.backward(np.ones((2, 6, 5, 5), np.float32)).shape == x.shape
    conv.fused_activation = "relu6"
    conv.train()
    with pytest.raises(RuntimeError, match="inference"):
        conv(x)


def test_residual_add_works_in_place_only_on_a_branchs_own_buffer():
    """In the inference copy a residual add reuses the branch's output, never the block's input
    (an all-Identity branch hands back x itself), and outside the copy it allocates."""
    block = sn.nn.Identity()
    x = np.arange(6.0).reshape(1, 6, 1, 1)
    branch_output = 2 * x
    assert residual_add(block, branch_output, x, x) is not branch_output  # not forward_only
    block.forward_only = True
    y = residual_add(block, branch_output, x, x)
    assert y is branch_output and np.array_equal(y, 3 * x)
    z = residual_add(block, x, x, x)  # the branch returned x: a new array, x untouched
    assert z is not x and np.array_equal(x, np.arange(6.0).reshape(1, 6, 1, 1))
    np.testing.assert_array_equal(z, 2 * x)


def test_snapshot_sees_every_kind_of_change():
    rng = np.random.default_rng(6)
    weights = rng.standard_normal((3, 70_000)).astype(np.float32)  # several chunks
    arrays = [weights, np.array([np.nan, 1.0]), np.array(5, dtype=np.int64), np.zeros(3, np.int16)]
    snapshot = Snapshot(arrays)
    assert snapshot.holds(arrays)  # NaN still NaN
    for change in (
        lambda: weights.__setitem__((2, 69_999), weights[2, 69_999] + 1e-3),  # the last element
        lambda: weights[1].__setitem__([7, 65_540], weights[1, [65_540, 7]]),  # a swap
        lambda: arrays[2].__setitem__((), 6),  # BN's counter
        lambda: arrays[3].__setitem__(0, 1),  # an array the bit views do not cover
    ):
        before = [a.copy() for a in arrays]
        change()
        assert not snapshot.holds(arrays)
        for array, old in zip(arrays, before, strict=True):
            array[...] = old
        assert snapshot.holds(arrays)
    assert not snapshot.holds([weights.copy(), *arrays[1:]])  # another array object


def test_a_model_with_a_fast_copy_deep_copies_and_fuses():
    import copy

    model = make("mobilenet_v1", dict(width_mult=0.25), np.float64, "reference")
    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32))
    y = model(x)
    assert "_fast_eval_state" in model.__dict__
    twin = copy.deepcopy(model)
    assert "_fast_eval_state" not in twin.__dict__
    np.testing.assert_array_equal(twin(x), y)
    np.testing.assert_allclose(sn.models.fuse(model)(x), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "snapshotted"), [("mobilenet_v2", False), ("ghostnetv3_100", True)]
)
def test_only_derived_weights_are_snapshotted(name, snapshotted):
    """The copy uses the model's own arrays (BN applied from its live statistics), so nothing
    is copied or compared per forward, except the branch weights GhostNetV3 sums into new ones."""
    model = make(name, dict(width_mult=0.25), np.float32)
    model(np.zeros((1, 3, 64, 64), np.float32))
    arrays, _, derived, copy = model.__dict__["_fast_eval_state"]
    assert bool(derived) == snapshotted
    shared = {id(p.data) for p in copy.parameters()}
    derived_ids = {id(d) for d in derived}
    assert all(id(p.data) in shared for p in model.parameters() if id(p.data) not in derived_ids)
