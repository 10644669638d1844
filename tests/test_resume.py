"""A run interrupted and resumed from its checkpoint continues as if it had never stopped."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sss_lightning.callbacks import FreezeGates, GateMonitor, PruningSnapshot
from sss_lightning.gates import gate_parameters

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def make(tiny_classifier):
    """make(**overrides): the tiny classifier (gamma 0.3, cosine schedule), built from seed 0."""

    def make(**overrides):
        torch.manual_seed(0)
        return tiny_classifier(**{"gamma": 0.3, "schedule": "cosine", **overrides})

    return make


class Kill(L.Callback):
    """Stands in for a crash: raises at a given optimizer step (the checkpoint before it is on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


@pytest.fixture(scope="session")
def fit(make, quiet_trainer, tiny_data):
    """fit(root, callbacks, ckpt_path=None, kill=None, train_size=None, **overrides): (module, trainer) of a 4-epoch
    run on tiny_data (4 batches an epoch, or ``train_size`` images) with an epoch-end last.ckpt; ``kill`` raises at
    that step, as a crash would; ``overrides`` go to make()."""

    def fit(root, callbacks, ckpt_path=None, kill=None, train_size=None, **overrides):
        ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, enable_version_counter=False)
        kills = [Kill(kill)] if kill is not None else []
        trainer = quiet_trainer(root, [*callbacks, ckpt, *kills], max_epochs=4, enable_checkpointing=True)
        module = make(**overrides)
        L.seed_everything(0)
        try:
            data = tiny_data() if train_size is None else tiny_data(train_size=train_size)
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        except RuntimeError as err:
            assert "killed" in str(err)
        return module, trainer

    return fit


@pytest.fixture(scope="session")
def run(fit):
    """run(root, ckpt_path=None, kill=None): fit with a gate monitor, snapshots and FreezeGates(patience=2)."""

    def run(root, ckpt_path=None, kill=None):
        monitor, snapshot, freeze = cbs = [
            GateMonitor(log_every_n_steps=2, plots=False),
            PruningSnapshot(),
            FreezeGates(patience=2),
        ]
        module, trainer = fit(root, cbs, ckpt_path, kill)
        return module, trainer, monitor, snapshot, freeze

    return run


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(tmp_path, run):
    whole, whole_trainer, whole_monitor, whole_snapshot, whole_freeze = run(tmp_path / "whole")
    run(tmp_path / "cut", kill=9)  # dies in epoch 3; last.ckpt is from the end of epoch 2 (step 8)
    resumed, trainer, monitor, snapshot, freeze = run(
        tmp_path / "cut", ckpt_path=tmp_path / "cut" / "ckpt" / "last.ckpt"
    )

    assert trainer.global_step == whole_trainer.global_step == 16
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)  # weights, gates, BN statistics
    opt_a, opt_b = whole_trainer.optimizers[0], trainer.optimizers[0]
    for pa, pb in zip(opt_a.state.values(), opt_b.state.values(), strict=True):  # APG momentum
        torch.testing.assert_close(pa["momentum_buffer"], pb["momentum_buffer"], rtol=1e-5, atol=1e-6)
    assert [g["lr"] for g in opt_a.param_groups] == pytest.approx([g["lr"] for g in opt_b.param_groups])
    assert [r["epoch"] for r in snapshot.rows] == [r["epoch"] for r in whole_snapshot.rows] == [1, 2, 3, 4]
    steps = [h["step"] for h in monitor.history]
    assert steps == [h["step"] for h in whole_monitor.history] and steps == sorted(steps)  # no step goes back
    assert freeze.frozen_at == whole_freeze.frozen_at


