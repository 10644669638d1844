import functools
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from sss_lightning import load_pruned
from sss_lightning.callbacks import FitSummary, FreezeGates, GateMonitor, PruningSnapshot, StructuralSurgery
from sss_lightning.gates import iter_gates


@pytest.fixture(scope="session")
def tiny_classifier(tiny_classifier):
    """This file's tiny classifiers train at a constant learning rate."""
    return functools.partial(tiny_classifier, schedule="constant")


@pytest.fixture(scope="session")
def run(quiet_trainer, tiny_data):
    """run(module, tmp_path, callbacks, steps=20): a short fit on tiny_data with 32 validation images."""

    def run(module, tmp_path, callbacks, steps=20):
        trainer = quiet_trainer(tmp_path, callbacks, max_steps=steps)
        data = tiny_data(val_size=32)
        trainer.fit(module, datamodule=data)
        return trainer, data

    return run


def test_structural_surgery_replaces_the_net_with_an_equal_smaller_one(tmp_path, tiny_classifier, run):
    module = tiny_classifier(gamma=0.5)
    data_x = torch.randn(4, 3, 8, 8)
    surgery = StructuralSurgery()
    captured = {}

    class KeepGated(L.Callback):
        def on_train_end(self, trainer, pl_module):
            import copy

            captured["gated"] = copy.deepcopy(pl_module.net).eval()

    run(module, tmp_path, [FitSummary(), KeepGated(), surgery])
    gated, pruned = captured["gated"], module.net.eval()
    assert any((g.module.scale == 0).any() for g in iter_gates(gated))
    assert not list(iter_gates(pruned))
    torch.testing.assert_close(pruned(data_x), gated(data_x), rtol=1e-4, atol=1e-5)
    assert surgery.report["pruned/macs"] < surgery.report["gated/macs"]
    reloaded = load_pruned(tmp_path / "pruned.pt")
    assert torch.equal(reloaded(data_x), pruned(data_x))
    assert reloaded.sss_metadata["input_size"] == [3, 8, 8] and "val/acc" in reloaded.sss_metadata


def test_summary_and_surgery_print_accuracy_sparsity_and_macs(tmp_path, caplog, tiny_classifier, run):
    caplog.set_level("INFO")
    run(tiny_classifier(gamma=0.5), tmp_path, [FitSummary(), StructuralSurgery()])
    text = caplog.text
    assert "SSS fit summary" in text and "val/acc" in text and "block gates" in text
    assert "| MACs |" in text and "| params |" in text and "pruned model:" in text


def test_no_zero_gate_is_reported_not_claimed_as_pruning(tmp_path, tiny_classifier, run):
    with pytest.warns(UserWarning, match=r"no gate reached exactly zero.*Smallest gates: .*=.*Raise gamma"):
        run(tiny_classifier(gamma=0.0), tmp_path, [StructuralSurgery()], steps=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"filename": "a/b.pt"}, "plain file name"),
        ({"input_size": [3, 8]}, r"input_size must be three positive ints \[C,H,W\], got \[3, 8\]"),
        ({"round_to": 0}, "round_to must be a positive int"),
    ],
)
def test_structural_surgery_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StructuralSurgery(**kwargs)


def test_surgery_state_survives_a_checkpoint_round_trip(tmp_path, tiny_classifier, run):
    surgery = StructuralSurgery()
    run(tiny_classifier(gamma=0.5), tmp_path, [surgery])
    restored = StructuralSurgery()
    restored.load_state_dict(surgery.state_dict())
    assert restored.report == surgery.report and restored.saved_path == surgery.saved_path


# ----------------------------------------------------------------------------------------------------
# GateMonitor
# ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gate_monitor_metrics_and_histograms_land_in_an_offline_wandb_run(
    tmp_path, monkeypatch, tiny_classifier, quiet_trainer, tiny_data, read_offline_wandb_history
):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no key, no network: must neither prompt nor hang
    logger = WandbLogger(project="sss-test", save_dir=str(tmp_path), offline=True)
    monitor = GateMonitor(log_every_n_steps=2)
    trainer = quiet_trainer(tmp_path, [monitor], max_epochs=2, logger=logger, log_every_n_steps=1)
    trainer.fit(
        tiny_classifier(gamma=0.5),
        datamodule=tiny_data(val_size=16),
    )
    import wandb

    wandb.finish()
    deadline = time.monotonic() + 20  # wandb-core may still be flushing the log file under load
    while True:
        rows = read_offline_wandb_history(tmp_path)
        keys = set().union(*rows)
        if "gates/hist/block/_type" in keys or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"gates/zero_frac/overall", "gates/zero_frac/block", "gates/alive/channel", "gates/macs"} <= keys
    assert {"gates/hist/block/_type", "gates/hist/channel/values", "train/loss_step", "val/acc"} <= keys
    zero_fracs = [r["gates/zero_frac/overall"] for r in rows if "gates/zero_frac/overall" in r]
    assert zero_fracs[-1] > 0  # the curve shows gates reaching zero
    hist = next(r for r in rows if "gates/hist/channel/_type" in r)
    assert hist["gates/hist/channel/_type"] == "histogram" and sum(hist["gates/hist/channel/values"]) == 3 * (
        4 + 8 + 16
    )


