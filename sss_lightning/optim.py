"""APG: the modified stochastic Accelerated Proximal Gradient optimizer of SSS, plus its baselines.

One class serves every parameter: each param group carries its own ``gamma`` (L1 strength),
``weight_decay``, ``mode`` and ``nonnegative``. With ``gamma=0`` the ``"apg"`` step is exactly Nesterov
SGD (torch ``SGD(nesterov=True)`` / MXNet NAG), so SSS puts weights and gates in two groups of one
optimizer. The equations are those of the official ``APGNAG`` (see ``shared/SSS_METHOD.md``)::

    v <- mu*v;  z <- soft(x - lr*g, lr*gamma);  v <- z - x + v;  x <- z + mu*v;  x <- max(0, x)

The velocity ``v`` is kept in gradient units, ``momentum_buffer = -v / lr`` (the same state torch's
SGD keeps): the iterates are identical to the official update at a constant learning rate, and when a
schedule changes the learning rate the buffer behaves as torch/MXNet Nesterov momentum does for the
weights, which is what makes the ``gamma=0`` group *exactly* torch SGD under any schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["APG", "MODES", "soft_threshold", "validate_hparams"]

MODES = ("apg", "ista", "sgd")


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


def soft_threshold(x: Tensor, threshold: float) -> Tensor:
    """Proximal operator of ``threshold * |x|``: shrinks towards 0 and sets ``|x| <= threshold`` to 0."""
    return x.sign() * (x.abs() - threshold).clamp_(min=0)


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
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, gamma=gamma, weight_decay=weight_decay, mode=mode, nonnegative=nonnegative
        )
        validate_hparams(**defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_hparams(
            **{k: group[k] for k in ("lr", "momentum", "gamma", "weight_decay", "mode", "nonnegative")},
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
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("APG does not support sparse gradients; use dense parameters")
                self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        lr, mu, gamma = group["lr"], group["momentum"], group["gamma"]
        mode, nonneg = group["mode"], group["nonnegative"]
        d = p.grad
        if group["weight_decay"] != 0:
            d = d.add(p, alpha=group["weight_decay"])

        if mode == "ista":
            p.copy_(soft_threshold(p.add(d, alpha=-lr), lr * gamma))
        else:
            if mode == "sgd" and gamma != 0:
                d = d.add(p.sign(), alpha=gamma)
            elif mode == "apg" and gamma != 0:
                # Proximal step; (x - z) / lr is the effective gradient. With gamma == 0 it would equal
                # d up to rounding, so that case keeps d and stays bitwise equal to torch SGD.
                z = soft_threshold(p.add(d, alpha=-lr), lr * gamma)
                d = (p - z).div_(lr)
            self._nesterov_step(p, d, lr, mu)
        if nonneg:
            p.clamp_(min=0)

    def _nesterov_step(self, p: Tensor, d: Tensor, lr: float, mu: float) -> None:
        """torch SGD(nesterov=True) on the effective gradient ``d`` (buffer ``-v / lr`` of APGNAG)."""
        if mu != 0:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.clone(d).detach()
            else:
                buf.mul_(mu).add_(d)
            d = d.add(buf, alpha=mu)
        p.add_(d, alpha=-lr)
