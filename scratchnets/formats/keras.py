"""Keras weight files read without Keras: each layer's weights, by layer name, as NumPy arrays.

Three layouts (h5py reads the HDF5; it is an optional dependency, ``pip install h5py``):

* the legacy HDF5 of Keras 2's ``save_weights`` and of the official ``keras.applications``
  downloads (``mobilenet_1_0_224_tf.h5``, ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_
  1.0_224.h5``, ...): the root's ``layer_names`` attribute lists the layers in model order, each
  layer's group its ``weight_names`` (``conv1/kernel:0``), each a dataset below the group; a
  whole-model ``.h5`` has the same under ``model_weights`` and its config in ``model_config``;
* Keras 3's ``.weights.h5``: ``layers/<key>/vars`` per layer, the layer's name in the ``name``
  attribute of ``vars``, its weights the datasets ``0``, ``1``, ... in the layer's order;
* Keras 3's ``.keras`` archive: a zip of ``config.json`` (the model's layers), ``metadata.json``
  and ``model.weights.h5`` (the layout above). The config is read as JSON and checked, never
  executed: a ``Lambda`` layer (Python code) or a custom object is refused by name.

Weights of one layer come in Keras' order: Conv2D ``kernel`` (kh, kw, in, out) and ``bias``,
DepthwiseConv2D ``kernel`` (kh, kw, C, 1), BatchNormalization ``gamma``, ``beta``,
``moving_mean``, ``moving_variance``, Dense ``kernel`` (in, out) and ``bias``.

A damaged or hostile file gets a ``KerasFileError`` naming what is wrong: an unreadable HDF5 or
zip, a missing attribute, a non-float dataset, a layer named twice, declared tensor sizes or
archive members past the limits below (checked before anything is read, so a small file
declaring huge tensors, or a zip bomb, allocates nothing).

    weights = read_keras("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5")
    weights.layers["Conv1"][0].shape   # (3, 3, 3, 16): Conv1's kernel

``write_legacy_h5`` writes that legacy layout (``scratchnets export keras``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the most float elements a file's tensors may declare in all (a MobileNetV3 has 5.5 M)
MAX_ELEMENTS = 1 << 28
#: the largest member a .keras archive may hold uncompressed, and its largest config
MAX_MEMBER_BYTES = 4 * MAX_ELEMENTS
MAX_CONFIG_BYTES = 1 << 24
#: layer classes whose config carries code, refused in a .keras config
CODE_LAYERS = ("Lambda", "TFOpLambda", "SlicingOpLambda")


class KerasFileError(ValueError):
    """A file that is not a well-formed Keras weight file, or one we refuse to read."""


@dataclass(frozen=True)
class KerasWeights:
    """What a Keras file holds: ``layers`` (layer name -> its weights in Keras' order, for the
    layers that have weights, in the file's order), ``layout`` ("legacy h5", "keras 3 h5" or
    ".keras") and ``config`` (the model's config, when the file has one)."""

    layers: dict[str, list[np.ndarray]]
    layout: str
    config: dict | None = None

    def input_size(self) -> int | None:
        """The square input size the config declares (None when it has none)."""
        for layer in (self.config or {}).get("config", {}).get("layers", []):
            shape = layer.get("config", {}).get("batch_shape") or layer.get("config", {}).get(
                "batch_input_shape"
            )
            if layer.get("class_name") == "InputLayer" and shape and len(shape) == 4:
                rows, cols = shape[1:3]
                return rows if rows == cols and isinstance(rows, int) else None
        return None


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise ImportError("reading Keras .h5 / .keras files needs h5py: pip install h5py") from exc
    return h5py


def read_keras(path) -> KerasWeights:
    """The layers and weights of the Keras file ``path`` (``.h5``, ``.weights.h5``, ``.keras``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Keras file at {str(path)!r}")
    if path.suffix.lower() == ".keras":
        return _read_archive(path)
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            return _read_h5(f, str(path))
    except OSError as exc:  # h5py's error for a file that is not (or no longer) HDF5
        raise KerasFileError(f"{path} is not a readable HDF5 file: {exc}") from exc


def _read_h5(f, where: str, config: dict | None = None) -> KerasWeights:
    if "layers" in f and "layer_names" not in f.attrs:
        return KerasWeights(_keras3_layers(f["layers"], where), "keras 3 h5", config)
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise KerasFileError(
            f"{where} is HDF5 but no Keras weight file: it has neither a 'layer_names' "
            "attribute (Keras 2 / keras.applications) nor a 'layers' group (Keras 3)"
        )
    if config is None and "model_config" in f.attrs:
        config = _parse_config(f.attrs["model_config"], where)
    layers, budget = {}, _Budget(where)
    for name in map(_text, root.attrs["layer_names"]):
        group = _member(root, name, where)
        weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
        if weight_names:
            _add(layers, name, [budget.read(_member(group, w, where), f"{name}/{w}")
                                for w in weight_names], where)  # fmt: skip
    return KerasWeights(layers, "legacy h5", config)


def _keras3_layers(group, where: str) -> dict[str, list[np.ndarray]]:
    layers, budget = {}, _Budget(where)
    for key in group:
        variables = group[key].get("vars")
        if variables is None or not len(variables):
            continue
        name = _text(variables.attrs.get("name", key))
        order = sorted(variables, key=lambda k: int(k) if k.isdigit() else -1)
        if not all(k.isdigit() for k in order):
            raise KerasFileError(
                f"{where}: layer {name!r} has weights named {order}, not 0, 1, ..."
            )
        _add(layers, name, [budget.read(variables[k], f"{name}/{k}") for k in order], where)
    return layers


class _Budget:
    """Reads datasets after checking each is floating point and all stay under MAX_ELEMENTS."""

    def __init__(self, where: str):
        self.where, self.elements = where, 0

    def read(self, dataset, name: str) -> np.ndarray:
        if not hasattr(dataset, "shape") or not hasattr(dataset, "dtype"):
            raise KerasFileError(f"{self.where}: {name} is not a dataset")
        if dataset.dtype.kind != "f":
            raise KerasFileError(f"{self.where}: {name} holds {dataset.dtype}, not floats")
        self.elements += int(np.prod(dataset.shape, dtype=np.float64))
        if self.elements > MAX_ELEMENTS:
            raise KerasFileError(
                f"{self.where}: the tensors up to {name} {tuple(dataset.shape)} declare more than "
                f"{MAX_ELEMENTS:,} elements, far more than any model here"
            )
        try:
            return np.asarray(dataset[()], dtype=dataset.dtype)
        except (OSError, ValueError) as exc:
            raise KerasFileError(f"{self.where}: cannot read {name}: {exc}") from exc


def _member(group, name: str, where: str):
    try:
        return group[name]
    except (KeyError, OSError, ValueError) as exc:
        raise KerasFileError(f"{where}: the file lists {name!r} but does not hold it") from exc


def _add(layers: dict, name: str, weights: list[np.ndarray], where: str) -> None:
    if name in layers:
        raise KerasFileError(f"{where}: layer {name!r} appears twice")
    layers[name] = weights


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_archive(path: Path) -> KerasWeights:
    """A ``.keras`` zip: its config checked, its weights read from memory."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KerasFileError(f"{path} is not a readable .keras archive (a zip): {exc}") from exc
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        for needed in ("config.json", "model.weights.h5"):
            if needed not in members:
                raise KerasFileError(f"{path} has no {needed}: not a Keras 3 .keras archive")
        config = _parse_config(_unzip(archive, members["config.json"], MAX_CONFIG_BYTES, path),
                               str(path))  # fmt: skip
        data = _unzip(archive, members["model.weights.h5"], MAX_MEMBER_BYTES, path)
    h5py = _h5py()
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            return _read_h5(f, f"{path}:model.weights.h5", config)
    except OSError as exc:
        raise KerasFileError(f"{path}: model.weights.h5 is not readable HDF5: {exc}") from exc


def _unzip(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    """A member's bytes, refused before reading if it claims more than ``limit``, and cut off
    if it inflates past its claim (a zip bomb lies about its size)."""
    if info.file_size > limit:
        raise KerasFileError(
            f"{path}: {info.filename} claims {info.file_size:,} bytes, more than the "
            f"{limit:,} allowed"
        )
    try:
        with archive.open(info) as member:
            data = member.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # bad CRC, truncated data
        raise KerasFileError(f"{path}: cannot unpack {info.filename}: {exc}") from exc
    if len(data) != info.file_size:
        raise KerasFileError(f"{path}: {info.filename} does not inflate to its declared size")
    return data


def _parse_config(text, where: str) -> dict:
    try:
        config = json.loads(_text(text))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KerasFileError(f"{where}: the model config is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise KerasFileError(f"{where}: the model config is not a JSON object")
    _refuse_code(config, where)
    return config


def _refuse_code(node, where: str) -> None:
    """Refuse, by name, any layer that carries Python code or comes from outside Keras."""
    if isinstance(node, list):
        for item in node:
            _refuse_code(item, where)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("class_name")
    name = (node.get("config") or {}).get("name") if isinstance(node.get("config"), dict) else None
    if kind in CODE_LAYERS:
        raise KerasFileError(
            f"{where}: layer {name!r} is a {kind}, which holds Python code: refused (scratchnets "
            "never runs code from a weight file)"
        )
    module = node.get("module")
    if isinstance(kind, str) and isinstance(module, str) and not module.startswith("keras"):
        raise KerasFileError(
            f"{where}: layer {name!r} is a custom object ({module}.{kind}): refused, only "
            "Keras' own layers are read"
        )
    for value in node.values():
        _refuse_code(value, where)


def write_legacy_h5(path, layers: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> None:
    """Write ``layers`` ((layer name, [(weight name, array), ...]) in model order) in the legacy
    HDF5 layout of the keras.applications downloads, which Keras 2 and 3 both load
    (``model.load_weights``): root attributes ``layer_names``, ``backend``, ``keras_version``;
    per layer a group whose ``weight_names`` are ``<layer>/<weight>:0``, each a dataset. Written
    to a temporary file beside ``path`` and renamed, so ``path`` is never half-written."""
    h5py = _h5py()
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with h5py.File(partial, "w") as f:
            f.attrs["layer_names"] = [name.encode() for name, _ in layers]
            f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.15.0"
            for name, weights in layers:
                group = f.create_group(name)
                full = [f"{name}/{weight}:0" for weight, _ in weights]
                group.attrs["weight_names"] = [w.encode() for w in full]
                for weight_name, (_, array) in zip(full, weights, strict=True):
                    group.create_dataset(weight_name, data=np.asarray(array, np.float32))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