def test_gate_monitor_writes_png_plots_and_keeps_its_history_in_checkpoints(tmp_path, tiny_classifier, run):
    monitor = GateMonitor(log_every_n_steps=2)
    run(tiny_classifier(gamma=0.5), tmp_path, [monitor], steps=12)
    for name in ("sparsity.png", "gate_heatmap.png"):
        data = (tmp_path / "gate_plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    steps = [h["step"] for h in monitor.history]
    assert steps == sorted(steps) and len(steps) >= 6
    assert monitor.history[-1]["gates/macs_ratio"] < 1.0
    restored = GateMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.history == monitor.history


def test_gate_monitor_macs_curve_matches_fvcore_on_the_pruned_network(tmp_path, tiny_classifier, run):
    from sss_lightning.flops import count_flops
    from sss_lightning.surgery import prune

    module = tiny_classifier(gamma=0.5)
    monitor = GateMonitor(log_every_n_steps=1, plots=False)
    run(module, tmp_path, [monitor], steps=6)
    assert monitor.history[-1]["gates/macs"] == count_flops(prune(module.net), (3, 8, 8)).macs


def test_gate_monitor_arguments_are_validated():
    with pytest.raises(ValueError, match="log_every_n_steps must be a positive int"):
        GateMonitor(log_every_n_steps=0)


# ----------------------------------------------------------------------------------------------------
# PruningSnapshot
# ----------------------------------------------------------------------------------------------------


class Probe(L.Callback):
    """Records the live state right before and after the snapshot callback's epoch-end hook."""

    def __init__(self, when: str, store: dict) -> None:
        self.when, self.store = when, store

    def on_train_epoch_end(self, trainer, pl_module):
        import copy

        self.store[self.when] = (
            copy.deepcopy(pl_module.state_dict()),
            copy.deepcopy(trainer.optimizers[0].state_dict()),
        )


def _states_equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_states_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_snapshot_leaves_live_model_and_optimizer_untouched_and_training_identical(tmp_path, tiny_classifier, run):
    store: dict = {}
    torch.manual_seed(0)
    with_snapshots = tiny_classifier(gamma=0.5)
    snapshot = PruningSnapshot(every_n_epochs=1)
    run(with_snapshots, tmp_path / "a", [Probe("before", store), snapshot, Probe("after", store)], steps=12)
    assert _states_equal(store["before"], store["after"])  # bitwise: weights, gates, BN stats, APG momentum

    torch.manual_seed(0)
    without = tiny_classifier(gamma=0.5)
    run(without, tmp_path / "b", [], steps=12)
    assert _states_equal(with_snapshots.state_dict(), without.state_dict())  # same trajectory

    assert [row["epoch"] for row in snapshot.rows] == [1, 2, 3]
    table = (tmp_path / "a" / "snapshots" / "snapshots.md").read_text()
    assert table.count("snapshot-epoch") == 3 and "| epoch | step | MACs |" in table
    model = load_pruned(tmp_path / "a" / "snapshots" / "snapshot-epoch003.pt")
    assert model.sss_metadata["epoch"] == 3 and "val/acc" in model.sss_metadata


def test_snapshot_at_given_epochs_only(tmp_path, tiny_classifier, run):
    snapshot = PruningSnapshot(epochs=[2])
    run(tiny_classifier(gamma=0.5), tmp_path, [snapshot], steps=12)
    assert [row["epoch"] for row in snapshot.rows] == [2]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"every_n_epochs": 0}, "every_n_epochs"), ({"epochs": [0]}, "epochs"), ({"round_to": -1}, "round_to")],
)
def test_snapshot_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningSnapshot(**kwargs)


# ----------------------------------------------------------------------------------------------------
# Fine-tuning after surgery, freezing, resume
# ----------------------------------------------------------------------------------------------------


