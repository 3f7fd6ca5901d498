"""Receptive fields from the recurrence (``scratchnets.explain.receptive``) against a brute-force
measurement, for every model and every layer.

The measurement: every weight positive, an input of ones in float64, the weights scaled so
that no ReLU6, sigmoid or hard-sigmoid saturates (``positive_model``). A batch holds the input
once as is and once per image row (and column) with that row raised by 1; the rows whose raise
changes the centre unit (by more than rounding) of a layer's output are exactly the rows with a non-zero derivative for
it (with positive weights nothing cancels, and a raised cell of a max-pooling window of ties
wins). Their first and last must equal the recurrence's field of that unit clipped to the image.
"""

from __future__ import annotations

import numpy as np
import pytest

from scratchnets import nn
from scratchnets.explain.receptive import receptive_fields
from scratchnets.models import create, list_models
from scratchnets.models.ghostnet import SqueezeExcite
from scratchnets.profile.summary import ForwardSwap

#: every conv's mean output on the constant input (``positive_model``)
LEVEL = 0.25

#: input size per model: small enough for a float64 batch of 1 + H + W images on two cores
RESOLUTION = {"vgg16": 32, "vgg16_bn": 32, "xception": 71}


def positive_model(name: str, resolution: int):
    return positive(create(name, dtype=np.float64, init=False), resolution)


def positive(model, resolution: int):
    """``model`` in float64 on the cpu backend with positive weights scaled on the constant input
    so that every conv / linear output channel averages ``LEVEL``; biases 0, every BN the
    identity. The activations then stay inside every nonlinearity's linear range however deep the
    residual stream or however many branches a block adds up (GhostNetV3's re-parameterisation
    sums five; the TF MobileNetV2 has no BN to rescale)."""
    weighted = []
    for module in model.modules():
        for param_name, param in module._parameters.items():
            if param is not None:
                gamma = isinstance(module, nn.BatchNorm2d) and param_name == "weight"
                param.data[...] = 1.0 if param.data.ndim >= 2 or gamma else 0.0
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean[...] = 0.0
            module.running_var[...] = 1.0 - module.eps
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            weighted.append(module)
    model.fast_eval = False  # run the layers themselves, not the fused inference copy
    model.to("cpu", dtype=np.float64).eval()

    def calibrating(layer, forward):
        def calibrated(x):
            y = forward(x)
            mean = y.mean(axis=(0, 2, 3) if y.ndim == 4 else 0)  # per output channel
            layer.weight.data *= (LEVEL / mean).reshape(-1, *[1] * (layer.weight.data.ndim - 1))
            return forward(x)

        return calibrated

    for layer in weighted:
        layer.forward = calibrating(layer, layer.forward)
    model(np.full((1, 3, resolution, resolution), 1.0))
    for layer in weighted:
        del layer.__dict__["forward"]
    return model


class _Done(Exception):
    """Raised after the last layer with a spatial output: the classifier is not needed."""


def measured_fields(model, resolution: int, layers: int) -> list[tuple[tuple, tuple]]:
    """For the first ``layers`` leaf outputs with a spatial map: the (first, last) image row and
    column whose raise changes the centre unit (any of its channels: a concat's channels come
    from different branches, the field is their union)."""
    R = resolution
    x = np.ones((1 + 2 * R, 3, R, R))
    for i in range(R):
        x[1 + i, :, i, :] += 1.0  # raise row i
        x[1 + R + i, :, :, i] += 1.0  # raise column i
    found = []

    def wrap(name, module, forward):
        if any(True for _ in module.children()):
            return None

        def recorded(*args, **kwargs):
            out = forward(*args, **kwargs)
            if isinstance(out, np.ndarray) and out.ndim == 4:
                p, q = out.shape[2] // 2, out.shape[3] // 2
                # a real change is at least ~1e-9 relative here; the kernels' summation order
                # may differ between batch positions by a rounding (1e-16)
                change = np.abs(out[1:, :, p, q] - out[0, :, p, q]).max(axis=1)  # any channel
                changed = change > 1e-13 * np.abs(out[0, :, p, q]).max()
                rows, cols = np.flatnonzero(changed[:R]), np.flatnonzero(changed[R:])
                found.append(((rows.min(), rows.max()), (cols.min(), cols.max())))
                if len(found) == layers:
                    raise _Done
            return out

        return recorded

    swap = ForwardSwap(model, "cpu", wrap)  # the model is on cpu in eval mode already
    try:
        model(x)
    except _Done:
        pass
    finally:
        swap.restore()
    return found


@pytest.mark.parametrize("name", list_models())
def test_recurrence_equals_brute_force_for_every_layer(name):
    R = RESOLUTION.get(name, 64)
    model = positive_model(name, R)
    expected = [f for f in receptive_fields(model, (1, 3, R, R)) if len(f.output_shape) == 4]
    measured = measured_fields(model, R, len(expected))
    assert len(measured) == len(expected)
    for field, (rows, cols) in zip(expected, measured, strict=True):
        assert field.seen == (rows, cols), (field.name, field.seen, (rows, cols))
    assert any(f.seen[0] != (0, R - 1) for f in expected)  # not everything is the whole image


def test_a_squeeze_excite_gate_makes_every_later_unit_see_the_whole_image():
    """The global pooling of an SE gate, early enough that the conv path alone sees 3 x 3."""
    model = positive(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SqueezeExcite(8),
                                   nn.Conv2d(8, 4, 1)), 16)  # fmt: skip
    fields = receptive_fields(model, (1, 3, 16, 16))
    assert fields[0].seen == ((7, 9), (7, 9)) and not fields[0].whole_image  # the 3 x 3 conv
    assert fields[-1].seen == ((0, 15), (0, 15)) and fields[-1].whole_image  # after the gate
    assert measured_fields(model, 16, len(fields)) == [f.seen for f in fields]
