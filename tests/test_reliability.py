"""Faults a pruning run must survive or report clearly, before any work is lost."""

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sss_lightning import SSSClassifier, SSSModule, load_pruned
from sss_lightning.callbacks import PruningSnapshot, StructuralSurgery
from sss_lightning.data import FashionMNISTDataModule
from sss_lightning.gates import gate_parameters
from sss_lightning.optim import APG


@pytest.fixture(scope="session")
def trainer(quiet_trainer):
    """trainer(root, callbacks=(), **kwargs): a quiet trainer that keeps Lightning's default checkpointing."""
    return functools.partial(quiet_trainer, enable_checkpointing=True)


class Poison(L.Callback):
    """At a given step, makes the loss NaN (poisoned weights before the batch) or a gate's gradient NaN
    (so the optimizer step itself makes the gate NaN)."""

    def __init__(self, step: int, target: str) -> None:
        self.step, self.target = step, target

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.target == "loss" and trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.net.head[2].weight.fill_(float("nan"))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.target == "gate" and trainer.global_step == self.step:
            gate_parameters(pl_module.net)[0].grad.fill_(float("nan"))


@pytest.mark.parametrize(
    "target, message", [("loss", "training diverged: the loss is nan"), ("gate", "a gate became non-finite")]
)
def test_nan_stops_the_run_before_snapshots_or_surgery_write_and_keeps_the_last_checkpoint(
    tmp_path, target, message, tiny_classifier, tiny_data, trainer
):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    callbacks = [Poison(6, target), PruningSnapshot(), StructuralSurgery(), ckpt]
    with pytest.raises(FloatingPointError, match=message):
        trainer(tmp_path, callbacks, max_epochs=3).fit(tiny_classifier(gamma=0.3), datamodule=tiny_data())
    assert not (tmp_path / "pruned.pt").exists()
    # only the snapshot of the healthy first epoch (4 steps) exists, and it is finite
    assert sorted(p.name for p in (tmp_path / "snapshots").glob("*.pt")) == ["snapshot-epoch001.pt"]
    assert all(
        torch.isfinite(p).all() for p in load_pruned(tmp_path / "snapshots" / "snapshot-epoch001.pt").parameters()
    )
    good = SSSClassifier.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in good.parameters())


def test_accumulate_larger_than_an_epoch_is_refused_before_training(tmp_path, tiny_classifier, tiny_data, trainer):
    module = tiny_classifier()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match=r"accumulate_grad_batches=8 is larger than an epoch \(4 batches\)"):
        trainer(tmp_path, max_epochs=1, accumulate_grad_batches=8).fit(module, datamodule=tiny_data())
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_gradient_accumulation_steps_gates_once_per_accumulated_batch(tmp_path, tiny_classifier, tiny_data, trainer):
    seen: list[torch.Tensor] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(torch.cat([p.detach().flatten() for p in gate_parameters(pl_module.net)]).clone())

    # pinned zeros (zero_hold) and a settled structure (settle_at) would look like skipped steps
    module = tiny_classifier(gamma=0.3, schedule="cosine", zero_hold=0, settle_at=None)
    t = trainer(tmp_path, [Record()], max_epochs=2, accumulate_grad_batches=2)
    t.fit(module, datamodule=tiny_data())
    assert t.global_step == 4  # 8 batches, one optimizer step per 2
    changed = [not torch.equal(a, b) for a, b in zip(seen, seen[1:], strict=False)]
    assert changed == [True, False, True, False, True, False, True]
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine over 4 steps


def test_bf16_mixed_precision_trains_through_the_closure(tmp_path, monkeypatch, tiny_classifier, tiny_data, trainer):
    calls = []
    original = APG.step

    def spy(self, closure=None):
        calls.append(closure is not None)
        return original(self, closure)

    monkeypatch.setattr(APG, "step", spy)
    module = tiny_classifier(gamma=0.3)
    trainer(tmp_path, max_steps=4, precision="bf16-mixed").fit(module, datamodule=tiny_data())
    assert calls == [True] * 4
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_grad_scaler_skips_an_inf_step_and_leaves_gates_and_apg_state_unchanged():
    gate = torch.nn.Parameter(torch.tensor([0.5, 1.0]))
    optimizer = APG([gate], lr=0.1, gamma=0.1, nonnegative=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    scaler.scale((gate * 2).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    state = {k: v.clone() for k, v in optimizer.state[gate].items()}
    value = gate.detach().clone()
    optimizer.zero_grad()
    scaler.scale((gate * float("inf")).sum()).backward()  # an overflowing step
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(gate.detach(), value)
    assert all(torch.equal(optimizer.state[gate][k], v) for k, v in state.items())


def test_fashion_mnist_files_of_the_wrong_format_are_named(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / name).write_bytes(b"not an idx file")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), source_dir=None)
    with pytest.raises(ValueError, match="are not Fashion-MNIST IDX files.*delete that folder"):
        dm.setup("fit")


