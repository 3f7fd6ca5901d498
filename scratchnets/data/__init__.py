"""Cats vs Dogs style image data: folders, decoding, augmentation, caching, batching, download.

    from scratchnets import data
    splits = data.find_splits("../shared/data/cats_vs_dogs")      # {"train": ImageList, "val": ...}
    train = data.ImageFolderDataset(splits["train"], image_size=128, name="train")
    loader = data.DataLoader(train, batch_size=32, shuffle=True, seed=0, drop_last=True,
                             transforms=data.train_transforms(128))
    for x, y in loader:      # x float32 (32, 3, 128, 128) normalised, y int64 (32,)
        ...

Modules: ``folders`` (layouts, class names, splits), ``decode`` (Pillow -> RGB uint8,
``CorruptImageError``), ``transforms`` (augmentation and presets), ``dataset`` (cache and
``DataLoader``), ``download`` (``cats_and_dogs_filtered.zip``), ``cli`` (``scratchnets data``).
"""

from __future__ import annotations

from .dataset import DataLoader, ImageFolderDataset, sample_rng
from .decode import CorruptImageError, decode_image, open_rgb
from .download import DEFAULT_URL, DownloadError, default_cache_dir, download_cats_and_dogs
from .folders import (
    IMAGE_EXTENSIONS,
    ImageList,
    find_splits,
    holdout_split,
    list_images,
    normalise_class_name,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    POLICIES,
    RANDAUGMENT_OPS,
    CenterCrop,
    CenterSquareCrop,
    ColorJitter,
    Compose,
    Normalize,
    PixelsCHW,
    RandAugment,
    RandomErasing,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomRotation,
    Resize,
    ResizeTo,
    cutmix,
    eval_transforms,
    mixup,
    one_hot,
    pretrained_transforms,
    resize_size,
    train_transforms,
)

__all__ = [
    "CenterCrop",
    "CenterSquareCrop",
    "INTERPOLATIONS",
    "PixelsCHW",
    "ResizeTo",
    "pretrained_transforms",
    "ColorJitter",
    "Compose",
    "CorruptImageError",
    "DEFAULT_URL",
    "DataLoader",
    "DownloadError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ImageList",
    "Normalize",
    "POLICIES",
    "RANDAUGMENT_OPS",
    "RandAugment",
    "RandomErasing",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "RandomRotation",
    "Resize",
    "cutmix",
    "decode_image",
    "default_cache_dir",
    "download_cats_and_dogs",
    "eval_transforms",
    "find_splits",
    "holdout_split",
    "list_images",
    "mixup",
    "normalise_class_name",
    "one_hot",
    "open_rgb",
    "resize_size",
    "sample_rng",
    "train_transforms",
]
