import lightning as L
import pytest
import torch
from torch import nn

from sss_lightning import SSSClassifier, SSSModule
from sss_lightning.gate_groups import gate_groups
from sss_lightning.gates import ChannelGate, gate_parameters, iter_gates, sparsity
from sss_lightning.optim import APG


@pytest.fixture(scope="session")
def fit(quiet_trainer, tiny_data):
    """fit(module, steps=30, **trainer_kwargs): a CPU fit on tiny_data with 128 training images."""

    def fit(module, steps=30, **trainer_kwargs):
        trainer = quiet_trainer(max_steps=steps, accelerator="cpu", **trainer_kwargs)
        data = tiny_data(train_size=128)
        trainer.fit(module, datamodule=data)
        return trainer

    return fit


def test_two_groups_gates_only_in_gate_group_without_weight_decay(tiny_model):
    module = SSSModule(tiny_model(depth=8, num_classes=4), gamma=0.02, weight_decay=5e-4)
    opt = APG(module.param_groups(), lr=0.1)
    weights, gates = opt.param_groups
    assert (weights["name"], gates["name"]) == ("weights", "gates")
    gate_ids = {id(p) for p in gate_parameters(module.net)}
    assert {id(p) for p in gates["params"]} == gate_ids
    assert not gate_ids & {id(p) for p in weights["params"]}
    assert len(weights["params"]) + len(gates["params"]) == len(list(module.net.parameters()))
    assert (gates["weight_decay"], gates["gamma"], gates["nonnegative"], gates["mode"]) == (0.0, 0.02, True, "apg")
    assert (weights["weight_decay"], weights["gamma"], weights["nonnegative"]) == (5e-4, 0.0, False)


def test_paper_defaults(tiny_model):
    hp = SSSModule(tiny_model(depth=8, num_classes=4)).hparams
    assert (hp.lr, hp.momentum, hp.weight_decay) == (0.1, 0.9, 1e-4)
    assert all(torch.all(p == 1.0) for p in gate_parameters(SSSModule(tiny_model(depth=8, num_classes=4)).net))


@pytest.mark.parametrize("mode", ["apg", "ista"])
def test_training_drives_gates_to_exact_zero_with_proximal_modes(mode, tiny_model, fit):
    # rescaled gates start level with their layer's largest one: ISTA (no momentum) needs a larger gamma
    # than the 0.5 it needed when whole layers fell together
    module = SSSModule(tiny_model(depth=8, num_classes=4), gamma=2.0, gate_mode=mode, schedule="constant")
    fit(module)
    gates = torch.cat([p.detach() for p in gate_parameters(module.net)])
    assert (gates == 0).any(), gates
    assert (gates >= 0).all()
    assert sparsity(module.net)["overall"] > 0


def test_sgd_baseline_shrinks_gates_but_gives_no_exact_zero(tiny_model, fit):
    # without rescaling: rescaled gates have a largest magnitude of 1 per layer whatever the optimizer does
    module = SSSModule(
        tiny_model(depth=8, num_classes=4), gamma=0.5, gate_mode="sgd", schedule="constant", gate_rescale=False
    )
    assert module.gate_nonnegative is False
    fit(module)
    gates = torch.cat([p.detach() for p in gate_parameters(module.net)])
    assert not (gates == 0).any()
    assert gates.abs().mean() < 1.0


def test_step_schedule_decays_lr_of_both_groups(tiny_model, fit):
    module = SSSModule(tiny_model(depth=8, num_classes=4), schedule="step", milestones=[1], lr_decay=0.1, gate_lr=0.05)
    trainer = fit(module, steps=16)  # 8 batches per epoch: two epochs, one milestone
    lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
    assert lrs == pytest.approx([0.01, 0.005])


def test_cosine_schedule_anneals_to_zero_over_the_run(tiny_model, fit):
    module = SSSModule(tiny_model(depth=8, num_classes=4), schedule="cosine")
    trainer = fit(module, steps=10)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_logs_loss_accuracy_and_sparsity(tiny_model, fit):
    module = SSSModule(tiny_model(depth=8, num_classes=4), gamma=0.5)
    trainer = fit(module, steps=8)
    for key in (
        "train/loss",
        "train/acc",
        "val/loss",
        "val/acc",
        "sparsity/overall",
        "sparsity/block",
        "sparsity/channel",
    ):
        assert key in trainer.callback_metrics, key


