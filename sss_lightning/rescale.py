"""Gate rescaling: give channel and group gates magnitudes that mean something under normalisation.

A channel gate in front of a conv followed by batch norm is scale-invariant as a layer: the BN divides
out any factor common to the layer's gates, so the loss cannot tell gates at 1 from the same gates at
0.01, and an L1 penalty shrinks the whole layer together until BN's ``eps`` breaks the tie; which
gates are exactly zero is then mostly noise. :func:`rescale_gates` removes that freedom without
changing the network's function: after each optimizer step it divides a layer's gates by their
largest value ``s`` and multiplies the consuming layer's weights by ``s`` (the consumer is linear in
its input, and nothing but zero-preserving, positively homogeneous layers stand between). The
proximal step's threshold then acts relative to the layer's largest gate, so a zero marks a channel
that is small *compared with its layer*, and the zero set is the selection.

A :class:`~sss_lightning.gates.StreamGate` is rescaled the same way against all of its stream's
declared readers: dividing it by ``s`` divides the whole stream (identity paths included) by ``s``.

Momentum state is moved with the parameters (divided by ``s`` for the gate, multiplied for the
consumer), so the optimizer continues along the same trajectory in the new coordinates.

Where the factor goes (``into``): ``"weights"`` multiplies the consumer's weights by ``s``, exactly
function-preserving; but then every change of a layer's largest gate, up or down, becomes a change of
the consumer's weight norm, which for a conv followed by BN is the one thing its loss cannot see and its
effective learning rate (which falls as the norm grows) depends on, so the consumers' norms drift away from
those of the same network trained without gates. ``"norm"`` instead leaves a consumer that is followed by
a normalisation (a conv or linear without bias, then a layer with ``absorb_in`` in the layer table: BN)
untouched and lets that layer absorb the factor (its running statistics are moved to match, so eval
outputs stay the same up to BN's ``eps``), so the consumer's weights train as they would without gates;
other consumers get the factor in their weights as with ``"weights"``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.optim import Optimizer

from .gates import ChannelGate, GroupGate, StreamGate
from .layers import layer_kind
from .streams import stream_owners
from .surgery import SurgeryError, find_consumer

__all__ = ["INTO", "GatePair", "GatePairCache", "gate_pairs", "rescale_gates"]

INTO = ("weights", "norm")  # where rescaling puts the factor it takes out of the gates

_STATE_KEYS = ("momentum_buffer", "velocity")


@dataclass(frozen=True)
class GatePair:
    """A channel/group/stream gate and the conv/linear layers that consume the channels it scales (one,
    except for a stream gate: every reader of its stream)."""

    name: str
    gate: ChannelGate | GroupGate
    consumers: tuple[nn.Module, ...]
    # per consumer, the layer right after it that can absorb a factor on its input (a BN), or None
    absorbers: tuple[nn.Module | None, ...] = ()


def _absorbers(model: nn.Module) -> dict[int, nn.Module]:
    """For each bias-free conv/linear of ``model`` directly followed, in its ``nn.Sequential``, by a layer that
    absorbs a factor on its input (``absorb_in`` in the layer table), that layer (keyed by the consumer's id)."""
    found: dict[int, nn.Module] = {}
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            layers = list(seq)
            for layer, after in itertools.pairwise(layers):
                if getattr(layer, "bias", True) is None and layer_kind(after).absorb_in is not None:
                    found[id(layer)] = after
    return found


def gate_pairs(model: nn.Module) -> tuple[list[GatePair], list[str]]:
    """Every channel/group gate of ``model`` whose consumer is found as surgery finds it (the first
    conv/linear after the gate in its ``nn.Sequential``), and the names of the gates without one
    (rescaling leaves those as they are)."""
    pairs: list[GatePair] = []
    unpaired: list[str] = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        layers = list(seq)
        for i, gate in enumerate(layers):
            if not isinstance(gate, (ChannelGate, GroupGate)) or isinstance(gate, StreamGate):
                continue
            name = f"{prefix}.{i}" if prefix else str(i)
            try:
                j = find_consumer(layers, i, gate.scale.detach(), name)
            except SurgeryError:
                unpaired.append(name)
                continue
            pairs.append(GatePair(name, gate, (layers[j],)))
    owners = stream_owners(model)
    if owners:
        names = {id(m): n for n, m in model.named_modules()}
        pairs += [GatePair(names[id(s.gate)], s.gate, tuple(s.readers)) for o in owners for s in o.streams]
    absorbers = _absorbers(model)
    pairs = [replace(p, absorbers=tuple(absorbers.get(id(c)) for c in p.consumers)) for p in pairs]
    paired = {id(p.gate) for p in pairs}
    unpaired += [n for n, m in model.named_modules() if isinstance(m, (ChannelGate, GroupGate)) and id(m) not in paired]
    return pairs, sorted(set(unpaired))


class GatePairCache:
    """:func:`gate_pairs` of a model, found again only when its modules change: one added, removed or
    replaced anywhere (in-training shrink, surgery, a new network). Finding the pairs walks every
    ``nn.Sequential`` and reads every gate (a device sync each on an accelerator), which rescaling after
    every optimizer step would otherwise repeat; comparing the module tree costs one walk and no sync.

    The modules of the last tree are held (not only their ids), so a module freed and replaced by a new
    one at the same address still counts as a change."""

    def __init__(self) -> None:
        self._tree: tuple[tuple[str, nn.Module], ...] = ()
        self._pairs: list[GatePair] = []

    def __call__(self, model: nn.Module) -> list[GatePair]:
        tree = tuple(model.named_modules())
        if not self._same(tree):
            self._pairs, self._tree = gate_pairs(model)[0], tree
        return self._pairs

    def _same(self, tree: tuple[tuple[str, nn.Module], ...]) -> bool:
        return len(tree) == len(self._tree) and all(
            name == old_name and module is old for (name, module), (old_name, old) in zip(tree, self._tree, strict=True)
        )


@torch.no_grad()
def rescale_gates(pairs: list[GatePair], optimizer: Optimizer | None = None, into: str = "weights") -> None:
    """Divide each pair's gates by their largest magnitude ``s`` and put ``s`` into its consumers, in place:
    into their weights (``into="weights"``: outputs unchanged up to float rounding), or, for a consumer with
    a BN after it, into that BN's running statistics (``into="norm"``: outputs unchanged up to BN's
    ``eps``, the consumer's weights untouched). Frozen gates (``requires_grad=False``) and layers whose gates
    are all zero are left alone. ``optimizer``'s momentum state is rescaled to match."""
    if into not in INTO:
        raise ValueError(f"into must be one of {INTO} (where the gates' factor goes), got {into!r}")
    pairs = [p for p in pairs if p.gate.scale.requires_grad]
    if not pairs:
        return
    maxima = torch.stack([p.gate.scale.detach().abs().max() for p in pairs])
    factors = torch.where(maxima > 0, maxima, torch.ones_like(maxima)).tolist()  # one device sync
    state = optimizer.state if optimizer is not None else {}
    for pair, s in zip(pairs, factors, strict=True):
        if s == 1.0:
            continue
        moves = [(pair.gate.scale, 1.0 / s)]
        absorbers = pair.absorbers or (None,) * len(pair.consumers)
        for consumer, absorber in zip(pair.consumers, absorbers, strict=True):
            if into == "norm" and absorber is not None:
                layer_kind(absorber).absorb_in(absorber, 1.0 / s)  # its input is now 1/s as large
            else:
                moves.append((consumer.weight, s))
        for param, factor in moves:
            param.mul_(factor)
            for key in _STATE_KEYS:
                buf = state.get(param, {}).get(key)
                if buf is not None:
                    buf.mul_(factor)
