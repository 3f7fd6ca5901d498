"""Keras files (``formats/keras.py``, ``models/keras_import.py``): genuine Keras 3 models with
random weights and BN statistics, saved by Keras itself as ``.weights.h5`` and ``.keras`` and in
the official legacy HDF5 layout of the keras.applications downloads, load as our keras_style
models and compute Keras' logits (or, without the top, its pooled features); a file of another
architecture or width names the tensor that does not fit; damaged and hostile files fail
cleanly, in bounded time; ``predict`` and ``train --init`` take them."""

from __future__ import annotations

import json
import sys
import time
import zipfile

import numpy as np
import pytest

import scratchnets as sn
from scratchnets.cli import main
from scratchnets.formats import keras as keras_format
from scratchnets.formats.keras import KerasFileError, read_keras
from scratchnets.models.labels import imagenet_names
from scratchnets.train.checkpointing import load_checkpoint
from scratchnets.train.evaluate import load_for_inference
from tests.helpers import record_error
from tests.test_train import BACKEND, dataset  # noqa: F401 (a fixture)

h5py = pytest.importorskip("h5py")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BUILDERS = {"mobilenet_v1": "MobileNet", "mobilenet_v2": "MobileNetV2",
            "mobilenet_v3_large": "MobileNetV3Large", "mobilenet_v3_small": "MobileNetV3Small"}  # fmt: skip
#: two alphas per architecture, among the ones keras.applications publishes
CASES = [("mobilenet_v1", 0.25), ("mobilenet_v1", 0.75), ("mobilenet_v2", 0.35),
         ("mobilenet_v2", 1.0), ("mobilenet_v3_large", 0.75), ("mobilenet_v3_large", 1.0),
         ("mobilenet_v3_small", 0.75), ("mobilenet_v3_small", 1.0)]  # fmt: skip
SIZE, CLASSES = 64, 6


def keras_model(keras, arch, alpha, include_top=True, size=SIZE, classes=CLASSES, seed=0):
    """keras.applications' model with random weights, biases and BN statistics (Keras' own
    initialisation leaves BN the identity and biases zero)."""
    options = {"include_preprocessing": False} if arch.startswith("mobilenet_v3") else {}
    model = getattr(keras.applications, BUILDERS[arch])(
        alpha=alpha, weights=None, input_shape=(size, size, 3), include_top=include_top,
        classes=classes, classifier_activation=None, pooling=None if include_top else "avg",
        **options,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if type(layer).__name__ == "BatchNormalization":
            c = weights[0].shape
            weights = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                       rng.uniform(0.5, 2.0, c)]  # fmt: skip
        elif len(weights) == 2:  # a bias
            weights[1] = rng.normal(0, 0.1, weights[1].shape)
        layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return model


def features(model, x):
    """Our model up to its classifier: what a Keras model without its top computes (pooled)."""
    for name, child in model.named_children():
        if name in ("classifier", "head_drop"):
            break
        x = child(x)
    return x


def assert_equals_keras(keras, ours, theirs, x, key, include_top=True):
    expected = keras.ops.convert_to_numpy(theirs(x.transpose(0, 2, 3, 1), training=False))
    actual = ours(x) if include_top else features(ours, x)
    err = record_error(key, actual, expected)
    assert err <= 1e-5 * np.max(np.abs(expected)), err


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
@pytest.mark.parametrize("include_top", [True, False], ids=["top", "no_top"])
@pytest.mark.parametrize(("arch", "alpha"), CASES)
def test_files_saved_by_keras_load_and_compute_keras_logits(keras, tmp_path, arch, alpha,
                                                            include_top, fmt):  # fmt: skip
    theirs = keras_model(keras, arch, alpha, include_top)
    path = tmp_path / f"model.{fmt}"
    theirs.save(path) if fmt == "keras" else theirs.save_weights(path)
    ours = sn.models.load_pretrained(path)
    cfg = ours.pretrained_cfg
    assert (cfg["architecture"], cfg["width_mult"], cfg["include_top"]) == (
        arch,
        alpha,
        include_top,
    )
    assert cfg["source"] == "keras" and cfg["options"] == {"keras_style": True}
    assert cfg["size"] == (SIZE if fmt == "keras" else 224)  # the .keras config says its size
    if include_top:
        assert cfg["num_classes"] == CLASSES
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    key = f"keras {fmt} {arch} {alpha} {'top' if include_top else 'no top'}"
    assert_equals_keras(keras, ours, theirs, x, key, include_top)


# --------------------------------------------------- the official keras.applications layout