def test_network_without_gates_is_refused(tiny_model):
    with pytest.raises(ValueError, match="has no gates, so SSS has nothing to select"):
        SSSModule(tiny_model(depth=8, num_classes=4, gates="none"))


def test_missing_network_says_how_to_provide_one():
    with pytest.raises(TypeError, match="pass net=<nn.Module with gates>, or subclass"):
        SSSModule()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -0.1}, r"\(weights\): lr must be > 0"),
        ({"gamma": -1.0}, r"\(gates\): gamma .* must be >= 0, got -1.0"),
        ({"gamma": float("nan")}, "gamma must be a finite number, got nan"),
        ({"momentum": 1.5}, "momentum must be in"),
        ({"gate_mode": "adam"}, "mode must be one of"),
        ({"schedule": "linear"}, "schedule must be"),
        ({"schedule": "step", "milestones": [5, 2]}, "milestones must be a non-empty increasing"),
        ({"zeros_pass_gradient": 1}, "zeros_pass_gradient must be a bool, got 1"),
    ],
)
def test_bad_hyperparameters_fail_at_construction(kwargs, message, tiny_model):
    with pytest.raises(ValueError, match=message):
        SSSModule(tiny_model(depth=8, num_classes=4), **kwargs)


class TinyMLP(SSSModule):
    """A new architecture added by subclassing: build_network declares its own gates."""

    def build_network(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), ChannelGate(32), nn.Linear(32, 4))


def test_subclass_with_build_network_trains_and_infers_num_classes(fit):
    module = TinyMLP(gamma=0.3)
    assert module.val_acc.num_classes == 4
    fit(module, steps=20)
    assert (module.net[3].scale == 0).any()


def test_sss_classifier_rebuilds_from_checkpoint(tmp_path, tiny_classifier, quiet_trainer, tiny_data):
    module = tiny_classifier(in_channels=3, gates="block")
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=tiny_data(train_size=32))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = SSSClassifier.load_from_checkpoint(path)
    assert loaded.hparams.arch == "resnet20" and loaded.hparams.gates == "block"
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded.eval()(x), module.eval()(x))


@pytest.mark.parametrize(
    ("arch", "kinds", "size"),
    [
        ("resnet20", {"block", "channel", "stream"}, 8),
        ("vgg11", {"channel"}, 32),
        ("resnext29_8x64d", {"block", "group"}, 8),
    ],
)
def test_sss_classifier_builds_each_architectures_default_gates_and_reloads_them(
    arch, kinds, size, tmp_path, tiny_classifier, quiet_trainer, tiny_data
):
    module = tiny_classifier(arch=arch, gates=None, in_channels=3)
    assert {gate.kind for gate in iter_gates(module.net)} == kinds
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(module, datamodule=tiny_data(train_size=16, image_size=size))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = SSSClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    x = torch.randn(2, 3, size, size)
    assert torch.equal(loaded.eval()(x), module.eval()(x))


def test_cost_weighted_gamma_is_proportional_to_the_macs_a_structure_costs(tiny_model):
    from sss_lightning.flops import structure_costs

    net = tiny_model("vgg11", num_classes=4)
    module = SSSModule(net, gamma=0.01, cost_weighted=True, input_size=[3, 32, 32])
    groups = {g["name"]: g for g in module.param_groups()}
    costs = structure_costs(net, (3, 32, 32))
    counts = {info.name: info.module.num_structures for info in iter_gates(net)}
    mean = sum(costs[n] * counts[n] for n in costs) / sum(counts.values())
    for name, cost in costs.items():
        assert groups[f"gates:{name}"]["gamma"] == pytest.approx(0.01 * cost / mean)
        assert groups[f"gates:{name}"]["weight_decay"] == 0.0 and groups[f"gates:{name}"]["nonnegative"]
    first, last = costs["3"], costs["35"]  # a channel at 32x32 costs more than one at 2x2
    assert first > last and groups["gates:3"]["gamma"] > groups["gates:35"]["gamma"]
    # the average structure keeps the plain gamma
    total = sum(groups[f"gates:{n}"]["gamma"] * counts[n] for n in counts) / sum(counts.values())
    assert total == pytest.approx(0.01)


