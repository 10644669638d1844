"""Landing a MACs budget, without a Trainer: the gamma controller and the deadline's final adjustment.

* :class:`GammaController` is the control law: from one measurement of the MACs the network is heading
  for, it scales every gate group's ``gamma`` up (too expensive) or down (too cheap) inside a dead band.
* :func:`land` is what happens at the deadline if the network is still outside the band: the fewest
  gate entries that bring it in are moved (bisection over a priority list), the smallest non-zero ones
  to zero (:func:`projection_moves`) or the most recently alive zero ones back to their last value
  (:func:`revival_moves`).

:class:`~sss_lightning.callbacks.MacsBudget` measures the MACs, applies both and freezes the structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["GammaController", "Move", "land", "projection_moves", "revival_moves"]

Move = tuple[Tensor, int, float]  # (gate parameter, flat index, new value)


class GammaController:
    """Log-proportional control of the gates' L1 strength towards ``target`` MACs, along a glide path.

    Each :meth:`update` with the MACs ``m`` the network is heading for and the run's ``progress`` towards
    the deadline (0 at the start, 1 at the deadline) sets, outside a dead band of ``tolerance / 2``
    around the set point,
    ``scale <- scale * exp(clip(gain * log(m / set point), -log(max_change), log(max_change)))``;
    each gate group's gamma is its base gamma times :attr:`scale`. The set point is the upper half of the
    band, ``target * (1 + tolerance / 2)`` (a landing above it is fixed at the deadline, below it is not),
    reached along a glide path from ``start`` (the unpruned network's MACs): geometric in ``progress``
    until ``progress = glide``, then constant. Gates answer gamma with a lag of many steps, so a set point
    that jumps straight to the budget (``glide=0``) winds gamma up while nothing has fallen yet and then
    drops far below the budget at once, which zero gates under APG rarely come back from.
    """

    def __init__(
        self,
        target: float,
        tolerance: float,
        gain: float = 1.0,
        max_change: float = 1.5,
        start: float | None = None,
        glide: float = 0.0,
    ) -> None:
        if not target > 0:
            raise ValueError(f"target must be > 0 MACs, got {target!r}")
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), e.g. 0.03 for within 3%, got {tolerance!r}")
        if not gain > 0 or not max_change > 1:
            raise ValueError(f"need gain > 0 and max_change > 1, got gain={gain!r}, max_change={max_change!r}")
        if isinstance(glide, bool) or not isinstance(glide, (int, float)) or not 0 <= glide <= 1:
            raise ValueError(
                f"glide must be the fraction of the run to the deadline over which the set point moves from the "
                f"unpruned MACs to the budget, in [0, 1], got {glide!r}; e.g. 0.5, or 0 to aim at the budget at once"
            )
        self.target, self.tolerance, self.gain, self.max_change = float(target), tolerance, gain, max_change
        self.start = None if start is None else float(start)
        self.glide = float(glide)
        self.scale = 1.0

    def set_point(self, progress: float = 1.0) -> float:
        """The MACs the controller steers to at ``progress`` (0: start of the run, 1: the deadline)."""
        end = self.target * (1 + self.tolerance / 2)
        if self.start is None or self.glide == 0 or progress >= self.glide or self.start <= end:
            return end
        return end * (self.start / end) ** (1 - max(0.0, progress) / self.glide)

    def update(self, macs_ahead: float, progress: float = 1.0) -> bool:
        """Move :attr:`scale` for one measurement; returns whether it changed (False inside the band)."""
        ratio = macs_ahead / self.set_point(progress)
        if abs(ratio - 1) <= self.tolerance / 2:
            return False
        limit = math.log(self.max_change)
        self.scale *= math.exp(max(-limit, min(limit, self.gain * math.log(ratio))))
        return True

    def within(self, macs: float) -> bool:
        """Whether ``macs`` counts as landed: within ``tolerance`` of the target."""
        return self.target * (1 - self.tolerance) <= macs <= self.target * (1 + self.tolerance)

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state.get("scale", 1.0))


def projection_moves(gates: Sequence[Tensor]) -> list[Move]:
    """Too expensive: every non-zero gate entry to zero, the smallest first."""
    moves = [(p, i, 0.0) for p in gates for i, v in enumerate(p.detach().flatten().tolist()) if v]
    moves.sort(key=lambda m: abs(float(m[0].detach().view(-1)[m[1]])))
    return moves


def revival_moves(gates: Sequence[Tensor], last_alive: Sequence[Tensor]) -> list[Move]:
    """Too cheap: every zero gate entry back to its last non-zero value, the largest first."""
    moves = [
        (p, i, float(last.flatten()[i]))
        for p, last in zip(gates, last_alive, strict=True)
        for i in (p.detach().flatten() == 0).nonzero().flatten().tolist()
        if last.flatten()[i] != 0
    ]
    moves.sort(key=lambda m: -abs(m[2]))
    return moves


@torch.no_grad()
def land(
    gates: Sequence[Tensor],
    moves: list[Move],
    measure: Callable[[], float],
    low_edge: float,
    high_edge: float,
    cheaper: bool,
) -> int:
    """Apply the fewest of ``moves`` (in priority order) that bring ``measure()`` into
    ``[low_edge, high_edge]``: bisection for the first prefix that crosses the band's near edge, then, if
    one coarse structure jumped across the whole band, skip it and go on one move at a time. Returns how
    many moves stay applied; ``gates`` hold the result."""
    saved = [p.detach().clone() for p in gates]

    def apply(chosen: list[int]) -> float:
        for p, s in zip(gates, saved, strict=True):
            p.copy_(s)
        for j in chosen:
            p, i, value = moves[j]
            p.view(-1)[i] = value
        return measure()

    def reached(macs: float) -> bool:
        return macs <= high_edge if cheaper else macs >= low_edge

    low, high = 0, len(moves)
    while low < high:
        mid = (low + high) // 2
        if reached(apply(list(range(mid)))):
            high = mid
        else:
            low = mid + 1
    chosen = list(range(low))
    macs = apply(chosen)
    if not chosen or low_edge <= macs <= high_edge or not reached(macs):  # done, or nothing more to try
        return len(chosen)
    chosen.pop()  # the move that jumped across the band
    for j in range(low, min(len(moves), low + 256)):
        macs = apply([*chosen, j])
        if low_edge <= macs <= high_edge:
            return len(chosen) + 1
        if not reached(macs):
            chosen.append(j)
    apply(chosen)
    return len(chosen)