#: the weight names of the official files, by Keras layer class
OFFICIAL_WEIGHT_NAMES = {
    "Conv2D": ("kernel", "bias"), "DepthwiseConv2D": ("depthwise_kernel",),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "Dense": ("kernel", "bias"),
}  # fmt: skip


def write_official_h5(model, path) -> None:
    """``model``'s weights in the layout of the keras.applications downloads (Keras 2's
    ``save_weights``): root attributes ``layer_names`` (every layer, in model order),
    ``backend``, ``keras_version``; per layer a group with ``weight_names`` such as
    ``conv_dw_1/depthwise_kernel:0``, each a dataset below it."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            weights = layer.get_weights()
            kinds = OFFICIAL_WEIGHT_NAMES.get(type(layer).__name__, ())
            names = [f"{layer.name}/{kind}:0" for kind in kinds[: len(weights)]]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, value in zip(names, weights, strict=True):
                group.create_dataset(name, data=value)


@pytest.mark.parametrize(
    ("arch", "alpha", "size", "file_name", "include_top"),
    [
        ("mobilenet_v1", 0.25, 128, "mobilenet_2_5_128_tf.h5", True),
        ("mobilenet_v2", 0.35, 96, "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5",
         False),
        ("mobilenet_v3_small", 0.75, 224, "weights_mobilenet_v3_small_224_0.75_float.h5", True),
    ],
)  # fmt: skip
def test_official_layout_files_load_with_the_size_their_name_says(
    keras, tmp_path, arch, alpha, size, file_name, include_top
):
    theirs = keras_model(keras, arch, alpha, include_top, size=SIZE, classes=1000)
    path = tmp_path / file_name
    write_official_h5(theirs, path)
    assert read_keras(path).layout == "legacy h5"
    ours = sn.models.load_pretrained(path)
    cfg = ours.pretrained_cfg
    assert (cfg["architecture"], cfg["width_mult"], cfg["size"]) == (arch, alpha, size)
    x = np.random.default_rng(2).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    assert_equals_keras(keras, ours, theirs, x, f"keras official {file_name}", include_top)


def test_keras_own_legacy_writer_agrees(keras, tmp_path):
    """The legacy layout as Keras 3 itself still writes it (whole-model HDF5: weights under
    ``model_weights``, the config in ``model_config``)."""
    theirs = keras_model(keras, "mobilenet_v2", 0.5)
    path = tmp_path / "legacy.h5"
    theirs.save(path)  # Keras 3 writes the legacy whole-model HDF5 for a .h5 name
    weights = read_keras(path)
    assert weights.layout == "legacy h5" and weights.config is not None
    ours = sn.models.load_pretrained(path)
    x = np.random.default_rng(3).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    assert_equals_keras(keras, ours, theirs, x, "keras legacy whole-model h5")


# ------------------------------------------------------------------- files that do not fit


@pytest.fixture(scope="module")
def v2_file(keras, tmp_path_factory):
    """An official-layout MobileNetV2 0.35 (1000 classes) and the Keras model it came from."""
    theirs = keras_model(keras, "mobilenet_v2", 0.35, size=96, classes=1000)
    path = (
        tmp_path_factory.mktemp("v2") / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96.h5"
    )
    write_official_h5(theirs, path)
    return path, theirs


def test_another_width_or_architecture_names_the_tensor_that_does_not_fit(v2_file):
    path, _ = v2_file
    with pytest.raises(ValueError) as caught:
        sn.models.load_pretrained(path, width_mult=0.5)
    message = str(caught.value)
    assert "in the file but" in message and "Keras layer" in message
    with pytest.raises(ValueError, match="holds a Keras mobilenet_v2, not a mobilenet_v1"):
        sn.models.load_pretrained(path, "mobilenet_v1")
    other = path.with_name("other.h5")
    with h5py.File(other, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.create_group("dense").attrs["weight_names"] = [b"dense/kernel:0"]
        f["dense"].create_dataset("dense/kernel:0", data=np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="match no model"):
        sn.models.load_pretrained(other)


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(v2_file, tmp_path):
    path, _ = v2_file
    changed = tmp_path / path.name
    changed.write_bytes(path.read_bytes())
    with h5py.File(changed, "r+") as f:
        del f["block_3_project"]["block_3_project/kernel:0"]
        f["block_3_project"].create_dataset("block_3_project/kernel:0",
                                            data=np.zeros((1, 1, 48, 24), np.float32))  # fmt: skip
    with pytest.raises(ValueError) as caught:
        sn.models.load_pretrained(changed)
    message = str(caught.value)
    assert "features.4.conv.2.weight is (24, 48, 1, 1) in the file but (16, 48, 1, 1)" in message
    assert "Keras layer block_3_project" in message


def test_predict_names_imagenet_classes_with_keras_preprocessing(keras, v2_file, capsys):
    """``predict --weights FILE.h5``: Keras' own pipeline on the same photo (load_img resized to
    the file's 96 px, nearest; preprocess_input to [-1, 1]) gives the same top class and
    probabilities; the names are ImageNet's."""
    from tests.test_predict_pretrained import PHOTOS

    if not PHOTOS:
        pytest.skip("the photos of ../shared/weights are not here")
    path, theirs = v2_file
    assert main(["predict", "--weights", str(path), str(PHOTOS[0]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    image = keras.utils.img_to_array(keras.utils.load_img(PHOTOS[0], target_size=(96, 96)))
    x = keras.applications.mobilenet_v2.preprocess_input(image[None])
    logits = keras.ops.convert_to_numpy(theirs(x, training=False))[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = result["top"][0]
    assert top["index"] == int(probs.argmax())
    assert top["class"] == imagenet_names()[top["index"]]
    assert abs(top["probability"] - probs.max()) <= 1e-4


def test_a_no_top_file_names_no_classes(keras, tmp_path, capsys):
    theirs = keras_model(keras, "mobilenet_v1", 0.25, include_top=False)
    path = tmp_path / "mobilenet_2_5_224_tf_no_top.h5"
    write_official_h5(theirs, path)
    assert main(["predict", "--weights", str(path), "photo.jpg"]) == 1
    assert "has no classifier" in capsys.readouterr().err


def test_train_init_from_a_keras_file_keeps_keras_numerics(keras, dataset, tmp_path):  # noqa: F811
    theirs = keras_model(keras, "mobilenet_v1", 0.25, classes=1000)
    path = tmp_path / "mobilenet_2_5_224_tf.h5"
    write_official_h5(theirs, path)
    out = tmp_path / "run"  # 32 px: Keras' MobileNet pads its stride-2 convs to at least 1x1 maps
    flags = ["--image-size", "32", "--batch-size", "8", "--epochs", "1", "--backend", BACKEND]
    assert main(["train", "--data", str(dataset), "--init", str(path), *flags, "--time-limit",
                 "0", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    ckpt = load_checkpoint(out / "last.npz")
    assert ckpt["model"]["options"] == {"keras_style": True}
    assert np.allclose(ckpt["model"]["normalize"]["mean"], 0.5)  # Keras' [-1, 1]
    model, _ = load_for_inference(out / "last.npz", BACKEND)
    assert model.keras_style and model.bn1.eps == 1e-3
    exported = tmp_path / "finetuned.h5"  # and back to Keras: the fine-tuned model, exported
    assert main(["export", "keras", str(out / "last.npz"), "-o", str(exported)]) == 0
    again = keras.applications.MobileNet(alpha=0.25, weights=str(exported), classes=2,
                                         input_shape=(32, 32, 3), classifier_activation=None)  # fmt: skip
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert_equals_keras(keras, model, again, x, "keras fine-tuned here, exported")


# ---------------------------------------------------------------------- export keras


@pytest.mark.parametrize(("arch", "alpha"), [("mobilenet_v1", 0.5), ("mobilenet_v2", 0.35),
                                             ("mobilenet_v3_large", 0.75),
                                             ("mobilenet_v3_small", 1.0)])  # fmt: skip
def test_export_keras_writes_what_keras_loads(keras, tmp_path, arch, alpha, capsys):
    """Our keras_style model (random weights and BN statistics) written by ``export keras``:
    Keras' own ``keras.applications`` function loads the file and computes our logits."""
    from scratchnets.formats.keras import write_legacy_h5
    from scratchnets.models.keras_import import keras_layers_of
    from tests.model_twins import randomize_bn

    ours = sn.models.create(arch, CLASSES, alpha, keras_style=True, rng=0)
    randomize_bn(ours, np.random.default_rng(1))
    path = tmp_path / "ours.h5"
    write_legacy_h5(path, keras_layers_of(ours))
    options = {"include_preprocessing": False} if arch.startswith("mobilenet_v3") else {}
    theirs = getattr(keras.applications, BUILDERS[arch])(
        alpha=alpha, weights=str(path), classes=CLASSES, input_shape=(SIZE, SIZE, 3),
        classifier_activation=None, **options,
    )  # fmt: skip
    x = np.random.default_rng(5).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    assert_equals_keras(keras, ours.eval(), theirs, x, f"export keras {arch} {alpha}")
    with pytest.raises(ValueError, match="is not keras_style"):
        keras_layers_of(sn.models.create(arch, CLASSES, alpha, rng=0))


def test_export_keras_of_googles_tflite_mobilenet_is_keras_mobilenet(keras, tmp_path, capsys):
    """The float TFLite MobileNetV1 0.25 (BN folded, 1001 classes) exported: Keras' MobileNet
    0.25 loads it, and its 1000 logits are the graph's but for "background"."""
    from tests.test_tflite_reader import FLOAT

    if not FLOAT.exists():
        pytest.skip("../shared/weights is not on this machine")
    path = tmp_path / "mobilenet_2_5_224_tf.h5"
    assert main(["export", "keras", str(FLOAT), "-o", str(path)]) == 0
    assert "keras.applications.MobileNet(alpha=0.25, classes=1000)" in capsys.readouterr().out
    theirs = keras.applications.MobileNet(alpha=0.25, weights=str(path), classifier_activation=None)
    graph = sn.models.load_pretrained(FLOAT)
    x = np.random.default_rng(6).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(theirs(x.transpose(0, 2, 3, 1), training=False))
    err = record_error("export keras of the TFLite MobileNetV1", graph(x)[:, 1:], expected)
    assert err <= 1e-5 * np.max(np.abs(expected)), err
    from scratchnets.train.finetune import folded_batchnorm

    assert folded_batchnorm(sn.models.load_pretrained(path))  # BN = the folded bias, no statistics
    assert main(["export", "keras", str(FLOAT.with_name("mobilenet_v2_1.0_224_quant.tflite")),
                 "-o", str(tmp_path / "v2.h5")]) == 1  # fmt: skip
    assert "a tf_mobilenet_v2 has no Keras counterpart here" in capsys.readouterr().err


def test_train_init_refuses_to_train_batchnorm_without_statistics(dataset, tmp_path, capsys):  # noqa: F811
    """A file whose BNs are folded biases (running mean 0, variance 1 - eps everywhere) trains
    only with a frozen backbone: in train mode those BNs would normalise by batch statistics."""
    from scratchnets.formats.keras import write_legacy_h5
    from scratchnets.models.keras_import import keras_layers_of

    model = sn.models.create("mobilenet_v1", 1000, 0.25, keras_style=True, rng=0)
    for module in model.modules():
        if isinstance(module, sn.nn.BatchNorm2d):
            module.running_var[...] = 1.0 - module.eps
    path = tmp_path / "folded.h5"
    write_legacy_h5(path, keras_layers_of(model))
    flags = ["--image-size", "32", "--batch-size", "8", "--epochs", "1", "--backend", BACKEND,
             "--time-limit", "0", "--quiet"]  # fmt: skip
    assert main(["train", "--data", str(dataset), "--init", str(path), *flags, "--out",
                 str(tmp_path / "a")]) == 1  # fmt: skip
    assert "hold folded biases, not statistics" in capsys.readouterr().err
    assert main(["train", "--data", str(dataset), "--init", str(path), *flags, "--out",
                 str(tmp_path / "b"), "--freeze-backbone"]) == 0  # fmt: skip


# ----------------------------------------------------------------- damaged and hostile files


@pytest.fixture(scope="module")
def small_file(keras, tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "mobilenet_2_5_128_tf.h5"
    write_official_h5(keras_model(keras, "mobilenet_v1", 0.25, size=32, classes=3), path)
    return path


def _load_cleanly(path) -> None:
    """Load ``path``: a model, or a ValueError / FileNotFoundError, and nothing else, quickly."""
    start = time.perf_counter()
    try:
        sn.models.load_pretrained(path)
    except (ValueError, FileNotFoundError):
        pass
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 0.999])
def test_a_truncated_file_is_a_clear_error(small_file, tmp_path, fraction):
    data = small_file.read_bytes()
    cut = tmp_path / small_file.name
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError):
        sn.models.load_pretrained(cut)


@pytest.mark.parametrize("seed", range(12))
def test_flipped_bytes_give_a_model_or_a_clear_error(small_file, tmp_path, seed):
    """HDF5 keeps no checksums: a flipped weight byte is a different weight, but a flipped
    structure byte must be a ValueError, never a crash or a hang."""
    data = bytearray(small_file.read_bytes())
    rng = np.random.default_rng(seed)
    at = rng.integers(0, min(len(data), 4096) if seed % 2 else len(data), 8)
    for index in at:
        data[index] ^= 1 << int(rng.integers(8))
    mutated = tmp_path / small_file.name
    mutated.write_bytes(bytes(data))
    _load_cleanly(mutated)


def test_absurd_declared_sizes_are_refused_before_reading(small_file, tmp_path):
    huge = tmp_path / small_file.name
    huge.write_bytes(small_file.read_bytes())
    with h5py.File(huge, "r+") as f:  # 2^31 floats declared, a few bytes on disk
        del f["conv1"]["conv1/kernel:0"]
        f["conv1"].create_dataset("conv1/kernel:0", shape=(1 << 16, 1 << 15, 1, 1),
                                  dtype=np.float32, chunks=(64, 64, 1, 1), compression="gzip")  # fmt: skip
    assert huge.stat().st_size < 10 * small_file.stat().st_size
    with pytest.raises(KerasFileError, match="declare more than"):
        read_keras(huge)


def test_non_float_and_missing_datasets_are_named(small_file, tmp_path):
    broken = tmp_path / small_file.name
    broken.write_bytes(small_file.read_bytes())
    with h5py.File(broken, "r+") as f:
        del f["conv1"]["conv1/kernel:0"]
        f["conv1"].create_dataset("conv1/kernel:0", data=np.zeros((3, 3, 3, 8), np.int32))
    with pytest.raises(KerasFileError, match="conv1/conv1/kernel:0 holds int32, not floats"):
        read_keras(broken)
    with h5py.File(broken, "r+") as f:
        del f["conv1"]["conv1/kernel:0"]
    with pytest.raises(KerasFileError, match="lists 'conv1/kernel:0' but does not hold it"):
        read_keras(broken)


@pytest.fixture(scope="module")
def archive(keras, tmp_path_factory):
    path = tmp_path_factory.mktemp("archive") / "model.keras"
    keras_model(keras, "mobilenet_v3_small", 0.75, size=32, classes=3).save(path)
    return path


def _rewrite(archive_path, target, config_change=None, drop=None) -> None:
    """A copy of the .keras archive with its config changed or a member dropped."""
    with zipfile.ZipFile(archive_path) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            if info.filename == drop:
                continue
            data = source.read(info)
            if info.filename == "config.json" and config_change is not None:
                config = json.loads(data)
                config_change(config)
                data = json.dumps(config).encode()
            out.writestr(info.filename, data)


def test_code_and_custom_objects_in_a_keras_config_are_refused_by_name(archive, tmp_path):
    def add_lambda(config):
        config["config"]["layers"].append({"module": "keras.layers", "class_name": "Lambda",
                                           "config": {"name": "sneaky", "function": "..."}})  # fmt: skip

    def add_custom(config):
        config["config"]["layers"].append({"module": "mypackage.layers", "class_name": "Mine",
                                           "config": {"name": "mine"}})  # fmt: skip

    for change, message in ((add_lambda, "layer 'sneaky' is a Lambda, which holds Python code"),
                            (add_custom, r"layer 'mine' is a custom object \(mypackage.layers.Mine\)")):  # fmt: skip
        target = tmp_path / "changed.keras"
        _rewrite(archive, target, change)
        with pytest.raises(KerasFileError, match=message):
            sn.models.load_pretrained(target)


def test_damaged_archives_are_clear_errors(archive, tmp_path, monkeypatch):
    target = tmp_path / "no_weights.keras"
    _rewrite(archive, target, drop="model.weights.h5")
    with pytest.raises(KerasFileError, match="has no model.weights.h5"):
        read_keras(target)
    cut = tmp_path / "cut.keras"
    cut.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(KerasFileError):
        read_keras(cut)
    monkeypatch.setattr(keras_format, "MAX_MEMBER_BYTES", 1000)  # a member claiming too much
    with pytest.raises(KerasFileError, match="claims .* bytes, more than the 1,000 allowed"):
        read_keras(archive)


def test_without_h5py_the_error_says_how_to_install_it(small_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        read_keras(small_file)


def test_an_unknown_suffix_lists_every_format_and_a_missing_file_says_so(tmp_path):
    odd = tmp_path / "weights.ckpt"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match=r"reads .npz, .safetensors, .pth, .pt, .bin, .pth.tar, "
                       r".tflite, .h5, .hdf5, .keras \(Keras, also .weights.h5\), .onnx"):  # fmt: skip
        sn.models.load_pretrained(odd)
    with pytest.raises(FileNotFoundError, match="no weight file at"):
        sn.models.load_pretrained(tmp_path / "absent.h5")
