"""BatchNorm2d's torch options: affine=False, bias=False, track_running_stats=False, empty batches.

Each configuration is built like its torch twin on the reference and cpu backends in float64,
run in train and in eval mode, and compared with torch: y, dx, the parameter gradients, the
running statistics and num_batches_tracked afterwards (random upstream gradient).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import scratchnets as sn
from scratchnets.models.fuse import fold_bn
from tests.helpers import assert_close_f64, t, torch_grads

OPTIONS = [
    dict(affine=affine, track_running_stats=track, bias=bias)
    for affine, track, bias in itertools.product([True, False], repeat=3)
    if affine or bias  # torch: bias=False only means something with affine
]


def twins(options, backend):
    torch.manual_seed(0)
    theirs = torch.nn.BatchNorm2d(3, momentum=0.3, **options).double()
    ours = sn.nn.BatchNorm2d(3, momentum=0.3, **options, dtype=np.float64).to(backend)
    with torch.no_grad():  # non-trivial weights and statistics
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
        if theirs.running_mean is not None:
            theirs.running_mean.uniform_(-1, 1)
            theirs.running_var.uniform_(0.5, 2)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
@pytest.mark.parametrize("batch", [2, 0])
def test_batchnorm_options_match_torch(backend, training, options, batch):
    ours, theirs = twins(options, backend)
    ours.train(training), theirs.train(training)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, 3, 4, 5)) * 2 + 1
    xt = t(x, True)
    yt = theirs(xt)
    y = ours(x)
    assert y.shape == tuple(yt.shape)
    assert_close_f64(y, yt.detach().numpy(), what="y")
    dy = rng.standard_normal(y.shape)
    params = list(theirs.parameters())
    expected = torch_grads(yt, [xt, *params], dy)
    assert_close_f64(ours.backward(dy), expected[0], what="dx")
    for (name, p), grad in zip(ours.named_parameters(), expected[1:], strict=True):
        assert_close_f64(p.grad, np.zeros(3) if grad is None else grad, what=f"d{name}")
    for name, buffer in theirs.named_buffers():
        np.testing.assert_allclose(getattr(ours, name), buffer.numpy(), rtol=0, atol=1e-12)
    if theirs.running_mean is None:
        assert ours.running_mean is None and ours.running_var is None


def test_without_running_statistics_eval_uses_the_batch():
    bn = sn.nn.BatchNorm2d(2, track_running_stats=False, dtype=np.float64).eval()
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)) * 5 + 3
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-3)


def test_fold_bn_refuses_batch_statistics_and_handles_no_affine():
    conv = sn.nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate", dtype=np.float64)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fold_bn(conv, sn.nn.BatchNorm2d(3, track_running_stats=False, dtype=np.float64))
    bn = sn.nn.BatchNorm2d(3, affine=False, dtype=np.float64)
    bn.running_mean[...] = [0.5, -1, 2]
    bn.running_var[...] = [2, 0.5, 1]
    conv.eval(), bn.eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    fused = fold_bn(conv, bn)
    assert fused.padding_mode == "replicate"
    np.testing.assert_allclose(fused(x), bn(conv(x)), rtol=0, atol=1e-12)
