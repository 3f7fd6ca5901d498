"""Each model's facts live with its registration (``ModelCfg``): loaders, benchmarks and sweeps
read them, and they agree with the twins and the paper tables they name."""

from __future__ import annotations

import numpy as np
import pytest

import scratchnets as sn
from scratchnets.models.registry import fit_width, has_width, model_cfg, models_where
from scratchnets.profile.papers import ROWS


def test_every_paper_row_model_names_its_paper():
    """A model the verify table checks says which paper it answers to."""
    registered = set(sn.models.list_models())
    checked = {row.config.name for row in ROWS} & registered
    assert checked, "the paper table checks registered models"
    assert all(model_cfg(name).paper and model_cfg(name).paper.startswith("arXiv:")
               for name in checked)  # fmt: skip


def test_models_with_published_weights_declare_how_to_preprocess():
    for name in models_where(lambda cfg: cfg.preprocessing is not None):
        pre = model_cfg(name).preprocessing
        assert {"source", "size", "mean", "std", "interpolation"} <= set(pre), name
    assert "mobilenet_v2" in models_where(lambda cfg: cfg.preprocessing is not None)


@pytest.mark.parametrize("name", models_where(lambda cfg: True))
def test_the_classifier_key_names_the_last_weight_with_one_row_per_class(name):
    model = sn.models.create(name, num_classes=7, init=False,
                             **({"width_mult": 0.25} if has_width(name) else {}))  # fmt: skip
    state = model.state_dict()
    assert state[model_cfg(name).classifier].shape[0] == 7


def test_the_benchmarked_and_mobile_lists_come_from_the_registry():
    from scratchnets.benchmarks.models import MODELS

    mobile = models_where(lambda cfg: cfg.mobile)
    assert list(MODELS[: len(mobile)]) == mobile  # the mobile ones first, by paper
    assert mobile == ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                      "ghostnet_100", "ghostnetv2_100", "ghostnetv3_100"]  # fmt: skip
    assert all(model_cfg(name).twin for name in MODELS)  # each is timed against its twin


def test_fit_width_finds_the_width_of_the_shapes_and_names_a_misfit():
    built = sn.models.create("mobilenet_v2", num_classes=3, width_mult=0.35, init=False)
    shapes = {k: v.shape for k, v in built.state_dict().items()}
    model, width = fit_width("mobilenet_v2", shapes, num_classes=3)
    assert width == 0.35 and model.state_dict()["features.0.0.weight"].shape == (16, 3, 3, 3)
    shapes["features.0.0.weight"] = (5, 3, 3, 3)
    with pytest.raises(ValueError, match=r"features\.\S+ is \(5, 3, 3, 3\) in the file"):
        fit_width("mobilenet_v2", shapes, num_classes=3)
    with pytest.raises(ValueError, match="fit no model with {'num_classes': 3}"):
        fit_width("vgg16", {"classifier.6.weight": (4, 4096)}, num_classes=3)


def test_create_without_init_is_the_same_architecture():
    a = sn.models.create("ghostnet_100", width_mult=0.5, init=False)
    b = sn.models.create("ghostnet_100", width_mult=0.5, rng=np.random.default_rng(0))
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
