"""scratchnets.data: folder layouts, decoding of odd files, transforms, the cache and the loader.

Every test builds its own tiny images in ``tmp_path``; one smoke test reads 8 real photos from
``../shared/data/cats_vs_dogs`` (beside the checkout) when that folder exists.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from scratchnets import data
from scratchnets.data import dataset as dataset_module

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cats_vs_dogs"  # ../shared


# --------------------------------------------------------------------------- tiny image trees


def _noise(seed: int, size=(24, 20)) -> np.ndarray:
    """(H, W, 3) uint8 noise: H = size[0], W = size[1]."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _save(path: Path, pixels: np.ndarray | Image.Image, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    img.save(path, fmt)
    return path


def _bad_and_odd_files(folder: Path) -> dict[str, Path]:
    """Three unreadable files and four readable odd ones in ``folder``."""
    jpeg = io.BytesIO()
    Image.fromarray(_noise(99, (64, 64))).save(jpeg, "JPEG")
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "empty": folder / "bad_empty.jpg",
        "truncated": folder / "bad_truncated.jpg",
        "text": folder / "bad_text.jpg",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    files["text"].write_text("<html>not an image</html>")
    files["cmyk"] = _save(
        folder / "odd_cmyk.jpg", Image.new("CMYK", (21, 17), (0, 255, 255, 0))
    )  # red
    files["gray"] = _save(
        folder / "odd_gray.jpg", Image.fromarray(np.full((15, 19), 200, np.uint8), "L")
    )
    files["png"] = _save(folder / "odd_png.jpg", _noise(5, (18, 22)), fmt="PNG")
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 255] + [0] * 765)
    palette.info["transparency"] = 0  # fully transparent -> white
    files["palette"] = _save(folder / "odd_palette.jpg", palette, fmt="PNG")
    return files


def _split_tree(root: Path, n: int = 4) -> Path:
    """cats_and_dogs_filtered: root/{train,validation}/{cats,dogs}/<class>.<k>.jpg"""
    for split, offset in (("train", 0), ("validation", 100)):
        for c, name in enumerate(("cats", "dogs")):
            for k in range(n):
                _save(
                    root / split / name / f"{name[:-1]}.{offset + k}.jpg",
                    _noise(1000 * c + offset + k),
                )
    return root


def _kaggle_tree(root: Path, n: int = 10) -> Path:
    """Kaggle: flat root/train/{cat,dog}.<k>.jpg, and an unlabelled root/test1/."""
    for k in range(n):
        _save(root / "train" / f"cat.{k}.jpg", _noise(k))
        _save(root / "train" / f"dog.{k}.jpg", _noise(500 + k))
    _save(root / "test1" / "1.jpg", _noise(7))
    return root


def _petimages_tree(root: Path, n: int = 5) -> tuple[Path, dict[str, Path]]:
    """Microsoft: root/PetImages/{Cat,Dog}/<k>.jpg plus the bad and odd files under Cat/."""
    for k in range(n):
        _save(root / "PetImages" / "Cat" / f"{k}.jpg", _noise(k))
        _save(root / "PetImages" / "Dog" / f"{k}.jpg", _noise(300 + k))
    (root / "PetImages" / "Cat" / "Thumbs.db").write_bytes(b"\0" * 10)
    return root, _bad_and_odd_files(root / "PetImages" / "Cat")


# --------------------------------------------------------------------------- folders


@pytest.mark.parametrize(
    "name, expected",
    [("Cats", "cat"), ("dogs", "dog"), ("Dog", "dog"), ("glass", "glass"), ("bus", "bus")],
)
def test_class_names_are_normalised(name, expected):
    assert data.normalise_class_name(name) == expected


def test_split_layout_with_plural_folders(tmp_path):
    splits = data.find_splits(_split_tree(tmp_path / "cats_and_dogs_filtered"))
    for split in ("train", "val"):
        assert splits[split].classes == ("cat", "dog")
        assert splits[split].counts() == {"cat": 4, "dog": 4}
    for path, label in zip(splits["val"].paths, splits["val"].labels, strict=True):
        assert path.parts[-3] == "validation"
        assert path.name.startswith(("cat", "dog")[label])
    # an extracted archive: the same tree one folder down is found too
    assert data.find_splits(tmp_path).keys() == {"train", "val"}


