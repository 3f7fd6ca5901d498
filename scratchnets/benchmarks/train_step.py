"""``scratchnets bench train-step``: one SGD-momentum training step of MobileNetV2 vs PyTorch.

``scratchnets.models.create("mobilenet_v2")`` on the "cpu" backend and torchvision's
``mobilenet_v2`` holding the same weights, both in float32 train mode on the same batch
(default 32 x 3 x 128 x 128, 1000 classes): zero the gradients, forward, cross-entropy, backward,
``SGD(lr=0.01, momentum=0.9).step()``. Before timing, the two models' eval-mode logits are
compared (same weights, same input). Prints the median step time of each and the ratio
scratchnets / torch.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .timing import import_torchvision, machine_info, median_time, print_header, setup_torch

HELP = "one MobileNetV2 SGD-momentum training step (batch 32, 128x128) vs torchvision"

#: float32 logits after ~50 layers, relative to their largest magnitude
VALIDATION_TOLERANCE = 1e-3


def build(batch: int, size: int, seed: int = 0):
    """The two models with equal weights, their optimizers, the batch, and one step of each."""
    import scratchnets as sn

    torch = setup_torch()
    torchvision = import_torchvision()
    ours = sn.models.create("mobilenet_v2", rng=seed).to("cpu")
    theirs = torchvision.models.mobilenet_v2(num_classes=1000)
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    target = rng.integers(0, 1000, size=batch)
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)

    loss_fn = sn.nn.CrossEntropyLoss()
    sgd = sn.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    torch_sgd = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)

    def ours_step():
        sgd.zero_grad()
        loss = loss_fn(ours(x), target)
        ours.backward(loss_fn.backward())
        sgd.step()
        return loss

    def torch_step():
        torch_sgd.zero_grad()
        loss = torch.nn.functional.cross_entropy(theirs(xt), tt)
        loss.backward()
        torch_sgd.step()
        return loss

    def validate() -> float:
        ours.eval()
        theirs.eval()
        with torch.no_grad():
            expected = theirs(xt[:4]).numpy()
        error = float(np.max(np.abs(ours(x[:4]) - expected)) / np.max(np.abs(expected)))
        ours.train()
        theirs.train()
        return error

    return ours_step, torch_step, validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--size", type=int, default=128, help="input height = width (default 128)")
    parser.add_argument("--repeat", type=int, default=5, help="timed steps per side (median)")
    parser.add_argument("--json", default=None, help="also write the result and machine info here")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    with tqdm(total=4, desc="bench train-step", file=sys.stderr) as progress:
        ours_step, torch_step, validate = build(args.batch, args.size)
        progress.update()
        error = validate()
        if not error <= VALIDATION_TOLERANCE:
            raise AssertionError(f"MobileNetV2 logits differ from torchvision's by {error:.2e}")
        progress.update()
        torch_s = median_time(torch_step, args.repeat)
        progress.update()
        ours_s = median_time(ours_step, args.repeat)
        progress.update()
    info = machine_info()
    result = {"batch": args.batch, "size": args.size, "logits_rel_err": error}
    result |= {
        "ours_step_ms": 1e3 * ours_s,
        "torch_step_ms": 1e3 * torch_s,
        "ratio": ours_s / torch_s,
    }
    print_header({**info, "repeat": args.repeat})
    print(
        f"MobileNetV2 train step, batch {args.batch} x 3 x {args.size} x {args.size}: "
        f"scratchnets-cpu {result['ours_step_ms']:.0f} ms, torch {result['torch_step_ms']:.0f} ms, "
        f"ratio {result['ratio']:.2f} (logits agree to {error:.1e})"
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
