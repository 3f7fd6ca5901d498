"""The genuine torchvision / timm twin of each scratchnets model, and the parity check the model
tests share: same weights in both, then eval logits, train-mode logits, dx, every parameter
gradient (random upstream dy) and the updated BN running statistics must agree.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import types
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np

# torchvision registers meta kernels at import that this torch build lacks; they are not needed
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("meta_registrations"))

import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from timm.layers.activations import HardSigmoid as TimmHardSigmoid  # noqa: E402
from timm.models.efficientnet import _gen_mobilenet_v1  # noqa: E402

from scratchnets import to_numpy  # noqa: E402
from scratchnets.backends import OP_NAMES, get_backend  # noqa: E402
from scratchnets.nn import BatchNorm2d, Hardsigmoid, Hardswish, ReLU, ReLU6  # noqa: E402
from tests.helpers import record_error  # noqa: E402


def torch_twin(
    name: str, num_classes: int = 1000, width_mult: float = 1.0, dtype=torch.float64
) -> torch.nn.Module:
    """The torch model whose names and computation ours copy (dropout off), in ``dtype``."""
    if name == "mobilenet_v1":
        model = _gen_mobilenet_v1("mobilenetv1_100", width_mult, num_classes=num_classes)
    elif name == "mobilenet_v2":
        model = torchvision.models.mobilenet_v2(
            num_classes=num_classes, width_mult=width_mult, dropout=0.0
        )
    elif name in ("mobilenet_v3_large", "mobilenet_v3_small"):
        model = getattr(torchvision.models, name)(
            num_classes=num_classes, width_mult=width_mult, dropout=0.0
        )
        # F.hardsigmoid's backward multiplies by the float32 constant 1/6 even on float64
        # tensors (a 3e-8 relative error behind every SE gate): timm's HardSigmoid is the same
        # function, relu6(x + 3) / 6, with the exact gradient
        for module in model.modules():
            if isinstance(getattr(module, "scale_activation", None), torch.nn.Hardsigmoid):
                module.scale_activation = TimmHardSigmoid()
    elif name in ("vgg16", "vgg16_bn"):
        model = getattr(torchvision.models, name)(num_classes=num_classes, dropout=0.0)
    elif name == "xception":
        model = timm.create_model("legacy_xception", num_classes=num_classes)
    else:
        raise ValueError(f"no torch twin for {name!r}")
    return model.to(dtype)


def assert_same_layout(ours, twin) -> None:
    """Identical state dict keys, in the same order, with identical shapes."""
    ours_sd, twin_sd = ours.state_dict(), twin.state_dict()
    assert list(ours_sd) == list(twin_sd), (
        f"only ours: {sorted(set(ours_sd) - set(twin_sd))[:8]}, "
        f"only torch: {sorted(set(twin_sd) - set(ours_sd))[:8]}"
    )
    for name, value in ours_sd.items():
        assert value.shape == tuple(twin_sd[name].shape), name


def randomize_bn(model, rng: np.random.Generator) -> None:
    """Give every BN non-trivial gamma, beta and running statistics (eval mode is then no
    identity map, and folding has something to fold)."""
    for module in model.modules():
        if isinstance(module, BatchNorm2d):
            c = module.num_features
            module.weight.data[...] = rng.uniform(0.5, 1.5, c)
            module.bias.data[...] = rng.normal(0.0, 0.2, c)
            module.running_mean[...] = rng.normal(0.0, 0.2, c)
            module.running_var[...] = rng.uniform(0.5, 2.0, c)


def randomize_torch_bn(twin: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``randomize_bn`` for a torch model (its weights written by a file, not copied from ours):
    the same distributions, drawn by torch; returns ``twin``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in twin.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
                module.running_mean.normal_(0.0, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return twin


def load_into_twin(ours, twin) -> None:
    """Copy our parameters and buffers into the torch twin (host arrays, read without copying)."""
    arrays = {n: p.data for n, p in ours.named_parameters()} | dict(ours.named_buffers())
    twin.load_state_dict({k: torch.from_numpy(np.asarray(to_numpy(v))) for k, v in arrays.items()})


def _rel(actual, expected, floor: float = 0.0) -> float:
    """max |a - e| / max(max |e|, floor): the error relative to the array's own scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), floor))