def test_kaggle_flat_layout_holds_out_a_stratified_seeded_split(tmp_path):
    root = _kaggle_tree(tmp_path)
    splits = data.find_splits(root, val_fraction=0.2, seed=3)
    assert splits["train"].classes == ("cat", "dog")
    assert splits["train"].counts() == {"cat": 8, "dog": 8}
    assert splits["val"].counts() == {"cat": 2, "dog": 2}
    all_paths = set(splits["train"].paths) | set(splits["val"].paths)
    assert len(all_paths) == 20 and not set(splits["train"].paths) & set(splits["val"].paths)
    for images in splits.values():  # labels come from the file-name prefix
        assert all(
            p.name.split(".")[0] == images.classes[y]
            for p, y in zip(images.paths, images.labels, strict=True)
        )
    assert data.find_splits(root, val_fraction=0.2, seed=3)["val"].paths == splits["val"].paths
    assert data.find_splits(root, val_fraction=0.2, seed=4)["val"].paths != splits["val"].paths


def test_petimages_layout_and_class_folder_listing(tmp_path):
    root, files = _petimages_tree(tmp_path)
    splits = data.find_splits(root, val_fraction=0.4)
    assert splits["train"].classes == ("cat", "dog")
    n_cat = 5 + len(files)  # Thumbs.db is not an image file
    assert sum(splits[s].counts()["cat"] for s in splits) == n_cat
    listed = data.list_images(root / "PetImages")
    assert listed.counts() == {"cat": n_cat, "dog": 5}
    only_dogs = data.list_images(root / "PetImages", classes=("cat", "dog")).subset([n_cat])
    assert only_dogs.labels.tolist() == [1]
    with pytest.raises(ValueError, match=r"not among the known classes"):
        data.list_images(root / "PetImages", classes=("cat", "horse"))