def test_pruned_model_equals_gated_even_when_a_stage_loses_every_block(tmp_path, tiny_classifier, assert_same_outputs):
    from sss_lightning import prune

    module = tiny_classifier()
    with torch.no_grad():
        for block in module.net.layer2:
            block.gate.scale.zero_()  # a whole stage of residual branches
    pruned = prune(module.net)
    assert all(block.branch is None for block in pruned.layer2)
    assert_same_outputs(module.net, pruned, torch.randn(2, 3, 8, 8))


def test_module_built_with_net_cannot_be_rebuilt_by_the_prune_command(tmp_path, capsys, tiny_data, trainer, tiny_model):
    from sss_lightning.cli import main

    module = SSSModule(net=tiny_model("resnet20", num_classes=4), gamma=0.3)
    t = trainer(tmp_path, max_steps=1)
    t.fit(module, datamodule=tiny_data())
    t.save_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(SystemExit):
        main(["prune", "--ckpt", str(tmp_path / "m.ckpt")])
    assert "cannot rebuild sss_lightning.module.SSSModule" in capsys.readouterr().err


def test_snapshot_files_reload(tmp_path, tiny_classifier, tiny_data, trainer):
    trainer(tmp_path, [PruningSnapshot()], max_epochs=1).fit(tiny_classifier(gamma=0.3), datamodule=tiny_data())
    assert load_pruned(tmp_path / "snapshots" / "snapshot-epoch001.pt").sss_metadata["epoch"] == 1


# --- prune() of a network without gates ------------------------------------------------------------


def test_prune_of_a_network_without_gates_is_an_error_that_says_what_to_do(tiny_model):
    """Not a silent copy: a user pruning the wrong network gets told."""
    from sss_lightning import prune
    from sss_lightning.surgery import SurgeryError

    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    with pytest.raises(SurgeryError, match=r"Sequential has no gates .* nothing to prune.*add_gates"):
        prune(plain)
    with pytest.raises(SurgeryError, match=r"CifarResNet has no gates"):
        prune(tiny_model("resnet20", num_classes=4, gates="none"))


def test_prune_of_a_pruned_network_is_a_copy(tmp_path, tiny_classifier, assert_same_outputs):
    """Pruning stays idempotent on its own output and on loaded pruned files (the callbacks that run
    during fine-tuning after surgery prune the already-pruned network)."""
    from sss_lightning import prune, save_pruned

    module = tiny_classifier()
    with torch.no_grad():
        module.net.layer1[0].gate.scale.zero_()
    once = prune(module.net).eval()
    twice = prune(once).eval()
    assert twice is not once
    x = torch.randn(2, 3, 8, 8)
    assert_same_outputs(once, twice, x)
    save_pruned(once, tmp_path / "p.pt")
    loaded = load_pruned(tmp_path / "p.pt")
    assert_same_outputs(loaded, prune(loaded).eval(), x)