def test_finetune_runs_the_last_epochs_on_the_pruned_net_with_a_fresh_optimizer(
    tmp_path, tiny_classifier, quiet_trainer, tiny_data
):
    import copy

    seen: dict = {}

    class AroundSurgery(L.Callback):
        def __init__(self, when):
            self.when = when

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                seen[self.when] = copy.deepcopy(pl_module.net).eval()

    module = tiny_classifier(gamma=0.5)
    surgery = StructuralSurgery(finetune_epochs=1, finetune_lr=0.01)
    trainer = quiet_trainer(tmp_path, [AroundSurgery("gated"), surgery, AroundSurgery("pruned")], max_epochs=3)
    trainer.fit(module, datamodule=tiny_data())
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(seen["pruned"](x), seen["gated"](x), rtol=1e-4, atol=1e-5)  # continuous at the swap
    assert not list(iter_gates(module.net))
    optimizer = trainer.optimizers[0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in module.net.parameters()}
    assert [g["name"] for g in optimizer.param_groups] == ["weights"]
    assert not _states_equal(seen["pruned"].state_dict(), module.net.state_dict())  # it did train
    assert load_pruned(tmp_path / "pruned.pt")(x).shape == (4, 4)


def test_finetune_needs_more_epochs_than_it_takes(tmp_path, tiny_classifier, tiny_data):
    with pytest.raises(ValueError, match="needs trainer.max_epochs greater than it"):
        trainer = L.Trainer(
            max_epochs=1, logger=False, enable_progress_bar=False, callbacks=[StructuralSurgery(finetune_epochs=1)]
        )
        trainer.fit(tiny_classifier(), datamodule=tiny_data(train_size=32))


class ZeroSomeGates(L.Callback):
    """Before surgery at epoch 2, zero one block and half of one layer's channels: a known smaller net."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.net.layer1[0].gate.scale.zero_()
                pl_module.net.layer2[0].branch[3].scale[::2] = 0


def test_checkpoint_after_surgery_reloads_into_the_smaller_architecture(
    tmp_path, tiny_classifier, quiet_trainer, tiny_data
):
    module = tiny_classifier(gamma=0.5)
    gated_params = sum(p.numel() for p in module.parameters())
    trainer = quiet_trainer(tmp_path, [ZeroSomeGates(), StructuralSurgery(finetune_epochs=1)], max_epochs=2)
    trainer.fit(module, datamodule=tiny_data())
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    x = torch.randn(2, 3, 8, 8)
    torch.save({"x": x, "y": module.eval()(x).detach()}, tmp_path / "io.pt")
    code = (  # a fresh process: nothing but the checkpoint tells it the network is the pruned one
        "import torch; from sss_lightning import SSSClassifier; from sss_lightning.gates import iter_gates; "
        f"m = SSSClassifier.load_from_checkpoint(r'{tmp_path / 'after.ckpt'}').eval(); "
        f"d = torch.load(r'{tmp_path / 'io.pt'}'); assert not list(iter_gates(m.net)); "
        "assert torch.equal(m(d['x']), d['y'])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert module.net.layer1[0].branch is None and module.net.layer2[0].branch[0].out_channels == 4
    assert sum(p.numel() for p in module.parameters()) < gated_params


def test_freeze_gates_once_pattern_is_stable(tmp_path, tiny_classifier, run):
    module = tiny_classifier(gamma=0.5)
    freeze = FreezeGates(patience=1)
    run(module, tmp_path, [freeze], steps=16)
    assert freeze.frozen_at is not None
    assert all(not info.module.scale.requires_grad for info in iter_gates(module.net))


def test_freeze_gates_at_a_macs_budget(tmp_path, tiny_classifier, run):
    module = tiny_classifier(gamma=0.5)
    freeze = FreezeGates(patience=None, target_macs=0.999)
    run(module, tmp_path, [freeze], steps=12)
    assert freeze.frozen_at is not None  # the first epoch whose zero gates cut 0.1% of the MACs


def test_freeze_gates_arguments_are_validated():
    with pytest.raises(ValueError, match="needs patience or target_macs"):
        FreezeGates(patience=None)


@pytest.mark.slow
def test_resumed_run_continues_snapshot_schedule_and_monitor_curves(
    tmp_path, tiny_classifier, quiet_trainer, tiny_data
):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = tiny_data()

    def trainer_for(epochs, monitor, snapshot):
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, enable_version_counter=False)
        return quiet_trainer(tmp_path, [monitor, snapshot, ckpt], max_epochs=epochs, enable_checkpointing=True)

    first_monitor, first_snapshot = GateMonitor(log_every_n_steps=2, plots=False), PruningSnapshot()
    trainer_for(2, first_monitor, first_snapshot).fit(tiny_classifier(gamma=0.5), datamodule=data)
    monitor, snapshot = GateMonitor(log_every_n_steps=2, plots=False), PruningSnapshot()
    trainer_for(3, monitor, snapshot).fit(
        tiny_classifier(gamma=0.5), datamodule=data, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert [r["epoch"] for r in snapshot.rows] == [1, 2, 3]
    steps = [h["step"] for h in monitor.history]
    assert steps[: len(first_monitor.history)] == [h["step"] for h in first_monitor.history]
    assert steps == sorted(steps) and steps[-1] == 12
