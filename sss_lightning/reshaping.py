"""What an :class:`~sss_lightning.module.SSSModule` knows about its network's shape once it changes:
the network as built, its replacement by a smaller one (surgery, or in-training shrink with the
optimizer carried over), and the description checkpoints hold so that every way of loading reshapes
the network first.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from .gate_groups import is_frozen
from .gates import has_gates, iter_gates
from .io import apply_spec, architecture_spec, rebuild_problem
from .shrink import carry_optimizer_state, carry_scheduler_state, rewrap_distributed, slice_sources

__all__ = ["NetworkReshaping"]


class NetworkReshaping:
    """The reshaping state of one LightningModule whose network is ``module.net``.

    * :meth:`replace` swaps in a reshaped network and remembers the one as built (on the meta device);
    * :meth:`shrink` slices the live network mid-fit and rebuilds the optimizer with its state;
    * :meth:`extra_state` / :meth:`load_extra_state` describe the network relative to the one as built,
      and which gates are frozen, inside the module's state dict.
    """

    def __init__(self) -> None:
        self.reshaped = False  # the network was replaced by a smaller one (shrink or surgery)
        # after shrink(): per surviving gate, the positions its entries had in the gate before the shrink
        self.shrunk_gates: dict[str, Tensor] = {}
        self._as_built: tuple[nn.Module] | None = None  # a tuple: never registered as a submodule

    def remember(self, net: nn.Module) -> None:
        """Keep the structure of ``net`` (no memory: meta tensors) before it is first reshaped."""
        self._as_built = (_skeleton(net),)

    def replace(self, module: Any, net: nn.Module) -> None:
        """Swap ``module.net`` for a reshaped ``net`` (moved to the old one's device)."""
        if not self.reshaped:
            self.remember(module.net)
        param = next(module.net.parameters(), None)
        module.net = net if param is None else net.to(param.device)
        self.reshaped = True

    def as_built(self, net: nn.Module) -> nn.Module:
        """A zero-weight copy of the network as built (``net``'s own structure if it was never reshaped)."""
        if self._as_built is None:
            return _materialise(_skeleton(net), torch.device("cpu"))
        return _materialise(self._as_built[0], torch.device("cpu"))

    def shrink(self, module: Any) -> dict[str, int]:
        """Replace ``module.net`` mid-fit by its sliced form and rebuild the optimizer over the surviving
        parameters, carrying momentum, group settings and the schedule's position over."""
        trainer = module.trainer
        old_optimizer = trainer.optimizers[0]
        old_scheduler = trainer.lr_scheduler_configs[0].scheduler if trainer.lr_scheduler_configs else None
        old_params = dict(module.net.named_parameters())
        sliced, sources = slice_sources(module.net)
        self.shrunk_gates = {info.name: sources[f"{info.name}.scale"].flatten() for info in iter_gates(sliced)}
        self.replace(module, sliced)
        rewrap_distributed(trainer)
        trainer.strategy.setup_optimizers(trainer)
        new_params = dict(module.net.named_parameters())
        carry_optimizer_state(old_optimizer, trainer.optimizers[0], old_params, new_params, sources)
        if old_scheduler is not None and trainer.lr_scheduler_configs:
            carry_scheduler_state(old_scheduler, trainer.lr_scheduler_configs[0].scheduler, old_optimizer)
        return {
            "params_before": sum(p.numel() for p in old_params.values()),
            "params_after": sum(p.numel() for p in new_params.values()),
        }

    def extra_state(self, net: nn.Module) -> dict[str, Any]:
        """The network's architecture relative to the one as built (None when never reshaped), the gates
        that take no gradient (``frozen_gates``) and those a gate group froze (``fixed_gates``)."""
        spec = None
        if self.reshaped or not has_gates(net):
            if self._as_built is not None:
                spec = architecture_spec(net, base=self._as_built[0])
            elif rebuild_problem(net) is None:  # ``net`` was assigned directly, not by replace()
                spec = architecture_spec(net)
            else:
                rank_zero_warn(
                    f"SSSModule: the network was replaced by assigning module.net, so this checkpoint cannot record "
                    f"how it differs from the network as built and will not reload into it. Fix: replace it with "
                    f"module.replace_network(net). ({rebuild_problem(net)})"
                )
        gates = list(iter_gates(net))
        return {
            "architecture": spec,
            "frozen_gates": [info.name for info in gates if not info.module.scale.requires_grad],
            "fixed_gates": [info.name for info in gates if is_frozen(info.module)],
        }

    def load_extra_state(self, module: Any, state: Any) -> None:
        """Reshape ``module.net`` as ``state`` describes (torch loads a module's own state before its
        children's, so the reshaped network then receives the weights) and re-apply frozen gates."""
        if not isinstance(state, dict):
            return
        spec = state.get("architecture")
        if spec or self.reshaped:
            param = next(module.net.parameters())
            if self.reshaped:  # loaded into a module whose network was already replaced: start from the built one
                assert self._as_built is not None
                base = _materialise(self._as_built[0], param.device)
            else:
                self.remember(module.net)
                base = module.net
            net = apply_spec(spec, base=base) if spec else base
            module.net = net.to(device=param.device, dtype=param.dtype)
            self.reshaped = bool(spec)
        frozen = set(state.get("frozen_gates") or [])
        fixed = set(state.get("fixed_gates") or [])
        for info in iter_gates(module.net):
            info.module.scale.requires_grad_(info.name not in frozen)
            info.module.frozen = info.name in fixed


def _skeleton(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose parameters and persistent buffers are on the meta device (no memory)."""
    memo: dict[int, Any] = {}
    for m in net.modules():
        for p in m._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set:
                memo.setdefault(id(b), b.detach().to("meta"))
    return copy.deepcopy(net, memo)


def _materialise(skeleton: nn.Module, device: torch.device) -> nn.Module:
    """A real copy of a :func:`_skeleton`, its tensors allocated on ``device`` and zero (a state dict
    fills them); tied parameters stay tied."""
    net = copy.deepcopy(skeleton)
    made: dict[int, Tensor] = {}
    for m in net.modules():
        for name, p in m._parameters.items():
            if p is not None and p.is_meta:
                made.setdefault(id(p), nn.Parameter(torch.zeros_like(p, device=device), p.requires_grad))
                m._parameters[name] = made[id(p)]
        for name, b in m._buffers.items():
            if b is not None and b.is_meta:
                made.setdefault(id(b), torch.zeros_like(b, device=device))
                m._buffers[name] = made[id(b)]
    return net
