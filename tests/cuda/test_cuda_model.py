"""A whole training step on the cuda backend equals the same step on the reference backend.

A small MobileNet-style stack (Conv-BN-ReLU6, depthwise Conv-BN-ReLU6, pointwise Conv, global
pooling, Linear) moved with ``.to("cuda")``: forward, cross-entropy, backward, then the loss,
every parameter gradient and the BN running statistics are compared with the reference backend
in float64. MobileNetV2 itself runs on a real GPU only (under the simulator it would take hours).
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import scratchnets as sn
from scratchnets import to_numpy
from scratchnets.arrays import is_device_array
from tests.cuda import SIMULATED
from tests.helpers import assert_close_f64, record_error

pytestmark = pytest.mark.cuda


def tiny_mobile_net(rng_seed: int) -> sn.nn.Module:
    nn, rng = sn.nn, np.random.default_rng(rng_seed)
    return sn.nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False, rng=rng, dtype=np.float64),
        nn.BatchNorm2d(4, dtype=np.float64),
        nn.ReLU6(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False, rng=rng, dtype=np.float64),
        nn.BatchNorm2d(4, dtype=np.float64),
        nn.ReLU6(),
        nn.Conv2d(4, 6, 1, bias=True, rng=rng, dtype=np.float64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3, rng=rng, dtype=np.float64),
    )


def train_step(model, x, target, backend: str):
    """One forward + loss + backward on ``backend``; returns (loss, {name: grad}, state)."""
    model.to(backend)
    model.train()
    model.zero_grad()
    criterion = sn.nn.CrossEntropyLoss(label_smoothing=0.1).to(backend)
    inputs = cuda.to_device(x) if backend == "cuda" else x
    logits = model(inputs)
    assert is_device_array(logits) == (backend == "cuda")
    loss = criterion(logits, target)
    model.backward(criterion.backward())
    grads = {name: to_numpy(p.grad) for name, p in model.named_parameters()}
    return loss, grads, model.state_dict()


def compare_steps(make_model, x, target, what: str):
    loss_ref, grads_ref, state_ref = train_step(make_model(), x, target, "reference")
    loss, grads, state = train_step(make_model(), x, target, "cuda")
    record_error(f"cuda/{what} loss (vs reference)", np.asarray(loss), np.asarray(loss_ref))
    assert_close_f64(np.asarray(loss), np.asarray(loss_ref), what="loss")
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        record_error(f"cuda/{what} grads (vs reference)", grad, grads_ref[name])
        assert_close_f64(grad, grads_ref[name], what=f"grad of {name}")
    for name, value in state.items():  # running statistics were updated on the device
        assert_close_f64(value, state_ref[name], what=f"state {name}")


def test_tiny_mobile_net_step_matches_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6))
    compare_steps(lambda: tiny_mobile_net(1), x, np.array([0, 2]), "tiny model")


@pytest.mark.skipif(SIMULATED, reason="MobileNetV2 needs millions of simulated threads")
def test_mobilenet_v2_step_matches_reference():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32))

    def make():
        return sn.models.create("mobilenet_v2", num_classes=10, width_mult=0.35, rng=0).to(
            dtype=np.float64
        )

    compare_steps(make, x, np.array([3, 7]), "mobilenet_v2")


@pytest.mark.parametrize(
    "make, shape",
    [
        (
            lambda rng: sn.nn.Conv2d(
                2, 3, 3, padding=1, padding_mode="reflect", rng=rng, dtype=np.float64
            ),
            (2, 4, 5),
        ),  # fmt: skip
        (lambda rng: sn.nn.MaxPool2d(2), (2, 4, 4)),
        (lambda rng: sn.nn.Linear(4, 3, rng=rng, dtype=np.float64), (2, 2, 4)),
    ],
)
def test_unbatched_inputs_and_padding_modes_on_the_device(make, shape):
    """torch's unbatched (C, H, W) and (*, in) inputs and Conv2d's padding_mode on cuda equal
    the reference backend (forward, dx and parameter gradients)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    ours, ref = make(np.random.default_rng(1)).to("cuda"), make(np.random.default_rng(1))
    y = ours(cuda.to_device(x))
    y_ref = ref(x)
    assert is_device_array(y) and tuple(y.shape) == y_ref.shape
    dy = rng.standard_normal(y_ref.shape)
    dx = ours.backward(cuda.to_device(dy))
    assert_close_f64(y, y_ref, what="y")
    assert_close_f64(dx, ref.backward(dy), what="dx")
    for (name, p), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert_close_f64(p.grad, p_ref.grad, what=f"d{name}")


@pytest.mark.parametrize(
    "options, batch",
    [(dict(affine=False), 2), (dict(bias=False), 2), (dict(track_running_stats=False), 2), ({}, 0)],
)
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_options_on_the_device(options, batch, training):
    """BatchNorm2d without affine terms, without running statistics, and on an empty batch, on
    cuda, equal the reference backend (y, dx, parameter gradients, running statistics)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 2, 3)) + 1
    ours = sn.nn.BatchNorm2d(3, **options, dtype=np.float64).to("cuda").train(training)
    ref = sn.nn.BatchNorm2d(3, **options, dtype=np.float64).train(training)
    y, y_ref = ours(cuda.to_device(x)), ref(x)
    dy = rng.standard_normal(y_ref.shape)
    assert_close_f64(y, y_ref, what="y")
    assert_close_f64(ours.backward(cuda.to_device(dy)), ref.backward(dy), what="dx")
    for (name, p), (_, p_ref) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert_close_f64(p.grad, p_ref.grad, what=f"d{name}")
    for name, buffer in ref.named_buffers():
        assert_close_f64(getattr(ours, name), buffer, what=name)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: sn.nn.MaxPool2d(3, 2, 1, return_indices=True), (1, 2, 5, 4)),
        (lambda: sn.nn.AdaptiveMaxPool2d(2, return_indices=True), (2, 3, 3)),  # unbatched
    ],
)
def test_return_indices_on_the_device(make, shape):
    """The indices of ``return_indices`` on cuda equal the reference's (a device int64 array)."""
    x = np.round(np.random.default_rng(0).standard_normal(shape) * 2)  # ties: first maximum
    y, indices = make().to("cuda")(cuda.to_device(x))
    y_ref, indices_ref = make()(x)
    assert is_device_array(indices) and np.dtype(indices.dtype) == np.int64
    np.testing.assert_array_equal(indices.copy_to_host(), indices_ref)
    assert_close_f64(y, y_ref, what="y")
