"""Reading and writing weights: NumPy ``.npz``, ``.safetensors`` and PyTorch ``.pth``.

Every model uses torchvision / timm parameter names, so a state dict travels between scratchnets
and PyTorch unchanged::

    save_checkpoint(model, "mnv2.safetensors")          # or "mnv2.npz"
    load_checkpoint(model, "mnv2.safetensors")
    load_checkpoint(model, "mobilenet_v2-7ebf99e0.pth")  # torchvision's file; needs torch
    load_checkpoint(model, {"features.0.0.weight": array, ...})

The format follows the file suffix. ``.pth`` / ``.pt`` / ``.bin`` are read with
``torch.load(weights_only=True)`` (torch is optional: without it, those files raise an ImportError
that says so). Every array comes back as a NumPy array; ``Module.load_state_dict`` then checks
names and shapes and reports every missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..arrays import to_numpy

#: file suffix -> format name
FORMATS = {
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".pth": "torch",
    ".pt": "torch",
    ".bin": "torch",
}
#: keys under which training scripts commonly nest the weights inside a torch checkpoint
_NESTED_KEYS = ("state_dict", "model", "model_state_dict")


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint (truncated, corrupt, or not a state dict)."""


def _format_of(path: Path) -> str:
    if path.name.lower().endswith(".pth.tar"):  # timm / ImageNet training scripts' checkpoints
        return "torch"
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the checkpoint format of {str(path)!r} from its suffix "
            f"{path.suffix!r}; expected one of {', '.join(FORMATS)}, .pth.tar"
        )
    return fmt


def _as_array(value, name: str) -> np.ndarray:
    """A NumPy array from a NumPy/device array or a torch tensor (bfloat16 widened to float32)."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            value = value.float()
        return value.numpy()
    array = np.asarray(to_numpy(value))
    if array.dtype == object:
        raise CheckpointError(
            f"state dict entry {name!r} is a {type(value).__name__}, not an array"
        )
    return array


def _read_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _read_safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _read_torch(path: Path) -> dict:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            f"reading {str(path)!r} (a PyTorch checkpoint) needs torch, which is not installed; "
            "install torch, or convert the file to .safetensors where torch is available"
        ) from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                return dict(obj[key])
        return dict(obj)
    raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict")


_READERS = {"npz": _read_npz, "safetensors": _read_safetensors, "torch": _read_torch}


def _strip_data_parallel_prefix(state: dict) -> dict:
    """``module.features.0...`` (saved from ``nn.DataParallel``) -> ``features.0...``."""
    if state and all(name.startswith("module.") for name in state):
        return {name[len("module.") :]: value for name, value in state.items()}
    return state


def read_state_dict(source) -> dict[str, np.ndarray]:
    """``{name: NumPy array}`` from a mapping (arrays or torch tensors) or a checkpoint file.

    Raises FileNotFoundError for a missing file, ValueError for an unknown suffix, ImportError
    for a ``.pth`` without torch, and CheckpointError for a file that cannot be parsed.
    """
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        fmt = _format_of(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
        try:
            state = _READERS[fmt](path)
        except (ImportError, CheckpointError):
            raise
        except Exception as err:  # every parser has its own error types for a damaged file
            raise CheckpointError(
                f"cannot read {str(path)!r} as a {fmt} checkpoint ({path.stat().st_size} bytes; "
                f"truncated or corrupt?): {type(err).__name__}: {err}"
            ) from err
    state = _strip_data_parallel_prefix(state)
    return {str(name): _as_array(value, str(name)) for name, value in state.items()}


def load_checkpoint(model, source, strict: bool = True):
    """Load weights from ``source`` (a path or a mapping) into ``model``; return its
    ``IncompatibleKeys``. With ``strict=True`` any missing or unexpected key is a ValueError that
    names them; a shape mismatch always is."""
    return model.load_state_dict(read_state_dict(source), strict=strict)


def save_checkpoint(source, path) -> Path:
    """Write a model's state dict (or a ``{name: array}`` mapping) to ``path`` (.npz or
    .safetensors, by suffix) and return the path.

    The file is written under a temporary name and then renamed, so an interrupted save never
    leaves a truncated checkpoint under the final name.
    """
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "torch":
        raise ValueError(
            f"saving {str(path)!r}: scratchnets writes .npz or .safetensors (both load in "
            "PyTorch via numpy / safetensors.torch); it does not write pickled .pth files"
        )
    state = source.state_dict() if hasattr(source, "state_dict") else source
    # C order for safetensors (np.ascontiguousarray would turn 0-d arrays into 1-d ones)
    arrays = {name: np.asarray(_as_array(v, name), order="C") for name, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "npz":
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)
    else:
        from safetensors.numpy import save_file

        save_file(arrays, str(tmp))
    os.replace(tmp, path)
    return path
