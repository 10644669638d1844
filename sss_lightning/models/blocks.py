"""Building blocks shared by the gated architectures.

Every residual architecture here is made of :class:`~sss_lightning.residual.GatedResidual` (defined with
the surgery it serves in :mod:`sss_lightning.residual`, and importable from here too): a branch (an
``nn.Sequential`` whose channel/group gates sit right after the layer they scale), a shortcut, an optional
block gate and the activation after the add. Keeping that one shape for ResNet, ResNeXt and user blocks is
what lets the surgery code treat all of them with one code path.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from ..residual import GatedResidual, run_fused

__all__ = ["GATE_SPECS", "GateSpec", "GatedResidual", "check_gate_spec", "conv_bn", "run_fused"]

GateSpec = Literal["block", "channel", "both", "stream", "all", "none"]
GATE_SPECS: tuple[str, ...] = ("block", "channel", "both", "stream", "all", "none")


def check_gate_spec(gates: str, allowed: tuple[str, ...] = GATE_SPECS) -> str:
    if gates not in allowed:
        raise ValueError(f"gates must be one of {allowed}, got {gates!r}")
    return gates


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free conv followed by its BN (the BN's shift replaces the conv bias)."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