def test_cost_weighted_training_runs_and_needs_an_input_size(tiny_model, fit):
    with pytest.raises(ValueError, match=r"cost_weighted=True .* pass input_size=\[C, H, W\]"):
        SSSModule(tiny_model(depth=8, num_classes=4), cost_weighted=True)
    module = SSSModule(
        tiny_model(depth=8, num_classes=4), gamma=0.5, cost_weighted=True, input_size=[3, 8, 8], schedule="constant"
    )
    fit(module, steps=10)
    assert sparsity(module.net)["overall"] > 0


class _GateSnapshots(__import__("lightning").Callback):
    def __init__(self) -> None:
        self.gates: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.gates.append(torch.cat([p.detach().flatten().clone() for p in gate_parameters(pl_module.net)]))


def test_settle_at_fixes_the_structure_after_that_fraction_of_the_steps_and_the_weights_go_on(
    tiny_model, quiet_trainer, tiny_data
):
    module = SSSModule(
        tiny_model(depth=8, num_classes=4, gates="both"), gamma=1.2, settle_at=0.5, gate_rescale=True, zero_hold=2
    )
    snaps = _GateSnapshots()
    trainer = quiet_trainer(max_epochs=2, callbacks=[snaps], limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_data())  # 4 steps an epoch
    assert len(snaps.gates) == 8
    assert not torch.equal(snaps.gates[2], snaps.gates[3])  # the gates still moved at step 4 ...
    assert all(torch.equal(g, snaps.gates[3]) for g in snaps.gates[4:])  # ... and never after it
    assert (snaps.gates[-1] == 0).any()
    assert not any(p.requires_grad for p in gate_parameters(module.net))
    assert module.get_extra_state()["frozen_gates"]  # resumes keep them frozen


def test_before_penalty_start_the_gates_train_as_without_a_penalty_and_from_it_the_penalty_selects(
    tiny_model, quiet_trainer, tiny_data
):
    def run(**kwargs) -> list[torch.Tensor]:
        torch.manual_seed(0)
        module = SSSModule(
            tiny_model(depth=8, num_classes=4, gates="both"), settle_at=None, zero_hold=0, schedule="constant", **kwargs
        )
        snaps = _GateSnapshots()
        quiet_trainer(max_epochs=2, callbacks=[snaps], limit_val_batches=0).fit(module, datamodule=tiny_data())
        return snaps.gates  # 8 steps

    late, free, early = run(gamma=1.2, penalty_start=0.5), run(gamma=0.0), run(gamma=1.2)
    assert all(torch.equal(a, b) for a, b in zip(late[:4], free[:4], strict=True))  # steps 1-4: no L1 at all
    assert not (late[3] == 0).any() and (early[3] == 0).any()  # the same gamma from step 1 has zeros by then
    assert (late[-1] == 0).any()  # from step 5 the proximal step zeroes gates


