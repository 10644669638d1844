"""Building blocks shared by the gated architectures.

Every residual architecture here is made of :class:`GatedResidual`: a branch (an ``nn.Sequential`` whose
channel/group gates sit right after the layer they scale), a shortcut, an optional block gate and the
activation after the add. Keeping that one shape for ResNet, ResNeXt and user blocks is what lets the
surgery code treat all of them with one code path.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

GateSpec = Literal["block", "channel", "both", "none"]
GATE_SPECS: tuple[str, ...] = ("block", "channel", "both", "none")


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


class GatedResidual(nn.Module):
    """``post_act(gate(branch(x)) + shortcut(x))``, the residual block SSS selects.

    After surgery ``branch`` may be ``None`` (its block gate was zero) and ``branch_bias`` may hold the
    constant a branch reduces to when all its inner channels were cut (its BN shift times its gate).
    """

    def __init__(
        self,
        branch: nn.Sequential | None,
        shortcut: nn.Module | None = None,
        gate: nn.Module | None = None,
        post_act: nn.Module | None = None,
        branch_bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.branch = branch
        self.gate = gate if gate is not None else nn.Identity()
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.post_act = post_act if post_act is not None else nn.Identity()
        self.register_buffer("branch_bias", branch_bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.shortcut(x)
        if self.branch is not None:
            out = self.gate(self.branch(x)) + out
        elif out is x:
            out = out.clone()  # the post activation may be in place; never modify the caller's tensor
        if self.branch_bias is not None:
            out = out + self.branch_bias.view(1, -1, *([1] * (out.dim() - 2)))
        return self.post_act(out)
