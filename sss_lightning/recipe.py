"""The SSS training recipe of :class:`~sss_lightning.module.SSSModule`: its hyper-parameters checked up
front, and the two-group APG optimizer with its learning-rate schedule built from them.

Weights go in one group (weight decay, ``gamma=0``: exactly Nesterov SGD), gates in the other (L1
``gamma`` by proximal steps, no weight decay, non-negative as in the official code), or one group per
gate with its own ``gamma`` when the penalty is cost-weighted (:mod:`sss_lightning.gate_groups`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from . import flops
from .flops import structure_costs
from .gate_groups import build_param_groups
from .gates import gate_parameters, iter_gates
from .optim import APG, validate_hparams
from .rescale import INTO, GatePairCache, rescale_gates

__all__ = [
    "SCHEDULES",
    "check_recipe",
    "check_input_size",
    "param_groups",
    "configure_optimizers",
    "cost_weights",
    "after_step",
    "check_finetune",
    "penalty_scale",
    "check_penalty_steps",
]

SCHEDULES = ("cosine", "step", "constant")
Schedule = Literal["cosine", "step", "constant"]


def check_input_size(input_size: Sequence[int] | None) -> list[int] | None:
    """``input_size`` as ``[C, H, W]`` (:func:`~sss_lightning.flops.check_input_size`), or None if not given."""
    return None if input_size is None else flops.check_input_size(input_size)


def check_recipe(hp: Mapping[str, Any]) -> bool:
    """Raise ``ValueError`` naming the bad hyper-parameter and the fix, before any training; returns
    whether the gates are kept non-negative (default: for the proximal modes)."""
    if hp["cost_weighted"] and hp["input_size"] is None:
        raise ValueError(
            "cost_weighted=True weighs each gate's L1 penalty by the MACs of its structure, which needs "
            "the input size: pass input_size=[C, H, W] (e.g. [1, 28, 28] for Fashion-MNIST)"
        )
    nonnegative = hp["gate_mode"] != "sgd" if hp["gate_nonnegative"] is None else hp["gate_nonnegative"]
    common = {"lr": hp["lr"], "momentum": hp["momentum"]}
    validate_hparams(**common, gamma=0.0, weight_decay=hp["weight_decay"], mode="apg", nonnegative=False,
                     where=" (weights)")  # fmt: skip
    validate_hparams(
        lr=hp["lr"] if hp["gate_lr"] is None else hp["gate_lr"],
        momentum=hp["momentum"],
        gamma=hp["gamma"],
        weight_decay=0.0,
        mode=hp["gate_mode"],
        nonnegative=nonnegative,
        momentum_units=hp["gate_momentum_units"],
        zero_hold=hp["zero_hold"],
        where=" (gates)",
    )
    for flag in ("gate_rescale", "zeros_pass_gradient"):
        if not isinstance(hp.get(flag, False), bool):
            raise ValueError(f"{flag} must be a bool, got {hp[flag]!r}")
    if hp.get("rescale_into", "weights") not in INTO:
        raise ValueError(
            f"rescale_into must be one of {INTO} (where gate rescaling puts the factor it takes out of a layer's "
            f"gates), got {hp['rescale_into']!r}"
        )
    settle = hp["settle_at"]
    if settle is not None:
        _check_fraction(
            "settle_at", settle, "(0, 1] or None", "0.75 fixes the structure after three quarters of the run"
        )
    start = _check_fraction(
        "penalty_start", hp.get("penalty_start", 0.0), "[0, 1)",
        "0.5 trains the full network for half the run before the L1 penalty starts selecting",
    )  # fmt: skip
    if settle is not None and start >= settle:
        raise ValueError(
            f"penalty_start={start!r} is not before settle_at={settle!r}: the structure would be fixed before the "
            "penalty selects any. Fix: penalty_start < settle_at"
        )
    ramp = _check_fraction(
        "penalty_ramp", hp.get("penalty_ramp", 0.0), "[0, 1)",
        "0.5 grows the L1 strength linearly from 0 to gamma over the first half of the run",
    )  # fmt: skip
    end, limit = start + ramp, 1.0 if settle is None else settle
    if ramp and end >= limit:
        where = "the end of the run" if settle is None else f"settle_at={settle!r}, where the structure is fixed"
        raise ValueError(
            f"penalty_start + penalty_ramp = {end:g} is not before {where}: the gates would never see the full "
            f"gamma. Fix: penalty_start + penalty_ramp < {limit:g}"
        )
    if hp["schedule"] not in SCHEDULES:
        raise ValueError(f"schedule must be 'cosine', 'step' or 'constant', got {hp['schedule']!r}")
    milestones = hp["milestones"]
    if hp["schedule"] == "step" and (not milestones or list(milestones) != sorted(milestones)):
        raise ValueError(f"milestones must be a non-empty increasing list of epochs, got {milestones!r}")
    return nonnegative


# the ranges a fraction of the training steps may take, as the error message writes them
_INTERVALS = {"(0, 1] or None": lambda x: 0 < x <= 1, "[0, 1)": lambda x: 0 <= x < 1}


def _check_fraction(name: str, value: Any, interval: str, example: str) -> float:
    """``value`` as a fraction of the training steps inside ``interval``, or a ``ValueError`` saying so."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _INTERVALS[interval](value):
        raise ValueError(
            f"{name} must be a fraction of the training steps in {interval}, got {value!r}; e.g. {example}"
        )
    return value


