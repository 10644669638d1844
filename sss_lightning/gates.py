"""Gates: learnable scaling factors on structures (channels, groups, residual blocks).

A gate multiplies the output of the structure it controls. SSS trains the gates with an L1 penalty
solved by a proximal optimizer (:class:`sss_lightning.optim.APG`), which sets some of them to exactly
zero; surgery then removes those structures. Gates are found by type (:func:`iter_gates`), never by
parameter name, so a user's own ``nn.Module`` only has to contain gate modules to work with SSS.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "Gate",
    "ChannelGate",
    "GroupGate",
    "BlockGate",
    "StreamGate",
    "GateInfo",
    "GATE_KINDS",
    "iter_gates",
    "gate_parameters",
    "has_gates",
    "sparsity",
    "random_gate_pattern",
    "set_zeros_pass_gradient",
]


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Gate(nn.Module):
    """Base class: one learnable factor per structure, initialised to 1.0 as in the paper.

    The factor is stored in ``self.scale`` (shape ``(n,)``). Subclasses define ``kind`` and how
    the factors broadcast over their input.
    """

    kind: ClassVar[str] = ""
    # while the gate trains, its zero entries pass the input's gradient as if they were 1 (see :meth:`scaled`);
    # an instance attribute once set, so it travels with copies and slices of the gate
    zeros_pass_gradient: bool = False

    def __init__(self, n: int, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((n,), float(init)))

    def passes_gradient(self) -> bool:
        """Whether this forward lets zero entries pass the input's gradient: ``zeros_pass_gradient`` is set,
        gradients are recorded, and the gate itself still trains (a frozen gate is part of a fixed structure)."""
        return self.zeros_pass_gradient and torch.is_grad_enabled() and self.scale.requires_grad

    def scaled(self, x: Tensor, factor: Tensor) -> Tensor:
        """``x * factor``; with :meth:`passes_gradient`, the same values (bit for bit), with the gradient to
        ``x`` passed as if each zero factor were 1, so the layers before a zero gate keep training while it
        is off; non-zero factors and the factors' own gradient are unchanged."""
        if self.passes_gradient():
            return x * factor + (x - x.detach()) * (factor == 0).to(x.dtype)
        return x * factor

    @property
    def num_structures(self) -> int:
        return self.scale.numel()

    def alive(self) -> Tensor:
        """Boolean mask of the structures whose gate is not exactly zero."""
        return self.scale.detach() != 0

    def extra_repr(self) -> str:
        return f"{self.num_structures}"


class ChannelGate(Gate):
    """One factor per channel (neuron) of an ``(N, C, ...)`` tensor."""

    kind = "channel"

    def __init__(self, channels: int, init: float = 1.0) -> None:
        super().__init__(_check_count("channels", channels), init)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_structures:
            raise ValueError(
                f"ChannelGate({self.num_structures}) got input of shape {tuple(x.shape)}; "
                f"dimension 1 must have {self.num_structures} channels"
            )
        return self.scaled(x, self.scale.view(1, -1, *([1] * (x.dim() - 2))))

    def channel_factors(self, channels: int) -> Tensor:
        """One differentiable factor per channel: what surgery folds into the consumer layer, and what the
        fused training forward multiplies into the consumer conv's weights."""
        if channels != self.num_structures:
            raise ValueError(f"ChannelGate({self.num_structures}) cannot scale {channels} channels")
        return self.scale


