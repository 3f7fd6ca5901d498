"""``scratchnets bench train-step``: one SGD-momentum training step of MobileNetV2 vs PyTorch.

``scratchnets.models.create("mobilenet_v2")`` on ``--backend`` ("cpu", or "cuda" on a GPU) and
torchvision's ``mobilenet_v2`` holding the same weights on the same device, both in float32
train mode on the same batch (default 32 x 3 x 128 x 128, 1000 classes): forward,
cross-entropy, backward, ``SGD(momentum=0.9).step()``, zero the gradients (the sides of
``scratchnets bench models``). Before timing, the two models' eval-mode logits are compared
(same weights, same input). Prints the median step time of each and the ratio scratchnets /
torch. On the GPU each timed step ends with a device synchronize; torch runs with TF32 off.

The issues' targets: batch 32 at 128x128 on the CPU, ``--backend cuda --batch 64 --size 224``
on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .convs import torch_device
from .models import OursSide, TorchSide
from .timing import (
    import_torchvision,
    machine_info,
    max_rel_error,
    median_time,
    print_header,
    setup_torch,
)

HELP = "one MobileNetV2 SGD-momentum training step (batch 32, 128x128) vs torchvision"

#: float32 logits after ~50 layers, relative to their largest magnitude
VALIDATION_TOLERANCE = 1e-3


def build(batch: int, size: int, backend: str = "cpu", seed: int = 0):
    """Our model and its torchvision twin with equal weights on one batch: (ours, theirs)."""
    import scratchnets as sn

    torch = setup_torch()
    model = sn.models.create("mobilenet_v2", rng=seed)
    twin = import_torchvision().models.mobilenet_v2(num_classes=1000)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, 1000, size=batch)
    ours = OursSide(model, backend, x, labels)
    theirs = TorchSide(torch, twin, torch_device(torch, backend), x, labels)
    return ours, theirs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("cpu", "cuda"),
        default="cpu",
        help="scratchnets backend; torch runs on the same device (default cpu)",
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    parser.add_argument("--repeat", type=int, default=5, help="timed steps per side (median)")
    parser.add_argument("--json", default=None, help="also write the result and machine info here")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with tqdm(total=4, desc="bench train-step", file=sys.stderr) as progress:
        ours, theirs = build(args.batch, args.size, args.backend)
        progress.update()
        error = max_rel_error(ours.infer(), theirs.infer())  # also warms up
        if not error <= VALIDATION_TOLERANCE:
            raise AssertionError(f"MobileNetV2 logits differ from torchvision's by {error:.2e}")
        progress.update()
        torch_s = median_time(theirs.train_step, args.repeat)
        progress.update()
        ours_s = median_time(ours.train_step, args.repeat)
        progress.update()
    info = machine_info(args.backend)
    result = {"backend": args.backend, "batch": args.batch, "size": args.size}
    result |= {
        "logits_rel_err": error,
        "ours_step_ms": 1e3 * ours_s,
        "torch_step_ms": 1e3 * torch_s,
        "ratio": ours_s / torch_s,
    }
    print_header({**info, "repeat": args.repeat})
    print(
        f"MobileNetV2 train step, batch {args.batch} x 3 x {args.size} x {args.size}: "
        f"scratchnets-{args.backend} {result['ours_step_ms']:.0f} ms, "
        f"torch {result['torch_step_ms']:.0f} ms, ratio {result['ratio']:.2f} "
        f"(logits agree to {error:.1e})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "result": result}, f, indent=2, default=str)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scratchnets.benchmarks.train_step")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
