"""APG: the modified stochastic Accelerated Proximal Gradient optimizer of SSS, plus its baselines.

One class serves every parameter: each param group carries its own ``gamma`` (L1 strength),
``weight_decay``, ``mode`` and ``nonnegative``. With ``gamma=0`` the ``"apg"`` step is exactly Nesterov
SGD (torch ``SGD(nesterov=True)`` / MXNet NAG), so SSS puts weights and gates in two groups of one
optimizer. The equations are those of the official ``APGNAG`` (the authors' MXNet optimizer)::

    v <- mu*v;  z <- soft(x - lr*g, lr*gamma);  v <- z - x + v;  x <- z + mu*v;  x <- max(0, x)

Where the velocity lives is a per-group choice, ``momentum_units``:

* ``"gradient"`` (default): ``momentum_buffer = -v / lr``, the state torch's SGD keeps. The iterates equal
  the official update at a constant learning rate; when a schedule changes the learning rate the buffer
  behaves as torch/MXNet Nesterov momentum does for the weights, which is what makes the ``gamma=0``
  group *exactly* torch SGD under any schedule.
* ``"parameter"``: ``velocity = v``, exactly the official ``APGNAG`` equations under any schedule (a
  velocity built at a large learning rate keeps its size as the rate decays).

A proximal step lands exactly on its soft-threshold: an entry the threshold sets to 0 with no momentum
behind it is 0, never a rounding residue.

``zero_hold=K`` (per group, 0 = off) settles the selection: an entry that has been exactly zero after
``K`` consecutive steps is pinned at zero from then on (its momentum dropped), so a structure the
proximal step removed cannot flicker back when one minibatch's gradient exceeds ``gamma``. The
counters live in the optimizer state and are checkpointed with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["APG", "MODES", "MOMENTUM_UNITS", "active_gamma", "soft_threshold", "validate_hparams"]

MODES = ("apg", "ista", "sgd")
MOMENTUM_UNITS = ("gradient", "parameter")


def _finite_number(name: str, value: Any, *, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"APG{where}: {name} must be a finite number, got {value!r}")
    return float(value)


def validate_hparams(
    *,
    lr: float,
    momentum: float,
    gamma: float,
    weight_decay: float,
    mode: str,
    nonnegative: bool,
    momentum_units: str = "gradient",
    zero_hold: int = 0,
    where: str = "",
) -> None:
    """Raise ``ValueError`` naming the bad value and the fix; shared by APG and SSSModule."""
    if _finite_number("lr", lr, where=where) <= 0:
        raise ValueError(f"APG{where}: lr must be > 0, got {lr!r}; use a positive learning rate like 0.1")
    m = _finite_number("momentum", momentum, where=where)
    if not 0.0 <= m < 1.0:
        raise ValueError(f"APG{where}: momentum must be in [0, 1), got {momentum!r}; the paper uses 0.9")
    if _finite_number("gamma", gamma, where=where) < 0:
        raise ValueError(f"APG{where}: gamma (L1 strength) must be >= 0, got {gamma!r}; use 0 for no penalty")
    if _finite_number("weight_decay", weight_decay, where=where) < 0:
        raise ValueError(f"APG{where}: weight_decay must be >= 0, got {weight_decay!r}")
    if mode not in MODES:
        raise ValueError(f"APG{where}: mode must be one of {MODES}, got {mode!r}")
    if not isinstance(nonnegative, bool):
        raise ValueError(f"APG{where}: nonnegative must be a bool, got {nonnegative!r}")
    if nonnegative and mode == "sgd":
        raise ValueError(
            f"APG{where}: nonnegative=True needs a proximal mode ('apg' or 'ista'); mode='sgd' is the "
            "L1-subgradient baseline with no projection step, so set nonnegative=False"
        )
    if momentum_units not in MOMENTUM_UNITS:
        raise ValueError(
            f"APG{where}: momentum_units must be one of {MOMENTUM_UNITS}, got {momentum_units!r}; 'parameter' is "
            "the official APGNAG's velocity, 'gradient' torch SGD's momentum buffer"
        )
    if isinstance(zero_hold, bool) or not isinstance(zero_hold, int) or zero_hold < 0:
        raise ValueError(
            f"APG{where}: zero_hold must be an int >= 0 (steps an entry stays at 0 before it is pinned; 0 = never "
            f"pin), got {zero_hold!r}"
        )


_HPARAMS = ("lr", "momentum", "gamma", "weight_decay", "mode", "nonnegative", "momentum_units", "zero_hold")


def soft_threshold(x: Tensor, threshold: float) -> Tensor:
    """Proximal operator of ``threshold * |x|``: shrinks towards 0 and sets ``|x| <= threshold`` to 0."""
    return x.sign() * (x.abs() - threshold).clamp_(min=0)


def active_gamma(group: dict[str, Any]) -> float:
    """The L1 strength a param group's step applies: its ``gamma`` times its ``l1_scale`` (default 1; a
    penalty schedule keeps the group's gamma and scales the term, 0 before it starts)."""
    return float(group["gamma"]) * float(group.get("l1_scale", 1.0))


