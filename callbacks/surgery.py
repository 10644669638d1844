"""StructuralSurgery: at the end of ``fit``, turn the gated network into its physically smaller form."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from sss_lightning.flops import comparison_dict, count_flops, format_comparison
from sss_lightning.gates import iter_gates
from sss_lightning.io import rebuild_problem, save_pruned
from sss_lightning.surgery import check_round_to, prune

from .input_size import check_input_size, require_input_size
from .legacy_key import ClassNamedLegacyKey
from .protocols import FineTunableModule, ReshapableModule, check_module


def smallest_gates(net: torch.nn.Module, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` smallest gate values with their ``path[index]``, for a report when none reached zero."""
    values = [
        (f"{info.name}[{i}]", float(v)) for info in iter_gates(net) for i, v in enumerate(info.module.scale.detach())
    ]
    return sorted(values, key=lambda item: abs(item[1]))[:k]


def _batch_limit(limit: int | float, loader: Any) -> float:
    """How many batches of ``loader`` the Trainer's ``limit_val_batches`` allows (int: a count, float: a
    fraction of the loader, as Lightning reads it)."""
    if isinstance(limit, int):
        return limit
    try:
        length = len(loader)
    except TypeError:  # an iterable dataset: only 1.0 (all) or a count is meaningful
        return float("inf") if limit >= 1.0 else 0
    return length if limit >= 1.0 else int(length * limit)


def _default_dirpath(trainer: L.Trainer) -> str:
    """Where the pruned model goes without ``dirpath``: the run's log folder as Lightning's ModelCheckpoint
    chooses it (``trainer.log_dir``: e.g. ``lightning_logs/version_3`` or the logger's save_dir), else the
    trainer's ``default_root_dir``; never whatever the current directory happens to be."""
    log_dir = trainer.log_dir if trainer.loggers else None
    return log_dir or trainer.default_root_dir


