import copy
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

from sss_lightning.optim import APG, soft_threshold


def _lasso_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    n, d = 60, 12
    A = rng.standard_normal((n, d))
    x_true = np.zeros(d)
    x_true[[1, 4, 7]] = [2.0, -1.5, 1.0]
    b = A @ x_true + 0.1 * rng.standard_normal(n)
    return A, b


def _objective(A, b, x, gamma):
    return 0.5 / len(b) * np.sum((A @ x - b) ** 2) + gamma * np.abs(x).sum()


def _solve(A, b, gamma, mode, steps=3000, momentum=0.9):
    At, bt = torch.tensor(A), torch.tensor(b)
    x = torch.zeros(A.shape[1], dtype=torch.float64, requires_grad=True)
    lipschitz = np.linalg.eigvalsh(A.T @ A / len(b)).max()
    opt = APG([x], lr=1.0 / lipschitz, momentum=momentum, gamma=gamma, mode=mode)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 / len(b) * ((At @ x - bt) ** 2).sum()
        loss.backward()
        opt.step()
    return x.detach().numpy()


@pytest.mark.parametrize("mode, momentum", [("apg", 0.9), ("ista", 0.0)])
def test_proximal_modes_match_an_independent_lasso_solver(mode, momentum):
    A, b = _lasso_problem()
    gamma = 0.1
    reference = Lasso(alpha=gamma, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(A, b).coef_
    x = _solve(A, b, gamma, mode, momentum=momentum)
    assert np.array_equal(x != 0, reference != 0), (x, reference)
    assert (x == 0).sum() >= 6  # exact zeros, not merely small values
    assert abs(_objective(A, b, x, gamma) - _objective(A, b, reference, gamma)) < 1e-4


def test_sgd_l1_subgradient_never_gives_exact_zeros():
    A, b = _lasso_problem()
    x = _solve(A, b, 0.1, "sgd", steps=500)
    assert not np.any(x == 0)


def test_gamma_zero_is_exactly_torch_nesterov_sgd_under_a_schedule():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    twin = copy.deepcopy(model)
    ours = APG(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ref = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    scheds = [torch.optim.lr_scheduler.MultiStepLR(o, [5, 10], gamma=0.1) for o in (ours, ref)]
    for _ in range(15):
        x, y = torch.randn(8, 5), torch.randn(8, 3)
        for net, opt in ((model, ours), (twin, ref)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        for s in scheds:
            s.step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def _official_apgnag(x, grads, lr, mu, gamma):
    """Literal transcription of the official MXNet APGNAG update at a constant learning rate."""
    return _official_apgnag_scheduled(x, grads, [lr] * len(grads), mu, gamma)


def test_apg_step_for_step_equals_the_official_update():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(20) for _ in range(30)]
    x0 = np.abs(rng.standard_normal(20))
    expected = _official_apgnag(x0.copy(), grads, lr=0.1, mu=0.9, gamma=0.5)
    x = torch.tensor(x0, requires_grad=True)
    opt = APG([x], lr=0.1, momentum=0.9, gamma=0.5, nonnegative=True)
    for g in grads:
        x.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), expected, rtol=0, atol=1e-12)
    assert (expected == 0).any()
    assert np.array_equal(x.detach().numpy() == 0, expected == 0)


def test_nonnegative_projection_keeps_gates_at_or_above_zero():
    x = torch.tensor([0.05, 1.0], requires_grad=True)
    opt = APG([x], lr=0.1, momentum=0.9, gamma=0.0, nonnegative=True)
    x.grad = torch.tensor([10.0, 0.0])
    opt.step()
    assert x[0].item() == 0.0 and x[1].item() == 1.0


