"""scratchnets.optim against torch.optim / torch schedulers / clip_grad_norm_ / timm's EMA.

Optimizers run ~20 steps on random float64 parameters with random gradients, next to the torch
optimizer with identical hyper-parameters, and every parameter must agree to ~1e-12 relative
after every step. Keras' RMSprop (eps_placement="tf") is checked against Keras' update written
out in this file. The distillation loss and its hand-derived gradient are checked against torch
autograd with a random upstream scalar.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from scratchnets import nn, optim
from tests.helpers import assert_close_f64, record_error, t

SHAPES = [(3, 4), (5,), (2, 3, 2, 2)]
STEPS = 20
RTOL = 1e-12


def make_params(rng, dtype=np.float64):
    """Our Parameters and torch leaf tensors holding the same random values."""
    ours = [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    return ours, theirs


def set_grads(ours, theirs, rng):
    for p, q in zip(ours, theirs, strict=True):
        g = rng.standard_normal(p.shape).astype(p.dtype)
        p.grad = g
        q.grad = torch.tensor(g.copy())


def run_against_torch(make_ours, make_torch, key: str, lr_per_step=None, steps=STEPS, seed=0):
    """Step both optimizers on the same gradients and compare every parameter after each step.

    ``lr_per_step(i)`` (optional) sets the lr of every group before step i in both.
    """
    rng = np.random.default_rng(seed)
    ours, theirs = make_params(rng)
    opt, ref = make_ours(ours), make_torch(theirs)
    for i in range(steps):
        set_grads(ours, theirs, rng)
        if lr_per_step is not None:
            for group in opt.param_groups + ref.param_groups:
                group["lr"] = lr_per_step(i)
        opt.step()
        ref.step()
        for j, (p, q) in enumerate(zip(ours, theirs, strict=True)):
            record_error(f"optim/{key}", p.data, q.detach().numpy())
            assert_close_f64(p.data, q.detach().numpy(), RTOL, f"{key} step {i} param {j}")
    return opt, ref


def flags(**options):
    """Every combination of the given option values, as pytest parameters with readable ids."""
    names = list(options)
    combos = [
        dict(zip(names, values, strict=True)) for values in itertools.product(*options.values())
    ]
    return pytest.mark.parametrize(
        "kw", combos, ids=["-".join(f"{k}={v}" for k, v in c.items()) for c in combos]
    )


# ------------------------------------------------------------------------------------- SGD


@flags(momentum=[0.0, 0.9], dampening=[0.0, 0.3], nesterov=[False, True], weight_decay=[0.0, 0.05])
def test_sgd_matches_torch(kw):
    if kw["nesterov"] and (kw["momentum"] == 0 or kw["dampening"] != 0):
        with pytest.raises(ValueError, match="Nesterov"):
            optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1, **kw)
        return
    run_against_torch(
        lambda ps: optim.SGD(ps, lr=0.1, **kw),
        lambda ps: torch.optim.SGD(ps, lr=0.1, **kw),
        "sgd",
    )


# ---------------------------------------------------------------------------------- RMSprop


@flags(momentum=[0.0, 0.9], centered=[False, True], weight_decay=[0.0, 0.05])
def test_rmsprop_torch_placement_matches_torch(kw):
    run_against_torch(
        lambda ps: optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-3, **kw),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-3, **kw),
        "rmsprop-torch",
        lr_per_step=lambda i: 0.01 * 0.9**i,  # a changing lr: where the momentum forms differ
    )


class KerasRMSprop:
    """Keras' RMSprop update (keras.optimizers.RMSprop.update_step), written out from its docs:

    velocity = rho * velocity + (1 - rho) * g^2                     (velocity starts at 0)
    centered: average_grad = rho * average_grad + (1 - rho) * g;
              denominator = velocity - average_grad^2 + epsilon
    else:     denominator = velocity + epsilon
    increment = lr * g / sqrt(denominator)
    momentum > 0: m = momentum * m + increment; variable -= m    else: variable -= increment
    """

    def __init__(self, params, lr, rho, epsilon, momentum, centered):
        self.params, self.lr, self.rho, self.epsilon = params, lr, rho, epsilon
        self.momentum, self.centered = momentum, centered
        self.velocity = [np.zeros_like(p) for p in params]
        self.average_grad = [np.zeros_like(p) for p in params]
        self.m = [np.zeros_like(p) for p in params]

    def step(self, grads):
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            self.velocity[i] = self.rho * self.velocity[i] + (1 - self.rho) * g**2
            if self.centered:
                self.average_grad[i] = self.rho * self.average_grad[i] + (1 - self.rho) * g
                denominator = self.velocity[i] - self.average_grad[i] ** 2 + self.epsilon
            else:
                denominator = self.velocity[i] + self.epsilon
            increment = self.lr * g / np.sqrt(denominator)
            if self.momentum > 0:
                self.m[i] = self.momentum * self.m[i] + increment
                p -= self.m[i]
            else:
                p -= increment


@flags(momentum=[0.0, 0.9], centered=[False, True])
def test_rmsprop_tf_placement_matches_keras_formula(kw):
    rng = np.random.default_rng(1)
    ours, _ = make_params(rng)
    keras_params = [p.data.copy() for p in ours]
    opt = optim.RMSprop.keras(ours, **kw)
    assert (opt.defaults["lr"], opt.defaults["alpha"], opt.defaults["eps"]) == (1e-3, 0.9, 1e-7)
    keras = KerasRMSprop(keras_params, 1e-3, 0.9, 1e-7, kw["momentum"], kw["centered"])
    for i in range(STEPS):
        lr = 1e-3 * (1 + 0.5 * math.sin(i))  # a changing lr: Keras keeps lr inside the buffer
        opt.param_groups[0]["lr"] = keras.lr = lr
        grads = [rng.standard_normal(p.shape) * 1e-2 for p in ours]  # small: eps matters
        for p, g in zip(ours, grads, strict=True):
            p.grad = g
        opt.step()
        keras.step(grads)
        for p, k in zip(ours, keras_params, strict=True):
            record_error("optim/rmsprop-tf", p.data, k)
            assert_close_f64(p.data, k, RTOL, f"keras rmsprop step {i}")


def test_rmsprop_placements_differ_where_eps_matters():
    """The two placements are genuinely different updates (guards against a no-op option)."""
    p_torch, p_tf = nn.Parameter(np.array([1.0])), nn.Parameter(np.array([1.0]))
    for p in (p_torch, p_tf):
        p.grad = np.array([1e-3])
    optim.RMSprop([p_torch], lr=1.0, eps=1e-4).step()
    optim.RMSprop([p_tf], lr=1.0, eps=1e-4, eps_placement="tf").step()
    s = 0.01 * 1e-6  # (1 - alpha) * g^2
    np.testing.assert_allclose(1 - p_torch.data, 1e-3 / (math.sqrt(s) + 1e-4), rtol=1e-14)
    np.testing.assert_allclose(1 - p_tf.data, 1e-3 / math.sqrt(s + 1e-4), rtol=1e-14)


# ------------------------------------------------------------------------------- Adam/AdamW


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_adam_matches_torch(weight_decay, betas):
    run_against_torch(
        lambda ps: optim.Adam(ps, lr=0.01, betas=betas, eps=1e-6, weight_decay=weight_decay),
        lambda ps: torch.optim.Adam(ps, lr=0.01, betas=betas, eps=1e-6, weight_decay=weight_decay),
        "adam",
    )


@pytest.mark.parametrize("weight_decay", [None, 0.0, 0.3])
def test_adamw_matches_torch(weight_decay):
    kw = {} if weight_decay is None else {"weight_decay": weight_decay}  # None: the defaults
    run_against_torch(
        lambda ps: optim.AdamW(ps, lr=0.01, **kw),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, **kw),
        "adamw",
        lr_per_step=lambda i: 0.01 * (1 + i) / STEPS,
    )


def test_float32_parameters_stay_float32_and_match_torch():
    """float32 in, float32 state and update (as torch does), close to torch's float32 run."""
    rng = np.random.default_rng(2)
    ours, _ = make_params(rng, np.float32)
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt = optim.AdamW(ours, lr=1e-2)
    ref = torch.optim.AdamW(theirs, lr=1e-2)
    for _ in range(STEPS):
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs, strict=True):
        assert p.data.dtype == np.float32
        assert all(v.dtype == np.float32 for v in opt.state[p].values() if hasattr(v, "dtype"))
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_adamw_float32_decay_is_correctly_rounded():
    """A float32 decoupled decay step of lr * wd = 3e-8 (the GhostNetV2 training-parity rate)
    is p - 3e-8 p rounded once: the factor 1 - 3e-8 itself would round to 1 - 6e-8 in float32
    and double the decay (found by the float32 training-parity check)."""
    p = nn.Parameter(np.random.default_rng(3).uniform(0.5, 2.0, 10_000).astype(np.float32))
    before = p.data.astype(np.float64)
    p.grad = np.zeros_like(p.data)  # no Adam step: m = 0
    optim.AdamW([p], lr=3e-6, weight_decay=1e-2).step()
    np.testing.assert_array_equal(p.data, (before - 3e-8 * before).astype(np.float32))


