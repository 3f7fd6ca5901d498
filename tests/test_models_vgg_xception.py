"""VGG16 (torchvision ``vgg16`` / ``vgg16_bn``) and Xception (timm ``legacy_xception``) against
their genuine twins, plus the any-size adaptive average pool VGG's head needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import scratchnets as sn
from scratchnets.nn import AdaptiveAvgPool2d, BatchNorm2d
from scratchnets.reference.pooling import adaptive_windows
from tests.helpers import assert_close_f64, record_error, t, torch_grads
from tests.model_twins import BACKENDS, assert_same_layout, check_parity, randomize_bn, torch_twin

pytestmark = pytest.mark.torch_models


def parameter_count(model) -> int:
    return sum(p.data.size for p in model.parameters())


@pytest.mark.slow
def test_vgg16_count_layout_and_float64_parity():
    """138,357,544 parameters, torchvision's names; one eval and one train forward/backward at
    32x32 (the feature map ends at 1x1 and the adaptive pool repeats it to 7x7), dropout off."""
    model = sn.models.create("vgg16", rng=0, dtype=np.float64, dropout=0.0).to("reference")
    assert parameter_count(model) == 138_357_544
    twin = torch_twin("vgg16")
    assert_same_layout(model, twin)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    check_parity(model, twin, x, np.random.default_rng(2), "reference/vgg16 f64")


@pytest.mark.slow
def test_vgg16_bn_count_layout_and_fuse():
    """138,365,992 parameters, torchvision's names; all 13 conv/BN pairs fold (float32)."""
    model = sn.models.create("vgg16_bn", rng=0).to("reference")
    assert parameter_count(model) == 138_365_992
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        assert_same_layout(model, torch_twin("vgg16_bn", dtype=torch.float32))
    randomize_bn(model, np.random.default_rng(3))
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = model.eval()(x)
    fused = sn.models.fuse(model, inplace=True)
    assert not any(isinstance(m, BatchNorm2d) for m in fused.modules())
    err = record_error("reference/vgg16_bn fuse float32", fused(x), expected)
    assert err <= 1e-5 * max(1.0, float(np.max(np.abs(expected))))


@pytest.mark.slow
def test_xception_count_layout_and_float64_parity():
    """22,855,952 parameters, timm's names; eval and train at 71x71, the smallest input Keras
    accepts (35, 33, 17, 9, 5, 3 through the flows). Reference backend only (the MobileNet tests
    cover the cpu backend): torch's float64 grouped convolutions make this oracle slow."""
    model = sn.models.create("xception", rng=0, dtype=np.float64).to("reference")
    assert parameter_count(model) == 22_855_952
    twin = torch_twin("xception")
    assert_same_layout(model, twin)
    randomize_bn(model, np.random.default_rng(5))
    x = np.random.default_rng(6).standard_normal((2, 3, 71, 71))
    check_parity(model, twin, x, np.random.default_rng(7), "reference/xception f64")


@pytest.mark.slow
def test_xception_fuse_equals_eval_model():
    """Stem, every separable conv's pointwise conv and the conv shortcuts fold (odd input)."""
    model = sn.models.create("xception", 4, rng=0, dtype=np.float64).to("reference")
    randomize_bn(model, np.random.default_rng(8))
    x = np.random.default_rng(9).standard_normal((1, 3, 75, 80))
    expected = model.eval()(x)
    fused = sn.models.fuse(model)
    assert not any(isinstance(m, BatchNorm2d) for m in fused.modules())
    err = record_error("reference/xception fuse float64", fused(x), expected)
    assert err <= 1e-10


def test_fixed_width_models_refuse_width_mult():
    with pytest.raises(ValueError, match="fixed width"):
        sn.models.create("xception", width_mult=0.5)


# ------------------------------------------------------------------ adaptive average pool


@settings(max_examples=25)
@given(
    in_size=st.tuples(st.integers(1, 11), st.integers(1, 11)),
    out_size=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    seed=st.integers(0, 2**16),
)
def test_adaptive_avg_pool_matches_torch(in_size, out_size, seed):
    """Any in/out sizes (shrinking, growing, not dividing): forward and backward equal
    ``F.adaptive_avg_pool2d`` in float64."""
    rng = np.random.default_rng(seed)
    pool = AdaptiveAvgPool2d(out_size)
    x = rng.standard_normal((2, 3, *in_size))
    y = pool(x)
    xt = t(x, requires_grad=True)
    yt = F.adaptive_avg_pool2d(xt, out_size)
    dy = rng.standard_normal(y.shape)
    (dx_t,) = torch_grads(yt, [xt], dy)
    assert_close_f64(y, yt.detach().numpy(), what="y")
    record_error("reference/adaptive_avg_pool2d dx", pool.backward(dy), dx_t)
    assert_close_f64(pool.backward(dy), dx_t, what="dx")


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_avg_pool_float32_on_backends(backend):
    rng = np.random.default_rng(8)
    pool = AdaptiveAvgPool2d((7, 7)).to(backend)
    x = rng.standard_normal((2, 4, 10, 3)).astype(np.float32)
    y = pool(x)
    assert y.dtype == np.float32
    expected = F.adaptive_avg_pool2d(t(x), (7, 7)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_adaptive_windows_are_torch_bins():
    start, end = adaptive_windows(5, 3)  # bins [0, 2), [1, 4), [3, 5)
    assert list(zip(start.tolist(), end.tolist(), strict=True)) == [(0, 2), (1, 4), (3, 5)]
