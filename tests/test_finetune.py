"""``train --init``: starting from published weights, a rebuilt head, a frozen backbone, a lower
backbone lr, the ``finetune`` recipe, and checkpoints that reload and say where they started.

Weight files: Google's float MobileNetV1 0.25 TFLite (../shared/weights) and genuine torchvision
MobileNetV2 x0.35 / timm MobileNetV1 x0.25 models with random weights written as .pth,
.safetensors and .npz. Training runs on the synthetic folder of tests/test_train.py at 16 px.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchnets import models
from scratchnets.cli import main
from scratchnets.train import config, finetune, loop
from scratchnets.train.checkpointing import load_checkpoint
from scratchnets.train.evaluate import evaluate_checkpoint, load_for_inference
from tests.model_twins import torch_twin
from tests.test_tflite_reader import FLOAT, WEIGHTS, needs_files
from tests.test_train import BACKEND, dataset  # noqa: F401 (a fixture)

TINY = dict(image_size=16, batch_size=8, epochs=1, backend=BACKEND, time_limit_min=0, workers=1)


def weight_file(tmp_path, kind: str):
    """A published-style weight file: (path, architecture, width)."""
    if kind == "tflite":
        return FLOAT, "tf_mobilenet_v1", 0.25
    if kind == "uint8 tflite":  # dequantized (QuantizedModel.dequantize)
        return WEIGHTS / "mobilenet_v1_0.25_128_quant.tflite", "tf_mobilenet_v1", 0.25
    arch, width = ("mobilenet_v2", 0.35) if kind != "npz" else ("mobilenet_v1", 0.25)
    state = torch_twin(arch, 1000, width, torch.float32).state_dict()
    path = tmp_path / f"weights.{kind}"
    if kind == "pth":
        torch.save(state, path)
    else:
        models.save_checkpoint({k: v.numpy() for k, v in state.items()}, path)
    return path, arch, width


def backbone_and_head(model):
    head = finetune.head_name(model) + "."
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    return (
        {k: v for k, v in state.items() if not k.startswith(head)},
        {k: v for k, v in state.items() if k.startswith(head)},
    )


@needs_files
@pytest.mark.parametrize("kind", ["tflite", "uint8 tflite", "pth", "safetensors", "npz"])
def test_init_from_each_format_trains_an_epoch_and_reloads(dataset, tmp_path, kind):  # noqa: F811
    path, arch, width = weight_file(tmp_path, kind)
    out = tmp_path / "run"
    flags = ["--image-size", "16", "--batch-size", "8", "--epochs", "1", "--backend", BACKEND]
    flags += ["--time-limit", "0", "--quiet", "--out", str(out)]
    assert main(["train", "--data", str(dataset), "--init", str(path), *flags]) == 0
    ckpt = load_checkpoint(out / "last.npz")
    meta = ckpt["model"]
    assert (meta["name"], meta["width_mult"], meta["num_classes"]) == (arch, width, 2)
    assert meta["init"]["file"] == str(path) and meta["init"]["architecture"] == arch
    assert ckpt["config"]["recipe"] == "finetune" and ckpt["config"]["init"] == str(path)
    expected_mean = {"tflite": [0.5] * 3, "npz": [0.5] * 3, "uint8 tflite": [128 / 255] * 3}.get(
        kind, [0.485, 0.456, 0.406]
    )  # the uint8 input's reals are (p - 128) / 128
    assert np.allclose(meta["normalize"]["mean"], expected_mean)  # the source's preprocessing
    model, _ = load_for_inference(out / "last.npz", BACKEND)
    assert set(model.state_dict()) == set(ckpt["weights"])
    result = evaluate_checkpoint(out / "last.npz", dataset / "val", backend=BACKEND)
    assert result["n"] == 12


@needs_files
def test_the_head_is_rebuilt_and_the_backbone_loaded():
    """1001 ImageNet classes in the file, 2 in the data: the head is new (TF-slim's Conv2d_1c_1x1
    at N(0, 0.01^2) and zero bias), every other tensor is the file's, bit for bit."""
    published = models.load_pretrained(FLOAT)
    model, info = finetune.start_from(FLOAT, "tf_mobilenet_v1", 0.25, 2, rng=0)
    backbone, head = backbone_and_head(model)
    theirs = published.state_dict()
    assert backbone and all(np.array_equal(v, theirs[k]) for k, v in backbone.items())
    assert head["Conv2d_1c_1x1.weight"].shape == (2, 256, 1, 1)
    assert (
        np.all(head["Conv2d_1c_1x1.bias"] == 0)
        and 0.005 < head["Conv2d_1c_1x1.weight"].std() < 0.02
    )
    assert info["replaced_head"] == "Conv2d_1c_1x1" and info["file_classes"] == 1001