# ----------------------------------------------------------------------- optimizer plumbing

OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "rmsprop": lambda ps: optim.RMSprop(ps, lr=1e-2, momentum=0.9, centered=True),
    "rmsprop-keras": lambda ps: optim.RMSprop.keras(ps, momentum=0.5),
    "adam": lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-2),
}
TORCH_TWINS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.9, centered=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_round_trip_continues_bit_for_bit(name):
    rng = np.random.default_rng(3)
    ours, _ = make_params(rng)
    opt = OPTIMIZERS[name](ours)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(2 * 10)]

    def run(params, optimizer, steps):
        for gs in steps:
            for p, g in zip(params, gs, strict=True):
                p.grad = g.copy()
            optimizer.step()

    run(ours, opt, grads[:10])
    saved = opt.state_dict()
    saved_copy = copy.deepcopy(saved)
    clone = [nn.Parameter(p.data.copy()) for p in ours]
    resumed = OPTIMIZERS[name](clone)
    resumed.param_groups[0]["lr"] = 123.0  # overwritten by the load
    resumed.load_state_dict(saved)
    run(ours, opt, grads[10:])
    run(clone, resumed, grads[10:])
    for p, q in zip(ours, clone, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    # the saved arrays are copies: training on did not change them
    for i, state in saved["state"].items():
        for k, v in state.items():
            np.testing.assert_array_equal(v, saved_copy["state"][i][k])


@pytest.mark.parametrize("name", sorted(TORCH_TWINS))
def test_state_dict_layout_matches_torch(name):
    rng = np.random.default_rng(4)
    ours, theirs = make_params(rng)
    opt, ref = OPTIMIZERS[name](ours), TORCH_TWINS[name](theirs)
    set_grads(ours, theirs, rng)
    opt.step()
    ref.step()
    mine, torchs = opt.state_dict(), ref.state_dict()
    assert sorted(mine["state"]) == sorted(torchs["state"])
    for i in torchs["state"]:
        assert sorted(mine["state"][i]) == sorted(torchs["state"][i])
    assert [g["params"] for g in mine["param_groups"]] == [
        g["params"] for g in torchs["param_groups"]
    ]


def test_param_groups_zero_grad_and_errors():
    rng = np.random.default_rng(5)
    a, b = nn.Parameter(rng.standard_normal(3)), nn.Parameter(rng.standard_normal(2))
    frozen = nn.Parameter(np.ones(2), requires_grad=False)
    opt = optim.SGD([{"params": [a]}, {"params": [b, frozen], "lr": 0.5}], lr=0.1)
    a0, b0 = a.data.copy(), b.data.copy()
    for p in (a, b, frozen):
        p.grad = np.ones(p.shape)
    opt.step()
    np.testing.assert_array_equal(a.data, a0 - 0.1)
    np.testing.assert_array_equal(b.data, b0 - 0.5)
    np.testing.assert_array_equal(frozen.data, np.ones(2))
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(a.grad, np.zeros(3))
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    with pytest.raises(ValueError, match="more than one place"):
        optim.SGD([a, a], lr=0.1)
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        optim.SGD([{"params": [a], "betas": (0.9, 0.9)}], lr=0.1)
    with pytest.raises(ValueError, match="invalid lr"):
        optim.Adam([a], lr=-1.0)
    with pytest.raises(ValueError, match="eps_placement"):
        optim.RMSprop([a], eps_placement="keras")
    with pytest.raises(ValueError, match="group sizes|sizes"):
        optim.SGD([a, b], lr=0.1).load_state_dict(opt.state_dict())


# -------------------------------------------------------------------------------- schedules


def lr_pairs(make_ours, make_torch, epochs=30):
    """lrs of both schedules (two param groups) after each of ``epochs`` steps."""
    p, q = nn.Parameter(np.zeros(1)), nn.Parameter(np.zeros(1))
    tp, tq = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr": 0.03}], lr=0.2)
    ref = torch.optim.SGD([{"params": [tp]}, {"params": [tq], "lr": 0.03}], lr=0.2)
    sched, ref_sched = make_ours(opt), make_torch(ref)
    ours, theirs = [], []
    for _ in range(epochs):
        ours.append(sched.get_last_lr())
        theirs.append(ref_sched.get_last_lr())
        ref.step()  # torch warns if the scheduler steps before the optimizer
        sched.step()
        ref_sched.step()
    return np.array(ours), np.array(theirs)


LS = torch.optim.lr_scheduler
SCHEDULES = {
    "step": (lambda o: optim.StepLR(o, 4, gamma=0.5), lambda o: LS.StepLR(o, 4, gamma=0.5)),
    "exponential": (lambda o: optim.ExponentialLR(o, 0.9), lambda o: LS.ExponentialLR(o, 0.9)),
    "cosine": (
        lambda o: optim.WarmupCosineLR(o, total_steps=30, eta_min=1e-3),
        lambda o: LS.CosineAnnealingLR(o, T_max=30, eta_min=1e-3),
    ),
    "warmup-cosine": (
        lambda o: optim.WarmupCosineLR(
            o, total_steps=30, warmup_steps=5, warmup_start_factor=0.1, eta_min=1e-3
        ),
        lambda o: LS.SequentialLR(
            o,
            [
                LS.LinearLR(o, start_factor=0.1, total_iters=5),
                LS.CosineAnnealingLR(o, T_max=25, eta_min=1e-3),
            ],
            milestones=[5],
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_torch(name):
    ours, theirs = lr_pairs(*SCHEDULES[name])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_warmup_cosine_stays_at_eta_min_after_total_and_resumes():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched = optim.WarmupCosineLR(opt, total_steps=6, warmup_steps=2, warmup_start_factor=0.0)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(8):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    np.testing.assert_allclose(lrs[:3], [0.0, 0.5, 1.0])
    assert lrs[6:] == [0.0, 0.0, 0.0]
    # resume: a fresh schedule on a fresh optimizer, loaded, continues identically
    opt2 = optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0)
    sched2 = optim.WarmupCosineLR(opt2, total_steps=6, warmup_steps=2, warmup_start_factor=0.0)
    sched2.load_state_dict({"last_epoch": 3, "base_lrs": [1.0]})
    assert sched2.get_last_lr() == [lrs[3]]
    sched2.step()
    assert sched2.get_last_lr() == [lrs[4]]


def test_phased_cosine_restarts_a_warmup_cosine_per_phase():
    """Each phase is a ``WarmupCosineLR`` of its own length and warmup; after the last the lr
    stays at eta_min; a phase needs 0 <= warmup < steps."""

    def lrs(make, steps):
        sched = make(optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0))
        out = [sched.get_last_lr()[0]]
        for _ in range(steps - 1):
            sched.step()
            out.append(sched.get_last_lr()[0])
        return out

    phased = lrs(lambda o: optim.PhasedCosineLR(o, [(10, 2), (6, 1)], warmup_start_factor=0.1), 20)
    first = lrs(lambda o: optim.WarmupCosineLR(o, 10, 2, warmup_start_factor=0.1), 10)
    second = lrs(lambda o: optim.WarmupCosineLR(o, 6, 1, warmup_start_factor=0.1), 6)
    assert phased == first + second + [0.0] * 4
    with pytest.raises(ValueError, match="0 <= warmup < steps"):
        optim.PhasedCosineLR(optim.SGD([nn.Parameter(np.zeros(1))], lr=1.0), [(4, 4)])


# ----------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    rng = np.random.default_rng(6)
    ours, theirs = make_params(rng)
    set_grads(ours, theirs, rng)
    ours[1].grad, theirs[1].grad = None, None  # a parameter without gradient is skipped
    total = optim.clip_grad_norm_(ours, max_norm, norm_type)
    ref_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert total == pytest.approx(float(ref_total), rel=1e-13)
    for p, q in zip(ours, theirs, strict=True):
        if q.grad is None:
            assert p.grad is None
        else:
            record_error("optim/clip_grad_norm_", p.grad, q.grad.numpy())
            assert_close_f64(p.grad, q.grad.numpy(), RTOL, "clipped grad")
    with pytest.raises(RuntimeError, match="non-finite"):
        ours[0].grad[0, 0] = np.nan
        optim.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)


# ---------------------------------------------------------------------------------- EMA


def tiny_model(rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=rng, dtype=np.float64), nn.BatchNorm2d(3))
    return model.to(dtype=np.float64)


