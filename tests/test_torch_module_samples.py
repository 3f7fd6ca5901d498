"""PyTorch's own layer samples: every sample input that torch's module test suite feeds to the
layers we have (``torch.testing._internal.common_modules.module_db``, and the Conv2d cases of the
older ``common_nn`` module tests) runs on our layer and matches.

Each sample is built with the same constructor arguments as torch's (float64, our layer's
``dtype`` where it has one), the torch layer's parameters and buffers copied in, then run in the
mode the sample was made for (train / eval) on the reference and cpu backends: the output, dx
for a random upstream gradient, every parameter gradient and every buffer afterwards (running
statistics, num_batches_tracked) equal torch's within 1e-9 relative. So "matches PyTorch" also
rests on PyTorch's inputs, not only on our hypothesis strategies.

A sample of an option we do not support yet is listed in ``NOT_YET`` and marked xfail(strict):
it must fail (with an error naming the option) until the option lands, and the test turns red
the day it passes so that the list shrinks. A sample torch adds later fails naming its argument
(our constructors reject unknown keywords by name).
"""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np
import pytest
import torch

import scratchnets as sn
from tests.helpers import assert_close_f64, torch_grads

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("stub"))
common_modules = pytest.importorskip(
    "torch.testing._internal.common_modules", reason="needs expecttest (pip install expecttest)"
)
from torch.testing._internal import common_nn  # noqa: E402  (after the importorskip above)

#: torch layer name -> ours (same name in scratchnets.nn)
LAYERS = [
    "Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "ReLU", "ReLU6", "Sigmoid", "Hardsigmoid", "Hardswish", "SiLU", "Linear", "Flatten",
    "Identity", "ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d",
    "CircularPad2d",
]  # fmt: skip

#: (layer, sample description) -> the option that is still missing (issue 28)
NOT_YET: dict[tuple[str, str], str] = {}


def _samples():
    """(layer, mode, index, description) of every module_db sample of the layers we have."""
    cases = []
    for info in common_modules.module_db:
        name = info.module_cls.__name__
        if name not in LAYERS:
            continue
        for training in (True, False):
            samples = info.module_inputs_func(
                info, device="cpu", dtype=torch.float64, requires_grad=True, training=training
            )
            for index, sample in enumerate(samples):
                mode = "train" if training else "eval"
                reason = NOT_YET.get((name, sample.desc))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                case_id = f"{name}-{sample.desc or 'default'}-{mode}-{index}"
                cases.append(pytest.param(name, training, index, marks=marks, id=case_id))
    return cases


SAMPLES = _samples()


def _sample(name: str, training: bool, index: int):
    info = next(i for i in common_modules.module_db if i.module_cls.__name__ == name)
    samples = info.module_inputs_func(
        info, device="cpu", dtype=torch.float64, requires_grad=True, training=training
    )
    return list(samples)[index]


def _build_ours(name: str, args, kwargs, backend: str):
    cls = getattr(sn.nn, name)
    if "dtype" in inspect.signature(cls.__init__).parameters:
        kwargs = {**kwargs, "dtype": np.float64}
    return cls(*args, **kwargs).to(backend)


def _compare(name, args, kwargs, backend, training, x, seed):
    """Our layer and torch's, built alike, on the same input x (a float64 tensor): y, dx,
    parameter gradients and buffers afterwards within 1e-9 relative."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(*args, **kwargs).double().train(training)
    ours = _build_ours(name, args, kwargs, backend).train(training)
    state = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()}
    if state:
        ours.load_state_dict(state)
    xt = x.detach().clone().requires_grad_(True)
    yt = theirs(xt)
    y = ours(xt.detach().numpy().copy())
    if isinstance(yt, tuple):  # (y, indices) of return_indices: torch's indices exactly
        (yt, indices_t), (y, indices) = yt, y
        np.testing.assert_array_equal(indices, indices_t.numpy())
    assert y.shape == tuple(yt.shape), f"shape {y.shape} != torch's {tuple(yt.shape)}"
    assert_close_f64(y, yt.detach().numpy(), rtol=1e-9, what="y")
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal(y.shape)
    params = list(theirs.parameters())
    expected = torch_grads(yt, [xt, *params], dy)
    assert_close_f64(ours.backward(dy), expected[0], rtol=1e-9, what="dx")
    for (param_name, param), grad in zip(ours.named_parameters(), expected[1:], strict=True):
        grad = np.zeros(param.data.shape) if grad is None else grad
        assert_close_f64(param.grad, grad, rtol=1e-9, what=f"d{param_name}")
    for buffer_name, buffer in theirs.named_buffers():
        np.testing.assert_allclose(
            getattr(ours, buffer_name), buffer.numpy(), rtol=1e-9, atol=1e-12, err_msg=buffer_name
        )


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name, training, index", SAMPLES)
def test_module_db_sample_matches_torch(backend, name, training, index):
    sample = _sample(name, training, index)
    inputs = [*sample.forward_input.args, *sample.forward_input.kwargs.values()]
    assert len(inputs) == 1, f"one input expected, got {len(inputs)}"
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    _compare(name, args, kwargs, backend, training, inputs[0], seed=index)


#: common_nn's module tests of Conv2d (the older suite torch still runs): constructor arguments
#: and an input size each
COMMON_NN_CONV2D = [
    case
    for case in common_nn.module_tests + common_nn.get_new_module_tests()
    if case.get("module_name") == "Conv2d"
]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "case", COMMON_NN_CONV2D, ids=[c.get("desc", "default") for c in COMMON_NN_CONV2D]
)
def test_common_nn_conv2d_case_matches_torch(backend, training, case):
    x = torch.randn(case["input_size"], generator=torch.Generator().manual_seed(1))
    _compare("Conv2d", case["constructor_args"], {}, backend, training, x.double(), seed=2)


def test_every_layer_of_the_list_has_samples_or_is_absent_from_module_db():
    """The samples cover the layers module_db knows; a layer that disappears from it is noticed."""
    covered = {param.values[0] for param in SAMPLES}
    assert {"Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "Linear", "SiLU"} <= covered