def test_an_init_file_that_does_not_fit_the_model_fails_before_training(dataset, tmp_path):  # noqa: F811
    path, _, _ = weight_file(tmp_path, "pth")  # a MobileNetV2 x0.35
    cfg = config.recipe("finetune", init=str(path), model="mobilenet_v2", width_mult=0.5, **TINY)
    steps = []
    with pytest.raises(
        ValueError, match=r"holds a mobilenet_v2 with width_mult 0.35; it does not fit"
    ):
        loop.fit(cfg, str(dataset), tmp_path / "run", progress=False, log=steps.append,
                 on_step=lambda trainer: steps.append("step"))  # fmt: skip
    assert "step" not in steps
    cfg = config.recipe("finetune", init=str(path), model="ghostnet_100", width_mult=0.35, **TINY)
    with pytest.raises(ValueError, match="does not fit --model ghostnet_100"):
        loop.fit(cfg, str(dataset), tmp_path / "run2", progress=False, log=steps.append)


def test_freeze_backbone_changes_the_head_only(dataset, tmp_path):  # noqa: F811
    """After training steps with a frozen backbone every backbone tensor, BN running statistics
    included, is bit-identical to the file's, and the head has moved."""
    path, _, _ = weight_file(tmp_path, "pth")
    cfg = config.recipe("finetune", init=str(path), model="mobilenet_v2", width_mult=0.35,
                        freeze_backbone=True, **TINY)  # fmt: skip
    seen = {}

    def capture(trainer):
        seen.setdefault("before", backbone_and_head(trainer.model))

    start = finetune.start_from(path, "mobilenet_v2", 0.35, 2, rng=cfg.seed)[0]
    before_backbone, before_head = backbone_and_head(start)
    loop.fit(cfg, str(dataset), tmp_path / "run", max_steps=2, progress=False,
             log=lambda m: None, on_step=capture)  # fmt: skip
    after = load_checkpoint(tmp_path / "run" / "last.npz")["weights"]
    for name, value in before_backbone.items():
        assert np.array_equal(np.asarray(after[name]), value), name
    assert any(not np.array_equal(np.asarray(after[k]), v) for k, v in before_head.items())