def perturb(model, rng):
    """New random weights and statistics, as an optimizer step plus a BN forward would give."""
    for _, p in model.named_parameters():
        p.data += rng.standard_normal(p.shape) * 0.1
    bn = model[1]
    bn.running_mean += rng.standard_normal(3) * 0.1
    bn.running_var *= rng.uniform(0.9, 1.1, 3)
    bn.num_batches_tracked += 1


def test_ema_matches_hand_recurrence():
    rng = np.random.default_rng(7)
    model = tiny_model(rng)
    ema = optim.ModelEMA(model, decay=0.9)
    expected = model.state_dict()
    for _ in range(5):
        perturb(model, rng)
        ema.update(model)  # step=None: the fixed decay
        current = model.state_dict()
        for name, value in current.items():
            if value.dtype == np.int64:
                expected[name] = value
            else:
                expected[name] = 0.9 * expected[name] + 0.1 * value
    for name, value in ema.state_dict().items():
        assert_close_f64(value, expected[name], 1e-14, name)
    assert ema.state_dict()["1.num_batches_tracked"] == 5


@pytest.mark.parametrize(
    "kw",
    [
        dict(decay=0.99),
        dict(decay=0.999, use_warmup=True, warmup_power=0.75, min_decay=0.2),
        dict(decay=0.95, update_after_step=3, use_warmup=True, warmup_gamma=2.0),
    ],
)
def test_ema_matches_timm_model_ema_v3(kw):
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("meta"))
    from timm.utils import ModelEmaV3

    rng = np.random.default_rng(8)
    model = tiny_model(rng)
    twin = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    ema, ref = optim.ModelEMA(model, **kw), ModelEmaV3(twin, **kw)
    for step in range(1, 9):
        perturb(model, rng)
        twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
        assert ema.get_decay(step) == pytest.approx(ref.get_decay(step), rel=1e-15)
        ema.update(model, step=step)
        ref.update(twin, step=step)
    expected = ref.module.state_dict()
    for name, value in ema.state_dict().items():
        record_error("optim/ema", value, expected[name].numpy())
        assert_close_f64(value, expected[name].numpy(), RTOL, name)
    # the EMA weights load into a model of the same architecture
    other = tiny_model(rng)
    ema.copy_to(other)
    np.testing.assert_array_equal(other[0].weight.data, ema.state_dict()["0.weight"])


