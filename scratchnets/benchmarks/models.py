"""``scratchnets bench models``: whole-model speed, inference and training, next to PyTorch.

For every model of ``scratchnets.models`` (or the ``--models`` given), at ``--resolution`` and
``--batch``, float32:

* **inference**: one eval-mode forward pass: ours runs its eval fast path (BN folded, ReLU6 /
  h-swish fused, ``models.fuse.EvalFastPath``), torch under ``no_grad``;
* **training step**: train-mode forward, softmax cross-entropy on random labels, backward, and an
  SGD update (lr 0.001, momentum 0.9) of every parameter.

Each is timed as the median of ``--repeat`` runs after a warm-up run (which also compiles the
numba kernels), on scratchnets' ``--backend`` and, with ``--compare-torch``, on its PyTorch twin
(torchvision ``mobilenet_v2`` / ``mobilenet_v3_large`` / ``mobilenet_v3_small`` / ``vgg16``, timm
``mobilenetv1_100``, ``ghostnet_100``, ``ghostnetv2_100``, ``ghostnetv3_100``,
``legacy_xception``) holding the same weights, on the same device. Before timing, our eval logits are checked against the twin's.

Throughput is images/s; achieved GFLOP/s counts 2 FLOPs per multiply-add of the conv and linear
layers (``scratchnets.profile.summary``) and, for a training step, 3x the forward's (the backward
computes dx and dW, each as many MACs as the forward), next to the machine's measured peak (a
2048^3 float32 matmul: NumPy's BLAS on every usable core, torch on the GPU).

With ``--compare-onnx`` the torch twin is also exported to ONNX and timed in ONNX Runtime (CPU,
one intra-op thread per usable core), its logits checked against ours first: inference only.
``--inference-only`` skips the training step.

Run: ``scratchnets bench models --compare-torch --models mobilenet_v2 ghostnet_100``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import numpy as np

from ..models.registry import model_cfg, models_where
from .convs import torch_device
from .timing import (
    add_json_option,
    format_table,
    import_torchvision,
    interleaved_median_times,
    json_to_stdout,
    machine_info,
    machine_peaks,
    max_rel_error,
    median_time,
    print_header,
    setup_torch,
    write_json,
)

HELP = "whole models: inference and training-step speed of every model vs its torch twin"

#: the registry's benchmarked models: the mobile ones first, each group in the order of its papers
MODELS = tuple(
    sorted(models_where(lambda cfg: cfg.benchmarked), key=lambda name: not model_cfg(name).mobile)
)

#: float32 logits of two implementations of a deep network (up to ~20 BN'd layers): ~1e-6 apart
VALIDATION_TOLERANCE = 1e-4

#: SGD of the training step (both sides)
LR, MOMENTUM = 1e-3, 0.9


def torch_twin(torch, name: str, num_classes: int):
    """The torchvision / timm model whose parameter names and computation ours copy."""
    library, twin_name = model_cfg(name).twin
    if library == "torchvision":
        return getattr(import_torchvision().models, twin_name)(num_classes=num_classes)
    import_torchvision()  # timm imports torchvision: skip its meta registrations first
    import timm

    return timm.create_model(twin_name, num_classes=num_classes)


class OursSide:
    """A scratchnets model on ``backend`` with its loss and optimizer."""

    def __init__(self, model, backend: str, x: np.ndarray, labels: np.ndarray):
        from scratchnets.nn import CrossEntropyLoss
        from scratchnets.optim import SGD

        self.model = model.to(backend)
        self.loss = CrossEntropyLoss().to(backend)
        self.optimizer = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        if backend == "cuda":
            from numba import cuda

            self.x, self.sync = cuda.to_device(x), cuda.synchronize
        else:
            self.x, self.sync = x, lambda: None
        self.labels = labels

    def infer(self):
        self.model.eval()
        y = self.model(self.x)
        self.sync()
        return y

    def train_step(self) -> None:
        self.model.train()
        self.loss(self.model(self.x), self.labels)
        self.model.backward(self.loss.backward())
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.sync()


class OnnxSide:
    """The torch twin exported to ONNX (TorchScript exporter, in memory) and run by ONNX Runtime
    on the CPU with one intra-op thread per usable core: what a user picks for CPU inference."""

    def __init__(self, torch, twin, x: np.ndarray):
        import io

        import onnxruntime

        buffer = io.BytesIO()
        torch.onnx.export(
            twin.eval(), (torch.from_numpy(x),), buffer, dynamo=False, input_names=["x"],
            output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )  # fmt: skip
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0))
        self.session = onnxruntime.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
        )
        self.x = x

    def infer(self):
        return self.session.run(None, {"x": self.x})[0]


def check_onnx_available() -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"--compare-onnx needs onnxruntime and onnx ({exc.name} is missing): "
            "pip install onnxruntime onnx"
        ) from None


class TorchSide:
    """The torch twin on ``device``, same weights, input and labels."""

    def __init__(self, torch, twin, device: str, x: np.ndarray, labels: np.ndarray):
        self.torch, self.model = torch, twin.to(device=device, dtype=torch.float32)
        self.optimizer = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM)
        self.x = torch.from_numpy(x).to(device)
        self.labels = torch.from_numpy(labels).to(device)
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def infer(self):
        self.model.eval()
        with self.torch.no_grad():
            y = self.model(self.x)
        self.sync()
        return y

    def train_step(self) -> None:
        self.model.train()
        loss = self.torch.nn.functional.cross_entropy(self.model(self.x), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.sync()


def bench_model(name: str, args, torch, bar) -> dict:
    """Validate, then time inference and one training step of model ``name``: one table row."""
    from scratchnets import models, profile

    model = models.create(name, num_classes=args.num_classes)
    macs = profile.summary(model, (1, 3, args.resolution, args.resolution)).total_macs
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, args.resolution, args.resolution), dtype=np.float32)
    labels = rng.integers(0, args.num_classes, args.batch)
    device = torch_device(torch, args.backend)
    twin = torch_twin(torch, name, args.num_classes)
    twin.load_state_dict(
        {k: torch.from_numpy(np.asarray(v)) for k, v in model.state_dict().items()}
    )
    ours = OursSide(model, args.backend, x, labels)
    theirs = TorchSide(torch, twin, device, x, labels)
    bar.set_postfix_str(f"{name} validate")
    error = max_rel_error(ours.infer(), theirs.infer())  # also the inference warm-up
    if not error <= VALIDATION_TOLERANCE:
        raise AssertionError(
            f"{name}: eval logits differ from the torch twin by {error:.2e} (relative) at input "
            f"{x.shape}"
        )
    row = {"model": name, "mmacs_per_image": macs / 1e6, "max_rel_err": error}
    sides = {"ours": ours, **({"torch": theirs} if args.compare_torch else {})}
    if args.compare_onnx:
        bar.set_postfix_str(f"{name} onnx export")
        onnx_side = OnnxSide(torch, twin, x)
        error = max_rel_error(ours.infer(), onnx_side.infer())
        if not error <= VALIDATION_TOLERANCE:
            raise AssertionError(f"{name}: ONNX Runtime's logits differ from ours by {error:.2e}")
    # (phase, method of a side, FLOPs per image, warm-up runs: validation warmed up inference)
    phases = (("infer", "infer", 2 * macs, 0), ("train", "train_step", 6 * macs, 1))
    for phase, method, flops_per_image, warmup in phases[: 1 if args.inference_only else 2]:
        bar.set_postfix_str(f"{name} {phase}")
        timed = {who: getattr(side, method) for who, side in sides.items()}
        seconds = interleaved_median_times(timed, args.repeat, warmup)
        if phase == "infer" and args.compare_onnx:
            # in a block of its own, after ours: ONNX Runtime's idle workers spin (its default,
            # what its users get), and in rounds with ours they held a core our next call
            # needed (MobileNetV2 b1: ours 18.9 ms alone, 29.5 ms next to it; with spinning off
            # ONNX Runtime itself ran 2x slower)
            timed["onnx"] = onnx_side.infer
            seconds["onnx"] = median_time(onnx_side.infer, args.repeat, 1)
        for who in timed:
            row[f"{who}_{phase}_ms"] = 1e3 * seconds[who]
            row[f"{who}_{phase}_img_s"] = args.batch / seconds[who]
            if who != "onnx":
                row[f"{who}_{phase}_gflops"] = flops_per_image * args.batch / seconds[who] / 1e9
        if args.compare_torch:
            row[f"{phase}_ratio"] = row[f"ours_{phase}_ms"] / row[f"torch_{phase}_ms"]
        if f"onnx_{phase}_ms" in row:
            row[f"{phase}_onnx_ratio"] = row[f"ours_{phase}_ms"] / row[f"onnx_{phase}_ms"]
        bar.update()
    return row


def columns(phase: str, peak: float) -> tuple:
    """The table of one phase; GFLOP/s columns also as a share of the measured matmul peak."""
    return (
        ("model", "model", ""),
        ("mmacs_per_image", "MMAC/img", ".0f"),
        (f"ours_{phase}_ms", "ours ms", ".1f"),
        (f"torch_{phase}_ms", "torch ms", ".1f"),
        (f"{phase}_ratio", "ours/torch", ".2f"),
        (f"ours_{phase}_img_s", "ours img/s", ".1f"),
        (f"torch_{phase}_img_s", "torch img/s", ".1f"),
        (f"ours_{phase}_gflops", "ours GFLOP/s", ".1f"),
        (f"ours_{phase}_peak", f"of peak {peak:.0f}", ".1%"),
        (f"torch_{phase}_gflops", "torch GFLOP/s", ".1f"),
        (f"torch_{phase}_peak", "of peak", ".1%"),
        (f"onnx_{phase}_ms", "onnx ms", ".1f"),
        (f"{phase}_onnx_ratio", "ours/onnx", ".2f"),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="cpu", choices=("reference", "cpu", "cuda"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--resolution", type=int, default=128, help="input height = width")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (median)")
    parser.add_argument(
        "--compare-torch", action="store_true", help="also time the torch twin on the same device"
    )
    parser.add_argument(
        "--compare-onnx", action="store_true", help="also time the torch twin exported to ONNX "
        "in ONNX Runtime (inference; needs onnxruntime and onnx)",
    )  # fmt: skip
    parser.add_argument(
        "--inference-only",
        action="store_true",
        help="time the eval forward only (no training step)",
    )
    add_json_option(parser)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    for name in ("resolution", "batch", "repeat", "num_classes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.compare_onnx:
        if args.backend == "cuda":
            raise ValueError("--compare-onnx times ONNX Runtime on the CPU: use a CPU backend")
        check_onnx_available()
    torch = setup_torch()
    phases = 1 if args.inference_only else 2
    with tqdm(total=phases * len(args.models), desc="bench models", file=sys.stderr) as bar:
        rows = [bench_model(name, args, torch, bar) for name in args.models]
    device = torch_device(torch, args.backend)
    peak = machine_peaks(device)
    for row in rows:
        for key in [k for k in row if k.endswith("_gflops")]:
            row[key.replace("_gflops", "_peak")] = row[key] / peak["matmul_gflops"]
    result = {
        "machine": machine_info(args.backend),
        "peak": peak,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "rows": rows,
    }
    with contextlib.redirect_stdout(sys.stderr if json_to_stdout(args) else sys.stdout):
        print_header(result["machine"] | {f"peak {device}": peak})
        print(
            f"# backend {args.backend}, batch {args.batch}, {args.resolution}x{args.resolution}, "
            f"float32, median of {args.repeat}; training FLOPs = 3x forward"
        )
        titles = (("infer", "inference (eval forward)"), ("train", "training step"))
        for phase, title in titles[:phases]:
            print(f"\n{title}")
            print(format_table(rows, columns(phase, peak["matmul_gflops"])))
    write_json(result, args)
    return 0
