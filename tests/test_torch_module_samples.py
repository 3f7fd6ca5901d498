"""PyTorch's own layer samples: every sample input that torch's module test suite feeds to the
layers we have (``torch.testing._internal.common_modules.module_db``, and the Conv2d cases of the
older ``common_nn`` module tests) runs on our layer and matches.

Each sample is built with the same constructor arguments as torch's (float64, our layer's
``dtype`` where it has one), the torch layer's parameters and buffers copied in, then run in the
mode the sample was made for (train / eval) on the reference and cpu backends: the output, dx
for a random upstream gradient, every parameter gradient and every buffer afterwards (running
statistics, num_batches_tracked) equal torch's within 1e-9 relative. The cpu backend runs every
sample again in float32, against torch's float64 within the scaled float32 bound
(``_Checker``); tests/cuda/test_cuda_module_samples.py runs each layer's first sample on cuda.
So "matches PyTorch" also rests on PyTorch's inputs, not only on our hypothesis strategies.

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
from tests.helpers import assert_close_f32, assert_close_f64, torch_grads

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


def _amax(a) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64)), initial=0.0))


class _Checker:
    """Compares one sample's results with torch's: float64 within 1e-9 relative; float32 with
    ``assert_close_f32`` against the float64 oracle. Its error model needs R, the most terms in
    one sum: bounded here by the largest of x, y and the parameters (a conv sums a window of
    x * w, a BN or a parameter gradient sums over the batch, a pool over its window), and each
    term's size: for y max|x| * max|w| + max|b|, for dx max|dy| * max|w|, for a parameter
    gradient max|dy| * max(|x|, |y|); never below the largest expected value itself (a BN's
    normalised terms)."""

    def __init__(self, dtype, x, yt, dy, params):
        self.dtype = dtype
        self.terms = max(x.size, yt.numel(), *(p.numel() for p in params), 1)
        w = max([1.0] + [_amax(p.detach()) for p in params if p.dim() > 1])
        b = max([0.0] + [_amax(p.detach()) for p in params if p.dim() == 1])
        self.sizes = {
            "y": _amax(x) * w + b,
            "dx": _amax(dy) * w,
            "param": _amax(dy) * max(_amax(x), _amax(yt.detach())),
        }

    def __call__(self, actual, expected, what: str, kind: str):
        actual = sn.to_numpy(actual)
        if self.dtype == np.float64:
            assert actual.dtype == np.float64, what
            assert_close_f64(actual, expected, rtol=1e-9, what=what)
        else:
            assert actual.dtype == np.float32, what
            size = max(self.sizes[kind], _amax(expected))
            assert_close_f32(actual, expected, self.terms, size, what)


def _on(backend: str, a: np.ndarray):
    """``a`` where the backend's layers take it: a device array on cuda."""
    if backend != "cuda":
        return a
    from numba import cuda

    return cuda.to_device(a)


def _compare(name, args, kwargs, backend, training, x, seed, dtype=np.float64):
    """Our layer and torch's, built alike, on the same input x (a float64 tensor): y, dx,
    parameter gradients and buffers afterwards. Ours runs in ``dtype`` (float64: within 1e-9
    relative; float32: against torch's float64 within the scaled float32 bound, ``_Checker``)."""
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(*args, **kwargs).double().train(training)
    ours = _build_ours(name, args, kwargs, "reference").train(training)
    state = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()}
    if state:
        ours.load_state_dict(state)
    ours.to(backend, dtype=dtype)
    xt = x.detach().clone().requires_grad_(True)
    yt = theirs(xt)
    y = ours(_on(backend, xt.detach().numpy().astype(dtype)))
    if isinstance(yt, tuple):  # (y, indices) of return_indices: torch's indices exactly
        (yt, indices_t), (y, indices) = yt, y
        np.testing.assert_array_equal(sn.to_numpy(indices), indices_t.numpy())
    assert tuple(y.shape) == tuple(yt.shape), f"shape {y.shape} != torch's {tuple(yt.shape)}"
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal(y.shape)
    params = list(theirs.parameters())
    check = _Checker(dtype, xt.detach().numpy(), yt, dy, params)
    check(y, yt.detach().numpy(), "y", "y")
    expected = torch_grads(yt, [xt, *params], dy)
    check(ours.backward(_on(backend, dy.astype(dtype))), expected[0], "dx", "dx")
    for (param_name, param), grad in zip(ours.named_parameters(), expected[1:], strict=True):
        grad = np.zeros(param.data.shape) if grad is None else grad
        check(param.grad, grad, f"d{param_name}", "param")
    for buffer_name, buffer in theirs.named_buffers():
        ours_buffer = sn.to_numpy(getattr(ours, buffer_name))
        if buffer.dtype.is_floating_point:
            check(ours_buffer, buffer.numpy(), buffer_name, "y")
        else:  # num_batches_tracked
            np.testing.assert_array_equal(ours_buffer, buffer.numpy(), err_msg=buffer_name)


def _run_sample(name: str, training: bool, index: int, backend: str, dtype=np.float64):
    sample = _sample(name, training, index)
    inputs = [*sample.forward_input.args, *sample.forward_input.kwargs.values()]
    assert len(inputs) == 1, f"one input expected, got {len(inputs)}"
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    _compare(name, args, kwargs, backend, training, inputs[0], index, dtype)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name, training, index", SAMPLES)
def test_module_db_sample_matches_torch(backend, name, training, index):
    _run_sample(name, training, index, backend)


@pytest.mark.parametrize("name, training, index", SAMPLES)
def test_module_db_sample_in_float32_on_cpu_matches_the_float64_oracle(name, training, index):
    _run_sample(name, training, index, "cpu", np.float32)


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
