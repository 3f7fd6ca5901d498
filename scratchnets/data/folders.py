"""Find labelled images on disk: the three common Cats-vs-Dogs layouts, and plain class folders.

Layouts recognised by :func:`find_splits` (folder names are matched case-insensitively)::

    root/train/cat/*.jpg  root/val/cat/*.jpg          split folders holding one folder per class
    root/train/cats/...   root/validation/cats/...    (cats_and_dogs_filtered, as downloaded)
    root/train/cat.0.jpg  root/train/dog.0.jpg        Kaggle's flat folder: class = file-name prefix
    root/PetImages/Cat/0.jpg  root/PetImages/Dog/0.jpg Microsoft's download: class folders, no split

A layout without a validation folder gets a stratified, seeded hold-out (``val_fraction`` of every
class). ``root`` may also be a folder that contains exactly one such tree (an extracted archive).

Class names are normalised -- lower case, and a plural ``s`` dropped (``Cats`` -> ``cat``, but
``glass`` and ``bus`` stay) -- then sorted, so label ``i`` is ``classes[i]`` whatever the layout:
the same convention as ``torchvision.datasets.ImageFolder`` (sorted folder names).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: file extensions read as images (lower case)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: accepted folder names for each split
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "valid")}
#: ``cat.12.jpg``, ``cat_12.jpg``, ``american_bulldog_12.jpg`` -> the class is the text before the id
_PREFIX_RE = re.compile(r"^([A-Za-z][A-Za-z_\- ]*?)[._\- ]?\d+$")
#: how many single-folder wrappers (``archive/PetImages/...``) are looked through
_MAX_WRAPPER_DEPTH = 3


@dataclass(frozen=True)
class ImageList:
    """Image files with integer labels: ``labels[k]`` indexes ``classes`` for ``paths[k]``."""

    paths: tuple[Path, ...]
    labels: np.ndarray  # (n,) int64
    classes: tuple[str, ...]

    def __post_init__(self):
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """Number of images per class name."""
        per_label = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, per_label, strict=True)}

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageList:
        """The images at ``indices`` (same classes), e.g. a small subset for a quick run."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageList(tuple(self.paths[i] for i in indices), self.labels[indices], self.classes)


def normalise_class_name(name: str) -> str:
    """``"Cats"`` -> ``"cat"``: lower case, and one plural ``s`` removed (not from ``ss`` or short names)."""
    name = name.strip().lower()
    if len(name) > 3 and name.endswith("s") and not name.endswith("ss"):
        name = name[:-1]
    return name


def _is_visible(path: Path) -> bool:
    """False for hidden files and macOS resource forks (``._cat.1.jpg``, ``__MACOSX``)."""
    return not (path.name.startswith(".") or path.name == "__MACOSX")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and _is_visible(path) and path.is_file()


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and _is_visible(p))


def _child(directory: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of ``directory`` whose lower-cased name is one of ``names``, if any."""
    for sub in _subdirs(directory):
        if sub.name.lower() in names:
            return sub
    return None


def _images_below(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if _is_image(p) and _is_visible(p.parent))


def _labelled_files(directory: Path) -> dict[str, list[Path]]:
    """``{class: files}`` from class folders, or else from the file-name prefixes of a flat folder."""
    by_class: dict[str, list[Path]] = {}
    for sub in _subdirs(directory):
        files = _images_below(sub)
        if files:
            by_class.setdefault(normalise_class_name(sub.name), []).extend(files)
    if by_class:
        return by_class
    for path in sorted(p for p in directory.iterdir() if _is_image(p)):
        match = _PREFIX_RE.match(path.stem)
        if match:
            by_class.setdefault(normalise_class_name(match.group(1).rstrip("_- ")), []).append(path)
    return by_class


def _to_image_list(by_class: dict[str, list[Path]], classes: Sequence[str]) -> ImageList:
    index = {name: i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for name in sorted(by_class):
        files = sorted(by_class[name])
        paths += files
        labels += [index[name]] * len(files)
    return ImageList(tuple(paths), np.asarray(labels, dtype=np.int64), tuple(classes))


def list_images(directory: str | Path, classes: Sequence[str] | None = None) -> ImageList:
    """The labelled images of one folder: one sub-folder per class (or ``cat.N.jpg`` file names).

    ``classes`` pins the label order (e.g. a checkpoint's class list); then every class found must
    be one of them. Without it, the sorted normalised names found become the classes.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {directory} does not exist or is not a directory")
    by_class = _labelled_files(directory)
    if not by_class:
        raise ValueError(
            f"no labelled images in {directory}: expected one sub-folder per class "
            f"(e.g. {directory}/cat/*.jpg) or files named like cat.0.jpg"
        )
    if classes is None:
        classes = sorted(by_class)
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        raise ValueError(
            f"classes {unknown} in {directory} are not among the known classes {list(classes)}"
        )
    return _to_image_list(by_class, classes)


def holdout_split(
    images: ImageList, val_fraction: float, seed: int = 0
) -> tuple[ImageList, ImageList]:
    """Stratified split: ``round(val_fraction * n_c)`` images of every class ``c`` go to validation.

    Which ones is fixed by ``seed`` (a permutation of each class's sorted files), so the split is the
    same on every run and every machine.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(len(images), dtype=bool)
    for label in range(len(images.classes)):
        members = np.flatnonzero(images.labels == label)  # already sorted by path
        n_val = int(round(val_fraction * len(members)))
        val_mask[rng.permutation(members)[:n_val]] = True
    return images.subset(np.flatnonzero(~val_mask)), images.subset(np.flatnonzero(val_mask))


def _find_layout(
    root: Path, depth: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
    """``(train_by_class, val_by_class or None)`` for the first layout recognised under ``root``."""
    train_dir = _child(root, SPLIT_NAMES["train"])
    if train_dir is not None:
        val_dir = _child(root, SPLIT_NAMES["val"])
        train = _labelled_files(train_dir)
        if len(train) >= 2:
            return train, (_labelled_files(val_dir) if val_dir is not None else None)
    pet_images = _child(root, ("petimages",))
    labelled = _labelled_files(pet_images if pet_images is not None else root)
    if len(labelled) >= 2:  # one "class" is a wrapper folder (an extracted archive), look inside
        return labelled, None
    subdirs = _subdirs(root)
    if len(subdirs) == 1 and depth < _MAX_WRAPPER_DEPTH:
        return _find_layout(subdirs[0], depth + 1)
    raise ValueError(
        f"no images of two or more classes in a known layout under {root}: expected train/ and val/ (or validation/) "
        "folders with one sub-folder per class, a flat train/ folder of cat.N.jpg files, or "
        "PetImages/Cat and PetImages/Dog"
    )


def find_splits(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, ImageList]:
    """``{"train": ImageList, "val": ImageList}`` for a dataset folder in any known layout.

    Both splits share one sorted class list. Without a validation folder, ``val_fraction`` of every
    class is held out (see :func:`holdout_split`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist or is not a directory")
    train_by_class, val_by_class = _find_layout(root, depth=0)
    classes = sorted(train_by_class)
    if val_by_class is None:
        train, val = holdout_split(_to_image_list(train_by_class, classes), val_fraction, seed)
        return {"train": train, "val": val}
    unknown = sorted(set(val_by_class) - set(classes))
    if unknown or not val_by_class:
        raise ValueError(
            f"validation classes {sorted(val_by_class)} under {root} do not match the training "
            f"classes {classes}"
        )
    return {
        "train": _to_image_list(train_by_class, classes),
        "val": _to_image_list(val_by_class, classes),
    }
