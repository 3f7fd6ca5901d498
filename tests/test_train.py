"""The training loop, checkpoints and the train / evaluate / predict commands, end to end.

Everything runs on a synthetic two-class image folder (reddish "cat" and bluish "dog" PNGs of
20x24 pixels, written with Pillow) and a MobileNetV2 at width 0.1 and 16 px on the reference
backend: at that size NumPy's ops are faster than starting the Numba kernels' thread pool, and
the loop's logic (not the kernels, tested elsewhere) is what is under test here.
"""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from scratchnets import data, models
from scratchnets.cli import main
from scratchnets.train import checkpointing, config, loop
from scratchnets.train.checkpointing import CheckpointError, load_checkpoint, save_checkpoint
from scratchnets.train.evaluate import load_for_inference

BACKEND = "reference"
#: flags of the tiny run every CLI test uses
TINY_FLAGS = [
    "--model", "mobilenet_v2", "--width-mult", "0.1", "--image-size", "16", "--batch-size", "8",
    "--backend", BACKEND, "--time-limit", "0", "--workers", "1", "--quiet",
]  # fmt: skip


def tiny_config(**changes) -> config.TrainConfig:
    values = dict(
        model="mobilenet_v2",
        width_mult=0.1,
        image_size=16,
        batch_size=8,
        epochs=2,
        backend=BACKEND,
        time_limit_min=0,
        workers=1,
        lr=0.01,
    )
    return config.recipe("default", **{**values, **changes})