def test_step_with_and_without_closure():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = APG([x], lr=0.1, gamma=0.1)

    def closure():
        opt.zero_grad()
        loss = (x**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    before = x.detach().clone()
    closure()
    assert opt.step() is None
    assert not torch.equal(before, x)


def test_skips_parameters_without_gradient():
    x = torch.ones(3, requires_grad=True)
    opt = APG([x], lr=0.1, gamma=1.0)
    opt.step()
    assert torch.equal(x, torch.ones(3)) and not opt.state


def test_state_dict_round_trip_continues_identically():
    def run(opt_from=None, steps=5):
        torch.manual_seed(0)
        x = torch.ones(10, requires_grad=True)
        opt = APG([x], lr=0.1, gamma=0.05, nonnegative=True)
        return x, opt

    x, opt = run()
    grads = [torch.randn(10) for _ in range(10)]
    for g in grads[:5]:
        x.grad = g.clone()
        opt.step()
    state = copy.deepcopy(opt.state_dict())
    x_mid = x.detach().clone()
    for g in grads[5:]:
        x.grad = g.clone()
        opt.step()

    y = x_mid.clone().requires_grad_(True)
    resumed = APG([y], lr=0.1, gamma=0.05, nonnegative=True)
    resumed.load_state_dict(state)
    assert resumed.param_groups[0]["gamma"] == 0.05
    for g in grads[5:]:
        y.grad = g.clone()
        resumed.step()
    assert torch.equal(x, y)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": -1}, "lr must be > 0, got -1"),
        ({"lr": math.nan}, "lr must be a finite number, got nan"),
        ({"lr": 0.1, "momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"lr": 0.1, "momentum": -0.1}, r"momentum must be in \[0, 1\), got -0.1"),
        ({"lr": 0.1, "gamma": -0.1}, "gamma .* must be >= 0, got -0.1"),
        ({"lr": 0.1, "gamma": math.inf}, "gamma must be a finite number, got inf"),
        ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"lr": 0.1, "mode": "adam"}, "mode must be one of"),
        ({"lr": 0.1, "mode": "sgd", "nonnegative": True}, "nonnegative=True needs a proximal mode"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        APG([torch.zeros(1, requires_grad=True)], **kwargs)


def test_param_group_overrides_are_validated_with_the_group_index():
    with pytest.raises(ValueError, match=r"param group 1.*gamma"):
        APG(
            [
                {"params": [torch.zeros(1, requires_grad=True)]},
                {"params": [torch.zeros(1, requires_grad=True)], "gamma": -1.0},
            ],
            lr=0.1,
        )


def _official_apgnag_scheduled(x, grads, lrs, mu, gamma, wd=0.0):
    """Literal transcription of the official MXNet APGNAG (core/optimizer.py of the official code), one
    learning rate per step, velocity in parameter units, wd added to the gradient, gates clamped at 0."""
    v = np.zeros_like(x)
    for g, lr in zip(grads, lrs, strict=True):
        g = g + wd * x
        v = mu * v
        z = x - lr * g
        z = np.sign(z) * np.maximum(0.0, np.abs(z) - lr * gamma)
        v = z - x + v
        x = z + mu * v
        x = np.maximum(0.0, x)
    return x


def test_parameter_units_follow_the_official_equations_under_a_cosine_schedule():
    rng = np.random.default_rng(3)
    steps = 60
    grads = [rng.standard_normal(25) for _ in range(steps)]
    lrs = [0.05 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
    x0 = np.abs(rng.standard_normal(25))
    expected = _official_apgnag_scheduled(x0.copy(), grads, lrs, mu=0.9, gamma=0.3)
    x = torch.tensor(x0, requires_grad=True)
    opt = APG([x], lr=lrs[0], momentum=0.9, gamma=0.3, nonnegative=True, momentum_units="parameter")
    for g, lr in zip(grads, lrs, strict=True):
        opt.param_groups[0]["lr"] = lr
        x.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), expected, rtol=0, atol=1e-12)
    assert (expected == 0).any() and np.array_equal(x.detach().numpy() == 0, expected == 0)
    # gradient units are the same update only at a constant learning rate: under this schedule they differ
    y = torch.tensor(x0, requires_grad=True)
    grad_units = APG([y], lr=lrs[0], momentum=0.9, gamma=0.3, nonnegative=True)
    for g, lr in zip(grads, lrs, strict=True):
        grad_units.param_groups[0]["lr"] = lr
        y.grad = torch.tensor(g)
        grad_units.step()
    assert not np.allclose(y.detach().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("units", ["gradient", "parameter"])
@pytest.mark.parametrize("seed", range(300))
def test_proximal_step_without_momentum_lands_exactly_on_the_soft_threshold(seed, units):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(16, generator=gen)
    g = torch.randn(16, generator=gen)
    lr, gamma = 0.5 + torch.rand(1, generator=gen).item(), 0.5 + torch.rand(1, generator=gen).item()
    x = x0.clone().requires_grad_(True)
    opt = APG([x], lr=lr, momentum=0.0, gamma=gamma, nonnegative=False, momentum_units=units)
    x.grad = g.clone()
    opt.step()
    expected = soft_threshold(x0.add(g, alpha=-lr), lr * gamma)
    assert torch.equal(x.detach(), expected)  # every thresholded entry exactly 0, no (x - z) / lr residue


def test_zero_hold_pins_an_entry_after_k_steps_at_zero_and_not_before():
    x = torch.tensor([0.05, 1.0], requires_grad=True)
    opt = APG([x], lr=0.1, momentum=0.9, gamma=1.0, nonnegative=True, zero_hold=3)
    pulls = [-0.0] * 3 + [-50.0] * 2  # 3 steps at zero (pinned from then on), then gradients that would revive it
    for k, g in enumerate(pulls):
        x.grad = torch.tensor([g, 0.0])
        opt.step()
        if k < 3:
            assert x[0].item() == 0.0
    assert x[0].item() == 0.0 and opt.pinned(x).tolist() == [True, False]
    assert opt.state[x]["momentum_buffer"][0].item() == 0.0

    y = torch.tensor([0.05, 1.0], requires_grad=True)  # the same, one step short of the hold: it revives
    opt = APG([y], lr=0.1, momentum=0.9, gamma=1.0, nonnegative=True, zero_hold=3)
    for g in [-0.0] * 2 + [-50.0]:
        y.grad = torch.tensor([g, 0.0])
        opt.step()
    assert y[0].item() > 0 and not opt.pinned(y).any()


def test_zero_hold_counters_resume_from_the_state_dict():
    def steps(opt, x, grads):
        for g in grads:
            x.grad = g.clone()
            opt.step()

    torch.manual_seed(0)
    grads = [torch.randn(30) * 0.5 for _ in range(40)]
    x = torch.full((30,), 0.2, requires_grad=True)
    opt = APG([x], lr=0.1, gamma=0.5, nonnegative=True, zero_hold=5)
    steps(opt, x, grads[:20])
    state, mid = copy.deepcopy(opt.state_dict()), x.detach().clone()
    steps(opt, x, grads[20:])
    y = mid.clone().requires_grad_(True)
    resumed = APG([y], lr=0.1, gamma=0.5, nonnegative=True, zero_hold=5)
    resumed.load_state_dict(state)
    steps(resumed, y, grads[20:])
    assert torch.equal(x, y) and opt.pinned(x).any()


def test_threshold_is_the_l1_step_of_a_group():
    opt = APG([torch.zeros(1, requires_grad=True)], lr=0.2, gamma=0.05, mode="ista", momentum=0.0)
    assert opt.threshold() == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"momentum_units": "velocity"}, "momentum_units must be one of .*'parameter'"),
        ({"zero_hold": -1}, "zero_hold must be an int >= 0"),
        ({"zero_hold": 2.5}, "zero_hold must be an int >= 0"),
    ],
)
def test_bad_new_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        APG([torch.zeros(1, requires_grad=True)], lr=0.1, **kwargs)


def test_l1_drift_counts_momentum_only_where_the_mode_keeps_it():
    params = [torch.zeros(1, requires_grad=True) for _ in range(2)]
    opt = APG(
        [{"params": [params[0]], "mode": "apg"}, {"params": [params[1]], "mode": "ista"}],
        lr=0.1,
        momentum=0.9,
        gamma=0.01,
    )
    assert opt.l1_drift(0, 10) == pytest.approx(10 * 0.1 * 0.01 / (1 - 0.9))
    assert opt.l1_drift(1, 10) == pytest.approx(10 * 0.1 * 0.01)  # ISTA: no momentum behind the threshold
