"""Selection stability: does the set of exactly-zero gates settle, or flicker?

:class:`ZeroSetTracker` watches every gate entry of a model step by step and answers two questions:

* how many entries switched between zero and non-zero (``flips``, per interval, e.g. per epoch: the
  *churn*);
* of the gates that are zero at the end, which fraction stayed zero over the last part of training
  (:meth:`ZeroSetTracker.stable_fraction`): the zeros surgery removes are the selection only if they
  did not change right before the end.

Entries that an in-training shrink removed count as zero from then on: the shrink's index map
(``SSSModule.shrunk_gates``) says where a shrunk gate's survivors were, which is how the tracker maps
it back onto the entries it watched. Everything it holds travels in :meth:`state_dict`, so resumed runs report what an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .gates import iter_gates

__all__ = ["ZeroSetTracker"]


class ZeroSetTracker:
    """Zero/non-zero history of every gate entry of a model (see the module docstring)."""

    def __init__(self) -> None:
        self.zero: dict[str, Tensor] = {}  # per gate, over the entries as first seen: zero now?
        self.last_flip: dict[str, Tensor] = {}  # step of each entry's last switch (-1: never)
        self.live: dict[str, Tensor] = {}  # original positions of the entries the gate has now
        self.flips = 0  # switches since the last take_flips()
        self.step = -1

    def update(self, model: nn.Module, step: int, kept: Mapping[str, Tensor] | None = None) -> None:
        """Record the gates of ``model`` after optimizer step ``step``. ``kept`` maps a gate that a shrink made
        smaller to the positions its surviving entries had before (``SSSModule.shrunk_gates``); without it a
        shrunk gate's survivors are taken to be its entries that were non-zero at the last update."""
        self.step = step
        flips = []
        gates = list(iter_gates(model))
        if not gates:
            return
        scales = [info.module.scale.detach().flatten() for info in gates]
        masks = (torch.cat(scales) == 0).cpu().split([s.numel() for s in scales])  # one device sync
        for info, now in zip(gates, masks, strict=True):
            name = info.name
            if name not in self.zero:
                self.zero[name] = now.clone()
                self.last_flip[name] = torch.full_like(now, -1, dtype=torch.long)
                self.live[name] = torch.arange(now.numel())
                continue
            live = self.live[name]
            if now.numel() != live.numel():
                live = self._remap(name, now.numel(), None if kept is None else kept.get(name), step)
            before = self.zero[name][live]
            changed = before != now
            if changed.any():
                self.zero[name][live] = now
                self.last_flip[name][live[changed]] = step
                flips.append(int(changed.sum()))
        self.flips += sum(flips)

    def _remap(self, name: str, size: int, kept: Tensor | None, step: int) -> Tensor:
        """A shrink removed entries of gate ``name``: the survivors are at ``kept`` among its current entries,
        or (without ``kept``) its non-zero ones, in order."""
        if kept is not None and kept.numel() == size:
            alive = self.live[name][kept.cpu().long()]
        else:
            alive = (~self.zero[name]).nonzero().flatten()
            alive = alive[torch.isin(alive, self.live[name])]
        if alive.numel() != size:
            raise ValueError(
                f"ZeroSetTracker: gate {name} went from {self.live[name].numel()} to {size} entries, but "
                f"{alive.numel()} of them were non-zero at the last update; pass the shrink's index map as kept="
            )
        removed = self.live[name][~torch.isin(self.live[name], alive)]
        newly = removed[~self.zero[name][removed]]  # set to zero and removed since the last update
        self.last_flip[name][newly] = step
        self.flips += newly.numel()
        self.zero[name][removed] = True
        self.live[name] = alive
        return alive

    def take_flips(self) -> int:
        """Switches counted since the last call (per-epoch churn when called at each epoch end)."""
        flips, self.flips = self.flips, 0
        return flips

    def zeros(self) -> int:
        return int(sum(int(z.sum()) for z in self.zero.values()))

    def stable_fraction(self, since_step: int) -> float | None:
        """Of the entries zero now, the fraction that did not switch after ``since_step`` (None: no zeros)."""
        zero = torch.cat([z for z in self.zero.values()]) if self.zero else torch.zeros(0, dtype=torch.bool)
        if not zero.any():
            return None
        last = torch.cat([t for t in self.last_flip.values()])
        return float((last[zero] <= since_step).float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {
            "zero": {k: v.clone() for k, v in self.zero.items()},
            "last_flip": {k: v.clone() for k, v in self.last_flip.items()},
            "live": {k: v.clone() for k, v in self.live.items()},
            "flips": self.flips,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.zero = {k: v.clone() for k, v in state.get("zero", {}).items()}
        self.last_flip = {k: v.clone() for k, v in state.get("last_flip", {}).items()}
        self.live = {k: v.clone() for k, v in state.get("live", {}).items()}
        self.flips = int(state.get("flips", 0))
        self.step = int(state.get("step", -1))
