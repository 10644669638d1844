"""InTrainingShrink: make the live network smaller while it trains, so the remaining epochs run faster."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from sss_lightning.gate_groups import structure_fixed
from sss_lightning.gates import iter_gates

from .legacy_key import ClassNamedLegacyKey
from .protocols import ShrinkableModule, check_module


class InTrainingShrink(ClassNamedLegacyKey, Callback):
    """At the start of an epoch, replace the network by its sliced form (:meth:`SSSModule.shrink`): zero
    structures are removed, surviving gates stay, and the optimizer is rebuilt over the surviving
    parameters with their momentum, group settings and LR-schedule position, so the loss continues from
    where it was. Shrinks happen

    * after the gates were frozen (``when_frozen``; by :class:`FreezeGates` or :class:`MacsBudget`): the
      structure is final, so the shrunk run trains exactly as the full-width one would, only faster;
    * at the listed ``epochs`` (counted from 1: ``2`` shrinks before the 2nd epoch): zero structures
      are then final even though their gates could still have come back.

    Works on one device and under DDP (every rank shrinks at the same step and the model is re-wrapped),
    and survives resume: the checkpoint records the shrunk architecture. Logs ``shrink/params``.
    """

    def __init__(self, when_frozen: bool = True, epochs: list[int] | None = None) -> None:
        if epochs is not None and (not epochs or any(isinstance(e, bool) or int(e) < 1 for e in epochs)):
            raise ValueError(f"epochs must be a non-empty list of epoch numbers >= 1, got {epochs!r}")
        if not when_frozen and epochs is None:
            raise ValueError("InTrainingShrink needs when_frozen=True or a list of epochs; with neither it never acts")
        self.when_frozen = when_frozen
        self.epochs = sorted({int(e) for e in epochs}) if epochs is not None else []
        self.history: list[dict[str, int]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(when_frozen=self.when_frozen, epochs=self.epochs)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_module(pl_module, ShrinkableModule, "InTrainingShrink")

    def _due(self, pl_module: L.LightningModule, epoch: int) -> bool:
        gates = [info.module.scale for info in iter_gates(pl_module.net)]
        if not gates or not any(bool((g == 0).any()) for g in gates):
            return False  # nothing to remove
        if epoch in self.epochs:
            return True
        frozen = self.when_frozen and structure_fixed(pl_module.net)
        return frozen and not any(row.get("frozen") for row in self.history)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if any(row["epoch"] == epoch for row in self.history) or not self._due(pl_module, epoch):
            return
        frozen = structure_fixed(pl_module.net)
        counts = pl_module.shrink()
        self.history.append({"epoch": epoch, "step": trainer.global_step, "frozen": frozen, **counts})
        rank_zero_info(
            f"InTrainingShrink: before epoch {epoch}, parameters {counts['params_before']:,} -> "
            f"{counts['params_after']:,}; the optimizer keeps its momentum for every surviving entry"
        )
        for logger in trainer.loggers:
            logger.log_metrics({"shrink/params": float(counts["params_after"])}, step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(row) for row in state_dict.get("history", [])]