# ------------------------------------------------------------------ float32: the same function
#
# A float32 gradient of a network of ReLU / ReLU6 / hard-sigmoid units is only comparable with the
# float64 one where both differentiate the same piecewise-linear function: an input within
# rounding of a kink (0 or 6, -3 or 3) may land on one side in float32 and on the other in float64,
# and train-mode BN then spreads the switched unit over its channel and batch. So the float64
# oracle replays our float32 run's decisions: each kink module of the twin is replaced by the
# linear piece our run chose, element by element. What is left between the two runs is rounding
# alone, and its size is measured, not guessed: the replayed float64 twin is run again with
# float32-sized noise (unit roundoff 2^-24, relative to each tensor's rms) added to every
# module's output, every output gradient and every parameter gradient. A float32 result may
# differ from the float64 one by at most F32_SAFETY times the worst such perturbed run.

#: the kinked activations of these models as (lo, hi, slope, offset): y = slope * x + offset on
#: lo < x < hi, and constant (the value at the nearer end) outside
KINKS = {
    ReLU: (0.0, math.inf, 1.0, 0.0),
    ReLU6: (0.0, 6.0, 1.0, 0.0),
    Hardsigmoid: (-3.0, 3.0, 1.0 / 6.0, 0.5),
}
#: h-swish has three pieces, 0 (x <= -3), x (x + 3) / 6 and x (x >= 3), and a gradient that is
#: neither 0 nor 1 inside, so its record is the piece each element took (0, 1, 2), read from
#: the input our kernel compared (our backward's rule: x <= -3, x < 3)
HSWISH_PIECES = (-3.0, 3.0)
#: the torch classes ours stand for, by kind
TORCH_KINKS = {
    torch.nn.ReLU: ReLU,
    torch.nn.ReLU6: ReLU6,
    torch.nn.Hardsigmoid: Hardsigmoid,
    TimmHardSigmoid: Hardsigmoid,
    torch.nn.Hardswish: Hardswish,
}
#: append one JSON line per float32 check here (draw studies: SCRATCHNETS_F32_DRAWS=50)
F32_LOG = os.environ.get("SCRATCHNETS_F32_LOG")
#: float32's unit roundoff
UNIT_ROUNDOFF = 2.0**-24
#: perturbed runs per check, and how far beyond the worst of them our float32 may be: rounding
#: errors of a length-K dot product grow like sqrt(K) u (K up to ~1000 here) where the noise
#: model injects one u per tensor; see the closing note of issue 17 for the measured ratios
F32_NOISE_RUNS = 2
F32_SAFETY = 30.0
#: a replayed decision that disagrees with float64's own must be this close to its kink
#: (relative to the largest input of the layer): farther away it is a wrong mask, not rounding
KINK_SLACK = 1e-3


@contextlib.contextmanager
def recording_kinks(model) -> Iterator[dict[str, list[np.ndarray]]]:
    """Log, per kink module name, the "linear piece taken" mask of every forward call: where our
    own backward passes the gradient on (``backward(ones) != 0``); for h-swish the piece taken
    (``HSWISH_PIECES``)."""
    log: dict[str, list[np.ndarray]] = defaultdict(list)
    kinks = [(name, m) for name, m in model.named_modules() if type(m) in (*KINKS, Hardswish)]

    def recorded(name, module):
        def forward(x):
            y = type(module).forward(module, x)
            if type(module) is Hardswish:
                lo, hi = HSWISH_PIECES
                log[name].append((to_numpy(x) > lo).astype(np.int8) + (to_numpy(x) >= hi))
            else:
                log[name].append(to_numpy(module.backward(np.ones_like(y))) != 0)
            return y

        return forward

    for name, module in kinks:
        module.__dict__["forward"] = recorded(name, module)
    try:
        yield log
    finally:
        for _, module in kinks:
            del module.__dict__["forward"]


class Replay:
    """The masks of one recorded run, handed out in order per module name; counts the elements
    where they overrule float64's own decision (the flips)."""

    def __init__(self, log: dict[str, list[np.ndarray]]):
        self.log, self.used, self.flips = log, dict.fromkeys(log, 0), 0

    def next_mask(self, name: str) -> np.ndarray:
        assert self.used[name] < len(self.log[name]), f"{name}: more calls than recorded"
        self.used[name] += 1
        return self.log[name][self.used[name] - 1]

    def assert_consumed(self) -> None:
        left = {n: len(masks) - self.used[n] for n, masks in self.log.items()}
        assert not any(left.values()), f"recorded calls never replayed: {left}"