def test_the_penalty_ramp_scales_the_l1_term_linearly_from_its_start_to_full_gamma(
    tiny_model, quiet_trainer, tiny_data
):
    class Scales(L.Callback):
        def __init__(self) -> None:
            self.scales: list[float] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.scales.append(gate_groups(optimizer)[0].l1_scale)

    def run(**kwargs) -> tuple[list[float], list[torch.Tensor]]:
        torch.manual_seed(0)
        module = SSSModule(
            tiny_model(depth=8, num_classes=4, gates="both"), settle_at=None, zero_hold=0, schedule="constant",
            gate_rescale=False, **kwargs,
        )  # fmt: skip
        scales, snaps = Scales(), _GateSnapshots()
        quiet_trainer(max_epochs=2, callbacks=[scales, snaps], limit_val_batches=0).fit(module, datamodule=tiny_data())
        return scales.scales, snaps.gates  # 8 steps

    scales, ramped = run(gamma=0.05, penalty_start=0.25, penalty_ramp=0.5)
    assert scales == [0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # 0 up to step 2 (= 0.25 x 8), full from step 6
    free_scales, free = run(gamma=0.0)
    assert free_scales == [1.0] * 8  # no schedule: the optimizer's own gamma, untouched
    assert all(torch.equal(a, b) for a, b in zip(ramped[:3], free[:3], strict=True))  # no L1 before the ramp
    _, full = run(gamma=0.05, penalty_start=0.375)  # the whole gamma at once from step 3
    assert torch.equal(full[2], free[2])
    pull_ramped, pull_full = free[3] - ramped[3], free[3] - full[3]  # step 3's L1 pull, from the same state
    assert (pull_full > 0).all()
    torch.testing.assert_close(4 * pull_ramped, pull_full)  # a quarter of gamma pulls a quarter as far


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"penalty_start": 1.0}, "penalty_start must be a fraction of the training steps in"),
    ({"penalty_start": -0.1}, "penalty_start must be a fraction of the training steps in"),
    ({"penalty_start": 0.8, "settle_at": 0.75}, "penalty_start=0.8 is not before settle_at=0.75"),
    ({"penalty_ramp": 1.0, "settle_at": None}, "penalty_ramp must be a fraction of the training steps in"),
    ({"penalty_ramp": True}, "penalty_ramp must be a fraction of the training steps in"),
    ({"penalty_ramp": 0.8}, r"penalty_start \+ penalty_ramp = 0.8 is not before settle_at=0.75, where the structure"),
    ({"penalty_start": 0.25, "penalty_ramp": 0.5}, r"= 0.75 is not before settle_at=0.75"),  # last step below gamma
    ({"penalty_start": 0.5, "penalty_ramp": 0.6, "settle_at": None}, r"= 1.1 is not before the end of the run"),
])  # fmt: skip
def test_penalty_start_must_be_a_fraction_before_settle_at(kwargs, message, tiny_model):
    with pytest.raises(ValueError, match=message):
        SSSModule(tiny_model(depth=8, num_classes=4), **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"penalty_start": 0.7}, r"full gamma at step 6, but the gates move only in steps 0-5 \(settle_at=0.75\)"),
    ({"penalty_ramp": 0.6, "settle_at": 0.62}, r"reach the full gamma at step 5, but the gates move only in steps 0-4"),
])  # fmt: skip
def test_a_penalty_schedule_that_rounding_pushes_past_settle_at_is_refused_before_the_first_step(
    kwargs, message, tiny_model, quiet_trainer, tiny_data
):
    module = SSSModule(tiny_model(depth=8, num_classes=4), **kwargs)  # fine as fractions; 8 steps round it away
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match=message):
        quiet_trainer(max_epochs=2, limit_val_batches=0).fit(module, datamodule=tiny_data())
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_without_a_penalty_schedule_every_step_applies_the_full_gamma_even_after_a_stale_scale(
    tiny_model, quiet_trainer, tiny_data
):
    class StaleThenRecord(L.Callback):  # a resumed optimizer state may carry a ramp's scale
        def __init__(self) -> None:
            self.scales: list[float] = []

        def on_train_start(self, trainer, pl_module) -> None:
            gate_groups(trainer.optimizers[0])[0].l1_scale = 0.5

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.scales.append(gate_groups(optimizer)[0].l1_scale)

    record = StaleThenRecord()
    module = SSSModule(tiny_model(depth=8, num_classes=4), settle_at=None)
    quiet_trainer(max_epochs=2, callbacks=[record], limit_val_batches=0).fit(module, datamodule=tiny_data())
    assert record.scales == [1.0] * 8


@pytest.mark.parametrize("bad", [0, 1.5, -0.2, True, "half"])
def test_settle_at_must_be_a_fraction(bad, tiny_model):
    with pytest.raises(ValueError, match="settle_at must be a fraction of the training steps in"):
        SSSModule(tiny_model(depth=8, num_classes=4), settle_at=bad)


@pytest.mark.parametrize("through", [False, True])
def test_zero_gates_that_pass_the_gradient_let_the_layers_before_them_train_until_the_structure_is_fixed(
    through, tiny_classifier
):
    from sss_lightning.residual import GatedResidual

    torch.manual_seed(0)
    module = tiny_classifier(zeros_pass_gradient=through).train()
    branch = next(m.branch for m in module.net.modules() if isinstance(m, GatedResidual))
    bn, gate = branch[1], branch[3]  # conv, BN, ReLU, the channel gate, the consumer conv, BN
    with torch.no_grad():
        gate.scale[0] = 0.0
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))

    def bn_grad() -> torch.Tensor:
        module.zero_grad()
        module.on_train_batch_start((x, y), 0)  # where the module sets its gates' mode for the step
        nn.functional.cross_entropy(module(x), y).backward()
        return bn.weight.grad

    grad = bn_grad()
    assert bool(grad[0] != 0) == through  # the BN before the zero gate trains only when zeros pass
    assert bool((grad[1:] != 0).all())
    for p in gate_parameters(module.net):  # the structure is fixed: the true gradient again
        p.requires_grad_(False)
    assert bn_grad()[0] == 0
