"""FreezeGates: stop the gate search once the structure has settled or a MACs budget is met."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from sss_lightning.flops import MacEstimator
from sss_lightning.gates import iter_gates
from sss_lightning.surgery import prune

from .input_size import check_input_size, require_input_size
from .legacy_key import ClassNamedLegacyKey
from .protocols import SettleableModule, check_module


class FreezeGates(ClassNamedLegacyKey, Callback):
    """Freeze every gate (the module's :meth:`~sss_lightning.module.SSSModule.settle`: its gate groups are
    frozen and take no gradient) at the end of an epoch when

    * the set of exactly-zero gates has not changed for ``patience`` epochs, or
    * the network surgery would produce costs at most ``target_macs`` (absolute MACs if > 1, else a
      fraction of the unpruned network's MACs).

    The weights keep training with the structure fixed. The frozen state is checkpointed (the optimizer's
    gate groups and the module's state dict) and holds on resume.
    """

    def __init__(
        self, patience: int | None = 3, target_macs: float | None = None, input_size: list[int] | None = None
    ) -> None:
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be a positive int or None, got {patience!r}")
        if target_macs is not None and not target_macs > 0:
            raise ValueError(f"target_macs must be > 0 (MACs, or a fraction of the full model's), got {target_macs!r}")
        if patience is None and target_macs is None:
            raise ValueError("FreezeGates needs patience or target_macs (or both); with neither it never freezes")
        self.patience = patience
        self.target_macs = target_macs
        self.input_size = check_input_size(input_size)
        self.frozen_at: int | None = None
        self.stable_epochs = 0
        self._last_pattern: list[bool] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(patience=self.patience, target_macs=self.target_macs)

    def _pattern(self, net: torch.nn.Module) -> list[bool]:
        return [bool(v) for info in iter_gates(net) for v in (info.module.scale == 0).flatten()]

    def _budget_met(self, pl_module: L.LightningModule) -> bool:
        if self.target_macs is None:
            return False
        size = require_input_size(self.input_size, pl_module, "FreezeGates(target_macs=...)")
        estimator = MacEstimator(pl_module.net, size)
        macs = estimator(prune(pl_module.net))
        target = self.target_macs if self.target_macs > 1 else self.target_macs * estimator(pl_module.net)
        return macs <= target

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_module(pl_module, SettleableModule, "FreezeGates")

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.frozen_at is not None or not list(iter_gates(pl_module.net)):
            return
        pattern = self._pattern(pl_module.net)
        self.stable_epochs = self.stable_epochs + 1 if pattern == self._last_pattern else 0
        self._last_pattern = pattern
        settled = self.patience is not None and self.stable_epochs >= self.patience
        if settled or self._budget_met(pl_module):
            self.frozen_at = trainer.current_epoch + 1
            reason = f"zero pattern unchanged for {self.stable_epochs} epochs" if settled else "MACs budget met"
            pl_module.settle(f"FreezeGates after epoch {self.frozen_at} ({reason})")
            for logger in trainer.loggers:
                logger.log_metrics({"gates/frozen": 1.0}, step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"frozen_at": self.frozen_at, "stable_epochs": self.stable_epochs, "last_pattern": self._last_pattern}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frozen_at = state_dict.get("frozen_at")
        self.stable_epochs = int(state_dict.get("stable_epochs", 0))
        self._last_pattern = state_dict.get("last_pattern")