class ReplayedKink(torch.nn.Module):
    """A kink module of the twin that takes the linear piece a recorded run took."""

    def __init__(self, name: str, kind, replay: Replay):
        super().__init__()
        self.name, self.replay, self.kind = name, replay, kind
        if kind is not Hardswish:
            self.lo, self.hi, self.slope, self.offset = KINKS[kind]

    def forward(self, x):
        if self.kind is Hardswish:
            return self._hardswish(x)
        taken = torch.from_numpy(self.replay.next_mask(self.name))
        assert taken.shape == x.shape, f"{self.name}: mask {tuple(taken.shape)} for {x.shape}"
        inside = (x > self.lo) & (x < self.hi)
        if (taken != inside).any():  # only inputs within rounding of a kink may be overruled
            xs = x.detach()[taken != inside].double()
            gap = torch.minimum((xs - self.lo).abs(), (xs - self.hi).abs()).max().item()
            scale = max(1.0, x.detach().abs().max().item())
            assert gap <= KINK_SLACK * scale, (
                f"{self.name}: the recorded mask overrules an input {gap:.2e} from its kink "
                f"(inputs up to {scale:.2e}): our backward's mask is wrong, not rounded"
            )
            self.replay.flips += int((taken != inside).sum())
        nearer_end = torch.where((x - self.lo).abs() <= (x - self.hi).abs(), self.lo, self.hi)
        return torch.where(
            taken, self.slope * x + self.offset, self.slope * nearer_end + self.offset
        )

    def _hardswish(self, x):
        """h-swish on the recorded pieces: 0, x (x + 3) / 6 or x; a piece that differs from
        float64's own choice must be within rounding of its kink."""
        piece = torch.from_numpy(self.replay.next_mask(self.name).astype(np.int64))
        assert piece.shape == x.shape, f"{self.name}: pieces {tuple(piece.shape)} for {x.shape}"
        lo, hi = HSWISH_PIECES
        own = (x > lo).long() + (x >= hi).long()
        if (piece != own).any():
            xs = x.detach()[piece != own].double()
            gap = torch.minimum((xs - lo).abs(), (xs - hi).abs()).max().item()
            scale = max(1.0, x.detach().abs().max().item())
            assert gap <= KINK_SLACK * scale, (
                f"{self.name}: the recorded piece overrules an input {gap:.2e} from its kink"
            )
            self.replay.flips += int((piece != own).sum())
        return torch.where(piece == 0, 0.0 * x, torch.where(piece == 1, x * (x + 3) / 6, x))


@contextlib.contextmanager
def replaying(twin: torch.nn.Module, replay: Replay) -> Iterator[torch.nn.Module]:
    """``twin`` with each kink module swapped for a ``ReplayedKink`` of ``replay`` (restored on
    exit); the names are ours, so both models must name their kink modules alike."""
    swapped = []
    for name, module in list(twin.named_modules()):
        if type(module) in TORCH_KINKS:
            parent_name, _, attr = name.rpartition(".")
            parent = twin.get_submodule(parent_name)
            parent._modules[attr] = ReplayedKink(name, TORCH_KINKS[type(module)], replay)
            swapped.append((parent, attr, module))
    missing = set(replay.log) - {
        replaced.name for p, a, _ in swapped for replaced in [p._modules[a]]
    }
    assert not missing, f"kink modules of ours with no counterpart in the twin: {sorted(missing)}"
    try:
        yield twin
    finally:
        for parent, attr, module in swapped:
            parent._modules[attr] = module


