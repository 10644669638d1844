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
from sss_lightning.io import save_pruned
from sss_lightning.surgery import prune


def smallest_gates(net: torch.nn.Module, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` smallest gate values with their ``path[index]``, for a report when none reached zero."""
    values = [
        (f"{info.name}[{i}]", float(v)) for info in iter_gates(net) for i, v in enumerate(info.module.scale.detach())
    ]
    return sorted(values, key=lambda item: abs(item[1]))[:k]


class StructuralSurgery(Callback):
    """Replace ``pl_module.net`` by ``prune(pl_module.net)`` when ``fit`` ends, report and save it.

    Prints the MACs/params table before/after (per stage too), logs the numbers, and writes the pruned
    model with :func:`sss_lightning.io.save_pruned` (registry models) to ``dirpath/filename``.

    Args:
        dirpath: folder of the pruned model; default: the trainer's ``default_root_dir``.
        filename: file name of the pruned model.
        input_size: ``(C, H, W)`` for FLOPs; default: the shape the module recorded from its training batches.
    """

    def __init__(
        self, dirpath: str | None = None, filename: str = "pruned.pt", input_size: list[int] | None = None
    ) -> None:
        if not filename or os.sep in filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}; put folders in dirpath")
        if input_size is not None and (len(input_size) != 3 or any(int(s) < 1 for s in input_size)):
            raise ValueError(f"input_size must be (C, H, W) with positive sizes, got {input_size!r}")
        self.dirpath = dirpath
        self.filename = filename
        self.input_size = list(input_size) if input_size is not None else None
        self.saved_path: Path | None = None
        self.report: dict[str, float] = {}

    def _input_size(self, pl_module: L.LightningModule) -> list[int]:
        if self.input_size is not None:
            return self.input_size
        x = pl_module.example_input_array
        if not isinstance(x, torch.Tensor):
            raise ValueError(
                "StructuralSurgery needs the input size for FLOPs: set input_size: [C, H, W], or let the "
                "module see a training batch (SSSModule records its shape)"
            )
        return list(x.shape[1:])

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        if not list(iter_gates(net)):
            rank_zero_warn("StructuralSurgery: the network has no gates (already pruned?); nothing to do")
            return
        if not any((info.module.scale == 0).any() for info in iter_gates(net)):
            listed = ", ".join(f"{name}={value:.3g}" for name, value in smallest_gates(net))
            rank_zero_warn(
                "StructuralSurgery: no gate reached exactly zero, so no structure is removed (gates are only "
                f"folded into the weights). Smallest gates: {listed}. Raise gamma or train longer to prune."
            )
        size = self._input_size(pl_module)
        pruned = prune(net)
        before, after = count_flops(net, size), count_flops(pruned, size)
        pl_module.net = pruned.to(pl_module.device)
        self.report = comparison_dict(before, after)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self._save(trainer, pruned, {**self.report, **metrics, "input_size": size})
        rank_zero_info("\nStructural surgery (MACs counted by fvcore)\n" + format_comparison(before, after))
        if self.saved_path is not None:
            rank_zero_info(f"pruned model: {self.saved_path} (reload with sss_lightning.load_pruned)")
        for logger in trainer.loggers:
            logger.log_metrics({f"surgery/{k}": v for k, v in self.report.items()}, step=trainer.global_step)

    def _save(self, trainer: L.Trainer, pruned: torch.nn.Module, metadata: dict[str, Any]) -> None:
        if getattr(pruned, "sss_arch", None) is None:
            rank_zero_warn("StructuralSurgery: the network is not a registry model, so the pruned model is not saved")
            return
        path = Path(self.dirpath or trainer.default_root_dir) / self.filename
        if trainer.is_global_zero:
            save_pruned(pruned, path, metadata=metadata)
        self.saved_path = path

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"report": dict(self.report), "saved_path": str(self.saved_path) if self.saved_path else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.report = dict(state_dict.get("report", {}))
        saved = state_dict.get("saved_path")
        self.saved_path = Path(saved) if saved else None