# --------------------------------------------------------------------------- distillation


def torch_distillation(zs, zt, target, alpha, tau, label_smoothing):
    ce = TF.cross_entropy(zs, target, label_smoothing=label_smoothing)
    kl = TF.kl_div(
        TF.log_softmax(zs / tau, dim=1),
        TF.log_softmax(zt / tau, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * ce + (1 - alpha) * tau**2 * kl


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_distillation_loss_and_gradient_match_torch(tau, alpha, label_smoothing):
    rng = np.random.default_rng(int(tau * 100 + alpha * 10 + label_smoothing * 1000))
    n, k = 6, 5
    zs, zt = rng.standard_normal((n, k)) * 3, rng.standard_normal((n, k)) * 3
    target = rng.integers(0, k, n)
    dloss = rng.uniform(0.5, 2.0)  # a random upstream scalar
    kd = optim.DistillationLoss(alpha=alpha, tau=tau, label_smoothing=label_smoothing)
    loss = kd(zs, zt, target)
    grad = kd.backward(dloss)
    zs_t = t(zs, requires_grad=True)
    ref = torch_distillation(zs_t, t(zt), torch.from_numpy(target), alpha, tau, label_smoothing)
    (ref_grad,) = torch.autograd.grad(ref * dloss, zs_t)
    assert loss == pytest.approx(float(ref.detach()), rel=1e-12, abs=1e-14)
    record_error("optim/distillation dz", grad, ref_grad.numpy())
    assert_close_f64(grad, ref_grad.numpy(), RTOL, "distillation dstudent")


def test_distillation_float32_and_errors():
    rng = np.random.default_rng(9)
    zs = rng.standard_normal((4, 3)).astype(np.float32)
    zt = rng.standard_normal((4, 3)).astype(np.float32)
    kd = optim.DistillationLoss()
    with pytest.raises(RuntimeError, match="before forward"):
        kd.backward()
    loss = kd(zs, zt, np.array([0, 1, 2, 0]))
    grad = kd.backward()
    assert isinstance(loss, float) and grad.dtype == np.float32
    ref = torch_distillation(
        t(zs), t(zt), torch.tensor([0, 1, 2, 0]), alpha=0.5, tau=1.0, label_smoothing=0.0
    )
    assert loss == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(ValueError, match="both be"):
        kd(zs, zt[:3], np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="alpha"):
        optim.DistillationLoss(alpha=1.5)
