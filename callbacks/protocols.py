"""What the callbacks of sss-lightning need from the LightningModule they are attached to.

Each callback names one of these Protocols and checks it in ``setup`` with :func:`check_module`, so a
module that lacks a member fails before any training, with a ``TypeError`` that names the member and the
fix, instead of an ``AttributeError`` deep inside a training hook. :class:`~sss_lightning.module.SSSModule`
(and so every subclass, e.g. ``SSSClassifier``) satisfies all of them. The Protocols are
``runtime_checkable``: ``isinstance(module, ReshapableModule)`` tells whether a module has the members.

* :class:`GatedModule` (``net``, ``example_input_array``): :class:`~sss_lightning.callbacks.PruningSnapshot`.
* :class:`ShrinkAwareModule` (and ``shrunk_gates``): :class:`~sss_lightning.callbacks.GateMonitor`.
* :class:`ReshapableModule` (and ``reshaped``, ``replace_network(net)``, ``network_as_built()``):
  :class:`~sss_lightning.callbacks.StructuralSurgery` and :class:`~sss_lightning.callbacks.MagnitudePruning`.
* :class:`FineTunableModule` (and ``prepare_finetune(lr, total_steps)``): the same two with ``finetune_epochs > 0``.
* :class:`ShrinkableModule` (and ``shrink()``): for :class:`~sss_lightning.callbacks.InTrainingShrink`.
* :class:`SettleableModule` (and ``settle(reason)``, ``settled_by``): for
  :class:`~sss_lightning.callbacks.FreezeGates` and :class:`~sss_lightning.callbacks.MacsBudget`.

:class:`~sss_lightning.callbacks.FitSummary` reads the gates of the whole module and needs nothing more
than a LightningModule. ``StructuralSurgery(evaluate=True)`` also uses a ``val_acc`` torchmetrics metric
when the module has one (without it, the pruned network's evaluation is skipped with a warning).
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = [
    "FineTunableModule",
    "GatedModule",
    "ReshapableModule",
    "ShrinkAwareModule",
    "SettleableModule",
    "ShrinkableModule",
    "check_module",
    "protocol_members",
]


@runtime_checkable
class GatedModule(Protocol):
    """A LightningModule whose gated network is ``net``.

    ``example_input_array`` (every LightningModule has it, ``None`` until set) gives the input shape the
    MACs are counted at when a callback gets no ``input_size``: SSSModule sets it from its ``input_size``
    argument, else from the first training batch.
    """

    net: nn.Module
    example_input_array: Any


@runtime_checkable
class ShrinkAwareModule(GatedModule, Protocol):
    """A :class:`GatedModule` that says where the entries of its gates were before an in-training shrink."""

    shrunk_gates: dict[str, Tensor]


@runtime_checkable
class ReshapableModule(GatedModule, Protocol):
    """A :class:`GatedModule` whose network can be replaced by its pruned form."""

    @property
    def reshaped(self) -> bool:
        """Whether ``net`` was already replaced by a smaller network (in-training shrink or surgery)."""
        ...

    def replace_network(self, net: nn.Module) -> None:
        """Swap in the pruned network (on the module's device); checkpoints then record its architecture."""
        ...

    def network_as_built(self) -> nn.Module:
        """The network's structure as the module built it, before any reshaping (for MACs reports)."""
        ...


@runtime_checkable
class FineTunableModule(ReshapableModule, Protocol):
    """A :class:`ReshapableModule` that fine-tunes its replaced network with a fresh optimizer."""

    def prepare_finetune(self, lr: float, total_steps: int) -> None:
        """Make the next ``configure_optimizers`` build the fine-tuning optimizer over ``net`` only."""
        ...


@runtime_checkable
class ShrinkableModule(GatedModule, Protocol):
    """A :class:`GatedModule` that slices its zero structures out of ``net`` in the middle of ``fit``."""

    def shrink(self) -> dict[str, int]:
        """Replace ``net`` by its sliced form and rebuild the optimizer; returns what was removed."""
        ...


@runtime_checkable
class SettleableModule(GatedModule, Protocol):
    """A :class:`GatedModule` whose structure a callback can fix: every gate frozen from then on."""

    settled_by: str | None
    """The callback that fixes the structure itself (the module's own ``settle_at`` then stands aside)."""

    def settle(self, reason: str) -> None:
        """Freeze every gate now (optimizer state included, so a checkpoint keeps it); ``reason`` is logged."""
        ...


# What to define, for the error message of a module that lacks a member.
MEMBER_HELP = {
    "net": "`net`, the gated nn.Module that is trained and pruned",
    "example_input_array": "`example_input_array`, a (1, C, H, W) tensor of the input shape (or None)",
    "shrunk_gates": "`shrunk_gates`, a dict from each gate's path to its entries' positions before an in-training "
    "shrink ({} when the network is never shrunk)",
    "reshaped": "`reshaped`, a bool property: whether `net` was replaced by a smaller network",
    "replace_network": "`replace_network(net)`, which swaps in the pruned network",
    "network_as_built": "`network_as_built()`, which returns the network's structure before any reshaping",
    "prepare_finetune": "`prepare_finetune(lr, total_steps)`, which makes the next configure_optimizers build "
    "the fine-tuning optimizer",
    "shrink": "`shrink()`, which slices the zero structures out of `net` mid-fit",
    "settled_by": "`settled_by`, the name of the callback that fixes the structure (None: the module's own "
    "settle_at does)",
    "settle": "`settle(reason)`, which freezes every gate from now on",
}


def protocol_members(protocol: type) -> list[str]:
    """The names a Protocol declares (its own and its bases'), data members first, in declaration order."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or cls.__module__ == "typing":
            continue
        for name in (*cls.__dict__.get("__annotations__", {}), *vars(cls)):
            if not name.startswith("_") and name not in names:
                names.append(name)
    return names


def _is_method(protocol: type, name: str) -> bool:
    for cls in protocol.__mro__:
        if name in vars(cls):
            return inspect.isfunction(vars(cls)[name])
    return False


def check_module(pl_module: Any, protocol: type, owner: str) -> None:
    """Raise a ``TypeError`` naming the first member of ``protocol`` that ``pl_module`` lacks, and the fix.

    ``owner`` is the callback's name in the message. ``net`` must also be an ``nn.Module``.
    """
    kind = type(pl_module).__name__
    for name in protocol_members(protocol):
        help_text = MEMBER_HELP.get(name, f"`{name}`")
        present = hasattr(pl_module, name)
        if present and _is_method(protocol, name) and not callable(getattr(pl_module, name)):
            present = False
        if not present:
            raise TypeError(
                f"{owner} needs a LightningModule with {help_text}; {kind} has no {name!r}. Fix: subclass "
                f"sss_lightning.SSSModule (or SSSClassifier), or define {name} on {kind} "
                f"(see sss_lightning.callbacks.protocols.{protocol.__name__})"
            )
    net = pl_module.net
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"{owner} needs `net` to be the gated nn.Module, but {kind}.net is {net!r}. Fix: subclass "
            f"sss_lightning.SSSModule (it keeps the network in net), or assign the network to self.net"
        )
