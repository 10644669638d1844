"""MagnitudePruning: the baselines' prune-then-fine-tune step, on the same surgery as SSS."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from sss_lightning.baselines import Criterion, select_channels

from .surgery import StructuralSurgery


class MagnitudePruning(StructuralSurgery):
    """Remove the ``amount`` fraction of gated channels with the lowest scores, then cut the network and
    (with ``finetune_epochs``) fine-tune it: Network Slimming with ``criterion="bn_scale"`` (after training
    :class:`~sss_lightning.baselines.NetworkSlimming`), Li et al.'s filter pruning with
    ``criterion="filter_l1"``. The decision is written into the channel gates, so surgery, MACs reports,
    the saved pruned model and fine-tuning are :class:`StructuralSurgery`'s, and so is what the module needs
    (:class:`~sss_lightning.callbacks.protocols.ReshapableModule`). Its :attr:`state_key` adds
    ``criterion``, ``amount`` and ``scope`` to StructuralSurgery's.

    Args:
        criterion: ``"bn_scale"`` (|BN scale|) or ``"filter_l1"`` (L1 norm of the producing conv filter).
        amount: fraction of the gated channels to remove, in [0, 1).
        scope: ``"global"`` (one threshold over all layers) or ``"layer"`` (the same fraction in each).
        **kwargs: :class:`StructuralSurgery`'s arguments (``finetune_epochs``, ``finetune_lr``, ...).
    """

    def __init__(self, criterion: Criterion, amount: float, scope: str = "global", **kwargs) -> None:
        if criterion not in ("bn_scale", "filter_l1"):
            raise ValueError(f"criterion must be 'bn_scale' (Network Slimming) or 'filter_l1', got {criterion!r}")
        if not 0 <= amount < 1:
            raise ValueError(f"amount (the fraction of channels to remove) must be in [0, 1), got {amount!r}")
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        super().__init__(**kwargs)
        self.criterion, self.amount, self.scope = criterion, amount, scope

    @override
    def _state_key_arguments(self) -> dict[str, Any]:
        own = {"criterion": self.criterion, "amount": self.amount, "scope": self.scope}
        return {**own, **super()._state_key_arguments()}

    @override
    def _operate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if not self.done:
            removed = select_channels(pl_module.net, self.criterion, self.amount, self.scope)
            rank_zero_info(f"MagnitudePruning({self.criterion}, {self.scope}): {removed:.1%} of gated channels removed")
        return super()._operate(trainer, pl_module)
