"""The genuine torchvision / timm twin of each scratchnets model, and the parity check the model
tests share: same weights in both, then eval logits, train-mode logits, dx, every parameter
gradient (random upstream dy) and the updated BN running statistics must agree.
"""

from __future__ import annotations

import sys
import types

import numpy as np

# torchvision registers meta kernels at import that this torch build lacks; they are not needed
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("meta_registrations"))

import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from timm.models.efficientnet import _gen_mobilenet_v1  # noqa: E402

from scratchnets.backends import OP_NAMES, get_backend  # noqa: E402
from scratchnets.nn import BatchNorm2d  # noqa: E402
from tests.helpers import record_error, t, torch_grads  # noqa: E402


def torch_twin(name: str, num_classes: int = 1000, width_mult: float = 1.0) -> torch.nn.Module:
    """The float64 torch model whose names and computation ours copy (dropout off)."""
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
    return model.double()


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
    twin.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})


def _rel(actual, expected, floor: float = 0.0) -> float:
    """max |a - e| / max(max |e|, floor): the error relative to the array's own scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), floor))


def check_parity(model, twin, x: np.ndarray, rng, rtol: float, key: str) -> None:
    """Our model (any backend/dtype) against its float64 torch twin holding the same weights.

    ``x`` is float64; the model sees it in its own dtype and torch sees exactly those values.
    Each quantity's error is relative to its own largest value (parameter gradients: at least
    1e-3 of the largest gradient of the model, since some are analytically zero, e.g. the bias of
    a BN whose output feeds a train-mode BN through a conv). ``key`` names it in the error table.
    """
    x = x.astype(model.dtype if hasattr(model, "dtype") else np.float32)
    load_into_twin(model, twin)
    checks = []

    model.eval()
    twin.eval()
    with torch.no_grad():
        expected = twin(t(x)).numpy()
    checks.append(("eval logits", model(x), expected, 0.0))

    model.train()
    twin.train()
    model.zero_grad()
    y = model(x)
    xt = t(x, requires_grad=True)
    ty = twin(xt)
    dy = rng.standard_normal(y.shape)
    named = dict(twin.named_parameters())
    dx_expected, *param_expected = torch_grads(ty, [xt, *named.values()], dy)
    dx = model.backward(dy.astype(y.dtype))
    checks += [("train logits", y, ty.detach().numpy(), 0.0), ("dx", dx, dx_expected, 0.0)]
    grad_scale = max(float(np.max(np.abs(g))) for g in param_expected)
    ours = dict(model.named_parameters())
    assert list(ours) == list(named)
    for name, expected_grad in zip(named, param_expected, strict=True):
        checks.append((f"grad {name}", ours[name].grad, expected_grad, 1e-3 * grad_scale))
    twin_state = twin.state_dict()
    for name, value in model.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            checks.append((f"buffer {name}", value, twin_state[name].numpy(), 0.0))
        elif name.endswith("num_batches_tracked"):
            assert int(value) == int(twin_state[name]), name

    worst: dict[str, float] = {}
    failures = []
    for what, actual, expected, floor in checks:
        err = _rel(actual, expected, floor)
        group = what.split(" ")[0] if what.startswith(("grad", "buffer")) else what
        worst[group] = max(worst.get(group, 0.0), err)
        if not err <= rtol:
            failures.append(f"{what}: relative error {err:.3e} > {rtol:.1e}")
    for group, err in worst.items():
        record_error(f"{key} {group}", err, 0.0)  # rel_err(err, 0) is err itself
    assert not failures, f"{key}:\n" + "\n".join(failures[:20])


def _backends() -> list[str]:
    """ "reference", plus "cpu" when the Numba backend imports and exports every op."""
    try:
        cpu = get_backend("cpu")
    except ImportError:
        return ["reference"]
    return ["reference", "cpu"] if all(hasattr(cpu, op) for op in OP_NAMES) else ["reference"]


#: the host backends the model tests run on
BACKENDS = _backends()
