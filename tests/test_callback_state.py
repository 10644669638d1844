"""Several instances of one callback in a Trainer: each has its own ``state_key``, so each keeps its own
state through a checkpoint and a resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sss_lightning import SSSClassifier
from sss_lightning.callbacks import FitSummary, GateMonitor, MagnitudePruning, PruningSnapshot, StructuralSurgery
from sss_lightning.data import SyntheticDataModule


def classifier() -> SSSClassifier:
    return SSSClassifier(
        arch="resnet20", num_classes=4, arch_kwargs={"width": 4}, gamma=0.5, schedule="constant", settle_at=None
    )


def data() -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, image_size=8, train_size=32, val_size=16, batch_size=16)


def fit(root: Path, callbacks: list[L.Callback], max_epochs: int, ckpt_path: Path | None = None) -> L.Trainer:
    """2 steps an epoch; ``root/ckpt/last.ckpt`` at every epoch's end, after the other callbacks' epoch end."""
    checkpoint = ModelCheckpoint(
        dirpath=root / "ckpt", save_last=True, enable_version_counter=False, save_on_train_epoch_end=True
    )
    trainer = L.Trainer(
        default_root_dir=root,
        callbacks=[*callbacks, checkpoint],
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(classifier(), datamodule=data(), ckpt_path=ckpt_path)
    return trainer


def stored_callbacks(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["callbacks"]


# ----------------------------------------------------------------------------------------------------
# state_key
# ----------------------------------------------------------------------------------------------------


def test_state_keys_are_built_from_the_arguments_that_tell_instances_apart():
    assert PruningSnapshot(dirpath="a").state_key != PruningSnapshot(dirpath="b").state_key
    assert PruningSnapshot(every_n_epochs=2).state_key != PruningSnapshot(every_n_epochs=3).state_key
    assert PruningSnapshot(epochs=[2, 1]).state_key == PruningSnapshot(epochs=[1, 2]).state_key
    assert PruningSnapshot(dirpath="a", round_to=8).state_key == PruningSnapshot(dirpath="a").state_key
    assert PruningSnapshot(dirpath="a").state_key.startswith("PruningSnapshot{") and "'dirpath': 'a'" in (
        PruningSnapshot(dirpath="a").state_key
    )
    assert GateMonitor(log_every_n_steps=1).state_key != GateMonitor(log_every_n_steps=2).state_key
    assert GateMonitor(dirpath="a").state_key != GateMonitor(dirpath="b").state_key
    assert StructuralSurgery(filename="a.pt").state_key != StructuralSurgery(filename="b.pt").state_key
    assert StructuralSurgery(finetune_epochs=1).state_key != StructuralSurgery().state_key
    magnitude = MagnitudePruning("bn_scale", amount=0.5)
    assert magnitude.state_key.startswith("MagnitudePruning{") and "'amount': 0.5" in magnitude.state_key
    assert magnitude.state_key != MagnitudePruning("filter_l1", amount=0.5).state_key
    assert FitSummary(prefixes=("val/",)).state_key != FitSummary(prefixes=("train/",)).state_key
    # the same arguments give the same key: that is how a resumed run finds its state
    assert (
        GateMonitor(log_every_n_steps=5, dirpath="x").state_key
        == GateMonitor(log_every_n_steps=5, dirpath="x").state_key
    )


# ----------------------------------------------------------------------------------------------------
# Two PruningSnapshots
# ----------------------------------------------------------------------------------------------------


def snapshots(root: Path) -> tuple[PruningSnapshot, PruningSnapshot]:
    return (
        PruningSnapshot(every_n_epochs=1, dirpath=str(root / "every")),
        PruningSnapshot(epochs=[2, 3], dirpath=str(root / "some")),
    )


def test_two_snapshots_keep_their_own_rows_through_a_checkpoint_and_a_resume(tmp_path):
    every, some = snapshots(tmp_path)
    fit(tmp_path, [every, some], max_epochs=2)
    assert [r["epoch"] for r in every.rows] == [1, 2] and [r["epoch"] for r in some.rows] == [2]
    stored = stored_callbacks(tmp_path / "ckpt" / "last.ckpt")
    assert [r["epoch"] for r in stored[every.state_key]["rows"]] == [1, 2]
    assert [r["epoch"] for r in stored[some.state_key]["rows"]] == [2]

    every, some = snapshots(tmp_path)  # a new process: fresh callbacks, the same arguments
    fit(tmp_path, [every, some], max_epochs=3, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [r["epoch"] for r in every.rows] == [1, 2, 3]
    assert [r["epoch"] for r in some.rows] == [2, 3]
    assert all(Path(r["path"]).parent == tmp_path / "every" for r in every.rows)
    assert all(Path(r["path"]).parent == tmp_path / "some" for r in some.rows)
    assert sorted(p.name for p in (tmp_path / "some").glob("*.pt")) == ["snapshot-epoch002.pt", "snapshot-epoch003.pt"]
    table = (tmp_path / "some" / "snapshots.md").read_text()  # each table lists its own snapshots only
    assert "snapshot-epoch002.pt" in table and "snapshot-epoch001.pt" not in table
    assert "snapshot-epoch001.pt" in (tmp_path / "every" / "snapshots.md").read_text()


def test_two_snapshots_into_one_folder_are_refused_at_setup(tmp_path):
    with pytest.raises(ValueError, match=r"two PruningSnapshot callbacks write into .*give each its own dirpath"):
        fit(tmp_path, [PruningSnapshot(every_n_epochs=1), PruningSnapshot(every_n_epochs=2)], max_epochs=1)


def test_a_checkpoint_keyed_by_the_class_name_still_restores_a_snapshot(tmp_path):
    """Checkpoints written while the key was the bare class name resume with their rows."""
    snapshot = PruningSnapshot(every_n_epochs=1)
    fit(tmp_path, [snapshot], max_epochs=1)
    path = tmp_path / "ckpt" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    checkpoint["callbacks"]["PruningSnapshot"] = checkpoint["callbacks"].pop(snapshot.state_key)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    resumed = PruningSnapshot(every_n_epochs=1)
    with pytest.warns(UserWarning, match="Please add the following callbacks"):
        fit(tmp_path, [resumed], max_epochs=2, ckpt_path=tmp_path / "old.ckpt")
    assert [r["epoch"] for r in resumed.rows] == [1, 2]


# ----------------------------------------------------------------------------------------------------
# Two GateMonitors
# ----------------------------------------------------------------------------------------------------


def monitors(root: Path) -> tuple[GateMonitor, GateMonitor]:
    return (
        GateMonitor(log_every_n_steps=1, plots=False),
        GateMonitor(log_every_n_steps=2, dirpath=str(root / "plots")),
    )


def test_two_gate_monitors_keep_their_own_curves_through_a_checkpoint_and_a_resume(tmp_path):
    fine, coarse = monitors(tmp_path)
    fit(tmp_path, [fine, coarse], max_epochs=2)
    fine_steps, coarse_steps = [h["step"] for h in fine.history], [h["step"] for h in coarse.history]
    assert fine_steps != coarse_steps and set(coarse_steps) < set(fine_steps)
    stored = stored_callbacks(tmp_path / "ckpt" / "last.ckpt")
    assert [h["step"] for h in stored[fine.state_key]["history"]] == fine_steps
    assert [h["step"] for h in stored[coarse.state_key]["history"]] == coarse_steps

    fine, coarse = monitors(tmp_path)
    fit(tmp_path, [fine, coarse], max_epochs=3, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert [h["step"] for h in fine.history][: len(fine_steps)] == fine_steps
    assert [h["step"] for h in coarse.history][: len(coarse_steps)] == coarse_steps
    assert len(fine.history) > len(fine_steps) and len(coarse.history) > len(coarse_steps)
    assert [c["epoch"] for c in fine.churn] == [c["epoch"] for c in coarse.churn] == [0.0, 1.0, 2.0]
    assert (tmp_path / "plots" / "sparsity.png").is_file() and not (tmp_path / "gate_plots").exists()


def test_two_gate_monitors_drawing_into_one_folder_are_refused_at_setup(tmp_path):
    with pytest.raises(ValueError, match=r"two GateMonitor callbacks draw their plots into .*own dirpath"):
        fit(tmp_path, [GateMonitor(log_every_n_steps=1), GateMonitor(log_every_n_steps=2)], max_epochs=1)


def test_every_callback_with_an_argument_key_finds_checkpoints_keyed_by_its_class_name():
    from sss_lightning.callbacks import FreezeGates, InTrainingShrink, MacsBudget, StructuralSurgery

    for callback in (
        PruningSnapshot(),
        GateMonitor(plots=False),
        StructuralSurgery(),
        MacsBudget(0.5, by_epoch=1),
        FreezeGates(patience=1),
        InTrainingShrink(),
    ):
        assert callback.state_key != type(callback).__qualname__
        assert callback._legacy_state_key == type(callback).__qualname__
