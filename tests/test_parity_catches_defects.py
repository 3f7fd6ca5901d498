"""The float32 model parity check can fail: each test injects one plausible defect into the
reference backend (or the TF "same" padding rule) and asserts that ``check_parity`` rejects the
model that the unmodified parity tests in ``test_models_mobilenet.py`` accept, with the same
model, input and upstream gradient. A tolerance loose enough to pass these would be no check.
Measured margins: dx off by 3.2 (BN) and 1.2 (depthwise) relative where 3.4e-3 is allowed; the
bias gradient off by 1.0 where 4.5e-6 is allowed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import scratchnets.reference as reference
from scratchnets.models import blocks
from tests.model_twins import check_parity, torch_twin
from tests.test_models_mobilenet import _keras_twin, make_model

pytestmark = [pytest.mark.torch_models, pytest.mark.float32_parity]

#: the float32 MobileNetV2 case of test_float32_parity_with_float64_twin
NAME, WIDTH, SIZE, CLASSES = "mobilenet_v2", 0.35, 48, 7
EXACT_TF_SAME_PADDING = blocks.tf_same_padding


def assert_parity_fails(model, twin, size: int, match: str) -> None:
    x = np.random.default_rng(4).standard_normal((2, 3, size, size))
    with pytest.raises(AssertionError, match=match):
        check_parity(model, twin, x, np.random.default_rng(5), "defect f32")


def mobilenet_v2_case():
    return make_model(NAME, WIDTH, CLASSES, np.float32), torch_twin(NAME, CLASSES, WIDTH)


def test_dropped_variance_term_in_batch_norm_backward(monkeypatch):
    """dx = gamma / (sigma M) (M dy - sum(dy)), forgetting the path through the variance."""
    exact = reference.batch_norm2d_backward

    def defective(dy, cache):
        dx, dweight, dbias = exact(dy, cache)
        xhat, gamma, inv_std, training, _ = cache
        if training:
            m = xhat.size // xhat.shape[1]
            scale = (gamma * inv_std / m).reshape(1, -1, 1, 1)
            dx = dx + scale * xhat * dweight.reshape(1, -1, 1, 1)
        return dx, dweight, dbias

    monkeypatch.setattr(reference, "batch_norm2d_backward", defective)
    assert_parity_fails(*mobilenet_v2_case(), SIZE, r"\ndx: relative error")


def test_unflipped_kernel_in_depthwise_backward(monkeypatch):
    """The depthwise convolutions' dx as a full correlation with the kernel itself instead of
    the flipped kernel (dw, which does not use the kernel, stays right)."""
    exact = reference.conv2d_backward

    def defective(dy, cache):
        g = cache.geometry
        if g.groups > 1 and g.groups == g.in_channels and g.kernel != (1, 1):
            cache = dataclasses.replace(cache, w=cache.w[:, :, ::-1, ::-1])
        return exact(dy, cache)

    monkeypatch.setattr(reference, "conv2d_backward", defective)
    assert_parity_fails(*mobilenet_v2_case(), SIZE, r"\ndx: relative error")


def test_missing_bias_gradient(monkeypatch):
    """The classifier's bias gets no gradient."""
    exact = reference.linear_backward

    def defective(dy, cache):
        dx, dw, db = exact(dy, cache)
        return dx, dw, None if db is None else np.zeros_like(db)

    monkeypatch.setattr(reference, "linear_backward", defective)
    assert_parity_fails(*mobilenet_v2_case(), SIZE, r"grad classifier\.1\.bias")


def test_off_by_one_tf_same_padding(monkeypatch):
    """TF "same" padding with the odd pixel at the top / left (PyTorch's habit) instead of the
    bottom / right, in the Keras-style MobileNetV2; the twin keeps TF's rule. A forward defect:
    the first ReLU6 already sees inputs far from any kink switched, which the replay rejects."""
    twin = _keras_twin(0.5, CLASSES)  # the width at which Keras and torchvision agree
    monkeypatch.setattr(blocks, "tf_same_padding", lambda *a: EXACT_TF_SAME_PADDING(*a)[::-1])
    model = make_model(NAME, 0.5, CLASSES, np.float32, keras_style=True)
    assert_parity_fails(model, twin, 46, r"overrules an input .* from its kink")
