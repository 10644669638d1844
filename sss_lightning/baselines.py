"""The pruning methods SSS is compared against, on the same gated networks, surgery and FLOPs code.

Both baselines prune the channels that :class:`~sss_lightning.gates.ChannelGate` s control, by a score
instead of a learned gate: *Network Slimming* (Liu et al., ICCV 2017) by the magnitude of the BN scale
that produces the channel, after training with an L1 subgradient on those scales
(:class:`NetworkSlimming`); *L1-norm filter pruning* (Li et al., ICLR 2017) by the L1 norm of the conv
filter that produces it, after ordinary training. :func:`select_channels` writes the decision into the
gates (1 kept, 0 removed), so the regular surgery cuts the network and the regular fine-tuning follows
(:class:`~sss_lightning.callbacks.MagnitudePruning`). Uniform shrinking needs no code: build the same
architecture thinner (``arch_kwargs={"width": ...}``) and train it from scratch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .gates import ChannelGate
from .module import SSSClassifier

__all__ = ["Criterion", "gated_producers", "channel_scores", "select_channels", "NetworkSlimming"]

Criterion = Literal["bn_scale", "filter_l1"]


def gated_producers(net: nn.Module) -> Iterator[tuple[str, ChannelGate, nn.Conv2d, _BatchNorm | None]]:
    """Each channel gate of ``net`` with the conv producing its channels and the BN between them (same rule
    as surgery: the nearest conv before the gate in its ``nn.Sequential``)."""
    for seq_name, seq in net.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        layers = list(seq)
        for i, gate in enumerate(layers):
            if not isinstance(gate, ChannelGate):
                continue
            bn: _BatchNorm | None = None
            for m in reversed(layers[:i]):
                if isinstance(m, _BatchNorm) and bn is None:
                    bn = m
                if isinstance(m, nn.Conv2d):
                    if m.groups != 1 or m.out_channels != gate.num_structures:
                        break
                    yield f"{seq_name}.{i}" if seq_name else str(i), gate, m, bn
                    break


def channel_scores(net: nn.Module, criterion: Criterion) -> dict[str, Tensor]:
    """Per channel gate, one importance score per channel: ``|BN scale|`` or the producing filter's L1 norm."""
    if criterion not in ("bn_scale", "filter_l1"):
        raise ValueError(f"criterion must be 'bn_scale' (Network Slimming) or 'filter_l1', got {criterion!r}")
    scores: dict[str, Tensor] = {}
    for name, _gate, conv, bn in gated_producers(net):
        if criterion == "bn_scale":
            if bn is None or not bn.affine:
                raise ValueError(f"{name}: bn_scale scores need an affine BN between the conv and the gate")
            scores[name] = bn.weight.detach().abs().cpu()
        else:
            scores[name] = conv.weight.detach().abs().sum(dim=(1, 2, 3)).cpu()
    if not scores:
        raise ValueError("the network has no channel gates after a conv; build it with gates='channel' or 'both'")
    return scores


@torch.no_grad()
def select_channels(net: nn.Module, criterion: Criterion, amount: float, scope: str = "global") -> float:
    """Set every channel gate to 1 (keep) or 0 (remove): the ``amount`` fraction of gated channels with the
    lowest scores goes, over all layers at once (``"global"``, Network Slimming's percentile threshold)
    or within each layer (``"layer"``, Li et al.'s per-layer ratio). Every layer keeps at least one
    channel. Returns the fraction actually removed."""
    if not 0 <= amount < 1:
        raise ValueError(f"amount (the fraction of channels to remove) must be in [0, 1), got {amount!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    scores = channel_scores(net, criterion)
    gates = {name: gate for name, gate, _, _ in gated_producers(net)}
    if scope == "global":
        flat = torch.cat(list(scores.values()))
        k = int(amount * flat.numel())
        threshold = flat.sort().values[k - 1] if k else -float("inf")
        keep = {name: s > threshold for name, s in scores.items()}
    else:
        keep = {}
        for name, s in scores.items():
            k = int(amount * s.numel())
            mask = torch.ones_like(s, dtype=torch.bool)
            mask[s.argsort()[:k]] = False
            keep[name] = mask
    removed = 0
    for name, mask in keep.items():
        if not mask.any():
            mask[scores[name].argmax()] = True
        removed += int((~mask).sum())
        gate = gates[name]
        gate.scale.copy_(mask.to(gate.scale))
    return removed / sum(s.numel() for s in scores.values())


class NetworkSlimming(SSSClassifier):
    """Network Slimming's training phase: the gates stay fixed at 1 (outside the optimizer) and the BN
    scales that produce gated channels get an L1 subgradient of strength ``sparsity`` (the paper's
    ``s``, 1e-4 on CIFAR) on top of weight decay. Prune afterwards with
    ``MagnitudePruning(criterion="bn_scale")``.
    """

    def __init__(self, sparsity: float = 1e-4, **kwargs: Any) -> None:
        if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not sparsity >= 0:
            raise ValueError(f"sparsity (the L1 strength on BN scales) must be >= 0, got {sparsity!r}")
        kwargs.setdefault("gates", "channel")
        kwargs.update(gamma=0.0, freeze_gates=True)
        super().__init__(**kwargs)
        self.save_hyperparameters()

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        scales = {id(bn.weight) for _, _, _, bn in gated_producers(self.net) if bn is not None and bn.affine}
        weights = groups[0]
        sparse = [p for p in weights["params"] if id(p) in scales]
        weights["params"] = [p for p in weights["params"] if id(p) not in scales]
        if sparse:
            l1 = {"name": "bn_scales", "params": sparse, "gamma": self.hparams.sparsity, "mode": "sgd"}
            groups.append({**weights, **l1})
        return groups