def test_backward_to_trainable_equals_a_full_backward_for_the_head():
    """The head's gradients from the shortened backward equal a full backward's, and no frozen
    parameter gets a gradient."""
    model = models.create("mobilenet_v2", num_classes=3, width_mult=0.35, rng=0).to(BACKEND)
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    dy = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    finetune.freeze_backbone(model, True)
    model.eval()  # no dropout: the two backwards see the same forward
    model.fast_eval = False  # gradients in eval mode need the training graph
    model(x)
    model.backward(dy)
    full = {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(x)
    finetune.backward_to_trainable(model, dy)
    short = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(short) == set(full) == {"classifier.1.weight", "classifier.1.bias"}
    for name, grad in short.items():
        assert np.array_equal(grad, full[name]), name


def test_backbone_lr_scale_and_head_only_epochs(dataset, tmp_path):  # noqa: F811
    path, _, _ = weight_file(tmp_path, "pth")
    cfg = config.recipe("finetune", init=str(path), model="mobilenet_v2", width_mult=0.35,
                        head_only_epochs=1, schedule="constant", **TINY | {"epochs": 2})  # fmt: skip
    frozen = []
    loop.fit(cfg, str(dataset), tmp_path / "run", progress=False, log=lambda m: None,
             on_step=lambda t: frozen.append(t.backbone_frozen()))  # fmt: skip
    assert frozen == [True] * 4 + [False] * 4  # 32 images, 4 steps per epoch
    model = finetune.start_from(path, "mobilenet_v2", 0.35, 2, rng=0)[0]
    optimizer = loop.build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        expected = cfg.lr if name.startswith("classifier.1.") else cfg.lr * 0.1
        assert lrs[id(param)] == pytest.approx(expected), name
    assert optimizer.param_groups[0]["lr"] == cfg.lr  # the logged lr is the head's


def test_finetune_options_without_init_are_refused():
    with pytest.raises(ValueError, match="needs published weights"):
        config.recipe("default", freeze_backbone=True)
    with pytest.raises(ValueError, match="give --init FILE"):
        config.recipe("finetune")


def test_head_only_epochs_train_the_head_on_cached_backbone_features(dataset, tmp_path):  # noqa: F811
    """A head-only epoch runs the frozen backbone once per image, before training: each cached
    view is the backbone's output for the evaluation crop (and its mirror image), the epoch's
    validation equals the whole model's on the images, and a later full epoch runs the images
    again. ``cache_features=False`` trains the head through the backbone instead."""
    path, _, _ = weight_file(tmp_path, "pth")
    cfg = config.recipe("finetune", init=str(path), model="mobilenet_v2", width_mult=0.35,
                        head_only_epochs=1, **TINY | {"epochs": 2})  # fmt: skip
    cached, seen = [], {}

    def record(trainer):
        cached.append(trainer.cached_epoch)
        seen["trainer"] = trainer

    said = []
    result = loop.fit(cfg, str(dataset), tmp_path / "run", progress=False, log=said.append,
                      on_step=record)  # fmt: skip
    assert cached == [True] * 4 + [False] * 4
    epochs = [line for line in said if line.startswith("epoch ")]
    assert "ETA after the first full epoch" in epochs[0] and "ETA 0.0 min" in epochs[1], epochs
    trainer = seen["trainer"]
    cache = trainer.features
    views = cache.train_views
    assert np.abs(views[:, 0] - views[:, 1]).max() > 0.01 * np.abs(views).max()  # not symmetric
    start = finetune.start_from(path, "mobilenet_v2", 0.35, 2, rng=cfg.seed)[0].eval()
    start.fast_eval = False  # the training graph in eval mode: the function the cache holds
    backbone = list(start.children())[: trainer.head_start]
    for index in (0, 5):
        image, _ = trainer.train_set[index]
        x = trainer.eval_transforms(image, np.random.default_rng(0))[None]
        for view, pixels in enumerate((x, np.ascontiguousarray(x[..., ::-1]))):
            for module in backbone:
                pixels = module(pixels)
            scale = np.abs(pixels).max()  # a random backbone's outputs are tiny: relative
            np.testing.assert_allclose(views[index, view], pixels[0], rtol=1e-4, atol=1e-5 * scale)
    assert result.history[1]["val_loss"] != result.history[0]["val_loss"]
    # a cached epoch's validation: its checkpoint's model evaluated through every layer
    frozen = cfg.replace(head_only_epochs=0, freeze_backbone=True, epochs=1)
    run = loop.fit(frozen, str(dataset), tmp_path / "frozen", progress=False, log=lambda m: None)
    full = evaluate_checkpoint(tmp_path / "frozen" / "last.npz", dataset / "val")
    assert full["loss"] == pytest.approx(run.history[0]["val_loss"], rel=1e-4)
    assert full["accuracy"] == run.history[0]["val_accuracy"]
    cfg_slow = cfg.replace(cache_features=False)
    cached.clear()
    loop.fit(cfg_slow, str(dataset), tmp_path / "slow", progress=False, log=lambda m: None,
             on_step=record)  # fmt: skip
    assert cached == [False] * 8


def test_a_cached_head_only_epoch_resumes_bit_for_bit(dataset, tmp_path):  # noqa: F811
    """Stopped after 2 of a cached epoch's 4 steps and resumed (the cache rebuilt), the run
    ends with the weights of a run that never stopped."""
    path, _, _ = weight_file(tmp_path, "pth")
    cfg = config.recipe("finetune", init=str(path), model="mobilenet_v2", width_mult=0.35,
                        freeze_backbone=True, **TINY | {"epochs": 2})  # fmt: skip
    quiet = dict(progress=False, log=lambda m: None)
    loop.fit(cfg, str(dataset), tmp_path / "straight", **quiet)
    loop.fit(cfg, str(dataset), tmp_path / "stopped", max_steps=2, **quiet)
    loop.fit(None, None, tmp_path / "stopped", resume=True, **quiet)
    straight = load_checkpoint(tmp_path / "straight" / "last.npz")
    resumed = load_checkpoint(tmp_path / "stopped" / "last.npz")
    assert [r["val_loss"] for r in straight["history"]] == [
        r["val_loss"] for r in resumed["history"]
    ]
    for name, value in straight["weights"].items():
        np.testing.assert_array_equal(resumed["weights"][name], value, err_msg=name)


def test_the_finetune_recipe_fits_its_full_epochs_to_the_time_budget(dataset, tmp_path):  # noqa: F811
    """``fit_epochs``: after the feature cache, as many full epochs as the budget leaves room
    for at the measured speed (a training image ``TRAIN_IMAGE_FORWARDS`` cached forwards, a
    validation image one), the schedule rebuilt for that length; ``--epochs`` turns it off, and
    a frozen backbone or no time limit leaves the epochs as they are."""
    path, _, _ = weight_file(tmp_path, "pth")
    tiny = {k: v for k, v in TINY.items() if k != "epochs"} | {"time_limit_min": 2.0}
    cfg = config.recipe("finetune", init=str(path), model="mobilenet_v2", width_mult=0.35, **tiny)
    assert cfg.fit_epochs and not config.recipe("finetune", init="f", epochs=9).fit_epochs
    said, seen = [], {}
    loop.fit(cfg, str(dataset), tmp_path / "run", max_steps=1, progress=False, log=said.append,
             on_step=lambda trainer: seen.setdefault("trainer", trainer))  # fmt: skip
    assert any("fitting the run to its 2-min budget" in line for line in said), said
    trainer = seen["trainer"]
    assert trainer.config.epochs > cfg.head_only_epochs
    trainer._fit_epochs(forward_s=0.01, spent_s=6.0)  # 32 training and 12 validation images
    assert cfg.train_sizes() == (round(6 / 7 * cfg.image_size),)  # FixRes: smaller crops
    epoch_s = (loop.TRAIN_IMAGE_FORWARDS * 32 * cfg.step_cost(cfg.train_sizes()[0]) + 12) * 0.01
    full = int((loop.FIT_SHARE * 120 - 6.0) // epoch_s)
    assert trainer.config.epochs == cfg.head_only_epochs + full
    phases = [steps for steps, _ in trainer.scheduler.phases]  # head-only steps, then full
    assert phases == [cfg.head_only_epochs * 4, full * 4]  # 4 steps an epoch
    # training crops of half the evaluation size cost a quarter
    trainer.config = cfg.replace(train_scales=(0.5,))
    trainer._fit_epochs(forward_s=0.01, spent_s=6.0)
    epoch_s = (loop.TRAIN_IMAGE_FORWARDS * 32 / 4 + 12) * 0.01
    full = int((loop.FIT_SHARE * 120 - 6.0) // epoch_s)
    assert trainer.config.epochs == cfg.head_only_epochs + full
    for fixed in (dict(freeze_backbone=True), dict(time_limit_min=0)):
        trainer.config = cfg.replace(**fixed)
        trainer._fit_epochs(forward_s=0.01, spent_s=6.0)
        assert trainer.config.epochs == cfg.epochs


def test_the_fitted_epochs_are_counted_again_from_the_first_full_steps(dataset, tmp_path):  # noqa: F811
    """``refit_epochs``: once the first full steps are timed, the full epochs are counted again
    from their measured time (the rest of this epoch, then whole ones, each with validation at
    the cache's forward speed); the schedule keeps its position and its lr, now that of the new
    length; once only, and only during the first full epoch."""
    path, _, _ = weight_file(tmp_path, "pth")
    tiny = {k: v for k, v in TINY.items() if k != "epochs"} | {"time_limit_min": 2.0}
    cfg = config.recipe("finetune", init=str(path), model="mobilenet_v2", width_mult=0.35, **tiny)
    seen = {}
    loop.fit(cfg, str(dataset), tmp_path / "run", max_steps=1, progress=False,
             log=lambda line: None, on_step=lambda trainer: seen.setdefault("trainer", trainer))  # fmt: skip
    trainer, head = seen["trainer"], cfg.head_only_epochs
    trainer._fit_epochs(forward_s=0.01, spent_s=6.0)
    planned = trainer.config.epochs
    trainer.refit_epochs(step_s=0.5, spent_s=30.0)  # not yet in the first full epoch
    assert trainer.config.epochs == planned
    trainer.epoch, trainer.step_in_epoch = head, 2
    trainer.scheduler.load_state_dict(
        {**trainer.scheduler.state_dict(), "last_epoch": head * 4 + 2}
    )
    said = []
    trainer.log = said.append
    trainer.refit_epochs(step_s=0.5, spent_s=30.0)  # 4 steps an epoch, 12 validation images
    epoch_s, this_epoch_s = 4 * 0.5 + 12 * 0.01, 2 * 0.5 + 12 * 0.01
    full = 1 + int((loop.FIT_SHARE * 120 - 30.0 - this_epoch_s) // epoch_s)
    assert trainer.config.epochs == head + full != planned
    assert said == [f"the first full steps took 0.50 s each, so a full epoch ~2 s: {full} full "
                    f"epochs instead of {planned - head}"]  # fmt: skip
    assert [steps for steps, _ in trainer.scheduler.phases] == [head * 4, full * 4]
    assert trainer.scheduler.last_epoch == head * 4 + 2
    for group, base in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs, strict=True):
        assert group["lr"] == trainer.scheduler.lr_at(head * 4 + 2, base)
    trainer.refit_epochs(step_s=5.0, spent_s=30.0)  # once only
    assert trainer.config.epochs == head + full