@contextlib.contextmanager
def float32_sized_noise(twin: torch.nn.Module, seed: int) -> Iterator[Callable[[], None]]:
    """``twin`` with N(0, 1) * 2^-24 * rms(t) added to every tensor ``t`` a float32 run rounds:
    each module's output (containers too: their residual adds and gate products), the gradient
    flowing back into it, each parameter's gradient and each BN running statistic a train-mode
    forward updates. Yields ``round_parameters()``, which a training loop calls after each
    optimizer step (float32 weights are stored rounded). Hooks removed on exit."""
    generator = torch.Generator().manual_seed(seed)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        rms = t.detach().pow(2).mean().sqrt()
        return t + UNIT_ROUNDOFF * rms * torch.randn(t.shape, generator=generator, dtype=t.dtype)

    def output_hook(module, inputs, y):
        if isinstance(module, torch.nn.BatchNorm2d) and module.training:
            # the running statistics it just updated are rounded too (new tensors: autograd
            # keeps the old ones)
            module.running_mean = noisy(module.running_mean)
            module.running_var = noisy(module.running_var)
        if y.requires_grad:
            y.register_hook(noisy)
        return noisy(y)

    @torch.no_grad()
    def round_parameters() -> None:
        for p in twin.parameters():
            p.copy_(noisy(p))

    exact = (torch.nn.Identity, torch.nn.Flatten, torch.nn.Dropout, ReplayedKink)
    handles = [
        m.register_forward_hook(output_hook) for m in twin.modules() if not isinstance(m, exact)
    ]
    handles += [p.register_hook(noisy) for p in twin.parameters()]
    try:
        yield round_parameters
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------- the parity check


def torch_results(twin, x: np.ndarray, dy: np.ndarray, eval_logits: bool = True) -> dict:
    """Eval logits (``eval_logits``), then in train mode y, dx, every parameter gradient of
    sum(y * dy) and the updated BN running statistics of the float64 twin, keyed by quantity.
    The twin's weights and buffers are restored afterwards, so it can be run again."""
    state = copy.deepcopy(twin.state_dict())
    xt = torch.tensor(x, dtype=torch.float64)
    out = {}
    if eval_logits:
        with torch.no_grad():
            out["eval y"] = twin.eval()(xt).numpy()
    xt.requires_grad_(True)
    y = twin.train()(xt)
    names, params = zip(*twin.named_parameters(), strict=True)
    grads = torch.autograd.grad((y * torch.from_numpy(dy)).sum(), [xt, *params])
    out |= {"train y": y.detach().numpy(), "dx": grads[0].numpy()}
    out |= {f"grad {n}": g.numpy() for n, g in zip(names, grads[1:], strict=True)}
    out |= {
        f"buffer {n}": v.numpy().copy()
        for n, v in twin.state_dict().items()
        if n.endswith(("running_mean", "running_var"))
    }
    twin.load_state_dict(state)
    return out


def our_results(model, x: np.ndarray, dy: np.ndarray, eval_logits: bool = True) -> dict:
    """The same quantities from our model (on its backend, x and dy in its dtype)."""
    x = x.astype(model.dtype)
    model.fast_eval = False  # the training graph in eval mode: its kinks are the twin's
    out = {"eval y": to_numpy(model.eval()(x))} if eval_logits else {}
    model.train().zero_grad()
    out["train y"] = to_numpy(model(x))
    out["dx"] = to_numpy(model.backward(dy.astype(model.dtype)))
    out |= {f"grad {n}": to_numpy(p.grad) for n, p in model.named_parameters()}
    out |= {
        f"buffer {n}": to_numpy(v).copy()
        for n, v in model.named_buffers()
        if n.endswith(("running_mean", "running_var"))
    }
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def relative_errors(actual: dict, expected: dict) -> dict[str, float]:
    """Each quantity's error relative to its own largest value; parameter gradients relative to
    at least 1e-3 of the largest gradient of the model, since some are analytically zero (the
    bias of a BN whose output reaches a train-mode BN through a conv: only rounding is left)."""
    assert list(actual) == list(expected), "parameter or buffer names differ"
    grad_scale = max(float(np.max(np.abs(v))) for k, v in expected.items() if k[:4] == "grad")
    floor = {k: 1e-3 * grad_scale if k[:4] == "grad" else 0.0 for k in expected}
    return {k: _rel(actual[k], expected[k], floor[k]) for k in expected}


def _kind(what: str) -> str:  # "grad features.0.0.weight" -> "grad"; "train y" -> "train y"
    return what.split(" ")[0] if what.startswith(("grad", "buffer")) else what


def assert_within(errors: dict, allowed: dict, key: str) -> None:
    """Record the worst error per kind of quantity; fail listing every one above its allowance."""
    for kind in dict.fromkeys(map(_kind, errors)):
        record_error(f"{key} {kind}", max(e for w, e in errors.items() if _kind(w) == kind), 0.0)
    failures = [
        f"{w}: relative error {e:.3e} > allowed {allowed[w]:.1e}"
        for w, e in errors.items()
        if not e <= allowed[w]
    ]
    assert not failures, f"{key}:\n" + "\n".join(failures[:20])


