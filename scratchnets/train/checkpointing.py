"""Training checkpoints: one ``.npz`` file holding every array of a run plus one JSON metadata entry.

Format (version 1). A NumPy ``.npz`` archive (an uncompressed zip of ``.npy`` files, readable with
``np.load`` and no scratchnets) whose entries are

* ``__meta__``: a ``uint8`` array holding UTF-8 JSON ``{"format": "scratchnets.train-checkpoint",
  "version": 1, "state": ...}``;
* one entry per array of the state, named by its path in the state tree, e.g.
  ``weights/features.0.0.weight``, ``ema/classifier.1.bias``, ``optimizer/state/3/exp_avg``.

``state`` is the checkpoint's tree with every array replaced by ``{"__array__": "<entry>"}``; all
other leaves (ints, floats, strings, booleans, None) are stored in the JSON itself. Python's JSON
writes floats with ``repr``, which round-trips exactly, and integers of any size (the 128-bit
PCG64 generator states), so loading restores the tree bit for bit. NumPy scalars (a float32 step
count, say) are stored as 0-d arrays to keep their dtype.

The tree a training run saves (see ``loop.py``)::

    model        {"name", "num_classes", "width_mult", "classes", "image_size", "eval_weights"}
    config       TrainConfig.to_dict()
    weights      model.state_dict()              torchvision / timm names
    ema          ModelEMA.state_dict() or None
    optimizer    Optimizer.state_dict()          torch's layout
    scheduler    LRScheduler.state_dict() or None
    progress     {"epoch", "step_in_epoch", "global_step", "finished", "stop_reason", ...}
    rng          {"loader": DataLoader.state_dict(), "modules": {name: bit_generator.state}}
    best, early_stopping, history, elapsed_s, ...

Why ``.npz`` + JSON rather than safetensors + JSON: safetensors' header metadata is a flat
``str -> str`` map (the nested state would be JSON-in-a-string anyway), its arrays must be
contiguous tensors with no 0-d scalars of their own dtype, and ``.npz`` needs nothing beyond NumPy
to open. The weights alone export to either format with ``scratchnets.models.save_checkpoint``.

Writes are atomic: the archive goes to a temporary file in the destination folder, is flushed and
``fsync``-ed, then ``os.replace``-d over the old file (and the folder is fsync-ed), so a crash or
a kill during a save leaves the previous checkpoint intact, never half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..models.checkpoint import CheckpointError

FORMAT = "scratchnets.train-checkpoint"
VERSION = 1
META_KEY = "__meta__"
_ARRAY_TAG = "__array__"

__all__ = [
    "CheckpointError",
    "FORMAT",
    "VERSION",
    "atomic_write",
    "load_checkpoint",
    "load_weights_into",
    "save_checkpoint",
]


# ----------------------------------------------------------------------------- atomic writing


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file by calling ``write(f)`` on a temporary file beside ``path``, then rename it.

    temp file in the same folder (same filesystem, so the rename is atomic) -> ``write`` ->
    flush + fsync -> ``os.replace(temp, path)`` -> fsync the folder. If ``write`` raises (or the
    process is interrupted), the temporary file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ------------------------------------------------------------------ tree <-> (JSON, arrays)


def _flatten(node, key: str, arrays: dict[str, np.ndarray]):
    """JSON-able copy of ``node`` with every array moved into ``arrays[<its path>]``."""
    if isinstance(node, (np.ndarray, np.generic)):
        array = np.asarray(node)  # 0-d stays 0-d (np.ascontiguousarray would make it 1-d)
        arrays[key] = array if array.flags.c_contiguous else array.copy(order="C")
        return {_ARRAY_TAG: key}
    if isinstance(node, Mapping):
        out = {}
        for name, value in node.items():
            name = str(
                name
            )  # JSON keys are strings (optimizer state indices are read back by int())
            if "/" in name or "\x00" in name or name == _ARRAY_TAG:  # zip names end at NUL
                raise ValueError(
                    f"checkpoint keys may not contain '/' or NUL or be {_ARRAY_TAG!r}: {name!r}"
                )
            out[name] = _flatten(value, f"{key}/{name}" if key else name, arrays)
        return out
    if isinstance(node, (list, tuple)):
        return [_flatten(v, f"{key}/{i}", arrays) for i, v in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"cannot store {type(node).__name__} at {key!r} in a checkpoint")


def _unflatten(node, arrays, path: Path):
    if isinstance(node, dict):
        if set(node) == {_ARRAY_TAG}:
            key = node[_ARRAY_TAG]
            if key not in arrays:
                raise CheckpointError(
                    f"{str(path)!r} is corrupt: its metadata names a missing array {key!r}"
                )
            return arrays[key]
        return {name: _unflatten(value, arrays, path) for name, value in node.items()}
    if isinstance(node, list):
        return [_unflatten(v, arrays, path) for v in node]
    return node


def _write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """The archive writer (a seam: tests replace it with one that fails halfway)."""
    np.savez(f, **arrays)


def save_checkpoint(path: str | Path, state: Mapping) -> Path:
    """Write ``state`` (a tree of dicts, lists, arrays and JSON scalars) atomically to ``path``."""
    arrays: dict[str, np.ndarray] = {}
    tree = _flatten(state, "", arrays)
    if META_KEY in arrays:
        raise ValueError(f"the state may not contain a top-level {META_KEY!r}")
    doc = {"format": FORMAT, "version": VERSION, "state": tree}
    arrays[META_KEY] = np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda f: _write_npz(f, arrays))


# ------------------------------------------------------------------------------------ loading


def load_checkpoint(path: str | Path) -> dict:
    """The state tree saved by :func:`save_checkpoint`, with arrays as NumPy arrays.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` (a ValueError) that
    says what is wrong for an empty, truncated or corrupt file, for a file that is not a
    scratchnets training checkpoint (another kind of file, or bare weights), and for one written
    by a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
    if size == 0:
        raise CheckpointError(f"{str(path)!r} is empty (0 bytes): not a checkpoint")
    if magic != b"PK\x03\x04":  # every .npz (zip) starts with a local file header
        raise CheckpointError(
            f"{str(path)!r} is not a scratchnets training checkpoint (not a .npz archive; "
            f"starts with {magic!r}); bare weights (.safetensors/.npz/.pth) load with "
            "scratchnets.models.load_checkpoint"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files
            if META_KEY not in names:
                raise CheckpointError(
                    f"{str(path)!r} is a .npz archive but not a scratchnets training checkpoint "
                    f"(no {META_KEY!r} entry; its {len(names)} entries look like "
                    f"{', '.join(names[:3])}); bare weights load with "
                    "scratchnets.models.load_checkpoint"
                )
            arrays = {name: archive[name] for name in names}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read {str(path)!r} ({size} bytes): the archive is truncated or corrupt "
            f"({type(err).__name__}: {err}); use the other checkpoint of the run (best/last) "
            "or retrain"
        ) from err
    try:
        doc = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} has unreadable metadata: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a scratchnets training checkpoint (format tag missing)"
        )
    if int(doc.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{str(path)!r} is checkpoint format version {doc['version']}; this scratchnets reads "
            f"up to version {VERSION} (upgrade scratchnets)"
        )
    return _unflatten(doc["state"], arrays, path)


def describe_model(meta: Mapping) -> str:
    """``"mobilenet_v2 (width_mult 0.5, 2 classes)"`` from a checkpoint's ``model`` entry."""
    return f"{meta['name']} (width_mult {meta['width_mult']}, {meta['num_classes']} classes)"


def load_weights_into(
    model, weights: Mapping, source: str, saved_model: Mapping | None = None
) -> None:
    """Copy ``weights`` into ``model``, or raise CheckpointError naming the mismatched keys.

    ``source`` (the file) and ``saved_model`` (the checkpoint's ``model`` entry) make the message
    say which architecture the checkpoint holds. Nothing is written unless everything fits.
    """
    current = {name: tuple(a.shape) for name, a in model.state_dict().items()}
    missing = [name for name in current if name not in weights]
    unexpected = [name for name in weights if name not in current]
    mis_shaped = [
        f"{name} {tuple(np.shape(weights[name]))} vs {shape}"
        for name, shape in current.items()
        if name in weights and tuple(np.shape(weights[name])) != shape
    ]
    if missing or unexpected or mis_shaped:

        def few(items):
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            return ", ".join(items[:5]) + more

        held = f" holds {describe_model(saved_model)} weights" if saved_model else ""
        parts = [
            f"{label} ({len(items)}): {few(items)}"
            for label, items in (
                ("missing from the checkpoint", missing),
                ("unexpected in the checkpoint", unexpected),
                ("shape mismatch (checkpoint vs model)", mis_shaped),
            )
            if items
        ]
        raise CheckpointError(
            f"checkpoint {source!r}{held} that do not fit this {type(model).__name__} "
            f"(another architecture, width or class count?); " + "; ".join(parts)
        )
    model.load_state_dict(dict(weights))