class APG(Optimizer):
    """Modified stochastic APG (``mode="apg"``), ISTA (``"ista"``) or SGD with an L1 subgradient (``"sgd"``).

    Args:
        params: parameters or param groups; any group may override every hyper-parameter below.
        lr: learning rate (> 0).
        momentum: Nesterov momentum in [0, 1); ``"ista"`` takes the plain proximal step and keeps no
            momentum state.
        gamma: L1 strength (>= 0). ``"apg"``/``"ista"`` apply it by soft-thresholding, which yields exact
            zeros; ``"sgd"`` adds ``gamma * sign(x)`` to the gradient, which never does.
        weight_decay: L2 coefficient added to the gradient (``g + wd * x``), as in torch SGD.
        mode: ``"apg"``, ``"ista"`` or ``"sgd"``.
        nonnegative: project onto ``x >= 0`` after the step (the official code does this for gates).
        momentum_units: ``"gradient"`` (torch's momentum buffer) or ``"parameter"`` (the official velocity);
            see the module docstring.
        zero_hold: pin an entry at 0 once it has been exactly 0 for this many consecutive steps (0: never).
        frozen: a group with ``frozen=True`` is not updated at all (no gradient, decay or L1 step), the
            explicit state :mod:`sss_lightning.gate_groups` uses to fix a structure; it is saved and
            restored with the optimizer's state dict.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        gamma: float = 0.0,
        weight_decay: float = 0.0,
        mode: str = "apg",
        nonnegative: bool = False,
        momentum_units: str = "gradient",
        zero_hold: int = 0,
        frozen: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            gamma=gamma,
            weight_decay=weight_decay,
            mode=mode,
            nonnegative=nonnegative,
            momentum_units=momentum_units,
            zero_hold=zero_hold,
        )
        validate_hparams(**defaults)
        if not isinstance(frozen, bool):
            raise ValueError(f"APG: frozen must be a bool, got {frozen!r}")
        super().__init__(params, {**defaults, "frozen": frozen})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_hparams(
            **{k: group[k] for k in _HPARAMS},
            where=f" (param group {len(self.param_groups) - 1})",
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("frozen", False):  # a state dict saved without the key holds no frozen group
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("APG does not support sparse gradients; use dense parameters")
                self._update(p, group)
        return loss

    def threshold(self, group: dict[str, Any] | int = 0) -> float:
        """How far one step of ``group`` (a param group or its index) moves an entry towards 0 through the
        L1 term alone: ``lr * gamma * l1_scale`` for the proximal modes and for ``"sgd"`` (its subgradient step)."""
        if isinstance(group, int):
            group = self.param_groups[group]
        return float(group["lr"] * active_gamma(group))

    def l1_drift(self, group: dict[str, Any] | int, steps: int) -> float:
        """How far the L1 term alone moves an entry towards 0 over ``steps`` steps at the current learning
        rate: ``steps * lr * gamma * l1_scale``, amplified by ``1 / (1 - momentum)`` where momentum accumulates it
        (``"apg"`` and ``"sgd"``; ``"ista"`` keeps no momentum)."""
        if isinstance(group, int):
            group = self.param_groups[group]
        amplify = 1.0 if group["mode"] == "ista" else 1.0 / (1.0 - group["momentum"])
        return steps * self.threshold(group) * amplify

    def pinned(self, p: Tensor) -> Tensor | None:
        """Boolean mask of ``p``'s entries that ``zero_hold`` has pinned at 0 (None before any step)."""
        state = self.state.get(p)
        if not state or "zero_steps" not in state:
            return None
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        return state["zero_steps"] >= group["zero_hold"]

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        lr, mu, gamma = group["lr"], group["momentum"], active_gamma(group)
        mode, nonneg, hold = group["mode"], group["nonnegative"], group["zero_hold"]
        pinned = None
        if hold:
            counter = self.state[p].get("zero_steps")
            pinned = None if counter is None else counter >= hold
        d = p.grad
        if group["weight_decay"] != 0:
            d = d.add(p, alpha=group["weight_decay"])

        if mode == "ista":
            p.copy_(soft_threshold(p.add(d, alpha=-lr), lr * gamma))
        elif mode == "apg" and group["momentum_units"] == "parameter":
            self._apgnag_step(p, d, lr, mu, gamma)
        elif mode == "apg" and gamma != 0:
            # Proximal step; (x - z) / lr is the effective gradient of the momentum buffer. The parameter
            # lands on z - lr * mu * buffer, exactly z without momentum (no (x - z) / lr * lr rounding).
            z = soft_threshold(p.add(d, alpha=-lr), lr * gamma)
            buf = self._buffer(p, (p - z).div_(lr), mu)
            p.copy_(z if buf is None else z.add_(buf, alpha=-lr * mu))
        else:
            if mode == "sgd" and gamma != 0:
                d = d.add(p.sign(), alpha=gamma)
            # With gamma == 0 this is bitwise torch SGD(nesterov=True).
            buf = self._buffer(p, d, mu)
            p.add_(d if buf is None else d.add(buf, alpha=mu), alpha=-lr)
        if nonneg:
            p.clamp_(min=0)
        if hold:
            self._hold_zeros(p, pinned)

    def _buffer(self, p: Tensor, d: Tensor, mu: float) -> Tensor | None:
        """torch SGD's momentum buffer after this step's effective gradient ``d`` (None without momentum)."""
        if mu == 0:
            return None
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.clone(d).detach()
        else:
            buf.mul_(mu).add_(d)
        return buf

    def _apgnag_step(self, p: Tensor, d: Tensor, lr: float, mu: float, gamma: float) -> None:
        """The official APGNAG with its velocity in parameter units:
        ``v <- mu*v; z <- soft(x - lr*d, lr*gamma); v <- z - x + v; x <- z + mu*v``."""
        z = soft_threshold(p.add(d, alpha=-lr), lr * gamma)
        if mu == 0:
            p.copy_(z)
            return
        state = self.state[p]
        v = state.get("velocity")
        v = state["velocity"] = (z - p) if v is None else v.mul_(mu).add_(z).sub_(p)
        p.copy_(z.add_(v, alpha=mu))

    def _hold_zeros(self, p: Tensor, pinned: Tensor | None) -> None:
        """Pin the entries held at 0 long enough, then count this step's zeros."""
        state = self.state[p]
        if pinned is not None and pinned.any():
            p.masked_fill_(pinned, 0.0)
            for key in ("momentum_buffer", "velocity"):
                if key in state:
                    state[key].masked_fill_(pinned, 0.0)
        counter = state.get("zero_steps")
        if counter is None:
            counter = state["zero_steps"] = torch.zeros_like(p, dtype=torch.int32)
        counter.copy_(torch.where(p == 0, counter + 1, 0))
