"""GateMonitor: sparsity curves, live structures, the MACs surgery would give, gate histograms and PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from sss_lightning.flops import MacEstimator
from sss_lightning.gates import GATE_KINDS, iter_gates, sparsity
from sss_lightning.stability import ZeroSetTracker
from sss_lightning.surgery import prune

from .input_size import check_input_size, find_input_size
from .legacy_key import ClassNamedLegacyKey
from .protocols import ShrinkAwareModule, check_module


def gate_stats(net: torch.nn.Module) -> dict[str, float]:
    """Zero fraction per kind, per stage (first component of the gate's path) and overall; live counts."""
    summary = sparsity(net)
    stats = {f"gates/zero_frac/{k}": summary[k] for k in (*GATE_KINDS, "overall") if k in summary}
    stats.update({f"gates/alive/{k}": summary[f"{k}_alive"] for k in GATE_KINDS if k in summary})
    zeros: dict[str, list[int]] = {}
    for info in iter_gates(net):
        stage = info.name.split(".")[0]
        counts = zeros.setdefault(stage, [0, 0])
        counts[0] += int((info.module.scale == 0).sum())
        counts[1] += info.module.num_structures
    stats.update({f"gates/zero_frac_stage/{stage}": z / n for stage, (z, n) in zeros.items()})
    return stats


class GateMonitor(ClassNamedLegacyKey, Callback):
    """Logs what SSS is selecting, to any Lightning logger, and draws it as PNGs for people without W&B.

    Every ``log_every_n_steps`` optimizer steps: the fraction of exactly-zero gates per kind, per stage and
    overall, the number of live structures, and the MACs of the network surgery would produce now
    (``gates/macs`` and ``gates/macs_ratio``; :class:`~sss_lightning.flops.MacEstimator` on a pruned copy,
    about 30 ms for a ResNet-56). Every epoch: gate value histograms (``wandb.Histogram`` with a
    ``WandbLogger``) and, on rank zero, ``sparsity.png`` (curves) and ``gate_heatmap.png`` (one row per
    gated layer) in ``dirpath`` (default: ``<default_root_dir>/gate_plots``).

    Selection stability (:class:`~sss_lightning.stability.ZeroSetTracker`, checked after every step):
    ``gates/churn`` at each epoch end, the number of gate entries that switched between zero and non-zero
    during the epoch, and at the end of fit ``gates/stable_zero_fraction``, the fraction of the final zero
    gates that stayed zero over the last ``stable_window`` of the steps (also in :attr:`stability`, and
    drawn in ``churn.png``).

    The module needs ``net`` and ``shrunk_gates``
    (:class:`~sss_lightning.callbacks.protocols.ShrinkAwareModule`; SSSModule has both). Several monitors
    can run in one Trainer (e.g. a fine and a coarse logging interval, with their own ``dirpath``): a
    checkpoint keeps each one's curves under its :attr:`state_key` (class name, ``log_every_n_steps``,
    ``dirpath``, ``stable_window``), so resume with the same arguments to continue them.

    Args:
        log_every_n_steps: logging interval in optimizer steps.
        input_size: ``(C, H, W)`` for the MACs curve; default: the shape the module recorded.
        dirpath: folder of the PNG plots; ``plots=False`` writes none.
        stable_window: the final fraction of the steps over which ``gates/stable_zero_fraction`` is taken.
    """

    def __init__(
        self,
        log_every_n_steps: int = 50,
        input_size: list[int] | None = None,
        dirpath: str | None = None,
        plots: bool = True,
        stable_window: float = 0.1,
    ) -> None:
        if isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(f"log_every_n_steps must be a positive int, got {log_every_n_steps!r}")
        if isinstance(stable_window, bool) or not isinstance(stable_window, (int, float)) or not 0 < stable_window <= 1:
            raise ValueError(
                f"stable_window must be a fraction of the run in (0, 1], got {stable_window!r}; 0.1 means the last 10%"
            )
        self.stable_window = float(stable_window)
        self.tracker = ZeroSetTracker()
        self.churn: list[dict[str, float]] = []
        self.stability: dict[str, float | None] = {}
        self.log_every_n_steps = log_every_n_steps
        self.input_size = check_input_size(input_size)
        self.dirpath = dirpath
        self.plots = plots
        self.history: list[dict[str, float]] = []
        self._estimator: MacEstimator | None = None
        self._full_macs = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            log_every_n_steps=self.log_every_n_steps, dirpath=self.dirpath, stable_window=self.stable_window
        )

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        check_module(pl_module, ShrinkAwareModule, "GateMonitor")
        if not self.plots:
            return
        folder = self.plot_dir(trainer).absolute()
        for other in trainer.callbacks:
            if isinstance(other, GateMonitor) and other is not self and other.plots:
                if other.plot_dir(trainer).absolute() == folder:
                    raise ValueError(
                        f"two GateMonitor callbacks draw their plots into {folder} (dirpath={self.dirpath!r}), so "
                        "they would overwrite each other; give each its own dirpath, or plots=False to all but one"
                    )

    def _macs(self, pl_module: L.LightningModule) -> dict[str, float]:
        if self._estimator is None:
            size = find_input_size(self.input_size, pl_module)
            if size is None:
                return {}  # no MACs curve without an input size; the other curves still are logged
            self._estimator = MacEstimator(pl_module.net, size)
            self._full_macs = self._estimator(pl_module.net)
        macs = self._estimator(prune(pl_module.net))
        return {"gates/macs": float(macs), "gates/macs_ratio": macs / self._full_macs}

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        stats = {**gate_stats(pl_module.net), **self._macs(pl_module)}
        self.history.append({"step": float(trainer.global_step), "epoch": float(trainer.current_epoch), **stats})
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=trainer.global_step)
        return stats

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not list(iter_gates(pl_module.net)):
            raise ValueError("GateMonitor: the network has no gates to monitor; remove GateMonitor or add gates")

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step != self.tracker.step:
            self.tracker.update(pl_module.net, step, pl_module.shrunk_gates)
        if step % self.log_every_n_steps == 0 and (not self.history or self.history[-1]["step"] != step):
            self._record(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        churn = {"epoch": float(trainer.current_epoch), "gates/churn": float(self.tracker.take_flips())}
        self.churn.append(churn)
        for logger in trainer.loggers:
            logger.log_metrics({"gates/churn": churn["gates/churn"]}, step=trainer.global_step)
        if not list(iter_gates(pl_module.net)):
            return  # already replaced by its pruned form (fine-tuning)
        if not self.history or self.history[-1]["step"] != trainer.global_step:
            self._record(trainer, pl_module)
        self._log_histograms(trainer, pl_module)
        if self.plots:
            self._write_plots(trainer, pl_module)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.global_step
        since = total - max(1, round(self.stable_window * total))
        self.stability = {
            "stable_zero_fraction": self.tracker.stable_fraction(since),
            "final_zeros": float(self.tracker.zeros()),
            "window_start_step": float(since),
        }
        if self.stability["stable_zero_fraction"] is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"gates/stable_zero_fraction": self.stability["stable_zero_fraction"]}, step=total)

    @rank_zero_only
    def _log_histograms(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        import wandb

        values: dict[str, list[torch.Tensor]] = {}
        for info in iter_gates(pl_module.net):
            values.setdefault(info.kind, []).append(info.module.scale.detach().cpu().flatten())
        hists = {f"gates/hist/{kind}": wandb.Histogram(torch.cat(v).numpy()) for kind, v in values.items()}
        for logger in wandb_loggers:
            logger.log_metrics(hists, step=trainer.global_step)

    def plot_dir(self, trainer: L.Trainer) -> Path:
        """The folder of the PNG plots: ``dirpath``, default ``<default_root_dir>/gate_plots``."""
        return Path(self.dirpath or Path(trainer.default_root_dir) / "gate_plots")

    @rank_zero_only
    def _write_plots(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        out = self.plot_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)

        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [h["step"] for h in self.history]
        for key in sorted({k for h in self.history for k in h if k.startswith("gates/zero_frac/")}):
            ax.plot(steps, [h.get(key, np.nan) for h in self.history], label=key.rsplit("/", 1)[-1])
        if any("gates/macs_ratio" in h for h in self.history):
            ax.plot(steps, [h.get("gates/macs_ratio", np.nan) for h in self.history], "k--", label="MACs / full")
        ax.set(xlabel="optimizer step", ylabel="fraction", ylim=(-0.02, 1.02), title="Gates at exactly zero")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sparsity.png", dpi=120)
        plt.close(fig)

        gates = list(iter_gates(pl_module.net))
        width = max(info.module.num_structures for info in gates)
        grid = np.full((len(gates), width), np.nan)
        for row, info in enumerate(gates):
            values = info.module.scale.detach().cpu().float().numpy()
            grid[row, : values.size] = values
        fig, ax = plt.subplots(figsize=(8, max(3.0, 0.18 * len(gates) + 1.5)))
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, interpolation="nearest")
        zeros = np.argwhere(grid == 0)
        ax.scatter(zeros[:, 1], zeros[:, 0], marker="s", s=6, c="red", label="exactly 0")
        ax.set_yticks(range(len(gates)), [f"{i.name} ({i.kind})" for i in gates], fontsize=6)
        ax.set(xlabel="structure index", title=f"Gate values after epoch {trainer.current_epoch + 1}")
        ax.legend(loc="upper right", fontsize=7)
        fig.colorbar(image, ax=ax, label="gate value")
        fig.tight_layout()
        fig.savefig(out / "gate_heatmap.png", dpi=120)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar([int(c["epoch"]) + 1 for c in self.churn], [c["gates/churn"] for c in self.churn])
        ax.set(xlabel="epoch", ylabel="zero/non-zero switches", title="Selection churn per epoch")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(out / "churn.png", dpi=120)
        plt.close(fig)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [dict(h) for h in self.history],
            "churn": [dict(c) for c in self.churn],
            "tracker": self.tracker.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.churn = [dict(c) for c in state_dict.get("churn", [])]
        self.tracker.load_state_dict(state_dict.get("tracker", {}))