def test_unknown_layout_and_missing_folder_give_clear_errors(tmp_path):
    (tmp_path / "empty" / "nothing").mkdir(parents=True)
    with pytest.raises(ValueError, match="known layout"):
        data.find_splits(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.find_splits(tmp_path / "missing")


# --------------------------------------------------------------------------- decoding


def test_odd_files_decode_to_rgb_and_bad_ones_raise_naming_the_file(tmp_path):
    files = _bad_and_odd_files(tmp_path)
    for kind in ("empty", "truncated", "text"):
        with pytest.raises(data.CorruptImageError, match=files[kind].name) as info:
            data.decode_image(files[kind])
        assert info.value.path == files[kind]
    for kind, size in (
        ("cmyk", (17, 21)),
        ("gray", (15, 19)),
        ("png", (18, 22)),
        ("palette", (16, 16)),
    ):
        pixels = data.decode_image(files[kind])
        assert pixels.dtype == np.uint8 and pixels.shape == (*size, 3), kind
    assert np.array_equal(data.decode_image(files["png"]), _noise(5, (18, 22)))  # lossless
    gray = data.decode_image(files["gray"]).astype(int)
    assert np.all(gray[..., 0] == gray[..., 1]) and abs(gray.mean() - 200) < 2
    red = data.decode_image(files["cmyk"]).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert np.all(data.decode_image(files["palette"]) == 255)  # transparent over white


def test_dataset_skips_unreadable_files_with_one_warning_per_split(tmp_path):
    root, files = _petimages_tree(tmp_path)
    images = data.list_images(root / "PetImages")
    ds = data.ImageFolderDataset(images, image_size=8, name="train")
    loader = data.DataLoader(
        ds, batch_size=4, shuffle=True, seed=0, transforms=data.eval_transforms(8)
    )
    with pytest.warns(RuntimeWarning, match=r"train: skipped 3 unreadable image\(s\)") as record:
        seen = sum(len(y) for _, y in loader)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert seen == len(images) - 3
    bad = {files[k] for k in ("empty", "truncated", "text")}
    assert {images.paths[i] for i in ds.skipped} == bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second epoch warns no more
        assert sum(len(y) for _, y in loader) == len(images) - 3


# --------------------------------------------------------------------------- transforms


def _rng(seed=0):
    return np.random.default_rng(seed)


@settings(max_examples=10)
@given(
    h=st.integers(9, 70),
    w=st.integers(9, 70),
    size=st.integers(4, 24),
    policy=st.sampled_from(data.POLICIES),
    seed=st.integers(0, 2**32 - 1),
)
def test_train_and_eval_presets_give_normalised_float_chw(h, w, size, policy, seed):
    img = _noise(seed % 1000, (h, w))
    lo = (0 - np.max(data.IMAGENET_MEAN)) / np.min(data.IMAGENET_STD)
    hi = (1 - np.min(data.IMAGENET_MEAN)) / np.min(data.IMAGENET_STD)
    for pipeline in (data.train_transforms(size, policy), data.eval_transforms(size)):
        out = pipeline(img, _rng(seed))
        assert out.shape == (3, size, size) and out.dtype == np.float32 and out.flags.c_contiguous
        assert np.all(out >= lo - 1e-5) and np.all(
            out <= hi + 1e-5
        )  # erased pixels are 0, inside too
        assert np.array_equal(out, pipeline(img, _rng(seed)))  # same generator state, same pixels


def test_random_pipelines_depend_on_the_seed():
    img = _noise(1, (40, 50))
    for policy in ("basic", "standard", "randaugment"):
        t = data.train_transforms(16, policy)
        outs = [t(img, _rng(s)) for s in range(6)]
        assert len({o.tobytes() for o in outs}) > 1, policy


@settings(max_examples=25)
@given(h=st.integers(1, 300), w=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_random_resized_crop_window_stays_in_bounds(h, w, seed):
    crop = data.RandomResizedCrop(8)
    top, left, ch, cw = crop.get_params(h, w, _rng(seed))
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch >= 1 and cw >= 1
    # aspect within [3/4, 4/3] up to rounding each side by 1/2 (also in the central fallback)
    assert (cw - 0.5) / (ch + 0.5) <= 4 / 3 + 1e-12 and (cw + 0.5) / (
        ch - 0.5 + 1e-12
    ) >= 3 / 4 - 1e-12
    if 0.5 <= w / h <= 2:  # the fallback keeps >= 3/8 of the area here, so the area is in scale too
        side = math.sqrt(ch * cw)
        assert math.sqrt(0.08 * h * w) - 1 <= side <= math.sqrt(h * w) + 1e-9


def test_random_resized_crop_scale_bounds_and_exact_window():
    crop = data.RandomResizedCrop(8, scale=(0.5, 0.6))
    fractions = [np.prod(crop.get_params(200, 200, _rng(s))[2:]) / 200**2 for s in range(200)]
    assert 0.49 <= min(fractions) and max(fractions) <= 0.61
    assert max(fractions) - min(fractions) > 0.05  # the whole range is used
    img = _noise(3, (32, 32))
    exact = data.RandomResizedCrop(
        16, scale=(0.25, 0.25), ratio=(1.0, 1.0)
    )  # 16x16 window, no scaling
    top, left, _, _ = exact.get_params(32, 32, _rng(7))
    assert np.array_equal(exact(img, _rng(7)), img[top : top + 16, left : left + 16])


def test_flip_resize_center_crop_geometry():
    img = _noise(4, (10, 13))
    assert np.array_equal(data.RandomHorizontalFlip(p=1.0)(img, _rng()), img[:, ::-1])
    assert data.RandomHorizontalFlip(p=0.0)(img, _rng()) is img
    flips = [data.RandomHorizontalFlip()(img, _rng(s)) is not img for s in range(200)]
    assert 60 < sum(flips) < 140
    assert data.Resize(20)(img, None).shape == (20, int(20 * 13 / 10), 3)  # torchvision's rounding
    assert data.Resize(20)(img.transpose(1, 0, 2), None).shape == (int(20 * 13 / 10), 20, 3)
    assert np.array_equal(data.CenterCrop(6)(img, None), img[2:8, 4:10])  # round(4/2), round(7/2)
    padded = data.CenterCrop(12)(img, None)
    assert padded.shape == (12, 12, 3) and np.array_equal(padded[1:11, :, :], img[:, 0:12])
    assert np.all(padded[0] == 0) and np.all(padded[11] == 0)


def test_normalize_math_and_input_checks():
    img = _noise(6, (5, 7))
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = data.Normalize(mean, std)(img)
    expected = (img.transpose(2, 0, 1) / 255.0 - np.reshape(mean, (3, 1, 1))) / np.reshape(
        std, (3, 1, 1)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match=r"\(H, W, 3\) uint8"):
        data.Normalize()(img.astype(np.float32))
    with pytest.raises(ValueError, match="positive"):
        data.Normalize(std=(1, 0, 1))


def test_random_erasing_rectangle_and_defaults():
    x = np.ones((3, 40, 40), np.float32)
    erase = data.RandomErasing(p=1.0)
    for s in range(20):
        out = erase(x, _rng(s))
        zero = np.all(out == 0, axis=0)
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        assert zero.sum() == len(rows) * len(cols)  # one filled rectangle
        assert 0.02 * 1600 * 0.8 <= zero.sum() <= 0.33 * 1600 * 1.2 and np.all(out[:, ~zero] == 1)
    assert np.all(x == 1)  # the input is not modified
    assert data.RandomErasing(p=0.0)(x, _rng()) is x
    noisy = data.RandomErasing(p=1.0, value="random")(x, _rng(1))
    assert np.count_nonzero(noisy != 1) > 0 and noisy.dtype == np.float32


def test_color_jitter_rotation_and_randaugment_ops():
    img = _noise(8, (20, 24))
    assert np.array_equal(data.ColorJitter(0, 0, 0)(img, _rng()), img)
    assert np.array_equal(data.RandomRotation(0)(img, _rng()), img)
    for name in data.RANDAUGMENT_OPS:
        out = data.RandAugment(num_ops=3, magnitude=9, ops=(name,))(img, _rng(2))
        assert out.shape == img.shape and out.dtype == np.uint8, name
    assert np.array_equal(data.RandAugment(ops=("identity",))(img, _rng()), img)
    posterized = data.RandAugment(1, magnitude=30, ops=("posterize",))(img, _rng())
    assert np.all(posterized % 16 == 0)  # 8 - 4 bits kept at full strength
    with pytest.raises(ValueError, match="unknown RandAugment ops"):
        data.RandAugment(ops=("invert",))
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        data.train_transforms(8, policy="heavy")


def test_mixup_and_cutmix_mix_targets_by_what_they_mix():
    rng = _rng(0)
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    y = np.array([0, 1, 1, 0])
    xm, tm = data.mixup(x, y, 2, _rng(1), alpha=0.4)
    lam = tm[1, 1]  # sample 1 is class 1 and its partner, sample 0, class 0
    np.testing.assert_allclose(
        xm, lam * x + (1 - lam) * np.roll(x, 1, axis=0), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(tm.sum(1), 1, rtol=1e-6)
    xc, tc = data.cutmix(x, y, 2, _rng(2), alpha=1.0)
    from_partner = np.all(xc == np.roll(x, 1, axis=0), axis=1)[1] & ~np.all(xc == x, axis=1)[1]
    np.testing.assert_allclose(tc[1, 1], 1 - from_partner.mean(), atol=1e-6)
    np.testing.assert_allclose(tc.sum(1), 1, rtol=1e-6)


# --------------------------------------------------------------------------- cache and loader


def _indexed_tree(root: Path, n: int) -> data.ImageList:
    """n flat-coloured 12x10 images; image k has value 2k, so a batch says which samples it holds."""
    for k in range(n):
        _save(
            root / ("cat" if k % 2 else "dog") / f"{k:03d}.png",
            np.full((12, 10, 3), 2 * k, np.uint8),
            "PNG",
        )
    return data.list_images(root)


def _ids(x: np.ndarray) -> list[int]:
    return (x[:, 0, 0, 0] // 2).astype(int).tolist()  # raw uint8 batches: (N, H, W, 3)


def _count_decodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = dataset_module.open_rgb

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dataset_module, "open_rgb", counting)
    return calls


def test_memory_cache_decodes_each_file_once(tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    images = _indexed_tree(tmp_path, 9)
    ds = data.ImageFolderDataset(images, image_size=8)
    loader = data.DataLoader(ds, batch_size=4, seed=0, transforms=data.train_transforms(8, "basic"))
    list(loader)
    assert sorted(calls) == sorted(images.paths)
    assert ds[0][0].shape == (
        data.resize_size(8) * 12 // 10,
        data.resize_size(8),
        3,
    )  # shorter side 9
    list(loader)
    assert len(calls) == 9 and ds.stats["decoded"] == 9 and ds.stats["memory_hits"] >= 9
    assert not ds[0][0].flags.writeable  # the cached copy cannot be edited by a transform


def test_disk_cache_survives_a_new_dataset_and_notices_changed_files(tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    images = _indexed_tree(tmp_path / "img", 5)
    first = data.ImageFolderDataset(images, 8, memory_cache=False, cache_dir=tmp_path / "cache")
    pixels = [first[i][0] for i in range(5)]
    assert len(calls) == 5 and len(list((tmp_path / "cache").glob("*.npy"))) == 5
    second = data.ImageFolderDataset(images, 8, memory_cache=False, cache_dir=tmp_path / "cache")
    assert all(np.array_equal(second[i][0], pixels[i]) for i in range(5))
    assert len(calls) == 5 and second.stats["disk_hits"] == 5
    _save(images.paths[2], np.full((20, 10, 3), 77, np.uint8), "PNG")  # new size -> new key
    assert np.all(second[2][0] == 77) and len(calls) == 6


def test_loader_covers_each_sample_once_and_is_reproducible(tmp_path):
    images = _indexed_tree(tmp_path, 23)
    ds = data.ImageFolderDataset(images, image_size=8)

    def epoch_ids(loader):
        return [_ids(x) for x, _ in loader]

    a = data.DataLoader(ds, batch_size=5, shuffle=True, seed=11)
    e0, e1 = epoch_ids(a), epoch_ids(a)
    assert [len(b) for b in e0] == [5, 5, 5, 5, 3] and len(a) == 5
    assert sorted(sum(e0, [])) == list(range(23)) and sorted(sum(e1, [])) == list(range(23))
    assert e0 != e1  # a new order every epoch
    b = data.DataLoader(ds, batch_size=5, shuffle=True, seed=11, workers=3, prefetch=2)
    assert epoch_ids(b) == e0 and epoch_ids(b) == e1  # threads do not change anything
    c = data.DataLoader(ds, batch_size=5, shuffle=True, seed=12, workers=0)
    assert epoch_ids(c) != e0
    d = data.DataLoader(ds, batch_size=5, shuffle=False, drop_last=True)
    in_order = [int(p.stem) for p in images.paths]  # dataset order: cats (odd k) first
    assert epoch_ids(d) == [in_order[k : k + 5] for k in range(0, 20, 5)] and len(d) == 4
    for x, y in data.DataLoader(ds, batch_size=5, transforms=data.eval_transforms(8)):
        assert x.dtype == np.float32 and x.shape[1:] == (3, 8, 8) and y.dtype == np.int64


def test_loader_resumes_mid_epoch_with_the_same_batches(tmp_path):
    images = _indexed_tree(tmp_path, 17)

    def make():  # a fresh dataset too: a resumed process starts with a cold cache
        ds = data.ImageFolderDataset(images, image_size=8)
        return data.DataLoader(
            ds, 4, seed=5, drop_last=True, transforms=data.train_transforms(8, "randaugment")
        )

    full = make()
    list(full)  # epoch 0
    reference = [(x.copy(), y.copy()) for x, y in full]  # epoch 1
    interrupted = make()
    list(interrupted)
    it = iter(interrupted)
    for _ in range(2):
        next(it)
    state = interrupted.state_dict()
    it.close()
    assert state == {"seed": 5, "epoch": 1, "batch_index": 2}
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(reference) - 2
    for (x, y), (x_ref, y_ref) in zip(rest, reference[2:], strict=True):
        assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)
    assert resumed.state_dict() == {"seed": 5, "epoch": 2, "batch_index": 0}


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("scratchnets-loader")]


def test_background_threads_stop_on_break_and_on_errors(tmp_path):
    ds = data.ImageFolderDataset(_indexed_tree(tmp_path, 30), image_size=8)
    loader = data.DataLoader(ds, batch_size=2, seed=0, workers=2, prefetch=3)
    it = iter(loader)
    next(it)
    assert _loader_threads()
    it.close()  # what leaving a for loop early does
    assert not _loader_threads()

    def failing(img, rng):
        raise RuntimeError("transform exploded")

    with pytest.raises(RuntimeError, match="transform exploded"):
        list(data.DataLoader(ds, batch_size=2, transforms=failing, workers=2))
    assert not _loader_threads()


@pytest.mark.skipif(
    not REAL_DATA.is_dir(), reason="the shared Cats vs Dogs copy is not on this machine"
)
def test_smoke_real_cats_and_dogs():
    splits = data.find_splits(REAL_DATA)
    assert splits["train"].counts() == {"cat": 1000, "dog": 1000}
    assert splits["val"].counts() == {"cat": 500, "dog": 500}
    subset = splits["train"].subset([0, 1, 2, 3, 1000, 1001, 1002, 1003])  # 4 cats, 4 dogs
    ds = data.ImageFolderDataset(subset, image_size=64, name="train")
    x, y = next(
        iter(data.DataLoader(ds, 8, seed=0, transforms=data.train_transforms(64, "randaugment")))
    )
    assert x.shape == (8, 3, 64, 64) and sorted(y.tolist()) == [0] * 4 + [1] * 4
    assert np.all(np.isfinite(x)) and 0.3 < x.std() < 3
    assert all(min(ds[i][0].shape[:2]) == data.resize_size(64) for i in range(8))
