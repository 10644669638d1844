"""The (C, H, W) the callbacks count MACs at: given to the callback, else the module's ``example_input_array``
(SSSModule sets it from its ``input_size``, which the command line links from the datamodule, or else from
its first training batch)."""

from __future__ import annotations

import lightning as L
import torch

from sss_lightning.recipe import check_input_size

__all__ = ["check_input_size", "find_input_size", "require_input_size"]


def find_input_size(explicit: list[int] | None, pl_module: L.LightningModule) -> list[int] | None:
    """``explicit`` if given, else the shape of ``pl_module.example_input_array`` (SSSModule records it)."""
    if explicit is not None:
        return explicit
    x = pl_module.example_input_array
    return list(x.shape[1:]) if isinstance(x, torch.Tensor) else None


def require_input_size(explicit: list[int] | None, pl_module: L.LightningModule, owner: str) -> list[int]:
    """:func:`find_input_size`, or a ``ValueError`` that says where to set it (``owner``: the callback's name)."""
    size = find_input_size(explicit, pl_module)
    if size is None:
        raise ValueError(
            f"{owner} needs the input size for MACs: set input_size: [C, H, W] on {owner} or on the model "
            "(SSSModule(input_size=...); the command line takes it from the datamodule's input_size), or use a "
            "module that records the shape of its training batches (SSSModule does)"
        )
    return size