def check_parity(model, twin, x, dy, key: str, *, rtol: float = 1e-9, eval_logits=True) -> None:
    """Our model (any backend, float32 or float64) against its float64 torch twin holding the
    same weights: eval logits (``eval_logits``), train-mode logits, dx, every parameter gradient
    of sum(y * dy) and the updated BN running statistics.

    ``x`` is float64 (the model sees it in its own dtype, torch exactly those values); ``dy`` an
    array, or a Generator to draw one of the logits' shape from. float64: every quantity within
    ``rtol`` of the genuine twin, relative to its own scale. float32: against the twin replaying
    our kink decisions, within F32_SAFETY times the error of the worst float32-sized
    perturbation of that twin (see the section comment above). ``key`` names the run in the
    error table.
    """
    load_into_twin(model, twin)
    x = x.astype(model.dtype).astype(np.float64)
    if isinstance(dy, np.random.Generator):
        dy = dy.standard_normal((x.shape[0], model_num_classes(twin)))
    if np.dtype(model.dtype) == np.float64:
        errors = relative_errors(
            our_results(model, x, dy, eval_logits), torch_results(twin, x, dy, eval_logits)
        )
        assert_within(errors, dict.fromkeys(errors, rtol), key)
        return
    with recording_kinks(model) as log:
        actual = our_results(model, x, dy, eval_logits)
    assert_float32_within_rounding(
        actual, twin, log, lambda round_parameters: torch_results(twin, x, dy, eval_logits), key
    )


def assert_float32_within_rounding(
    actual: dict,
    twin: torch.nn.Module,
    log: dict[str, list[np.ndarray]],
    run: Callable[[Callable[[], None]], dict],
    key: str,
    errors_of: Callable[[dict, dict], dict[str, float]] = relative_errors,
) -> None:
    """Our float32 results ``actual`` against ``run()`` of the float64 ``twin`` replaying our
    recorded kink decisions ``log``, within F32_SAFETY times the worst of F32_NOISE_RUNS runs of
    the replayed twin under float32-sized noise (see the section comment above).

    ``run(round_parameters)`` computes the twin's results (a dict like ``actual``), calling
    ``round_parameters()`` wherever a float32 run stores rounded weights (after an optimizer
    step); ``errors_of(actual, expected)`` gives each quantity's relative error."""
    exact_run, *noisy_runs = (Replay(log) for _ in range(1 + F32_NOISE_RUNS))
    with replaying(twin, exact_run):
        expected = run(lambda: None)
    exact_run.assert_consumed()
    rounding = dict.fromkeys(expected, UNIT_ROUNDOFF)  # storing a result in float32 rounds it
    for seed, replay in enumerate(noisy_runs):
        with replaying(twin, replay), float32_sized_noise(twin, seed) as round_parameters:
            perturbed = errors_of(run(round_parameters), expected)
        rounding = {w: max(rounding[w], e) for w, e in perturbed.items()}
    errors = errors_of(actual, expected)
    worst = max(errors, key=lambda w: errors[w] / rounding[w])
    record_error(f"{key} kink flips", float(exact_run.flips), 0.0)
    record_error(f"{key} error / rounding model", errors[worst] / rounding[worst], 0.0)
    if F32_LOG:
        record = {
            "key": key,
            "flips": exact_run.flips,
            "ratio": errors[worst] / rounding[worst],
            "worst": worst,
            "error": errors[worst],
            "rounding": rounding[worst],
            "blas": os.environ.get("OPENBLAS_CORETYPE", ""),
        }
        with open(F32_LOG, "a") as log_file:
            print(json.dumps(record), file=log_file)
    assert_within(errors, {w: F32_SAFETY * r for w, r in rounding.items()}, key)


def model_num_classes(twin) -> int:
    """The number of logits of a torch classifier (its last Linear layer's out_features)."""
    linears = [m for m in twin.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1].out_features


def _backends() -> list[str]:
    """ "reference", plus "cpu" when the Numba backend imports and exports every op."""
    try:
        cpu = get_backend("cpu")
    except ImportError:
        return ["reference"]
    return ["reference", "cpu"] if all(hasattr(cpu, op) for op in OP_NAMES) else ["reference"]


#: the host backends the model tests run on
BACKENDS = _backends()
