"""The genuine torchvision / timm twin of each scratchnets model, and the parity check the model
tests share: same weights in both, then eval logits, train-mode logits, dx, every parameter
gradient (random upstream dy) and the updated BN running statistics must agree.
"""

from __future__ import annotations

import copy
import sys
import types

import numpy as np

# torchvision registers meta kernels at import that this torch build lacks; they are not needed
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("meta_registrations"))

import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from timm.models.efficientnet import _gen_mobilenet_v1  # noqa: E402

from scratchnets import to_numpy  # noqa: E402
from scratchnets.backends import OP_NAMES, get_backend  # noqa: E402
from scratchnets.nn import BatchNorm2d  # noqa: E402
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


def load_into_twin(ours, twin) -> None:
    """Copy our parameters and buffers into the torch twin (host arrays, read without copying)."""
    arrays = {n: p.data for n, p in ours.named_parameters()} | dict(ours.named_buffers())
    twin.load_state_dict({k: torch.from_numpy(np.asarray(to_numpy(v))) for k, v in arrays.items()})


def _rel(actual, expected, floor: float = 0.0) -> float:
    """max |a - e| / max(max |e|, floor): the error relative to the array's own scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), floor))


def _twin_results(twin, x: np.ndarray, dy: np.ndarray, dtype) -> dict[str, np.ndarray]:
    """Eval logits, then (train mode) logits, dx, every parameter gradient and the updated BN
    running statistics of the torch model in ``dtype``, as float64 arrays keyed by quantity."""
    twin = twin.to(dtype)
    xt = torch.tensor(x, dtype=dtype)
    twin.eval()
    with torch.no_grad():
        out = {"eval logits": twin(xt).double().numpy()}
    twin.train()
    xt.requires_grad_(True)
    y = twin(xt)
    names, params = zip(*twin.named_parameters(), strict=True)
    grads = torch.autograd.grad((y * torch.tensor(dy, dtype=dtype)).sum(), [xt, *params])
    out |= {"train logits": y.detach().double().numpy(), "dx": grads[0].double().numpy()}
    out |= {f"grad {n}": g.double().numpy() for n, g in zip(names, grads[1:], strict=True)}
    for name, value in twin.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            out[f"buffer {name}"] = value.double().numpy()
    return out


def _our_results(model, x: np.ndarray, dy: np.ndarray) -> dict[str, np.ndarray]:
    """The same quantities from our model (on its backend, in its dtype)."""
    model.eval()
    out = {"eval logits": to_numpy(model(x))}
    model.train()
    model.zero_grad()
    out["train logits"] = to_numpy(model(x))
    out["dx"] = to_numpy(model.backward(dy.astype(x.dtype)))
    out |= {f"grad {n}": to_numpy(p.grad) for n, p in model.named_parameters()}
    for name, value in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            out[f"buffer {name}"] = to_numpy(value)
    return out


def _rel(actual, expected, floor: float = 0.0) -> float:
    """max |a - e| / max(max |e|, floor): the error relative to the array's own scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), floor))


def check_parity(model, twin, x: np.ndarray, rng, rtol: float, key: str) -> None:
    """Our model (any backend, float32 or float64) against its float64 torch twin holding the
    same weights: eval logits, train-mode logits, dx, every parameter gradient for a random
    upstream dy, and the updated BN running statistics.

    ``x`` is float64; the model sees it in its own dtype and torch sees exactly those values.
    Each quantity's error is relative to its own largest value (parameter gradients: at least
    1e-3 of the largest gradient of the model, since some are analytically zero, e.g. the bias of
    a BN whose output reaches a train-mode BN through a conv, where only rounding is left).

    float32: the allowed error is ``max(rtol, 4 * e32)`` with e32 the largest error of torch's own
    float32 run of the twin against the float64 oracle over the same kind of quantity (logits,
    dx, parameter gradients, running statistics): a deep train-mode network amplifies rounding
    (BN divides by batch standard deviations), and our float32 must be about as good as torch's.
    ``key`` names the run in the error table.
    """
    dtype = np.dtype(model.dtype)
    x = x.astype(dtype)
    load_into_twin(model, twin)
    twin32 = copy.deepcopy(twin) if dtype == np.float32 else None
    dy = rng.standard_normal((x.shape[0], model_num_classes(twin)))
    expected = _twin_results(twin, x, dy, torch.float64)
    torch32 = None if twin32 is None else _twin_results(twin32, x, dy, torch.float32)
    actual = _our_results(model, x, dy)
    assert list(actual) == list(expected), "parameter or buffer names differ"
    grad_scale = max(float(np.max(np.abs(v))) for k, v in expected.items() if k[:4] == "grad")

    def group_of(what: str) -> str:  # "grad features.0.0.weight" -> "grad"
        return what.split(" ")[0] if what.startswith(("grad", "buffer")) else what

    def errors(results) -> dict[str, float]:
        floors = {w: 1e-3 * grad_scale if w.startswith("grad") else 0.0 for w in expected}
        return {w: _rel(results[w], expected[w], floors[w]) for w in expected}

    ours = errors(actual)
    worst = {g: max(e for w, e in ours.items() if group_of(w) == g) for g in map(group_of, ours)}
    allowed = dict.fromkeys(worst, rtol)
    if torch32 is not None:  # torch's own float32 run sets the scale, per kind of quantity
        theirs = errors(torch32)
        for g in list(worst):
            worst_32 = max(e for w, e in theirs.items() if group_of(w) == g)
            worst[f"{g} (torch f32)"] = worst_32
            allowed[g] = max(rtol, 4 * worst_32)
    for group, err in worst.items():
        record_error(f"{key} {group}", err, 0.0)  # rel_err(err, 0) is err itself
    failures = [
        f"{what}: relative error {err:.3e} > allowed {allowed[group_of(what)]:.1e}"
        for what, err in ours.items()
        if not err <= allowed[group_of(what)]
    ]
    assert not failures, f"{key}:\n" + "\n".join(failures[:20])


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
