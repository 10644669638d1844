"""FitSummary: at the end of ``fit``, print the validation accuracy and what SSS selected."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from sss_lightning.gates import GATE_KINDS, sparsity


def format_summary(metrics: dict[str, float], gate_summary: dict[str, float]) -> str:
    """A small text table: final metrics, then zero fraction and live/total structures per gate kind."""
    lines = ["", "SSS fit summary", "---------------"]
    for key in sorted(metrics):
        lines.append(f"{key:<22}{metrics[key]:.4f}")
    for kind in GATE_KINDS:
        if kind in gate_summary:
            alive, total = int(gate_summary[f"{kind}_alive"]), int(gate_summary[f"{kind}_total"])
            lines.append(f"{kind + ' gates':<22}{alive}/{total} alive ({gate_summary[kind]:.1%} exactly zero)")
    if gate_summary:
        lines.append(f"{'all gates':<22}{gate_summary['overall']:.1%} exactly zero")
    return "\n".join(lines)


class FitSummary(Callback):
    """Prints (rank zero) the last validation metrics and the gate sparsity per kind when training ends.

    It runs at ``on_train_end``, before any ``on_fit_end`` surgery replaces the gated network. It reads the
    gates wherever they are in the module, so any LightningModule will do. It keeps no state; its
    :attr:`state_key` (class name and ``prefixes``) tells two summaries apart.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("val/",)) -> None:
        if isinstance(prefixes, str):
            raise TypeError(f"prefixes must be a sequence of strings, got the string {prefixes!r}")
        self.prefixes = tuple(prefixes)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(prefixes=self.prefixes)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefixes)}
        rank_zero_info(format_summary(metrics, sparsity(pl_module)))
