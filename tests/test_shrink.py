"""In-training shrink: slicing surgery, the index map, and a fit that continues as if nothing changed."""

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from sss_lightning import count_flops
from sss_lightning.callbacks import FreezeGates, InTrainingShrink, StructuralSurgery
from sss_lightning.gates import ChannelGate, gate_parameters, iter_gates, random_gate_pattern
from sss_lightning.shrink import slice_sources
from sss_lightning.surgery import SurgeryError, prune

GATES = {"resnet20": "both", "resnet56": "channel", "resnext29_8x64d": "both", "vgg11": "channel"}  # tiny_model's sizes


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(GATES)), p_zero=st.sampled_from([0.0, 0.3, 0.7, 1.0]), seed=st.integers(0, 99))
def test_sliced_network_is_an_exact_slice_with_equal_outputs_in_train_and_eval(name, p_zero, seed, tiny_model):
    model = tiny_model(name, num_classes=5, gates=GATES[name])
    random_gate_pattern(model, p_zero, seed=seed)
    sliced, sources = slice_sources(model)
    old = dict(model.named_parameters())
    for param_name, p in sliced.named_parameters():  # every entry is the same-named entry it claims to be
        index = sources[param_name]
        kept = index >= 0
        assert torch.equal(p.detach().flatten()[kept], old[param_name].detach().flatten()[index[kept]])
        assert torch.all(p.detach().flatten()[~kept] == 0)  # only zero gates have no source
    x = torch.randn(3, 3, 32, 32)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        sliced.train(mode == "train")
        torch.testing.assert_close(sliced(x), model(x), rtol=1e-5, atol=1e-5)
    zero_left = [g for g in gate_parameters(sliced) if (g == 0).any() and (g != 0).any()]
    assert not zero_left  # a zero entry survives only as the single structure of an emptied layer


def test_sliced_gates_keep_requires_grad_and_fold_later_to_the_same_pruned_network(tiny_model):
    model = tiny_model("resnet20", num_classes=5, gates="both")
    random_gate_pattern(model, 0.5, seed=3)
    for p in gate_parameters(model):
        p.requires_grad_(False)
    sliced, _ = slice_sources(model)
    assert list(iter_gates(sliced)) and not any(p.requires_grad for p in gate_parameters(sliced))
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(prune(sliced).eval()(x), prune(model).eval()(x), rtol=1e-5, atol=1e-5)


def test_sss_prune_plugins_without_fold_gates_get_a_clear_error():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), ChannelGate(4), nn.Conv2d(4, 2, 1))

        def forward(self, x):
            return self.body(x)

        def sss_prune(self):
            return prune(self.body)

    with pytest.raises(SurgeryError, match="takes no fold_gates argument.*add a `fold_gates: bool = True`"):
        prune(Custom(), fold_gates=False)


def test_a_plugin_that_computes_instead_of_slicing_is_rejected():
    class Doubling(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), ChannelGate(4), nn.Conv2d(4, 2, 1))

        def forward(self, x):
            return self.body(x)

        def sss_prune(self, fold_gates: bool = True):
            self.body = prune(self.body, fold_gates=fold_gates)
            with torch.no_grad():
                self.body[0].weight.mul_(2)
            return self

    with pytest.raises(SurgeryError, match="computed parameter 'body.0.weight' instead of slicing"):
        slice_sources(Doubling())


# ---------------------------------------------------------------------------------------------------
# In a fit
# ---------------------------------------------------------------------------------------------------


class Record(L.Callback):
    """Per-step training losses, and the optimizer's parameter set right after each epoch starts."""

    def __init__(self):
        self.losses: list[float] = []
        self.optimizer_holds_net: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_epoch_start(self, trainer, pl_module):
        held = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        wanted = {id(p) for p in pl_module.net.parameters() if p.requires_grad}
        self.optimizer_holds_net.append(held == wanted)


@pytest.fixture(scope="session")
def make(tiny_classifier):
    """make(frozen=True, gamma=0.1): the tiny classifier with a fixed half-zero gate pattern, frozen or not."""

    def make(frozen: bool = True, gamma: float = 0.1):
        torch.manual_seed(0)
        module = tiny_classifier(gamma=gamma)
        random_gate_pattern(module.net, 0.5, seed=0)
        if frozen:
            for p in gate_parameters(module.net):
                p.requires_grad_(False)
        return module

    return make


