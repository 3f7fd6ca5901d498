"""Bad command-line input ends each command with one clean line on stderr (what failed, what to
do) and a non-zero exit status, never a traceback; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def write_images(folder: Path, count: int, rng) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """data/{train,val}/{cat,dog}, a one-class folder, a folder of unreadable files, an empty
    folder, a truncated and a foreign checkpoint."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            write_images(root / "data" / split / label, 3, rng)
    write_images(root / "oneclass" / "cat", 3, rng)
    for label in ("cat", "dog"):
        (root / "unreadable" / label).mkdir(parents=True)
        for i in range(2):
            (root / "unreadable" / label / f"{i}.jpg").write_bytes(b"not an image")
    (root / "empty").mkdir()
    (root / "truncated.npz").write_bytes(b"PK\x03\x04 cut short")
    np.savez(root / "foreign.npz", weights=np.zeros(3))
    return root


def scratchnets(workdir: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    """``scratchnets ARGS`` in ``workdir`` without network (and without SCRATCHNETS_DEBUG unless
    ``extra_env`` sets it)."""
    env = {k: v for k, v in os.environ.items() if k != "SCRATCHNETS_DEBUG"} | extra_env
    env |= {
        "PYTHONPATH": str(ROOT),
        "SCRATCHNETS_CACHE": str(workdir / "cache"),  # no downloaded dataset in it
        "https_proxy": "http://127.0.0.1:9",  # no network: the connection is refused at once
        "http_proxy": "http://127.0.0.1:9",
    }
    command = [sys.executable, "-m", "scratchnets.cli", *args]
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )


TRAIN = ("train", "--quiet", "--epochs", "1", "--batch-size", "2", "--out")
CASES = {
    "no --data, no network": (("train", "--quiet", "--out", "r"), "--data DIR takes a local"),
    "missing folder": ((*TRAIN, "r", "--data", "nowhere"), "nowhere does not exist"),
    "empty folder": ((*TRAIN, "r", "--data", "empty"), "no images of two or more classes"),
    "one class": ((*TRAIN, "r", "--data", "oneclass"), "two or more classes"),
    "unreadable images": ((*TRAIN, "r", "--data", "unreadable"), "none of the 4 images can be"),
    "unknown model": ((*TRAIN, "r", "--data", "data", "--model", "nosuch"), "unknown model"),
    "zero epochs": (("train", "--data", "data", "--epochs", "0"), "epochs must be positive"),
    "negative batch": (("train", "--data", "data", "--batch-size", "-1"), "batch_size must be"),
    "zero lr": (("train", "--data", "data", "--lr", "0"), "lr must be positive"),
    "resume without last.npz": (
        ("train", "--out", "fresh", "--data", "data", "--resume"),
        "no fresh",
    ),
    "unwritable output": (
        (*TRAIN, "data/train/cat/0.jpg/run", "--data", "data"),
        "cannot write the output folder",
    ),
    "truncated checkpoint": (("evaluate", "truncated.npz", "--data", "data"), "truncated"),
    "foreign checkpoint": (("predict", "foreign.npz", "data/val/cat/0.jpg"), "not a scratchnets"),
    "missing checkpoint": (("predict", "nothing.npz", "data/val/cat/0.jpg"), "no checkpoint"),
    "unknown summary model": (("summary", "nosuch"), "unknown model 'nosuch'"),
    "zero resolution": (("summary", "mobilenet_v2", "--resolution", "0"), "--resolution must"),
}


@pytest.mark.parametrize("case", CASES)
def test_one_clean_line_and_a_failing_exit(workdir, case):
    args, message = CASES[case]
    done = scratchnets(workdir, *args)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_predict_a_missing_image_names_it(workdir):
    trained = scratchnets(workdir, *TRAIN, "run", "--data", "data", "--image-size", "32")
    assert trained.returncode == 0, trained.stderr
    done = scratchnets(workdir, "predict", "run/best.npz", "data/val/cat/0.jpg", "missing.jpg")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("missing.jpg: error:") and "No such file" in done.stderr
    assert done.stdout.startswith("data/val/cat/0.jpg: ")  # the readable image still answers


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_debug_shows_the_traceback(workdir, where):
    if where == "flag":
        done = scratchnets(workdir, "summary", "nosuch", "--debug")
    else:
        done = scratchnets(workdir, "summary", "nosuch", SCRATCHNETS_DEBUG="1")
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert "ValueError: unknown model 'nosuch'" in done.stderr
