"""In-training shrink: swap a live gated network for its sliced form and keep the optimizer's state.

Surgery with ``fold_gates=False`` only *slices*: every parameter of the smaller network is a sub-tensor of
the parameter with the same name in the gated one (zero structures cut, surviving gates kept). Which
entries survive is read off the surgery itself rather than re-derived: :func:`slice_sources` runs it on a
float64 copy whose parameters hold their own flat positions, so any architecture that surgery can cut
(``sss_prune()`` plug-ins included) gets an exact index map, and one that computes instead of slicing is
rejected. :func:`carry_optimizer_state` then indexes momentum buffers, and copies group hyper-parameters
and the LR schedule's position, into the optimizer rebuilt for the smaller network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .gates import Gate
from .surgery import SurgeryError, prune

__all__ = ["slice_sources", "carry_optimizer_state", "carry_scheduler_state", "rewrap_distributed"]


def _tag(model: nn.Module) -> nn.Module:
    """A float64 CPU copy whose parameters hold ``1 + flat index``; gate entries keep their sign (0 stays 0),
    which is all surgery's decisions read, so the copy is cut exactly as ``model`` is."""
    tagged = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    gate_params = {id(m.scale) for m in tagged.modules() if isinstance(m, Gate)}
    with torch.no_grad():
        for p in tagged.parameters():
            ids = torch.arange(1, p.numel() + 1, dtype=torch.float64).view_as(p)
            p.copy_(ids * p.sign() if id(p) in gate_params else ids)
    return tagged


def slice_sources(model: nn.Module) -> tuple[nn.Module, dict[str, Tensor]]:
    """``prune(model, fold_gates=False)`` and, per parameter name of the result, the flat indices of the
    entries of ``model``'s same-named parameter it holds (``-1``: a zero gate kept only so that a layer
    keeps one channel; it has no state worth carrying)."""
    if any(p.numel() >= 2**53 for p in model.parameters()):
        raise ValueError("a parameter with 2**53 or more entries cannot be index-tagged in float64")
    sliced = prune(model, fold_gates=False)
    tagged = dict(prune(_tag(model), fold_gates=False).named_parameters())
    old = dict(model.named_parameters())
    sources: dict[str, Tensor] = {}
    for name, p in sliced.named_parameters():
        tag = tagged.get(name)
        if tag is None or name not in old or tag.shape != p.shape:
            raise SurgeryError(f"surgery renamed or reshaped parameter {name!r}; in-training shrink needs slicing")
        flat = tag.detach().flatten().abs()
        if not torch.equal(flat, flat.round()) or (flat.numel() and flat.max() > old[name].numel()):
            raise SurgeryError(
                f"surgery computed parameter {name!r} instead of slicing it, so its optimizer state cannot be "
                "carried over; the owner's sss_prune(fold_gates=False) must only cut, never scale or fold"
            )
        index = (flat.long() - 1).to(p.device)
        picked = old[name].detach().flatten()[index.clamp(min=0)].view_as(p)
        if not torch.equal(torch.where(index.view_as(p) >= 0, picked, p.detach()), p.detach()):
            raise SurgeryError(f"parameter {name!r} is not the slice of {name!r} its surgery reports")
        sources[name] = index
    return sliced, sources


def _by_name(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {g["name"]: g for g in groups if "name" in g}


def carry_optimizer_state(
    old: Optimizer,
    new: Optimizer,
    old_params: Mapping[str, Tensor],
    new_params: Mapping[str, Tensor],
    sources: Mapping[str, Tensor],
) -> None:
    """Fill ``new`` (built over ``new_params``) from ``old`` (over ``old_params``): per-parameter state is
    indexed by ``sources`` (tensors shaped like the parameter; entries with source ``-1`` start at 0), and
    every hyper-parameter of a group (learning rate, gamma, ...) is copied from the old group of the same
    ``name``, so a schedule or a controller that changed them keeps its values."""
    old_groups = _by_name(old.param_groups)
    for group in new.param_groups:
        previous = old_groups.get(group.get("name"))
        if previous is not None:
            group.update({k: v for k, v in previous.items() if k != "params"})
    held = {id(p) for group in new.param_groups for p in group["params"]}
    for name, p in new_params.items():
        if name not in sources or id(p) not in held:  # e.g. a frozen gate: not optimized, no state
            continue
        state = old.state.get(old_params[name])
        if not state:
            continue
        index = sources[name].to(p.device)
        keep = (index >= 0).view_as(p)
        carried: dict[str, Any] = {}
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == old_params[name].shape:
                value = value.flatten()[index.clamp(min=0)].view_as(p)
                value = torch.where(keep, value, torch.zeros_like(value))
            elif isinstance(value, Tensor):
                value = value.clone()
            carried[key] = value
        new.state[p] = carried


def carry_scheduler_state(old: LRScheduler, new: LRScheduler, old_optimizer: Optimizer) -> None:
    """Continue ``new`` where ``old`` was: same step count, per-group base/last LRs matched by group name."""
    state = old.state_dict()
    names = [g.get("name") for g in old_optimizer.param_groups]
    for key in ("base_lrs", "_last_lr"):
        if isinstance(state.get(key), list) and len(state[key]) == len(names):
            by_name = dict(zip(names, state[key], strict=True))
            groups = new.optimizer.param_groups
            current = getattr(new, key, None) or [g["lr"] for g in groups]
            state[key] = [by_name.get(g.get("name"), v) for g, v in zip(groups, current, strict=True)]
    new.load_state_dict(state)


def rewrap_distributed(trainer: Any) -> None:
    """Under DDP, wrap the LightningModule anew after its network changed: DDP registered the old
    parameters for gradient all-reduce. Every rank must call this at the same step (shrink decides from
    the gates, which DDP keeps identical on all ranks)."""
    strategy = trainer.strategy
    module = strategy.lightning_module
    if strategy.model is module:
        return
    if not isinstance(strategy.model, DistributedDataParallel) or not hasattr(strategy, "configure_ddp"):
        raise RuntimeError(
            f"in-training shrink supports one device and DDP, not {type(strategy).__name__} (it wraps the model in "
            f"{type(strategy.model).__name__}); use strategy='ddp', or shrink after fit with StructuralSurgery"
        )
    layer_sync = getattr(strategy, "_layer_sync", None)
    strategy.model = layer_sync.apply(module) if layer_sync is not None else module
    strategy.configure_ddp()