@pytest.fixture(scope="session")
def fit(quiet_trainer, tiny_data):
    """fit(module, root, callbacks, max_epochs=3, ...): (trainer, Record) of a seeded fit on tiny_data."""

    def fit(module, root, callbacks, max_epochs=3, ckpt_path=None, strategy="auto", devices=1):
        record = Record()
        trainer = quiet_trainer(
            root,
            [*callbacks, record, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
            max_epochs=max_epochs,
            accelerator="cpu",
            devices=devices,
            strategy=strategy,
            enable_checkpointing=True,
        )
        L.seed_everything(0)
        trainer.fit(module, datamodule=tiny_data(), ckpt_path=ckpt_path)
        return trainer, record

    return fit


@pytest.mark.slow
def test_shrinking_a_frozen_structure_trains_exactly_like_the_full_width_network(tmp_path, make, fit):
    full, full_record = fit(make(), tmp_path / "full", [])
    module = make()
    params_before = sum(p.numel() for p in module.parameters())
    shrink = InTrainingShrink(when_frozen=False, epochs=[2])
    trainer, record = fit(module, tmp_path / "shrunk", [shrink])

    assert [row["epoch"] for row in shrink.history] == [2]
    assert sum(p.numel() for p in module.parameters()) < 0.5 * params_before
    assert all(record.optimizer_holds_net)  # after the swap the optimizer holds exactly the new parameters
    # the same losses before and, with momentum and schedule carried over, after the swap (steps 4..11)
    assert record.losses == pytest.approx(full_record.losses, rel=1e-4, abs=1e-5)
    x = torch.randn(4, 3, 8, 8)
    full_net, shrunk_net = full.lightning_module.net.eval(), module.net.eval()
    torch.testing.assert_close(shrunk_net(x), full_net(x), rtol=1e-4, atol=1e-4)
    groups = trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([g["lr"] for g in full.optimizers[0].param_groups])


@pytest.mark.slow
def test_without_carrying_momentum_the_trajectory_would_differ(tmp_path, monkeypatch, make, fit):
    """The continuity above is due to the carried state: dropping it changes the losses after the swap."""
    _, full_record = fit(make(), tmp_path / "full", [])
    monkeypatch.setattr("sss_lightning.reshaping.carry_optimizer_state", lambda *a, **k: None)
    _, record = fit(make(), tmp_path / "dropped", [InTrainingShrink(when_frozen=False, epochs=[2])])
    assert record.losses[:4] == pytest.approx(full_record.losses[:4], rel=1e-5)
    assert record.losses[5:] != pytest.approx(full_record.losses[5:], rel=1e-3)


@pytest.mark.slow
def test_shrink_after_freeze_then_surgery_at_the_end(tmp_path, make, fit):
    module = make(frozen=False, gamma=0.3)
    freeze, shrink, surgery = FreezeGates(patience=None, target_macs=0.9), InTrainingShrink(), StructuralSurgery()
    _, record = fit(module, tmp_path, [freeze, shrink, surgery], max_epochs=4)
    assert freeze.frozen_at is not None and shrink.history and shrink.history[0]["frozen"]
    assert shrink.history[0]["epoch"] == freeze.frozen_at + 1
    assert all(record.optimizer_holds_net)
    assert not list(iter_gates(module.net)) and (tmp_path / "pruned.pt").is_file()
    full = count_flops(make().net, [3, 8, 8]).macs  # the report's "before" is the network as built
    assert surgery.report["gated/macs"] == full > surgery.report["pruned/macs"]


class Kill(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 9:  # in epoch 3; last.ckpt holds the end of epoch 2, after the shrink
            raise RuntimeError("killed")


@pytest.mark.slow
def test_resume_after_a_shrink_continues_identically(tmp_path, make, fit):
    whole = make()
    fit(whole, tmp_path / "whole", [InTrainingShrink(when_frozen=False, epochs=[2])], max_epochs=4)
    with pytest.raises(RuntimeError, match="killed"):
        fit(make(), tmp_path / "cut", [InTrainingShrink(when_frozen=False, epochs=[2]), Kill()], max_epochs=4)

    resumed = make()  # a fresh full-width module: the checkpoint's recorded architecture reshapes it
    shrink = InTrainingShrink(when_frozen=False, epochs=[2])
    fit(resumed, tmp_path / "cut", [shrink], max_epochs=4, ckpt_path=tmp_path / "cut/ckpt/last.ckpt")
    assert [row["epoch"] for row in shrink.history] == [2]  # restored, not shrunk twice
    assert resumed.get_extra_state() == whole.get_extra_state()  # the same shrunk architecture, frozen gates
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_shrink_arguments_are_validated():
    with pytest.raises(ValueError, match="needs when_frozen=True or a list of epochs"):
        InTrainingShrink(when_frozen=False)
    with pytest.raises(ValueError, match="epochs must be a non-empty list of epoch numbers >= 1"):
        InTrainingShrink(epochs=[0])
