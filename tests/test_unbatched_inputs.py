"""torch's unbatched inputs: (C, H, W) to the image layers, (in,) and (*, in) to Linear.

Each layer built like its torch twin (same constructor arguments, torch's weights loaded), on the
reference and cpu backends in float64: output, dx and parameter gradients of an unbatched input
equal torch's (which runs the same input unbatched), and the shapes carry no batch axis.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scratchnets as sn
from tests.helpers import assert_close_f64, t, torch_grads

LAYERS = [
    ("Conv2d", (3, 4, 3), dict(padding=1), (3, 5, 6)),
    ("Conv2d", (4, 4, 3), dict(stride=2, groups=4, padding_mode="circular", padding=1), (4, 5, 5)),
    ("MaxPool2d", (2,), {}, (3, 4, 5)),
    ("AvgPool2d", (3, 2, 1), {}, (3, 5, 5)),
    ("AdaptiveAvgPool2d", (1,), {}, (3, 5, 4)),
    ("ReflectionPad2d", ((1, 2, 0, 1),), {}, (2, 3, 4)),
    ("Linear", (5, 3), {}, (5,)),
    ("Linear", (5, 3), {}, (2, 4, 5)),
    ("Linear", (5, 3), dict(bias=False), (1, 2, 3, 5)),
]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name, args, kwargs, shape", LAYERS)
def test_unbatched_and_leading_axes_match_torch(backend, name, args, kwargs, shape):
    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(*args, **kwargs).double()
    has_dtype = name in ("Conv2d", "Linear")
    ours = getattr(sn.nn, name)(*args, **kwargs, **({"dtype": np.float64} if has_dtype else {}))
    ours = ours.to(backend)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    xt = t(x, True)
    yt = theirs(xt)
    y = ours(x)
    assert y.shape == tuple(yt.shape)
    assert_close_f64(y, yt.detach().numpy(), what=f"{name} y")
    dy = rng.standard_normal(y.shape)
    params = [p for p in theirs.parameters()]
    expected = torch_grads(yt, [xt, *params], dy)
    dx = ours.backward(dy)
    assert dx.shape == x.shape
    assert_close_f64(dx, expected[0], what=f"{name} dx")
    for (param_name, param), grad in zip(ours.named_parameters(), expected[1:], strict=True):
        assert_close_f64(param.grad, grad, what=f"{name} d{param_name}")


def test_a_batched_forward_after_an_unbatched_one_keeps_its_batch_axis():
    conv = sn.nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4))
    assert conv(x[0]).shape == (3, 4, 4)
    y = conv(x)
    assert y.shape == (2, 3, 4, 4)
    assert conv.backward(np.ones_like(y)).shape == x.shape


@pytest.mark.parametrize(
    "layer, shape, message",
    [
        (
            lambda: sn.nn.Conv2d(3, 4, 3),
            (3, 5),
            r"shape \(N, 3, H, W\) or \(3, H, W\), got \(3, 5\)",
        ),
        (lambda: sn.nn.Conv2d(3, 4, 3), (4, 5, 5), r"or \(3, H, W\), got \(4, 5, 5\)"),
        (lambda: sn.nn.MaxPool2d(2), (5, 5), r"shape \(N, C, H, W\) or \(C, H, W\)"),
        (lambda: sn.nn.Linear(5, 3), (2, 4), r"expects an input of shape \(\*, 5\), got \(2, 4\)"),
    ],
)
def test_other_ranks_are_refused_naming_the_expected_shape(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer()(np.zeros(shape, np.float32))
