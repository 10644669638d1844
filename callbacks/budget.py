"""MacsBudget: steer gamma so that the pruned network lands at a MACs budget, then freeze the structure."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from sss_lightning.budget import GammaController, land, projection_moves, revival_moves
from sss_lightning.flops import MacEstimator
from sss_lightning.gate_groups import GateGroup, gate_groups
from sss_lightning.gates import gate_parameters
from sss_lightning.optim import APG
from sss_lightning.surgery import prune

from .input_size import check_input_size, require_input_size
from .legacy_key import ClassNamedLegacyKey
from .protocols import SettleableModule, check_module


@contextmanager
def _gates_restored(net: torch.nn.Module) -> Iterator[None]:
    """Gate values may be changed inside (to measure what-if MACs); they are put back on exit."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in gate_parameters(net)]
        try:
            yield
        finally:
            for p, value in zip(gate_parameters(net), saved, strict=True):
                p.copy_(value)


LOOKAHEAD = ("glide", "always", "never")


def _fraction_or_none(name: str, value: Any, example: str) -> float | None:
    """``value`` as a fraction of the steps to the deadline in [0, 1), or None; a ``ValueError`` otherwise."""
    fraction = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is not None and not (fraction and 0 <= value < 1):
        raise ValueError(
            f"{name} must be a fraction of the steps to the deadline in [0, 1) or None, got {value!r}; e.g. {example}"
        )
    return value