def write_images(root, per_class: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            base = np.array([200.0, 70.0, 60.0] if label == 0 else [60.0, 70.0, 200.0])
            for i in range(n):
                pixels = np.clip(base + rng.normal(0.0, 45.0, (20, 24, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{name}.{i}.png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """root/{train,val}/{cat,dog}/*.png: 16 training and 6 validation images per class."""
    root = tmp_path_factory.mktemp("cvd")
    write_images(root, {"train": 16, "val": 6}, seed=0)
    return root


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A finished 2-epoch run made through the CLI: its output folder."""
    out = tmp_path_factory.mktemp("run")
    assert (
        main(["train", "--data", str(dataset), "--epochs", "2", "--out", str(out), *TINY_FLAGS])
        == 0
    )
    return out


def test_cli_train_writes_checkpoints_and_history(trained):
    for name in ("best.npz", "last.npz", "history.csv", "history.json", "history.png"):
        assert (trained / name).is_file(), name
    history = json.loads((trained / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert 0.0 <= row["train_accuracy"] <= 1.0 and 0.0 <= row["val_accuracy"] <= 1.0
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_loss"])
    csv_lines = (trained / "history.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:5] == [
        "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    ]  # fmt: skip
    assert len(csv_lines) == 3
    assert (trained / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = load_checkpoint(trained / "last.npz")
    assert last["progress"]["finished"] and last["progress"]["stop_reason"] == "finished"
    assert last["progress"]["epoch"] == 2 and last["progress"]["global_step"] == 2 * 4
    assert last["model"]["name"] == "mobilenet_v2" and last["model"]["classes"] == ["cat", "dog"]
    assert last["config"]["width_mult"] == 0.1 and last["config"]["recipe"] == "default"
    # best = the first epoch with the highest val accuracy (the default recipe's monitor)
    accs = [row["val_accuracy"] for row in history]
    best = load_checkpoint(trained / "best.npz")
    assert best["best"]["epoch"] == int(np.argmax(accs)) + 1
    assert best["progress"]["epoch"] == best["best"]["epoch"]
    # no temporary files left behind by the atomic writes
    assert not [p.name for p in trained.iterdir() if p.name.endswith(".tmp")]


def _assert_trees_equal(a, b, path=""):
    """Exact equality of two checkpoint trees: arrays bit for bit (and dtype), scalars =="""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b, equal_nan=True), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for key in a:
            _assert_trees_equal(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_trees_equal(x, y, f"{path}/{i}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _without_timings(history):
    return [
        {k: v for k, v in row.items() if k not in ("epoch_time_s", "images_per_s", "elapsed_s")}
        for row in history
    ]


def test_resume_after_interrupts_is_bit_exact(dataset, tmp_path):
    """3 epochs straight vs. Ctrl-C mid-epoch 2, resume, stop at an epoch end, resume: the
    final weights, BN statistics, optimizer moments, EMA, generator states and history match
    exactly (augmentation, dropout, cosine schedule and EMA all on)."""
    cfg = tiny_config(epochs=3, ema=True, ema_decay=0.9, augment="standard")
    straight = loop.fit(cfg, str(dataset), tmp_path / "a", progress=False, log=lambda m: None)
    assert straight.status == "finished" and straight.global_step == 12

    def ctrl_c_at_step_6(trainer):
        if trainer.global_step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, handled by fit

    out = tmp_path / "b"
    handler_before = signal.getsignal(signal.SIGINT)
    said = []
    first = loop.fit(
        cfg, str(dataset), out, progress=False, on_step=ctrl_c_at_step_6, log=said.append
    )
    assert first.status == "interrupted" and first.global_step == 6
    assert "interrupted at" in said[-1] and "--resume" in said[-1], said[-1]  # says how to go on
    saved = load_checkpoint(out / "last.npz")["progress"]
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)  # mid-epoch 2
    assert signal.getsignal(signal.SIGINT) is handler_before  # fit restored the handler
    second = loop.fit(None, None, out, resume=True, max_steps=2, progress=False, log=lambda m: None)
    assert second.status == "max_steps" and second.epoch == 2 and second.global_step == 8
    # the last leg through the command line
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0

    a, b = load_checkpoint(tmp_path / "a" / "last.npz"), load_checkpoint(out / "last.npz")
    for key in ("weights", "ema", "optimizer", "scheduler", "rng", "best", "progress"):
        _assert_trees_equal(a[key], b[key], key)
    assert _without_timings(a["history"]) == _without_timings(b["history"])
    # with EMA on, evaluation and the commands use the EMA weights
    model, meta = load_for_inference(out / "last.npz", BACKEND)
    assert meta["eval_weights"] == "ema"
    _assert_trees_equal(b["ema"], model.state_dict())


def test_early_stopping_with_patience(dataset, tmp_path, monkeypatch):
    """val_loss 1.0, 0.9, 0.95, 0.9, 0.97, ...: with patience 2 the run stops after epoch 4
    (two epochs without a strictly lower loss; the tie at 0.9 is no improvement)."""
    losses = iter([1.0, 0.9, 0.95, 0.9, 0.97, 0.8, 0.7])

    def scripted_validate(self):
        return {"loss": next(losses), "accuracy": 0.5, "n": 12}

    monkeypatch.setattr(loop.Trainer, "validate", scripted_validate)
    cfg = tiny_config(epochs=7, patience=2, monitor="val_loss")
    result = loop.fit(
        cfg, str(dataset), tmp_path, progress=False, max_steps=None, log=lambda m: None
    )
    assert result.status == "early_stopping" and result.epoch == 4
    assert result.best == {"metric": "val_loss", "value": 0.9, "epoch": 2}
    assert load_checkpoint(tmp_path / "best.npz")["progress"]["epoch"] == 2
    # an ended run does not start again on --resume
    again = loop.fit(None, None, tmp_path, resume=True, progress=False, log=lambda m: None)
    assert again.status == "early_stopping" and again.global_step == result.global_step


def test_train_without_data_uses_the_downloaded_dataset(dataset, tmp_path, monkeypatch):
    calls = []

    def cached_download(*args, **kwargs):
        calls.append(args)
        return dataset

    monkeypatch.setattr(data, "download_cats_and_dogs", cached_download)
    argv = ["train", "--out", str(tmp_path), "--max-steps", "1", *TINY_FLAGS]
    assert main(argv) == 0
    assert len(calls) == 1
    assert load_checkpoint(tmp_path / "last.npz")["data"] == str(dataset.resolve())


def test_seed_recipe_is_one_flag_away():
    seed = config.recipe("seed")
    assert (seed.model, seed.width_mult, seed.optimizer) == ("mobilenet_v2", 1.0, "rmsprop_tf")
    assert (seed.patience, seed.monitor, seed.schedule) == (3, "val_loss", "constant")
    assert config.recipe("seed", lr=0.01).lr == 0.01
    default = config.recipe()
    assert default.patience == 0 and default.time_limit_min == 30
    assert config.TrainConfig.from_dict(seed.to_dict()) == seed
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        config.recipe(optimizer="adagrad")
    with pytest.raises(ValueError, match="unknown recipe"):
        config.recipe("keras")


def test_time_limit_stops_cleanly_and_resumes(dataset, tmp_path):
    cfg = tiny_config(epochs=1, time_limit_min=1e-6)
    result = loop.fit(cfg, str(dataset), tmp_path, progress=False, log=lambda m: None)
    assert result.status == "time_limit" and result.global_step == 1 and result.resumable
    progress = load_checkpoint(tmp_path / "last.npz")["progress"]
    assert (progress["epoch"], progress["step_in_epoch"], progress["finished"]) == (0, 1, False)
    rest = loop.fit(
        None, None, tmp_path, resume=True, overrides={"time_limit_min": 0}, progress=False,
        log=lambda m: None,
    )  # fmt: skip
    assert rest.status == "finished" and rest.global_step == 4


def test_resume_refuses_changed_settings(trained, capsys):
    with pytest.raises(ValueError, match="cannot change lr when resuming"):
        loop.fit(None, None, trained, resume=True, overrides={"lr": 0.1}, log=lambda m: None)
    assert main(["train", "--out", str(trained), "--resume", "--epochs", "9"]) == 1
    assert "cannot change epochs" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no .*last.npz"):
        loop.fit(None, None, trained / "nothing", resume=True)


def _logits_of(checkpoint_path, image_paths):
    """The checkpoint's model on each image, via the data module's eval pipeline (N, K)."""
    ckpt = load_checkpoint(checkpoint_path)
    meta = ckpt["model"]
    model = models.create(meta["name"], num_classes=2, width_mult=meta["width_mult"]).to(BACKEND)
    model.load_state_dict(ckpt["weights"])
    model.eval()
    pipeline = data.eval_transforms(meta["image_size"])
    x = np.stack([pipeline(np.asarray(Image.open(p).convert("RGB"))) for p in image_paths])
    return np.asarray(model(x), dtype=np.float64)


def test_evaluate_json_matches_an_independent_count(trained, dataset, capsys):
    import torch

    paths = sorted((dataset / "val").glob("*/*.png"))
    labels = np.array([0 if p.parent.name == "cat" else 1 for p in paths])
    logits = _logits_of(trained / "best.npz", paths)
    pred = logits.argmax(axis=1)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))

    argv = ["evaluate", str(trained / "best.npz"), "--data", str(dataset / "val"), "--json"]
    assert main([*argv, "--backend", BACKEND]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == len(paths) == 12
    assert result["accuracy"] == pytest.approx(float((pred == labels).mean()), abs=0)
    assert result["loss"] == pytest.approx(float(loss), rel=1e-6)
    expected = [[int(((labels == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
    assert result["confusion_matrix"] == expected
    cat_acc = float((pred[labels == 0] == 0).mean())
    assert result["per_class_accuracy"]["cat"] == pytest.approx(cat_acc, abs=0)
    # the human-readable report has the same numbers
    assert main([*argv[:-1], "--backend", BACKEND]) == 0
    report = capsys.readouterr().out
    assert f"accuracy {result['accuracy']:.4f}" in report and "confusion matrix" in report
    assert result["tta"] is None and "flip" not in report


def test_evaluate_with_flip_tta_averages_each_image_with_its_mirror(trained, dataset, capsys):
    import torch

    paths = sorted((dataset / "val").glob("*/*.png"))
    labels = torch.tensor([0 if p.parent.name == "cat" else 1 for p in paths])
    mirrored = [Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in paths]
    for image, path in zip(mirrored, paths, strict=True):  # the crop of a mirror is the mirror
        image.save(path.parent / f"mirror.{path.name}")  # of the crop (centred, even margins)
    logits = _logits_of(trained / "best.npz", paths)
    flipped = _logits_of(trained / "best.npz", [p.parent / f"mirror.{p.name}" for p in paths])
    for path in paths:
        (path.parent / f"mirror.{path.name}").unlink()
    probs = (
        torch.softmax(torch.from_numpy(logits), 1) + torch.softmax(torch.from_numpy(flipped), 1)
    ) / 2
    argv = ["evaluate", str(trained / "best.npz"), "--data", str(dataset / "val"), "--tta", "flip"]
    assert main([*argv, "--json", "--backend", BACKEND]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tta"] == "flip" and result["n"] == len(paths)
    assert result["accuracy"] == pytest.approx(
        float((probs.argmax(1) == labels).double().mean()), abs=0
    )
    loss = torch.nn.functional.nll_loss(torch.log(probs), labels)
    assert result["loss"] == pytest.approx(float(loss), rel=1e-6)
    assert main([*argv, "--backend", BACKEND]) == 0
    assert "flip TTA" in capsys.readouterr().out


def test_predict_prints_class_and_probability(trained, dataset, capsys):
    paths = [dataset / "val" / "cat" / "cat.0.png", dataset / "val" / "dog" / "dog.1.png"]
    logits = _logits_of(trained / "last.npz", paths)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    argv = ["predict", str(trained / "last.npz"), *map(str, paths), "--backend", BACKEND]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, path, p in zip(lines, paths, probs, strict=True):
        name = ("cat", "dog")[int(p.argmax())]
        assert line.startswith(f"{path}: {name} (")
        assert float(line.rsplit("(", 1)[1].rstrip(")")) == pytest.approx(p.max(), abs=1e-4)
    # an unreadable file is reported, the others still classified, and the status is 1
    bad = dataset.parent / "not_an_image.jpg"
    bad.write_bytes(b"no pixels here")
    assert (
        main(["predict", str(trained / "last.npz"), str(bad), str(paths[0]), "--backend", BACKEND])
        == 1
    )
    captured = capsys.readouterr()
    assert "cannot decode" in captured.err and captured.out.startswith(f"{paths[0]}: ")


def test_distillation_uses_the_teacher(trained, dataset, tmp_path):
    """With alpha = 1 the KD loss is the plain (smoothed) CE: weights equal a run without a
    teacher; with alpha = 0 they follow the teacher and differ."""

    def two_steps(name, **changes):
        cfg = tiny_config(epochs=1, **changes)
        loop.fit(
            cfg, str(dataset), tmp_path / name, max_steps=2, progress=False, log=lambda m: None
        )
        return load_checkpoint(tmp_path / name / "last.npz")["weights"]

    teacher = str(trained / "best.npz")
    plain = two_steps("plain")
    hard_only = two_steps("alpha1", teacher=teacher, kd_alpha=1.0)
    soft_only = two_steps("alpha0", teacher=teacher, kd_alpha=0.0)
    _assert_trees_equal(plain, hard_only)
    assert not all(np.array_equal(plain[k], soft_only[k]) for k in plain)


# ---------------------------------------------------------------------------------- checkpoints


def _state(value: float) -> dict:
    return {"weights": {"w": np.full((2, 3), value, np.float32)}, "progress": {"epoch": 1}}


def test_atomic_write_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _state(1.0))

    def fails_halfway(f, arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(checkpointing, "_write_npz", fails_halfway)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _state(2.0))
    assert np.array_equal(load_checkpoint(path)["weights"]["w"], np.ones((2, 3), np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]  # the temp file is gone


def test_truncated_and_foreign_files_are_clear_errors(trained, tmp_path, capsys):
    good = (trained / "last.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    assert main(["evaluate", str(truncated), "--data", str(trained)]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err

    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="not a scratchnets training checkpoint .*not a .npz"):
        load_checkpoint(trained / "history.png")
    bare = tmp_path / "weights.npz"
    models.save_checkpoint({"features.0.0.weight": np.zeros((2, 3, 3, 3), np.float32)}, bare)
    with pytest.raises(
        CheckpointError, match="no '__meta__' entry.*scratchnets.models.load_checkpoint"
    ):
        load_checkpoint(bare)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")


def test_other_architecture_names_the_mismatched_keys(trained):
    ckpt = load_checkpoint(trained / "best.npz")
    other = models.create("mobilenet_v1", num_classes=2, width_mult=0.25)
    with pytest.raises(
        CheckpointError, match=r"holds mobilenet_v2 \(width_mult 0.1, 2 classes\)"
    ) as err:
        checkpointing.load_weights_into(other, ckpt["weights"], "best.npz", ckpt["model"])
    assert "missing from the checkpoint" in str(err.value) and "unexpected" in str(err.value)
    wider = models.create("mobilenet_v2", num_classes=2, width_mult=1.0)
    before = wider.state_dict()
    shape_error = r"shape mismatch .*features\.0\.0\.weight \(8, 3, 3, 3\) vs \(32, 3, 3, 3\)"
    with pytest.raises(CheckpointError, match=shape_error):
        checkpointing.load_weights_into(wider, ckpt["weights"], "best.npz", ckpt["model"])
    _assert_trees_equal(before, wider.state_dict())  # nothing was written


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**130), max_value=2**130),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
_arrays = st.sampled_from([np.float32, np.float64, np.int64, np.uint8]).flatmap(
    lambda dt: st.lists(st.integers(0, 3), max_size=3).map(
        lambda shape: (np.arange(int(np.prod(shape)), dtype=dt) * dt(3)).reshape(shape)
    )
)
_keys = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=6,
)
_trees = st.recursive(
    st.one_of(_scalars, _arrays),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(_keys.filter(lambda k: k != "__array__"), children, max_size=3),
    ),
    max_leaves=12,
)


@given(tree=st.dictionaries(_keys.filter(lambda k: k != "__meta__"), _trees, max_size=4))
def test_checkpoint_tree_round_trips_exactly(tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "c.npz"
    save_checkpoint(path, tree)
    _assert_trees_equal(tree, load_checkpoint(path))


@pytest.mark.parametrize("key", ["a/b", "a\x00", "__array__"])
def test_keys_a_checkpoint_cannot_hold_are_refused(tmp_path, key):
    """'/' separates entry paths and a zip entry name ends at NUL: such keys would load back as
    other keys, so saving refuses them (hypothesis found the NUL)."""
    with pytest.raises(ValueError, match="checkpoint keys may not contain"):
        save_checkpoint(tmp_path / "c.npz", {"x": {key: np.zeros(1)}})
    assert not (tmp_path / "c.npz").exists()


def test_generator_state_round_trips(tmp_path):
    rng = np.random.default_rng([3, 1, 4])
    rng.standard_normal(5)
    save_checkpoint(tmp_path / "g.npz", {"rng": rng.bit_generator.state})
    restored = np.random.default_rng()
    restored.bit_generator.state = load_checkpoint(tmp_path / "g.npz")["rng"]
    assert np.array_equal(restored.standard_normal(4), rng.standard_normal(4))


def test_progressive_resizing_trains_each_stage_at_its_size_and_resumes(
    dataset, tmp_path, monkeypatch
):
    """``train_scales``: equal stages of the epochs, each epoch's batches cropped to its stage's
    fraction of ``image_size`` (also after a resume mid-stage), validation and the checkpoint at
    ``image_size``; the seed and finetune recipes and runs saved before it do not resize (the
    finetune recipe trains at one smaller size, FixRes)."""
    stages = config.recipe("default", epochs=10)  # 0.75, 0.875, 1 of 128 px
    assert [stages.train_size(e) for e in range(10)] == [96] * 4 + [112] * 3 + [128] * 3
    assert stages.resizes() and config.recipe("default", image_size=160).train_sizes() == (
        120, 140, 160,
    )  # fmt: skip
    seed, finetune = config.recipe("seed"), config.recipe("finetune", init="f")
    assert not seed.resizes() and seed.train_size(0) == seed.image_size
    assert not finetune.resizes() and finetune.train_sizes() == (110,)  # 6/7 of 128 px
    old = {k: v for k, v in stages.to_dict().items() if k != "train_scales"}
    assert config.TrainConfig.from_dict(old).train_sizes() == (128,)
    with pytest.raises(ValueError, match="train_scales must be one or more positive"):
        config.recipe("default", train_scales=(0.5, 0))

    seen = []
    train_step = loop.Trainer.train_step
    monkeypatch.setattr(loop.Trainer, "train_step",
                        lambda self, x, y: seen.append(x.shape[-1]) or train_step(self, x, y))  # fmt: skip
    cfg = tiny_config(epochs=3, train_scales=(0.5, 0.75, 0.5), augment="standard")  # 16 px
    straight = loop.fit(cfg, str(dataset), tmp_path / "a", progress=False, log=lambda m: None)
    assert seen == [8] * 4 + [12] * 4 + [8] * 4
    seen.clear()
    out = tmp_path / "b"
    loop.fit(cfg, str(dataset), out, max_steps=6, progress=False, log=lambda m: None)
    loop.fit(None, None, out, resume=True, progress=False, log=lambda m: None)
    assert seen == [8] * 4 + [12] * 4 + [8] * 4
    a, b = load_checkpoint(straight.paths["last"]), load_checkpoint(out / "last.npz")
    _assert_trees_equal(a["weights"], b["weights"], "weights")
    assert b["model"]["image_size"] == 16
    assert [row["train_size"] for row in b["history"]] == [8, 12, 8]
    assert (out / "history.csv").read_text().splitlines()[0].split(",")[6] == "train_size"
    model, meta = load_for_inference(out / "best.npz", BACKEND)
    assert meta["image_size"] == 16


def test_the_forecast_says_at_the_start_whether_the_run_fits_its_time_budget(dataset, tmp_path):
    """From a full step's seconds: the epoch time (validation counted at ``VALIDATION_SHARE`` of
    a step per image), all epochs within the budget, or the epoch where it ends; and a real run
    says it after its first steps."""
    settings = tiny_config(epochs=10, train_scales=(1.0,))
    trainer = SimpleNamespace(config=settings, val_set=[0] * 16, steps_per_epoch=4, epoch=0,
                              step_in_epoch=2, on_cached_features=lambda epoch: False)  # fmt: skip
    val_s = loop.VALIDATION_SHARE * 1.0 / settings.batch_size * 16
    epoch_s = 4 + val_s
    fits = loop.forecast(trainer, 1.0, 3600.0, 0.0)
    assert f"~{epoch_s:.0f} s per epoch" in fits and "all 10 epochs fit" in fits
    assert f"~{(2 + val_s + 9 * epoch_s) / 60:.1f} min to go" in fits
    short = loop.forecast(trainer, 1.0, 2 + val_s + 3.5 * epoch_s, 0.0)
    assert "the budget ends around epoch 4 of 10" in short and "lower --epochs" in short
    # progressive resizing: steps at twice the size cost four times as much (so does validation
    # at image_size 16, from a step timed at 8 px)
    trainer.config = settings.replace(train_scales=(0.5, 1))  # epochs 0-4 at 8 px, 5-9 at 16
    val_s = loop.VALIDATION_SHARE * 4.0 / settings.batch_size * 16
    small_s, large_s = 4 + val_s, 16 + val_s
    grows = loop.forecast(trainer, 1.0, 3600.0, 0.0)
    assert f"~{(2 + val_s + 4 * small_s + 5 * large_s) / 60:.1f} min to go" in grows
    short = loop.forecast(trainer, 1.0, 2 + val_s + 4 * small_s + 2.5 * large_s, 0.0)
    assert "the budget ends around epoch 7 of 10" in short
    said = []
    loop.fit(settings.replace(epochs=3), str(dataset), tmp_path, progress=False, log=said.append)
    assert sum("all 3 epochs, ~" in line for line in said) == 1, said


def test_the_history_plot_marks_where_the_training_size_changes():
    """A dotted line before each epoch at a new training size and each stage's size on top;
    nothing for a run at one size or rows saved before the column existed."""
    from matplotlib.figure import Figure

    from scratchnets.train import history

    rows = [{"epoch": e + 1, "train_size": s} for e, s in enumerate([96, 96, 112, 128])]
    ax = Figure().add_subplot()
    history._mark_size_changes(ax, rows)
    assert [line.get_xdata()[0] for line in ax.lines] == [2.5, 3.5]
    assert [text.get_text().strip() for text in ax.texts] == ["96 px", "112 px", "128 px"]
    for plain in ([dict(row, train_size=128) for row in rows], [{"epoch": 1}, {"epoch": 2}]):
        ax = Figure().add_subplot()
        history._mark_size_changes(ax, plain)
        assert not ax.lines and not ax.texts
