"""``scratchnets data download`` and ``scratchnets data info``.

    scratchnets data download [--dest DIR] [--url URL] [--quiet]
    scratchnets data info [DIR]

``download`` fetches ``cats_and_dogs_filtered.zip`` into the cache (``$SCRATCHNETS_CACHE`` or
``~/.cache/scratchnets``; ``--dest`` overrides), verifies and extracts it, and prints the dataset
folder (on stdout, alone, so scripts can capture it). ``info`` prints the layout found under DIR
(default: the downloaded dataset): splits, classes and image counts.
"""

from __future__ import annotations

import sys

from .download import DEFAULT_URL, DownloadError, default_cache_dir, download_cats_and_dogs
from .folders import find_splits


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="download the Cats vs Dogs subset, or show what a dataset folder holds",
        description="Dataset utilities: `download` fetches cats_and_dogs_filtered.zip (2,000 "
        "training and 1,000 validation images) into a cache; `info` lists splits and classes.",
    )
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = actions.add_parser(
        "download",
        help="download, verify and extract cats_and_dogs_filtered; print its folder",
        description="Download (resumable), verify (zip CRCs and folder layout) and extract the "
        "Cats vs Dogs subset; a second run reuses the extracted copy. Prints the dataset folder.",
    )
    d.add_argument(
        "--dest",
        metavar="DIR",
        help=f"cache folder (default $SCRATCHNETS_CACHE or {default_cache_dir()})",
    )
    d.add_argument("--url", default=DEFAULT_URL, help=f"archive address (default {DEFAULT_URL})")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=run_download)

    i = actions.add_parser(
        "info",
        help="splits, classes and image counts found under a dataset folder",
        description="Show how DIR is read: the train/val splits, the class names and the number of "
        "images per class (a split without a validation folder gets a 20%% hold-out).",
    )
    i.add_argument("dir", nargs="?", help="dataset folder (default: the downloaded copy)")
    i.set_defaults(func=run_info)


def run_download(args) -> int:
    try:
        path = download_cats_and_dogs(args.dest, args.url, progress=not args.quiet)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def run_info(args) -> int:
    root = args.dir or default_cache_dir() / "cats_and_dogs_filtered"
    try:
        splits = find_splits(root)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{root}: classes {list(splits['train'].classes)}")
    for split, images in splits.items():
        counts = ", ".join(f"{name} {n}" for name, n in images.counts().items())
        print(f"  {split:5s} {len(images):6d} images ({counts})")
    return 0
