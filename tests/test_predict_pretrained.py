"""``scratchnets predict --weights``: published weights with their source's preprocessing and
ImageNet class names.

The preprocessing is checked against each source's own: TFLite's (the exact input tensors of
``expected_tflite.npz``), torchvision's and timm's transforms on the same photo. The whole command
on Google's float MobileNetV1 gives TensorFlow Lite's classes and probabilities for every photo.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import scratchnets as sn
from scratchnets.models.labels import class_names, fit_to, imagenet_names
from scratchnets.train.evaluate import predict_pretrained
from tests.model_twins import timm, torch_twin, torchvision
from tests.test_cli_errors import scratchnets
from tests.test_tflite_reader import FLOAT, WEIGHTS, needs_files

PHOTOS = sorted((WEIGHTS / "images").glob("*")) if WEIGHTS.is_dir() else []
TFLITE_CFG = dict(
    source="tflite", size=224, crop="centre square", mean=(0.5,) * 3, std=(0.5,) * 3
)  # what load_pretrained records for the float MobileNetV1 0.25/224


QUANT_PIPELINES = {  # the pipeline each uint8 model's pretrained_cfg gives
    name: sn.data.pretrained_transforms(
        sn.models.load_pretrained(WEIGHTS / f"{name}.tflite").pretrained_cfg
    )
    for name in ("mobilenet_v1_0.25_128_quant", "mobilenet_v2_1.0_224_quant")
    if WEIGHTS.is_dir()
}


def photo(path) -> np.ndarray:
    return np.asarray(sn.data.open_rgb(path))


@needs_files
def test_tflite_preprocessing_is_the_tensor_tflite_was_fed():
    """Centre square, bilinear resize, [-1, 1]: the float model's stored inputs to 1 float32
    rounding of (p - 127.5) / 127.5; the uint8 models' stored inputs (no normalisation) equal."""
    expected = np.load(WEIGHTS / "expected_tflite.npz")
    pipeline = sn.data.pretrained_transforms(TFLITE_CFG)
    for path in PHOTOS:
        ours = pipeline(photo(path)).transpose(1, 2, 0)  # (224, 224, 3) like TFLite's NHWC
        theirs = expected[f"mobilenet_v1_0.25_224_float/{path.name}/input"]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1.2e-7, err_msg=path.name)
        for model in QUANT_PIPELINES:
            pixels = expected[f"{model}/{path.name}/input"]
            chw = QUANT_PIPELINES[model](photo(path))
            assert chw.dtype == np.uint8, model
            assert np.array_equal(chw.transpose(1, 2, 0), pixels), (model, path.name)


@needs_files
def test_torchvision_preprocessing_equals_torchvision_transforms():
    """resize 256 (bilinear), centre crop 224, ImageNet mean / std: torchvision's own pipeline."""
    transforms = torchvision.transforms
    cfg = sn.models.model_cfg("mobilenet_v2").preprocessing
    theirs_pipeline = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(cfg["mean"], cfg["std"]),
    ])  # fmt: skip
    for path in PHOTOS:
        ours = sn.data.pretrained_transforms(cfg)(photo(path))
        theirs = theirs_pipeline(sn.data.open_rgb(path)).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6, err_msg=path.name)


@needs_files
@pytest.mark.parametrize("arch, timm_name", [("mobilenet_v1", "mobilenetv1_100"),
                                             ("ghostnet_100", "ghostnet_100")])  # fmt: skip
def test_timm_preprocessing_equals_timm_transforms(arch, timm_name):
    """resize to floor(size / crop_pct) with the config's interpolation, centre crop: timm's
    ``create_transform`` of the model's pretrained config."""
    cfg = sn.models.model_cfg(arch).preprocessing
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model(timm_name))
    assert data_cfg["crop_pct"] == cfg["crop_pct"]
    assert data_cfg["interpolation"] == cfg["interpolation"]
    assert np.allclose(data_cfg["mean"], cfg["mean"]) and np.allclose(data_cfg["std"], cfg["std"])
    theirs_pipeline = timm.data.create_transform(**data_cfg)
    assert math.floor(224 / cfg["crop_pct"]) == 256
    for path in PHOTOS:
        ours = sn.data.pretrained_transforms(cfg)(photo(path))
        theirs = theirs_pipeline(sn.data.open_rgb(path)).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6, err_msg=path.name)


@needs_files
def test_predict_weights_gives_tflites_classes_and_probabilities(tmp_path):
    """The command a user runs on Google's float MobileNetV1 0.25: for every photo, the top
    classes are TFLite's top classes by name, with TFLite's probabilities (1e-4)."""
    expected = np.load(WEIGHTS / "expected_tflite.npz")
    names = (WEIGHTS / "imagenet_labels.txt").read_text().splitlines()
    done = scratchnets(tmp_path, "predict", "--weights", str(FLOAT), *map(str, PHOTOS),
                       "--top", "3", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in results] == [str(p) for p in PHOTOS]
    for path, result in zip(PHOTOS, results, strict=True):
        theirs = expected[f"mobilenet_v1_0.25_224_float/{path.name}/output"].ravel()
        best = np.argsort(-theirs)[:3]
        assert [t["index"] for t in result["top"]] == best.tolist(), path.name
        assert [t["class"] for t in result["top"]] == [names[k] for k in best]
        for entry in result["top"]:
            assert abs(entry["probability"] - theirs[entry["index"]]) <= 1e-4
    text = scratchnets(tmp_path, "predict", "--weights", str(FLOAT), str(PHOTOS[0]))
    assert text.returncode == 0 and "1. chickadee (0.9" in text.stdout, text.stdout