def param_groups(
    net: nn.Module, hp: Mapping[str, Any], nonnegative: bool, gamma_by_gate: Mapping[str, float] | None
) -> list[dict[str, Any]]:
    """The APG groups of ``net`` under the recipe ``hp``: weights, and the gates unless ``freeze_gates``
    keeps them out of the optimizer (one group, or one per gate with ``gamma_by_gate``)."""
    weights = {"weight_decay": hp["weight_decay"], "gamma": 0.0, "mode": "apg", "nonnegative": False}
    gates = None
    if not hp.get("freeze_gates", False):
        gates = {
            "weight_decay": 0.0,
            "mode": hp["gate_mode"],
            "momentum_units": hp.get("gate_momentum_units", "gradient"),
            "zero_hold": hp.get("zero_hold", 0),
            "nonnegative": nonnegative,
            "lr": hp["lr"] if hp["gate_lr"] is None else hp["gate_lr"],
            "gamma": hp["gamma"],
        }
    return build_param_groups(net, weights=weights, gates=gates, gamma_by_gate=gamma_by_gate)


def cost_weights(net: nn.Module, input_size: Sequence[int]) -> dict[str, float]:
    """Per gate, the MACs one of its structures costs over the mean cost of all structures: the
    multiplier of ``gamma`` that makes the same gamma remove expensive structures first."""
    costs = structure_costs(net, input_size)
    counts = {info.name: info.module.num_structures for info in iter_gates(net)}
    mean = sum(costs[n] * counts[n] for n in costs) / sum(counts.values())
    if mean <= 0:
        raise ValueError("cost_weighted=True: no gate of this network controls any MACs")
    return {name: cost / mean for name, cost in costs.items()}


def after_step(
    net: nn.Module, optimizer: Any, hp: Mapping[str, Any], where: str, pairs: GatePairCache | None = None
) -> None:
    """What follows every optimizer step: the gates' rescaling (``gate_rescale``; ``pairs``, the caller's
    cache of the network's gate/consumer pairs, saves finding them again every step) and a check that no
    gate became non-finite, raised before any callback writes a broken model."""
    if hp.get("gate_rescale"):
        found = (pairs if pairs is not None else GatePairCache())(net)
        rescale_gates(found, getattr(optimizer, "optimizer", optimizer), hp.get("rescale_into", "weights"))
    scales = [p.detach().flatten() for p in gate_parameters(net)]
    if scales and not torch.isfinite(torch.cat(scales)).all():
        raise FloatingPointError(
            f"a gate became non-finite at {where}; the run stops before any snapshot or surgery writes a broken "
            "model. Fix: lower lr, gate_lr or gamma"
        )


def penalty_scale(hp: Mapping[str, Any], step: int, total_steps: int) -> float:
    """The factor in [0, 1] on the gates' L1 term at optimizer step ``step`` of ``total_steps``: 0 before
    ``penalty_start``, then rising linearly to 1 over ``penalty_ramp`` of the steps (at once without a
    ramp: 1 from step ``ceil(penalty_start * total_steps)``); always 1 with the defaults."""
    start, ramp = hp.get("penalty_start", 0.0) * total_steps, hp.get("penalty_ramp", 0.0) * total_steps
    if not ramp:
        return 1.0 if step >= math.ceil(start) else 0.0
    return min(1.0, max(0.0, (step - start) / ramp))


def check_penalty_steps(hp: Mapping[str, Any], total_steps: int) -> None:
    """The penalty schedule in steps, once the run's length is known: the first step with L1
    (``penalty_start``) and the first at the full gamma (after ``penalty_ramp``) must come before the step
    at which ``settle_at`` freezes the gates (or the end of the run), which rounding can break in a short run."""
    start, ramp = hp.get("penalty_start", 0.0), hp.get("penalty_ramp", 0.0)
    if not (start or ramp):
        return
    settle = hp.get("settle_at")
    last = total_steps if settle is None else math.ceil(settle * total_steps)  # the steps that move the gates
    full = math.ceil((start + ramp) * total_steps)  # the first step whose scale is 1
    if full >= last:
        raise ValueError(
            f"with {total_steps} training steps, penalty_start={start!r} and penalty_ramp={ramp!r} reach the full "
            f"gamma at step {full}, but the gates move only in steps 0-{last - 1}"
            + ("" if settle is None else f" (settle_at={settle!r})")
            + ". Fix: an earlier penalty_start or a shorter penalty_ramp, or a longer run"
        )


def check_finetune(lr: float, total_steps: int, momentum: float) -> dict[str, float]:
    """The fine-tune settings after surgery, checked: Nesterov SGD from ``lr``, cosine over ``total_steps``."""
    validate_hparams(
        lr=lr, momentum=momentum, gamma=0.0, weight_decay=0.0, mode="apg", nonnegative=False, where=" (fine-tune)"
    )
    if total_steps < 1:
        raise ValueError(f"fine-tuning needs at least one step, got total_steps={total_steps}")
    return {"lr": float(lr), "steps": int(total_steps)}


def configure_optimizers(
    groups: list[dict[str, Any]],
    hp: Mapping[str, Any],
    total_steps: int,
    finetune: Mapping[str, float] | None = None,
) -> Any:
    """What ``LightningModule.configure_optimizers`` returns: APG over ``groups`` with the recipe's schedule
    (cosine per step over ``total_steps``, step-wise per epoch, or constant), or the fine-tune's cosine."""
    if finetune is not None:
        optimizer = APG(groups, lr=finetune["lr"], momentum=hp["momentum"])
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(finetune["steps"]))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
    optimizer = APG(groups, lr=hp["lr"], momentum=hp["momentum"])
    if hp["schedule"] == "constant":
        return optimizer
    if hp["schedule"] == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(total_steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp["milestones"]), gamma=hp["lr_decay"])
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