class StructuralSurgery(ClassNamedLegacyKey, Callback):
    """Replace ``pl_module.net`` by ``prune(pl_module.net)``, report and save it.

    Without fine-tuning, surgery runs when ``fit`` ends. With ``finetune_epochs=k`` it runs at the start
    of the last ``k`` epochs instead, and those epochs train the pruned network with a fresh optimizer
    that holds only its parameters (Nesterov SGD, cosine from ``finetune_lr``, default: the weights'
    current learning rate); the regular validation loop then evaluates the pruned network. Either way
    it prints the MACs/params table before/after (per stage too), logs the numbers under ``surgery/``,
    and writes the pruned model to ``dirpath/filename`` (reloadable in a fresh process with ``load_pruned``;
    a network without a construction record is refused when the fit is set up, with what to add).

    The module needs ``net``, ``reshaped``, ``replace_network(net)`` and ``network_as_built()``
    (:class:`~sss_lightning.callbacks.protocols.ReshapableModule`), and with ``finetune_epochs`` also
    ``prepare_finetune(lr, total_steps)`` (:class:`~sss_lightning.callbacks.protocols.FineTunableModule`);
    SSSModule has them all, and a module without one is refused when the fit is set up. A checkpoint keeps
    this callback's state under its :attr:`state_key` (class name, ``dirpath``, ``filename``,
    ``finetune_epochs``, ``round_to``).

    Args:
        dirpath: folder of the pruned model; default: the run's log folder (``trainer.log_dir``, as
            ModelCheckpoint), else the trainer's ``default_root_dir``.
        filename: file name of the pruned model; ``None`` keeps the pruned network in memory only.
        input_size: ``(C, H, W)`` for FLOPs; default: the shape the module recorded from its training batches.
        finetune_epochs: epochs at the end of ``max_epochs`` that fine-tune the pruned network.
        finetune_lr: learning rate of the fine-tuning optimizer.
        evaluate: without fine-tuning, run the pruned network over the validation set and log
            ``surgery/val_acc`` (a check of surgery's exactness on real data).
        round_to: keep every cut layer's channel count a multiple of this (zero-gated channels fill up,
            outputs stay exact): 8 or 16 run faster on oneDNN/ONNX Runtime than odd widths.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "pruned.pt",
        input_size: list[int] | None = None,
        finetune_epochs: int = 0,
        finetune_lr: float | None = None,
        evaluate: bool = True,
        round_to: int = 1,
    ) -> None:
        if filename is not None and (not isinstance(filename, str) or not filename or os.sep in filename):
            raise ValueError(
                f"filename must be a plain file name (or None: no file), got {filename!r}; put folders in dirpath"
            )
        if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an int >= 0, got {finetune_epochs!r}")
        if finetune_lr is not None and not finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, got {finetune_lr!r}")
        self.dirpath = dirpath
        self.filename = filename
        self.input_size = check_input_size(input_size)
        self.finetune_epochs = finetune_epochs
        self.finetune_lr = finetune_lr
        self.evaluate = evaluate
        self.round_to = check_round_to(round_to)
        self.saved_path: Path | None = None
        self.report: dict[str, float] = {}
        self.done = False
        self._finetune_now = False  # set at fit start: fast_dev_run smoke tests do surgery at fit end

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self._state_key_arguments())

    def _state_key_arguments(self) -> dict[str, Any]:
        """The constructor arguments that tell two instances apart in a checkpoint."""
        return {
            "dirpath": self.dirpath,
            "filename": self.filename,
            "finetune_epochs": self.finetune_epochs,
            "round_to": self.round_to,
        }

    def _input_size(self, pl_module: L.LightningModule) -> list[int]:
        return require_input_size(self.input_size, pl_module, type(self).__name__)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        protocol = FineTunableModule if self.finetune_epochs > 0 else ReshapableModule
        check_module(pl_module, protocol, type(self).__name__)
        if self.filename is None:
            return
        problem = rebuild_problem(pl_module.net)
        if problem is not None:
            raise ValueError(
                f"{type(self).__name__} cannot write a pruned file that reloads: {problem}. Or pass filename=None to "
                "keep the pruned network in memory without writing a file"
            )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finetune_now = self.finetune_epochs > 0 and not trainer.fast_dev_run
        if not self._finetune_now:
            return
        if trainer.max_epochs is None or trainer.max_epochs < 0 or trainer.max_epochs <= self.finetune_epochs:
            raise ValueError(
                f"StructuralSurgery(finetune_epochs={self.finetune_epochs}) needs trainer.max_epochs greater than "
                f"it (got {trainer.max_epochs}): surgery runs at epoch max_epochs - finetune_epochs"
            )
        if trainer.world_size > 1:
            raise ValueError(
                "StructuralSurgery fine-tuning swaps the network inside fit, which DDP does not allow; run it on "
                "one device, or set finetune_epochs=0 and fine-tune the saved pruned model in a new run"
            )

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.done or not self._finetune_now or trainer.current_epoch < trainer.max_epochs - self.finetune_epochs:
            return
        self._operate(trainer, pl_module)
        lr = self.finetune_lr or trainer.optimizers[0].param_groups[0]["lr"]
        accumulate = trainer.accumulate_grad_batches
        steps = self.finetune_epochs * max(1, int(trainer.num_training_batches) // accumulate)
        pl_module.prepare_finetune(lr=lr, total_steps=steps)
        trainer.strategy.setup_optimizers(trainer)  # a fresh optimizer over the pruned network only

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        finetuned = self.done
        if not self.done and not self._operate(trainer, pl_module):
            return
        if self.evaluate and not finetuned:
            self._evaluate(trainer, pl_module)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._save(trainer, pl_module.net, {**self.report, **metrics, "input_size": self._input_size(pl_module)})
        if self.saved_path is not None:
            rank_zero_info(f"pruned model: {self.saved_path} (reload with sss_lightning.load_pruned)")

    def _operate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Surgery on the live module; False when there was nothing to operate on."""
        net = pl_module.net
        self.done = True
        if not list(iter_gates(net)):
            rank_zero_warn("StructuralSurgery: the network has no gates (already pruned?); nothing to do")
            return False
        shrunk = pl_module.reshaped  # zero structures were already cut during training
        if not shrunk and not any((info.module.scale == 0).any() for info in iter_gates(net)):
            listed = ", ".join(f"{name}={value:.3g}" for name, value in smallest_gates(net))
            rank_zero_warn(
                "StructuralSurgery: no gate reached exactly zero, so no structure is removed (gates are only "
                f"folded into the weights). Smallest gates: {listed}. Raise gamma or train longer to prune."
            )
        size = self._input_size(pl_module)
        pruned = prune(net, round_to=self.round_to)
        before, after = count_flops(self._as_built(pl_module, net, shrunk), size), count_flops(pruned, size)
        pl_module.replace_network(pruned)
        self.report = comparison_dict(before, after)
        rank_zero_info("\nStructural surgery (MACs counted by fvcore)\n" + format_comparison(before, after))
        for logger in trainer.loggers:
            logger.log_metrics({f"surgery/{k}": v for k, v in self.report.items()}, step=trainer.global_step)
        return True

    @staticmethod
    def _as_built(pl_module: L.LightningModule, net: torch.nn.Module, shrunk: bool) -> torch.nn.Module:
        """The network to report "before" numbers for: after an in-training shrink, the architecture as
        the module built it (else the table would compare the already smaller one with itself)."""
        return pl_module.network_as_built() if shrunk else net

    @torch.no_grad()
    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.val_dataloaders
        metric = getattr(pl_module, "val_acc", None)
        if loaders is None or metric is None:
            rank_zero_warn("StructuralSurgery(evaluate=True): no validation data or val_acc metric to evaluate with")
            return
        metric = metric.clone()
        metric.reset()
        net = pl_module.net
        was_training = net.training
        net.eval()
        seen = 0
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            limit = _batch_limit(trainer.limit_val_batches, loader)
            for i, (x, y) in enumerate(loader):
                if i >= limit:  # the Trainer's limit_val_batches (and fast_dev_run) hold here too
                    break
                metric.update(net(x.to(pl_module.device)), y.to(pl_module.device))
                seen += 1
        net.train(was_training)
        if not seen:
            rank_zero_warn(
                f"StructuralSurgery(evaluate=True): limit_val_batches={trainer.limit_val_batches} leaves no "
                "validation batch to evaluate the pruned network on; raise it or set evaluate=False"
            )
            return
        self.report["val_acc"] = float(metric.compute())
        rank_zero_info(f"pruned network, validation accuracy: {self.report['val_acc']:.4f}")
        for logger in trainer.loggers:
            logger.log_metrics({"surgery/val_acc": self.report["val_acc"]}, step=trainer.global_step)

    def _save(self, trainer: L.Trainer, pruned: torch.nn.Module, metadata: dict[str, Any]) -> None:
        if self.filename is None:
            return
        path = Path(self.dirpath or _default_dirpath(trainer)) / self.filename
        if trainer.is_global_zero:
            save_pruned(pruned, path, metadata=metadata)
        self.saved_path = path

    @override
    def state_dict(self) -> dict[str, Any]:
        saved = str(self.saved_path) if self.saved_path else None
        return {"report": dict(self.report), "saved_path": saved, "done": self.done}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.report = dict(state_dict.get("report", {}))
        self.done = bool(state_dict.get("done", False))
        saved = state_dict.get("saved_path")
        self.saved_path = Path(saved) if saved else None
