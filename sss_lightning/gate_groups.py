"""The optimizer's gate parameter groups, and the handles that read, freeze and re-penalise them.

:func:`build_param_groups` turns a gated network into the param groups of one APG optimizer: the
weights (weight decay, no L1) and the gates (L1 ``gamma``, no weight decay), one group for all gates or
one per gate with its own ``gamma``. Every gate group is marked ``kind="gates"`` and lists the gates it
holds by name, so :func:`gate_groups` finds them again in a live optimizer (or one restored from a
checkpoint) and returns :class:`GateGroup` handles: what callbacks use instead of reaching into
``optimizer.param_groups``.

Freezing is explicit state: ``handle.freeze()`` takes the gates out of the optimizer and marks the
(now empty) group ``frozen``, which APG honours and which is saved with the optimizer's state dict; the
gates themselves are marked (:func:`is_frozen`) and stop taking gradients, so a checkpoint of the network
alone records them as frozen, and a module rebuilt from it builds the same groups again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from .gates import iter_gates

__all__ = ["GATES", "GateGroup", "build_param_groups", "gate_groups", "freeze_all", "is_frozen", "structure_fixed"]

GATES = "gates"  # the ``kind`` of a gate param group


def is_frozen(gate: nn.Module) -> bool:
    """Whether a gate was frozen by a :class:`GateGroup` (the flag travels with copies and slices of it)."""
    return bool(getattr(gate, "frozen", False))


def structure_fixed(net: nn.Module) -> bool:
    """Whether no gate of ``net`` can change any more: each is frozen or takes no gradient."""
    return all(is_frozen(i.module) or not i.module.scale.requires_grad for i in iter_gates(net))


def build_param_groups(
    net: nn.Module,
    *,
    weights: Mapping[str, Any],
    gates: Mapping[str, Any] | None,
    gamma_by_gate: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """APG param groups for ``net``: ``weights`` (the weights' settings, e.g. ``weight_decay``) for every
    trainable non-gate parameter, and, unless ``gates`` is None (gates kept out of the optimizer), the
    gates with the settings in ``gates`` (``gamma``, ``lr``, ``mode``...): one group named ``"gates"``, or
    with ``gamma_by_gate`` (gate name -> gamma) one group ``"gates:<name>"`` per gate.

    Gates a :class:`GateGroup` froze (:func:`is_frozen`, e.g. restored from a checkpoint) are named by an
    empty group marked ``frozen``, so a resumed optimizer has the groups it was saved with; gates whose
    ``requires_grad`` the user turned off are left out, as any parameter that takes no gradient.
    """
    infos = list(iter_gates(net))
    gate_ids = {id(info.module.scale) for info in infos}
    weight_params = [p for p in net.parameters() if p.requires_grad and id(p) not in gate_ids]
    groups: list[dict[str, Any]] = [{"name": "weights", "kind": "weights", "params": weight_params, **weights}]
    if gates is None:
        return groups
    live = [i for i in infos if i.module.scale.requires_grad and not is_frozen(i.module)]
    frozen = [i for i in infos if is_frozen(i.module)]
    if gamma_by_gate is None:
        if live:
            groups.append(_group(GATES, live, dict(gates), frozen=False))
        if frozen:
            groups.append(_group(GATES if not live else f"{GATES}:frozen", frozen, dict(gates), frozen=True))
        return groups
    for info in infos:
        if info in live or info in frozen:
            settings = {**gates, "gamma": float(gamma_by_gate[info.name])}
            groups.append(_group(f"{GATES}:{info.name}", [info], settings, frozen=info in frozen))
    return groups


def _group(name: str, infos: Sequence[Any], settings: dict[str, Any], *, frozen: bool) -> dict[str, Any]:
    return {
        "name": name,
        "kind": GATES,
        "gates": [info.name for info in infos],
        "params": [] if frozen else [info.module.scale for info in infos],
        **settings,
        "frozen": frozen,
    }


class GateGroup:
    """A handle on one gate param group of a live optimizer."""

    def __init__(self, optimizer: Optimizer, group: dict[str, Any], net: nn.Module | None = None) -> None:
        self.optimizer = optimizer
        self.group = group
        self.net = net

    @property
    def name(self) -> str:
        return str(self.group.get("name", GATES))

    @property
    def gate_names(self) -> list[str]:
        return list(self.group.get("gates", []))

    @property
    def params(self) -> list[Tensor]:
        return list(self.group["params"])

    @property
    def frozen(self) -> bool:
        return bool(self.group.get("frozen", False))

    def freeze(self) -> None:
        """Stop updating these gates: they leave the optimizer (with their state) and stop taking gradients;
        the group stays, empty and marked ``frozen``, so a checkpoint resumes into the same groups."""
        params = self.group["params"]
        ids = {id(p) for p in params}
        for p in params:
            p.requires_grad_(False)
            p.grad = None
            self.optimizer.state.pop(p, None)
        self.group["params"] = []
        self.group["frozen"] = True
        if self.net is not None:
            for info in iter_gates(self.net):
                if id(info.module.scale) in ids:
                    info.module.frozen = True

    @property
    def gamma(self) -> float:
        return float(self.group["gamma"])

    @gamma.setter
    def gamma(self, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"{self.name}: gamma must be >= 0, got {value!r}")
        self.group["gamma"] = float(value)

    @property
    def l1_scale(self) -> float:
        """The factor in [0, 1] on the group's L1 term (0: its ``gamma`` is kept but the step uses none)."""
        return float(self.group.get("l1_scale", 1.0))

    @l1_scale.setter
    def l1_scale(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{self.name}: l1_scale must be a number in [0, 1], got {value!r}")
        self.group["l1_scale"] = float(value)

    @property
    def zero_hold(self) -> int:
        return int(self.group.get("zero_hold", 0))

    @zero_hold.setter
    def zero_hold(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{self.name}: zero_hold must be an int >= 0, got {steps!r}")
        self.group["zero_hold"] = steps

    def threshold(self) -> float:
        """How far one step moves a gate towards 0 through the L1 term alone (the optimizer's own figure)."""
        return float(self.optimizer.threshold(self.group))

    def l1_drift(self, steps: int) -> float:
        """How far the L1 term alone moves a gate towards 0 over ``steps`` steps (momentum included)."""
        return float(self.optimizer.l1_drift(self.group, steps))

    def __repr__(self) -> str:
        return f"GateGroup({self.name!r}, gates={len(self.gate_names)}, gamma={self.gamma}, frozen={self.frozen})"


def _unwrap(optimizer: Any) -> Optimizer:
    """The torch optimizer behind a Lightning ``LightningOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def gate_groups(optimizer: Any, net: nn.Module | None = None) -> list[GateGroup]:
    """Handles on ``optimizer``'s gate groups (those :func:`build_param_groups` made), in group order;
    with ``net``, freezing through a handle also marks the network's gates (:func:`is_frozen`)."""
    optimizer = _unwrap(optimizer)
    return [GateGroup(optimizer, g, net) for g in optimizer.param_groups if g.get("kind") == GATES]


def freeze_all(optimizer: Any, net: nn.Module) -> int:
    """Freeze every gate group of ``optimizer`` and mark ``net``'s gates frozen, also those outside the
    optimizer; returns how many groups were not frozen yet."""
    for info in iter_gates(net):
        info.module.frozen = True
        info.module.scale.requires_grad_(False)
    fresh = [g for g in gate_groups(optimizer, net) if not g.frozen]
    for g in fresh:
        g.freeze()
    return len(fresh)