@needs_files
def test_predict_weights_of_a_uint8_model_gives_tflites_bytes(tmp_path):
    """Google's uint8 MobileNetV2: each photo's top-3 classes and probabilities are TFLite's
    uint8 softmax outputs / 256, exactly (the pipeline feeds the same pixels, the integer model
    computes the same bytes)."""
    expected = np.load(WEIGHTS / "expected_tflite.npz")
    name = "mobilenet_v2_1.0_224_quant"
    done = scratchnets(tmp_path, "predict", "--weights", str(WEIGHTS / f"{name}.tflite"),
                       *map(str, PHOTOS), "--top", "3", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for path, line in zip(PHOTOS, done.stdout.splitlines(), strict=True):
        theirs = expected[f"{name}/{path.name}/output"].ravel().astype(np.int64)
        result = json.loads(line)
        top = result["top"]
        best = np.argsort(-theirs, kind="stable")[:3]
        assert [t["index"] for t in top] == [k for k in best if theirs[k] > 0 or k == best[0]]
        assert [t["probability"] for t in top] == [theirs[t["index"]] / 256 for t in top]
        assert result["zero_probability"] == int(np.sum(theirs == 0))


def test_predict_lists_no_zero_probability_ties(tmp_path, monkeypatch):
    """A uint8 softmax rounds most classes to probability 0: those tie and are not ranked; the
    text output says how many there are."""
    from PIL import Image

    from scratchnets.train import evaluate

    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(photo)
    probs = np.zeros(10)
    probs[[3, 7]] = [0.75, 0.25]
    monkeypatch.setattr(evaluate, "_probabilities", lambda model, x: probs[None])
    results = evaluate._classify(None, lambda pixels: pixels, [photo],
                                 [f"c{k}" for k in range(10)], 5, every_class=False)  # fmt: skip
    assert [t["index"] for t in results[0]["top"]] == [3, 7]
    assert results[0]["zero_probability"] == 8
    probs[:] = 0  # nothing above 0: the best is still named
    assert len(evaluate._classify(None, lambda p: p, [photo], [f"c{k}" for k in range(10)],
                                  5, every_class=False)[0]["top"]) == 1  # fmt: skip


@needs_files
def test_predict_torchvision_weights_equals_the_torch_model(tmp_path):
    """A genuine torchvision MobileNetV2 (random weights and BN statistics) saved with
    torch.save: its 1000 ImageNet names come from torchvision, and our probabilities are the torch
    model's on torchvision's preprocessing of the same photo."""
    twin = torch_twin("mobilenet_v2", 1000, 0.35, torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    for module in twin.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    torch.save(twin.state_dict(), tmp_path / "mobilenet_v2.pth")
    results, info = predict_pretrained(tmp_path / "mobilenet_v2.pth", PHOTOS[:2], top=5)
    assert info["source"] == "torchvision" and info["labels"] == "ImageNet-1k class names"
    transforms = torchvision.transforms
    pipeline = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])  # fmt: skip
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    for path, result in zip(PHOTOS[:2], results, strict=True):
        with torch.no_grad():
            x = pipeline(sn.data.open_rgb(path))[None].float()  # ToTensor: the default dtype
            probs = twin(x).softmax(1)[0].double().numpy()
        assert [t["class"] for t in result["top"]] == [
            categories[t["index"]] for t in result["top"]
        ]
        ours = np.array([t["probability"] for t in result["top"]])
        np.testing.assert_allclose(ours, probs[[t["index"] for t in result["top"]]], atol=1e-5)
        assert result["top"][0]["index"] == int(probs.argmax())


def test_the_shipped_imagenet_names_are_torchvisions():
    """The package's imagenet_classes.txt: 1000 names in class-index order, torchvision's list
    (facts: the ImageNet-1k synsets' short names)."""
    names = imagenet_names()
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert names == list(categories) and len(names) == 1000 and names[254] == "pug"


def test_label_lists_fit_the_1000_and_1001_class_conventions(tmp_path):
    thousand = [f"n{k}" for k in range(1000)]
    assert fit_to(thousand, 1000) == thousand
    assert fit_to(thousand, 1001) == ["background", *thousand]
    assert fit_to(["background", *thousand], 1000) == thousand
    assert fit_to(thousand, 7) is None
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    assert class_names(2, labels=tmp_path / "two.txt") == (
        ["cat", "dog"],
        str(tmp_path / "two.txt"),
    )
    with pytest.raises(ValueError, match="has 2 names; the model has 3 classes"):
        class_names(3, labels=tmp_path / "two.txt")
    (tmp_path / "w.npz").write_bytes(b"")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    assert class_names(3, tmp_path / "w.npz")[0] == ["a", "b", "c"]  # found beside the weights
    names, why = class_names(5, tmp_path / "w.npz")
    assert names[4] == "class 4" and "--labels FILE" in why


@pytest.mark.parametrize(
    "args, message",
    [
        (("predict", "--weights", "nothing.pth", "a.jpg"), "no weight file at 'nothing.pth'"),
        (("predict", "only.npz"), "at least one IMAGE"),
        (("predict", "--weights", "w.pth", "a.jpg", "--top", "0"), "--top must be at least 1"),
        (("predict", "c.npz", "a.jpg", "--labels", "l.txt"), "--labels applies to --weights"),
    ],
)
def test_bad_predict_arguments_give_one_clean_line(tmp_path, args, message):
    done = scratchnets(tmp_path, *args)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
