"""``scratchnets explain MODEL``: the layer table's counts equal the counter's and its fields the
recurrence's, ``--layer`` explains a layer on its real weights and real input (and equals what
the layer output in the model), ``--save-maps`` writes PNGs of the expected grid sizes, and bad
arguments get clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchnets.explain.model import explain_model, layer_input, model_input
from scratchnets.explain.receptive import receptive_fields
from scratchnets.models import create, list_models
from scratchnets.profile.summary import summary

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights"


@pytest.mark.parametrize("name", ["mobilenet_v2", "ghostnet_100"])
def test_table_counts_are_the_counters_and_fields_the_recurrences(name):
    result = explain_model(name, resolution=96)
    model = create(name, init=False)
    report = summary(model, (1, 3, 96, 96))
    assert sum(r["mult_adds"] for r in result.rows) == report.total_macs  # every conv / linear
    fields = {f.name: f for f in receptive_fields(model, (1, 3, 96, 96))}
    for row in result.rows:
        assert row["rf_size"] == fields[row["name"]].size
        assert row["jump"] == fields[row["name"]].jump
    text = result.text()
    assert "r_out = r_in + d*(k - 1)*j_in" in text and "(whole image)" in text


@pytest.mark.parametrize("name", list_models())
def test_every_model_can_be_explained(name):
    result = explain_model(name, resolution=96)
    assert result.rows and all(r["rf_size"][0] >= 1 for r in result.rows)
    assert result.rows[0]["mult_adds"] > 0  # the stem conv comes first


def test_mobilenet_v2_receptive_field_is_the_known_491():
    rows = explain_model("mobilenet_v2").rows
    last_conv = [r for r in rows if r["type"] == "Conv2d"][-1]
    assert last_conv["rf_size"] == (491.0, 491.0) and last_conv["jump"] == (32.0, 32.0)


@pytest.mark.parametrize(
    "layer", ["features.0.0", "features.2.conv.1.0", "features.0.1", "features.1.conv.0.2",
              "features.18.2", "classifier.1"],
)  # fmt: skip
def test_a_layer_is_explained_on_its_real_weights_and_input(layer):
    result = explain_model("mobilenet_v2", resolution=64, layer=layer, seed=3)
    e = result.layer
    assert e.all_checked and e.case["layer"] == layer
    model = create("mobilenet_v2", rng=0)
    module, x, y = layer_input(model, layer, model_input(model, 64, None, 3))
    np.testing.assert_array_equal(e.inputs["x"], np.asarray(x, np.float64))  # its real input
    weight = getattr(module, "weight", None)
    if weight is not None:
        drawn = e.inputs.get("w", e.inputs.get("weight"))
        np.testing.assert_array_equal(drawn, np.asarray(weight.data, np.float64))
    element = next(el for el in e.elements if el.name == "y")
    assert element.value == pytest.approx(float(np.asarray(y)[element.index]), rel=1e-9, abs=1e-12)


def test_a_composite_or_unknown_layer_is_refused_by_name():
    with pytest.raises(ValueError, match=r"'features\.1' is a .*: explain takes a Conv2d"):
        explain_model("mobilenet_v2", resolution=32, layer="features.1")
    with pytest.raises(ValueError, match=r"no layer 'features\.99' in MobileNetV2; layers are"):
        explain_model("mobilenet_v2", resolution=32, layer="features.99")


def test_save_maps_writes_the_three_pictures(tmp_path):
    result = explain_model("mobilenet_v2", resolution=64, save_maps=str(tmp_path))
    maps, filters, plot = (Path(p) for p in result.saved)
    assert maps.name == "features.0.0_feature_maps.png" and plot.name == "receptive_field.png"
    for path in (maps, filters, plot):
        assert Image.open(path).size[0] > 400  # a readable figure, not a thumbnail


def test_pictures_say_what_they_show():
    """Titled, tiles numbered, one colour scale with its bar; random filters labelled as such;
    the receptive-field plot names its layers."""
    from scratchnets.explain import maps as pictures

    plt = pictures._pyplot()
    out = np.random.default_rng(0).standard_normal((5, 4, 4))
    out[1] *= 0.01  # a nearly dead channel stays pale on the shared scale
    fig = pictures.maps_figure(out, "layer x, after its relu6")
    assert fig._suptitle.get_text() == "layer x, after its relu6"
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["c0", "c1", "c2", "c3", "c4"]
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len({im.get_clim() for im in images}) == 1  # one scale for every tile
    assert any(ax.get_ylabel().startswith("value") for ax in fig.axes)  # the colour bar
    plt.close(fig)
    assert pictures.shared_scale(np.array([-1.0, 3.0])) == (-3.0, 3.0, "RdBu_r")
    assert pictures.shared_scale(np.array([0.0, 2.0])) == (0.0, 2.0, "viridis")
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3))
    noisy = pictures.filters_figure(w, "first conv", random_weights=True)
    assert any("random weights" in t.get_text() for t in noisy.texts)
    learned = pictures.filters_figure(w, "first conv", random_weights=False)
    assert not any("random weights" in t.get_text() for t in learned.texts)
    plt.close(noisy), plt.close(learned)
    rows = explain_model("mobilenet_v2", resolution=32).rows
    field = pictures.receptive_field_figure(rows, 32, "rf")
    names = [label.get_text() for label in field.axes[0].get_xticklabels()]
    assert names == [r["name"] for r in rows]
    plt.close(field)


@pytest.mark.skipif(not (WEIGHTS / "mobilenet_v1_0.25_224_float.tflite").exists(),
                    reason="needs the shared published weights")  # fmt: skip
def test_published_weights_and_a_real_image():
    result = explain_model(
        "mobilenet_v1", weights=str(WEIGHTS / "mobilenet_v1_0.25_224_float.tflite"),
        layer="Conv2d_1_depthwise", image=str(WEIGHTS / "images" / "grace_hopper.bmp"),
    )  # fmt: skip
    assert result.input_shape == (1, 3, 224, 224) and result.layer.all_checked
    assert result.layer.case["padding"] == (1, 1)  # TF "same", stride 1
    first = result.rows[0]
    assert first["start"] == (1.0, 1.0)  # TF "same" at stride 2 pads only after: centre at 1


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "scratchnets.cli", "explain", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip


def test_cli_model_table_layer_and_errors():
    done = _cli("mobilenet_v1", "--resolution", "64", "--layer", "blocks.0.0.conv_dw", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["layer"]["all_checked"] and data["rows"][0]["name"] == "conv_stem"
    wrong = _cli("mobilenet_v1", "--groups", "2")
    assert wrong.returncode == 1 and "--groups applies to an OP" in wrong.stderr
    wrong = _cli("relu6", "--layer", "x")
    assert wrong.returncode == 1 and "--layer applies to a MODEL" in wrong.stderr


def test_with_layer_the_text_shows_that_layers_row_only():
    text = explain_model("mobilenet_v2", resolution=64, layer="features.2.conv.1.0").text()
    table = text.split("== conv2d(")[0]
    assert "features.2.conv.1.0  Conv2d" in table
    assert "features.0.0" not in table and "classifier" not in table
    assert "without --layer" in table
    full = explain_model("mobilenet_v2", resolution=64).text()
    assert "features.0.0" in full and "classifier.1" in full


QUANT = WEIGHTS / "mobilenet_v1_0.25_128_quant.tflite"


@pytest.mark.skipif(not QUANT.exists(), reason="../shared/weights is not on this machine")
def test_a_real_uint8_layer_is_walked_on_a_real_photo():
    """Google's uint8 MobileNetV1 0.25/128: its own input size, its integer layers in the table,
    and a depthwise layer explained on the codes it receives from a photo; the element equals
    the model's own integer forward (explain_quantized_layer raises otherwise)."""
    import scratchnets as sn

    photo = str(WEIGHTS / "images" / "grace_hopper.bmp")
    result = explain_model("mobilenet_v1", weights=str(QUANT), layer="Conv2d_2_depthwise",
                           image=photo, at=(0, 3, 8, 11))  # fmt: skip
    assert result.input_shape == (1, 3, 128, 128)
    assert [r["name"] for r in result.rows][:2] == ["Conv2d_0", "Conv2d_1_depthwise"]
    assert result.rows[0]["mult_adds"] == 8 * 64 * 64 * 3 * 3 * 3
    e = result.layer
    assert e.all_checked and e.case["layer"] == "Conv2d_2_depthwise" and e.case["groups"] == 16
    y = next(el for el in e.elements if el.name == "y")
    model = sn.models.load_pretrained(QUANT)
    pixels = sn.data.pretrained_transforms(model.pretrained_cfg)(
        np.asarray(sn.data.open_rgb(photo))
    )[None]
    tensors = model(pixels, return_all=True)
    layer = next(q for q in model.layers if q.name == "Conv2d_2_depthwise")
    assert (
        y.index == (0, 3, 8, 11)
        and 0 < y.value < 255
        and y.value == int(tensors[layer.output][y.index])
    )
    assert y.value == 215 and "= 109 * 11 = 1199" in y.terms[0]  # the real codes, written out
    for layer in ("average_pool_2d_27", "softmax_30"):  # the other integer ops, walked too
        walked = explain_model("mobilenet_v1", weights=str(QUANT), layer=layer, image=photo)
        assert walked.layer.all_checked and walked.layer.case["layer"] == layer
    assert "... 989 more ..." in walked.layer.text()  # a 1001-class row is not printed whole
    with pytest.raises(ValueError, match="is a reshape: it moves no number"):
        explain_model("mobilenet_v1", weights=str(QUANT), layer="reshape_29")
    with pytest.raises(ValueError, match="no layer 'nope' in the uint8 graph"):
        explain_model("mobilenet_v1", weights=str(QUANT), layer="nope")


QUANT_V2 = WEIGHTS / "mobilenet_v2_1.0_224_quant.tflite"


@pytest.mark.skipif(not QUANT_V2.exists(), reason="../shared/weights is not on this machine")
def test_a_real_uint8_residual_add_is_walked():
    result = explain_model("mobilenet_v2", weights=str(QUANT_V2), layer="add_9",
                           image=str(WEIGHTS / "images" / "grace_hopper.bmp"))  # fmt: skip
    e = result.layer
    assert e.all_checked and e.elements[0].index == (0, 0, 0, 0)
    assert e.elements[0].terms[0].startswith("A = ((153 - 136) << 20) * M_a")