class GroupGate(Gate):
    """One factor per group of a grouped conv's output: ``C`` channels in ``groups`` contiguous blocks."""

    kind = "group"

    def __init__(self, groups: int, init: float = 1.0) -> None:
        super().__init__(_check_count("groups", groups), init)

    def forward(self, x: Tensor) -> Tensor:
        groups = self.num_structures
        if x.dim() < 2 or x.shape[1] % groups:
            raise ValueError(
                f"GroupGate({groups}) got input of shape {tuple(x.shape)}; dimension 1 must be a "
                f"multiple of {groups} (channels are split into {groups} contiguous groups)"
            )
        return self.scaled(x, self.channel_factors(x.shape[1]).view(1, -1, *([1] * (x.dim() - 2))))

    def channel_factors(self, channels: int) -> Tensor:
        """The group's factor repeated over its ``channels // groups`` contiguous channels."""
        if channels % self.num_structures:
            raise ValueError(f"GroupGate({self.num_structures}) needs a channel count divisible by it, got {channels}")
        return self.scale.repeat_interleave(channels // self.num_structures)


class BlockGate(Gate):
    """One factor for a whole residual branch."""

    kind = "block"

    def __init__(self, init: float = 1.0) -> None:
        super().__init__(1, init)

    def forward(self, x: Tensor) -> Tensor:
        return self.scaled(x, self.scale)


class StreamGate(ChannelGate):
    """One factor per channel of a residual stream: the channels a run of residual blocks shares.

    A stream's channels are written by several layers (the layer before the first block, each block's
    branch, a projection shortcut) and summed by the blocks' adds, so no single layer owns them. One
    ``StreamGate`` instance sits after *every* layer whose output joins the stream: it scales the whole
    stream, and a zero factor makes that channel zero everywhere in it, so surgery can cut the channel
    from every writer and every reader at once (:mod:`sss_lightning.streams` says how a network
    declares its readers). Where every reader is followed by a BN, a factor common to the whole gate
    cancels, as for a channel gate before a conv and BN; gate rescaling handles both alike.
    """

    kind = "stream"


GATE_KINDS: tuple[str, ...] = (ChannelGate.kind, GroupGate.kind, BlockGate.kind, StreamGate.kind)


@dataclass(frozen=True)
class GateInfo:
    """A gate found in a model: its module path, kind and module."""

    name: str
    kind: str
    module: Gate


def iter_gates(model: nn.Module) -> Iterator[GateInfo]:
    """Every gate of ``model`` in module order, found by type (no naming conventions)."""
    for name, module in model.named_modules():
        if isinstance(module, Gate):
            yield GateInfo(name, module.kind, module)


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The gate factors of ``model``: the parameters the optimizer puts in the L1/proximal group."""
    return [info.module.scale for info in iter_gates(model)]


def has_gates(model: nn.Module) -> bool:
    return next(iter_gates(model), None) is not None


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of gates that are exactly zero, per kind present and ``"overall"``.

    Also returns ``"<kind>_alive"`` / ``"<kind>_total"`` counts so loggers can plot live structures.
    A model without gates returns ``{}``. One device sync in all, so it is cheap to call every step.
    """
    scales: dict[str, list[Tensor]] = {}
    for info in iter_gates(model):
        scales.setdefault(info.kind, []).append(info.module.scale.detach().flatten())
    if not scales:
        return {}
    totals = {kind: sum(s.numel() for s in parts) for kind, parts in scales.items()}
    zero_counts = torch.stack([(torch.cat(parts) == 0).sum() for parts in scales.values()]).tolist()
    zeros = dict(zip(scales, zero_counts, strict=True))
    summary: dict[str, float] = {}
    for kind in scales:
        summary[kind] = zeros[kind] / totals[kind]
        summary[f"{kind}_alive"] = float(totals[kind] - zeros[kind])
        summary[f"{kind}_total"] = float(totals[kind])
    summary["overall"] = sum(zeros.values()) / sum(totals.values())
    return summary


def random_gate_pattern(model: nn.Module, zero_fraction: float, seed: int = 0) -> None:
    """Set every gate of ``model`` to a random pattern, in place: about ``zero_fraction`` of the factors of
    each gate exactly zero (at least one kept per gate), the rest uniform in [0.5, 1.5).

    For benchmarks and demos of surgery (what would a 50% sparse network cost?), not for training.
    """
    if not 0.0 <= zero_fraction <= 1.0:
        raise ValueError(f"zero_fraction must be in [0, 1], got {zero_fraction}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for info in iter_gates(model):
            scale = info.module.scale
            zero = torch.rand(scale.shape, generator=gen) < zero_fraction
            if zero.all() and scale.numel() > 1:
                zero[0] = False
            values = torch.rand(scale.shape, generator=gen) + 0.5
            scale.copy_(torch.where(zero, 0.0, values).to(scale))


def set_zeros_pass_gradient(model: nn.Module, on: bool) -> None:
    """Set :attr:`Gate.zeros_pass_gradient` on every gate of ``model``: while a gate trains, the layers before
    its zero entries get their gradient as if the entry were 1."""
    for info in iter_gates(model):
        info.module.zeros_pass_gradient = on
