"""PruningSnapshot: save the pruned form of the current network during training, live model untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from sss_lightning.flops import MacEstimator
from sss_lightning.io import rebuild_problem, save_pruned
from sss_lightning.surgery import check_round_to, prune

from .input_size import check_input_size, require_input_size
from .legacy_key import ClassNamedLegacyKey
from .protocols import GatedModule, check_module


class PruningSnapshot(ClassNamedLegacyKey, Callback):
    """Every ``every_n_epochs`` epochs (or at the listed ``epochs``), save ``prune(net)`` to ``dirpath``.

    Surgery works on a deep copy, so the live network, its optimizer state and the training trajectory
    are not touched. The files reload in a fresh process (``load_pruned``), so the network needs a
    construction record; when it has none this callback says what to add when the fit is set up, before
    any training. Each file carries the epoch, step, MACs, params and the epoch's validation metrics in
    its metadata (``load_pruned(path).sss_metadata``), and a row is added to ``dirpath/snapshots.md``.

    The module needs a ``net`` (:class:`~sss_lightning.callbacks.protocols.GatedModule`; SSSModule has it).
    Several snapshots can run in one Trainer, each with its own ``dirpath``: a checkpoint keeps each one's
    rows under its :attr:`state_key` (class name, ``dirpath``, ``every_n_epochs``, ``epochs``), so resume
    with the same arguments to continue them.

    Args:
        every_n_epochs: interval in epochs (counted from 1); ignored when ``epochs`` is given.
        epochs: explicit epochs (counted from 1) after which to snapshot.
        dirpath: folder; default ``<default_root_dir>/snapshots``.
        input_size: ``(C, H, W)`` for MACs; default: the shape the module recorded.
        round_to: channel multiple of the saved models (see :class:`StructuralSurgery`).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        epochs: list[int] | None = None,
        dirpath: str | None = None,
        input_size: list[int] | None = None,
        round_to: int = 1,
    ) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        if epochs is not None and (not epochs or any(int(e) < 1 for e in epochs)):
            raise ValueError(f"epochs must be a non-empty list of epoch numbers >= 1, got {epochs!r}")
        self.every_n_epochs = every_n_epochs
        self.epochs = sorted(int(e) for e in epochs) if epochs is not None else None
        self.dirpath = dirpath
        self.input_size = check_input_size(input_size)
        self.round_to = check_round_to(round_to)
        self.rows: list[dict[str, Any]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=self.dirpath, every_n_epochs=self.every_n_epochs, epochs=self.epochs)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_module(pl_module, GatedModule, "PruningSnapshot")
        folder = self._dir(trainer).absolute()
        for other in trainer.callbacks:
            if isinstance(other, PruningSnapshot) and other is not self and other._dir(trainer).absolute() == folder:
                raise ValueError(
                    f"two PruningSnapshot callbacks write into {folder} (dirpath={self.dirpath!r}), so their files and "
                    "snapshots.md would overwrite each other; give each its own dirpath"
                )
        problem = rebuild_problem(pl_module.net)
        if problem is not None:
            raise ValueError(f"PruningSnapshot cannot write pruned files that reload: {problem}")

    def _due(self, epoch: int) -> bool:
        if self.epochs is not None:
            return epoch in self.epochs
        return epoch % self.every_n_epochs == 0

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "snapshots")

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if not self._due(epoch) or any(row["epoch"] == epoch for row in self.rows):
            return
        size = require_input_size(self.input_size, pl_module, "PruningSnapshot")
        pruned = prune(pl_module.net, round_to=self.round_to)
        estimator = MacEstimator(pruned, size)
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": trainer.global_step,
            "macs": estimator(pruned),
            "params": sum(p.numel() for p in pruned.parameters()),
            **{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        }
        path = self._dir(trainer) / f"snapshot-epoch{epoch:03d}.pt"
        row["path"] = str(path)
        if trainer.is_global_zero:
            save_pruned(pruned, path, metadata={**row, "input_size": size})
        self.rows.append(row)
        self._write_table(trainer)

    def _write_table(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        metrics = sorted({k for row in self.rows for k in row if k.startswith("val/")})
        lines = ["| epoch | step | MACs | params | " + " | ".join(metrics) + " | file |"]
        lines.append("|" + "---:|" * (4 + len(metrics)) + "---|")
        for row in self.rows:
            values = " | ".join(f"{row[m]:.4f}" if m in row else "-" for m in metrics)
            lines.append(
                f"| {row['epoch']} | {row['step']} | {row['macs'] / 1e6:.2f}M | {row['params'] / 1e3:.1f}K | "
                f"{values} | {Path(row['path']).name} |"
            )
        table = "\n".join(lines) + "\n"
        (self._dir(trainer) / "snapshots.md").write_text(table)
        rank_zero_info(f"pruning snapshot (epoch {self.rows[-1]['epoch']}): {self.rows[-1]['path']}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