class ZeroOneBlock(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.net.layer1[0].gate.scale.zero_()


def test_monitor_and_snapshots_keep_working_while_fine_tuning_the_pruned_network(
    tmp_path, tiny_classifier, tiny_data, trainer
):
    from sss_lightning.callbacks import GateMonitor

    surgery = StructuralSurgery(finetune_epochs=1, evaluate=False)
    monitor = GateMonitor(log_every_n_steps=1, plots=False)
    callbacks = [ZeroOneBlock(), monitor, PruningSnapshot(every_n_epochs=1), surgery]
    trainer(tmp_path, callbacks, max_epochs=2, limit_val_batches=1).fit(
        tiny_classifier(gamma=0.5), datamodule=tiny_data()
    )
    assert surgery.done and surgery.report["macs_reduction"] > 0
    assert monitor.history[-1]["epoch"] == 1  # recorded on the pruned network too
    assert sorted(p.name for p in (tmp_path / "snapshots").glob("*.pt")) == [
        "snapshot-epoch001.pt",
        "snapshot-epoch002.pt",
    ]


# --- StructuralSurgery, count_flops and export_model ---------------------------------------------------


class CountingSurgery(StructuralSurgery):
    """Counts the batches its post-surgery evaluation runs the pruned network on."""

    def _evaluate(self, trainer, pl_module):
        self.batches = 0

        def count(module, inputs):
            self.batches += 1

        hook = pl_module.net.register_forward_pre_hook(count)
        try:
            super()._evaluate(trainer, pl_module)
        finally:
            hook.remove()


@pytest.mark.filterwarnings("ignore:StructuralSurgery. no gate reached exactly zero")
@pytest.mark.parametrize("limit, expected", [(2, 2), (0.25, 2), (1.0, 8)])
def test_surgery_evaluation_honours_limit_val_batches(tmp_path, limit, expected, tiny_classifier, tiny_data, trainer):
    """The pruned network is evaluated on no more validation batches than limit_val_batches allows."""
    surgery = CountingSurgery()
    t = trainer(tmp_path, [surgery], max_steps=1, limit_val_batches=limit, num_sanity_val_steps=0)
    t.fit(tiny_classifier(gamma=0.3), datamodule=tiny_data(val_size=128))  # 8 validation batches of 16
    assert surgery.batches == expected
    assert 0.0 <= surgery.report["val_acc"] <= 1.0


def test_count_flops_keeps_fractional_macs(monkeypatch):
    """A handle counting 3.5 MACs is reported as 3.5, not truncated to 3 by int()."""
    from sss_lightning import count_flops, flops

    monkeypatch.setitem(flops._MAC_HANDLES, "aten::linear", lambda inputs, outputs: 3.5)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    report = count_flops(model, (1, 2, 2))
    assert report.macs == 3.5 and report.stages["1"] == 3.5
    monkeypatch.setitem(flops._MAC_HANDLES, "aten::linear", lambda inputs, outputs: 12)
    assert count_flops(model, (1, 2, 2)).macs == 12 and isinstance(count_flops(model, (1, 2, 2)).macs, int)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_export_restores_the_callers_train_or_eval_mode(tmp_path, training):
    """export_model leaves a training model in train mode (in eval mode its BN statistics would stop updating)."""
    from sss_lightning.export import export_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    model.train(training)
    path, diff = export_model(model, tmp_path / "m.ts", (3, 8, 8))
    assert path.is_file() and diff is not None
    assert model.training is training and model[1].training is training


def test_a_failed_export_leaves_no_file_and_no_temporary(tmp_path):
    from sss_lightning.export import export_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).train()
    with pytest.raises(RuntimeError, match="differs from the model by .*not kept"):
        export_model(model, tmp_path / "m.ts", (3, 8, 8), atol=-1.0)  # no export can pass a negative tolerance
    assert list(tmp_path.iterdir()) == [] and model.training


@pytest.mark.filterwarnings("ignore:StructuralSurgery. no gate reached exactly zero")
def test_surgery_without_dirpath_writes_into_the_run_folder_not_the_current_directory(
    tmp_path, monkeypatch, tiny_classifier, tiny_data, trainer
):
    """With a logger: the logger's run folder (where ModelCheckpoint puts checkpoints/); without one, the
    trainer's default_root_dir; never the directory the process happens to run in."""
    from lightning.pytorch.loggers import CSVLogger

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    logger = CSVLogger(save_dir=tmp_path / "logs", name="run")
    t = L.Trainer(logger=logger, callbacks=[StructuralSurgery()], max_steps=1, enable_progress_bar=False,
                  enable_model_summary=False, enable_checkpointing=False, limit_val_batches=1)  # fmt: skip
    t.fit(tiny_classifier(gamma=0.3), datamodule=tiny_data())
    assert (tmp_path / "logs" / "run" / "version_0" / "pruned.pt").is_file()
    assert not (cwd / "pruned.pt").exists()
    root = tmp_path / "root"
    trainer(root, [StructuralSurgery()], max_steps=1, limit_val_batches=1).fit(
        tiny_classifier(gamma=0.3), datamodule=tiny_data()
    )
    assert (root / "pruned.pt").is_file()
    assert not (cwd / "pruned.pt").exists()