def test_a_run_resumed_in_the_middle_of_its_penalty_ramp_matches_an_uninterrupted_one(tmp_path, fit):
    ramp = {"gamma": 3.0, "penalty_start": 0.25, "penalty_ramp": 0.4}  # 16 steps: L1 from 4, full from 11 of 0-11
    whole, whole_trainer = fit(tmp_path / "whole", [], **ramp)
    fit(tmp_path / "cut", [], kill=9, **ramp)  # last.ckpt is from step 8, half-way up the ramp
    resumed, trainer = fit(tmp_path / "cut", [], ckpt_path=tmp_path / "cut" / "ckpt" / "last.ckpt", **ramp)

    assert trainer.global_step == whole_trainer.global_step == 16
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert any((p == 0).any() for p in gate_parameters(whole.net))  # the ramp did select


def test_resume_during_finetuning_rebuilds_the_pruned_network_and_its_optimizer(tmp_path, fit):
    from sss_lightning.callbacks import StructuralSurgery
    from sss_lightning.gates import iter_gates

    def go(root, ckpt_path=None, kill=None):
        return fit(root, [StructuralSurgery(finetune_epochs=2, finetune_lr=0.02)], ckpt_path, kill)

    whole, whole_trainer = go(tmp_path / "whole")
    go(tmp_path / "cut", kill=13)  # surgery at epoch 3 (step 8); dies in epoch 4; last.ckpt: end of epoch 3
    resumed, trainer = go(tmp_path / "cut", ckpt_path=tmp_path / "cut" / "ckpt" / "last.ckpt")
    assert not list(iter_gates(resumed.net))
    optimizer = trainer.optimizers[0]
    assert [id(p) for g in optimizer.param_groups for p in g["params"]] == [id(p) for p in resumed.net.parameters()]
    for p in resumed.net.parameters():
        assert optimizer.state[p]["momentum_buffer"].shape == p.shape
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_from_a_mid_epoch_checkpoint_skips_the_batches_already_trained_on(tmp_path, make, tiny_data):
    kw = dict(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False)
    L.seed_everything(0)
    whole = make()
    L.Trainer(default_root_dir=tmp_path / "whole", enable_checkpointing=False, **kw).fit(whole, datamodule=tiny_data())

    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6, save_top_k=-1)
    with pytest.raises(RuntimeError, match="killed"):  # step 6 is half-way through epoch 2 (4 batches each)
        L.Trainer(default_root_dir=tmp_path / "cut", callbacks=[ckpt, Kill(7)], **kw).fit(
            make(), datamodule=tiny_data()
        )
    L.seed_everything(0)
    resumed = make()
    trainer = L.Trainer(default_root_dir=tmp_path / "cut", enable_checkpointing=False, **kw)
    trainer.fit(resumed, datamodule=tiny_data(), ckpt_path=tmp_path / "ckpt" / "epoch=1-step=6.ckpt")
    assert trainer.global_step == 12
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_budget_run_resumed_after_its_early_landing_and_shrink_matches_an_uninterrupted_one(tmp_path, fit):
    from sss_lightning.callbacks import InTrainingShrink, MacsBudget

    def go(root, ckpt_path=None, kill=None):
        budget = MacsBudget(0.5, by_epoch=3, every_n_steps=2, tolerance=0.05, land_from=0.3)
        net = {"arch_kwargs": {"width": 8}, "gamma": 0.05, "gate_rescale": False, "input_size": [3, 8, 8]}
        module, trainer = fit(root, [budget, InTrainingShrink()], ckpt_path, kill, train_size=512, **net)
        return module, trainer, budget

    whole, whole_trainer, whole_budget = go(tmp_path / "whole")  # 32 steps an epoch
    assert not whole_budget.result["at_deadline"] and whole_budget.result["step"] < 64  # landed in epoch 2
    go(tmp_path / "cut", kill=100)  # dies in epoch 4; last.ckpt: end of epoch 3, after the shrink at its start
    resumed, trainer, budget = go(tmp_path / "cut", ckpt_path=tmp_path / "cut" / "ckpt" / "last.ckpt")

    assert trainer.global_step == whole_trainer.global_step == 128
    assert budget.result == whole_budget.result and budget.history == whole_budget.history
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)  # the shrunk network, rebuilt
    assert not any(p.requires_grad for p in gate_parameters(resumed.net))