class MacsBudget(ClassNamedLegacyKey, Callback):
    """Hit a MACs budget in one run: a controller scales every gate group's ``gamma`` so that the network
    surgery would produce costs ``target_macs``, and once it is inside the band (from ``land_from`` of the way
    on), or at the latest at the end of epoch ``by_epoch``, the structure is fixed there and its gates frozen
    (the remaining steps train the weights; add :class:`InTrainingShrink` to train them at the smaller size).

    Every ``every_n_steps`` optimizer steps the pruned MACs ``m`` are measured (surgery on a copy and
    :class:`~sss_lightning.flops.MacEstimator`) and, outside a dead band of ``tolerance / 2``,
    ``gamma <- gamma * exp(clip(gain * log(m / set point), -log(max_change), log(max_change)))``: more
    sparsity while the network is too expensive, less (zero gates may come back under APG) when it is
    too cheap. The set point glides (:class:`~sss_lightning.budget.GammaController`) from the unpruned
    network's MACs to the upper half of the band, ``target * (1 + tolerance / 2)``, geometrically over the
    first ``glide`` of the steps to the deadline, then stays: gates answer gamma with a lag, and a set
    point that jumps to the budget at once winds gamma up until they all fall together, far below it.
    While the set point moves (``lookahead="glide"``), ``m`` counts gates that the L1 step alone would zero
    within the next ``every_n_steps`` steps as zero already, so the controller reacts before they fall;
    once it holds, ``m`` is the network's actual MACs (gates hovering near zero there are held up by their
    gradient, and counting them as gone would steer the network above the budget). If at the deadline the
    network is still outside the band, the fewest gates that bring it in are moved (bisection, reported):
    the smallest non-zero ones set to zero when too expensive, the most recently alive zero ones given
    back their last value when too cheap.

    Near the budget the gates hovering at zero come and go from one measurement to the next, so the MACs
    at the deadline are wherever that flicker is at the time. The structure is therefore fixed at the first
    measurement from ``land_from`` of the steps to the deadline on that is inside the tolerance band:
    the zeros the proximal steps made there are the selection, and no gate is moved.

    The controller needs zero gates to come back, so the module's ``zero_hold`` is off while it steers;
    but near the budget the gates hovering at zero then come and go from one measurement to the next, and
    the MACs with them. From ``pin_zeros_from`` of the steps to the deadline on, the module's ``zero_hold``
    is back on: a gate that has stayed at zero that long is pinned there, and the controller steers the
    gates still alive (a gate that keeps coming back within ``zero_hold`` steps is never pinned).

    Args:
        target_macs: budget in MACs (> 1), or as a fraction (<= 1) of the unpruned network's MACs.
        by_epoch: the epoch (counted from 1) at whose end the structure is fixed.
        tolerance: relative band around the budget that counts as landed (0.03: within 3%).
        every_n_steps: optimizer steps between two measurements.
        gain: how strongly one measurement moves gamma (log-proportional).
        max_change: largest factor gamma may change by in one measurement.
        glide: the fraction of the steps to the deadline over which the set point comes down to the budget
            (0: aim at the budget from the first step).
        lookahead: when ``m`` counts gates about to fall as gone: ``"glide"`` (while the set point moves),
            ``"always"`` or ``"never"``.
        pin_zeros_from: the fraction of the steps to the deadline from which zeros held for the module's
            ``zero_hold`` steps are pinned (None: never; the module's ``zero_hold`` must then be > 0).
        land_from: the fraction of the steps to the deadline from which a measurement inside the tolerance
            band fixes the structure at once (None: at the deadline only, with the bisection).
        input_size: ``(C, H, W)``; default: the shape the module recorded from its batches.

    Logs ``budget/macs`` (and ``budget/macs_lookahead``, what the controller steers), ``budget/target_macs``,
    ``budget/macs_over_target``, ``budget/set_point`` (where the glide path is), ``budget/gamma`` (the largest gate
    group's) and ``budget/gamma_scale``.
    """

    def __init__(
        self,
        target_macs: float,
        by_epoch: int,
        tolerance: float = 0.03,
        every_n_steps: int = 10,
        gain: float = 1.0,
        max_change: float = 1.5,
        glide: float = 0.5,
        lookahead: str = "glide",
        pin_zeros_from: float | None = None,
        land_from: float | None = 0.9,
        input_size: list[int] | None = None,
    ) -> None:
        if isinstance(target_macs, bool) or not isinstance(target_macs, (int, float)) or not target_macs > 0:
            raise ValueError(
                f"target_macs must be > 0: MACs (> 1) or a fraction of the full model's (<= 1), got {target_macs!r}"
            )
        if isinstance(by_epoch, bool) or not isinstance(by_epoch, int) or by_epoch < 1:
            raise ValueError(f"by_epoch must be an epoch number >= 1, got {by_epoch!r}")
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        self.controller = GammaController(float(target_macs), tolerance, gain, max_change, glide=glide)  # checks
        self.target_macs = float(target_macs)
        self.by_epoch = by_epoch
        self.tolerance = float(tolerance)
        self.every_n_steps = every_n_steps
        self.gain = float(gain)
        self.max_change = float(max_change)
        if lookahead not in LOOKAHEAD:
            raise ValueError(
                f"lookahead must be one of {LOOKAHEAD} (when the controller counts gates about to fall as gone), "
                f"got {lookahead!r}"
            )
        self.lookahead = lookahead
        self.pin_zeros_from = _fraction_or_none(
            "pin_zeros_from", pin_zeros_from, "0.75 pins settled zeros over the last quarter before the deadline"
        )
        self.land_from = _fraction_or_none(
            "land_from", land_from, "0.9 fixes the structure at the first measurement inside the band from there"
        )
        self.input_size = check_input_size(input_size)
        self.base_gamma: dict[str, float] = {}
        self.zero_hold: dict[str, int] = {}  # the module's zero_hold per gate group, off while the controller steers
        self.full_macs: float | None = None
        self.history: list[dict[str, float]] = []
        self.result: dict[str, Any] | None = None
        self._estimator: MacEstimator | None = None
        self._last_alive: list[torch.Tensor] | None = None  # each gate entry's last non-zero value seen

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(target_macs=self.target_macs, by_epoch=self.by_epoch)

    @property
    def scale(self) -> float:
        """The factor the controller applies to every gate group's starting gamma."""
        return self.controller.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.controller.scale = float(value)

    @property
    def target(self) -> float:
        """The budget in MACs (needs the full model's MACs for a fractional target)."""
        if self.target_macs > 1:
            return self.target_macs
        if self.full_macs is None:
            raise RuntimeError("MacsBudget: the full model's MACs are known once training starts")
        return self.target_macs * self.full_macs

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            check_module(pl_module, SettleableModule, "MacsBudget")

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs < self.by_epoch:
            raise ValueError(
                f"MacsBudget(by_epoch={self.by_epoch}) is after the last epoch (trainer.max_epochs="
                f"{trainer.max_epochs}); set by_epoch <= max_epochs, leaving epochs after it to train the weights"
            )

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hp = getattr(pl_module, "hparams", {})
        start, ramp = hp.get("penalty_start", 0.0), hp.get("penalty_ramp", 0.0)
        if start or ramp:
            raise ValueError(
                f"MacsBudget steers the L1 penalty from the first step, and the module scales it down "
                f"(penalty_start={start!r}, penalty_ramp={ramp!r}), so the controller would wind gamma up while "
                "the gates cannot follow. Fix: penalty_start=0 and penalty_ramp=0 (the budget's glide path already "
                "keeps the network wide early on)"
            )
        pl_module.settled_by = "MacsBudget"  # the budget's deadline fixes the structure, not the module's settle_at
        size = require_input_size(self.input_size, pl_module, "MacsBudget")
        self._estimator = MacEstimator(pl_module.net, size)
        if self.result is not None:
            return  # resumed after the deadline: the gates stay frozen (the module's state records it)
        groups = self._groups(trainer)
        if not groups:
            raise ValueError(
                "MacsBudget steers the gates' gamma, but the optimizer has no gate param group; "
                "use an SSSModule with trainable gates"
            )
        if not self.base_gamma:  # a fresh run (a resumed one restores these and the groups' gamma)
            self.base_gamma = {g.name: g.gamma for g in groups}
            self.zero_hold = {g.name: g.zero_hold for g in groups}
            self.full_macs = float(self._estimator(pl_module.net))
        if self.pin_zeros_from is not None and not any(self.zero_hold.values()):
            raise ValueError(
                f"MacsBudget(pin_zeros_from={self.pin_zeros_from!r}) pins zeros after the module's zero_hold steps, "
                "and the module's zero_hold is 0. Fix: an SSSModule with zero_hold > 0 (e.g. 100), or "
                "pin_zeros_from=None"
            )
        self._hold_zeros(trainer)
        self.controller.target, self.controller.start = self.target, self.full_macs
        if not any(v > 0 for v in self.base_gamma.values()):
            raise ValueError("MacsBudget scales gamma, which is 0; set the module's gamma > 0 (e.g. 0.01)")
        floor = self._floor(pl_module.net)
        if not floor < self.target < self.full_macs:
            raise ValueError(
                f"MacsBudget: target {self.target:,.0f} MACs is outside what gates can reach, from "
                f"{floor:,.0f} (every gate zero) to {self.full_macs:,.0f} (none); choose a target in between"
            )

    @staticmethod
    def _groups(trainer: L.Trainer) -> list[GateGroup]:
        return gate_groups(trainer.optimizers[0], trainer.lightning_module.net)

    def _floor(self, net: torch.nn.Module) -> float:
        """MACs with every gate zero: the cheapest network these gates can select."""
        with _gates_restored(net):
            for p in gate_parameters(net):
                p.zero_()
            return float(self._estimator(prune(net)))

    def _measure(self, net: torch.nn.Module, below: dict[int, float] | None = None) -> float:
        """MACs of the pruned network; with ``below`` (gate parameter id -> threshold), gates smaller than
        their threshold count as zero too."""
        assert self._estimator is not None
        if not below:
            return float(self._estimator(prune(net)))
        with _gates_restored(net):
            for p in gate_parameters(net):
                p.masked_fill_(p.abs() < below.get(id(p), 0.0), 0.0)
            return float(self._estimator(prune(net)))

    def _lookahead(self, trainer: L.Trainer) -> dict[int, float]:
        """Per gate, how far the L1 step alone moves it in the next ``every_n_steps`` steps (momentum
        included): gates closer to zero than that count as gone, so the controller reacts before they are."""
        optimizer = trainer.optimizers[0]
        if not isinstance(getattr(optimizer, "optimizer", optimizer), APG):
            raise TypeError(f"MacsBudget steers SSS's APG optimizer, got {type(optimizer).__name__}; use an SSSModule")
        return {id(p): g.l1_drift(self.every_n_steps) for g in self._groups(trainer) for p in g.params}

    def _hold_zeros(self, trainer: L.Trainer) -> None:
        """The groups' ``zero_hold`` for this step: 0 (zero gates may come back) until ``pin_zeros_from``,
        the module's own after it; set every step, so a resumed optimizer state cannot carry a stale one."""
        pin = self.pin_zeros_from is not None and self._progress(trainer) >= self.pin_zeros_from
        for group in self._groups(trainer):
            group.zero_hold = self.zero_hold.get(group.name, 0) if pin else 0

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.result is None and self.pin_zeros_from is not None:  # without pinning, on_train_start's 0 holds
            self._hold_zeros(trainer)

    def _set_gamma(self, trainer: L.Trainer) -> None:
        for group in self._groups(trainer):
            group.gamma = self.base_gamma.get(group.name, 0.0) * self.scale

    def _log(self, trainer: L.Trainer, macs: float, ahead: float | None = None) -> None:
        gamma = max((g.gamma for g in self._groups(trainer)), default=0.0)
        row = {
            "step": float(trainer.global_step),
            "macs": macs,
            "macs_lookahead": macs if ahead is None else ahead,
            "target_macs": self.target,
            "macs_over_target": macs / self.target,
            "set_point": self.controller.set_point(self._progress(trainer)),
            "gamma": float(gamma),
            "gamma_scale": self.scale,
        }
        self.history.append(row)
        for logger in trainer.loggers:
            logger.log_metrics({f"budget/{k}": v for k, v in row.items() if k != "step"}, step=trainer.global_step)

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.result is not None:
            return
        self._remember(pl_module.net)
        if trainer.global_step % self.every_n_steps or not trainer.global_step:
            return
        if self.history and self.history[-1]["step"] == trainer.global_step:
            return  # the same optimizer step (gradient accumulation)
        progress = self._progress(trainer)
        look = self.lookahead == "always" or (self.lookahead == "glide" and progress < self.controller.glide)
        ahead = self._measure(pl_module.net, self._lookahead(trainer) if look else None)
        if self.controller.update(ahead, progress):
            self._set_gamma(trainer)
        macs = self._measure(pl_module.net)
        self._log(trainer, macs, ahead)
        if self.land_from is not None and progress >= self.land_from and self.controller.within(macs):
            self._fix(trainer, pl_module, at_deadline=False)

    def _progress(self, trainer: L.Trainer) -> float:
        """The run's progress towards the deadline, the end of epoch ``by_epoch`` (1.0 there)."""
        per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        return trainer.global_step / max(1, per_epoch * self.by_epoch)

    @torch.no_grad()
    def _remember(self, net: torch.nn.Module) -> None:
        gates = [p.detach() for p in gate_parameters(net)]
        if self._last_alive is None or [t.shape for t in self._last_alive] != [g.shape for g in gates]:
            self._last_alive = [g.clone() for g in gates]
        else:
            self._last_alive = [torch.where(g != 0, g, last) for g, last in zip(gates, self._last_alive, strict=True)]

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.result is not None or trainer.current_epoch + 1 < self.by_epoch:
            return
        self._fix(trainer, pl_module, at_deadline=True)

    def _fix(self, trainer: L.Trainer, pl_module: L.LightningModule, at_deadline: bool) -> None:
        """Fix the structure where it is; at the deadline, first move the fewest gates that bring it into the
        band (an early landing is inside it already)."""
        net = pl_module.net
        reached = self._measure(net)
        projected = revived = 0
        self._remember(net)
        if at_deadline and reached > self.target * (1 + self.tolerance):
            projected = self._project(net)
        elif at_deadline and reached < self.target * (1 - self.tolerance):
            revived = self._revive(net)
        macs = self._measure(net)
        self.result = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "at_deadline": at_deadline,
            "macs_reached": reached,
            "macs": macs,
            "target_macs": self.target,
            "projected_gates": projected,
            "revived_gates": revived,
        }
        if at_deadline:
            self._log(trainer, macs)
        when = f"after epoch {self.result['epoch']}" if at_deadline else f"at step {trainer.global_step}"
        off = macs / self.target - 1
        rank_zero_info(
            f"MacsBudget: structure fixed {when} at {macs:,.0f} MACs "
            f"({off:+.1%} vs the budget {self.target:,.0f}; the controller reached {reached:,.0f}"
            + (f", then {projected} smallest gates were set to zero" if projected else "")
            + (f", then {revived} zero gates were given back their last value" if revived else "")
            + ("" if at_deadline else f", inside the band from land_from={self.land_from:g} on")
            + ")"
        )
        pl_module.settle(f"MacsBudget fixed the structure {when}")
        if abs(off) > self.tolerance:
            rank_zero_warn(
                f"MacsBudget: landed {off:+.1%} from the budget, outside the {self.tolerance:.0%} tolerance: the "
                "gates left no combination inside it (a block gate removes a whole block, and revived gates need "
                "an earlier non-zero value). Give the controller more steps before by_epoch, lower gamma, or "
                "widen the tolerance"
            )

    def _land(self, net: torch.nn.Module, moves: list, cheaper: bool) -> int:
        edges = self.target * (1 - self.tolerance), self.target * (1 + self.tolerance)
        return land(gate_parameters(net), moves, lambda: self._measure(net), *edges, cheaper=cheaper)

    def _project(self, net: torch.nn.Module) -> int:
        """Too expensive: zero the smallest non-zero gates."""
        return self._land(net, projection_moves(gate_parameters(net)), cheaper=True)

    def _revive(self, net: torch.nn.Module) -> int:
        """Too cheap: give zero gates back their last non-zero value, the largest first, for the weights to
        train on in the remaining epochs."""
        assert self._last_alive is not None
        return self._land(net, revival_moves(gate_parameters(net), self._last_alive), cheaper=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self.controller.scale,
            "base_gamma": dict(self.base_gamma),
            "zero_hold": dict(self.zero_hold),
            "full_macs": self.full_macs,
            "history": [dict(r) for r in self.history],
            "result": dict(self.result) if self.result else None,
            "last_alive": [t.cpu() for t in self._last_alive] if self._last_alive is not None else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict)
        self.base_gamma = dict(state_dict.get("base_gamma", {}))
        self.zero_hold = dict(state_dict.get("zero_hold", {}))
        self.full_macs = state_dict.get("full_macs")
        self.history = [dict(r) for r in state_dict.get("history", [])]
        self.result = state_dict.get("result")
        self._last_alive = state_dict.get("last_alive")
