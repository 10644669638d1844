"""ResNeXt with SSS group gates (CIFAR ResNeXt-29 and ImageNet ResNeXt-50 32x4d), as in the official code.

Each bottleneck block's grouped 3x3 conv gets a :class:`GroupGate` (one factor per group, placed after
the conv's BN and ReLU, where ``relu(g*x) == g*relu(x)`` for the non-negative gates) and the residual
branch a :class:`BlockGate`. Surgery removes whole groups (``groups`` shrinks, together with the
channels of the 1x1 conv feeding them) and whole blocks.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..gates import BlockGate, GroupGate
from .blocks import GatedResidual, check_gate_spec, conv_bn
from .registry import register_model

__all__ = ["ResNeXt"]

ResNeXtGates = Literal["block", "group", "both", "none"]


def resnext_block(in_ch: int, width: int, out_ch: int, cardinality: int, stride: int, gates: str) -> GatedResidual:
    """conv1x1 -> grouped conv3x3 (``cardinality`` groups) -> [GroupGate] -> conv1x1, + shortcut."""
    group_gate = [GroupGate(cardinality)] if gates in ("group", "both") else []
    branch = nn.Sequential(
        *conv_bn(in_ch, width, 1),
        nn.ReLU(inplace=True),
        *conv_bn(width, width, 3, stride, groups=cardinality),
        nn.ReLU(inplace=True),
        *group_gate,
        *conv_bn(width, out_ch, 1),
    )
    shortcut = nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride)) if stride != 1 or in_ch != out_ch else None
    return GatedResidual(
        branch, shortcut=shortcut, gate=BlockGate() if gates in ("block", "both") else None, post_act=nn.ReLU(True)
    )


class ResNeXt(nn.Module):
    """ResNeXt: ``stages`` blocks per stage, ``cardinality`` groups of ``base_width`` channels in the first
    stage (doubling per stage), outputs ``expansion * 64 * 2**stage`` wide (scaled by ``width_mult``)."""

    def __init__(
        self,
        stages: tuple[int, ...] = (3, 3, 3),
        cardinality: int = 8,
        base_width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        imagenet_stem: bool = False,
        stem_width: int = 64,
        out_width: int = 256,
        gates: ResNeXtGates = "both",
    ) -> None:
        super().__init__()
        check_gate_spec(gates, ("block", "group", "both", "none"))
        for name, value in (
            ("cardinality", cardinality),
            ("base_width", base_width),
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("stem_width", stem_width),
            ("out_width", out_width),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if imagenet_stem:
            self.stem = nn.Sequential(
                *conv_bn(in_channels, stem_width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        else:
            self.stem = nn.Sequential(*conv_bn(in_channels, stem_width, 3), nn.ReLU(inplace=True))
        in_ch = stem_width
        layers = []
        for i, n in enumerate(stages):
            width = cardinality * base_width * 2**i
            out_ch = out_width * 2**i
            blocks = [
                resnext_block(
                    in_ch if b == 0 else out_ch, width, out_ch, cardinality, 2 if i > 0 and b == 0 else 1, gates
                )
                for b in range(n)
            ]
            layers.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(self.stem(x)))


@register_model("resnext29_8x64d")
def resnext29_8x64d(**kwargs) -> ResNeXt:
    """CIFAR ResNeXt-29 (8x64d): 3 stages of 3 blocks, 8 groups of 64 channels."""
    return ResNeXt(stages=(3, 3, 3), **{"cardinality": 8, "base_width": 64, **kwargs})


@register_model("resnext29_16x64d")
def resnext29_16x64d(**kwargs) -> ResNeXt:
    """CIFAR ResNeXt-29 (16x64d)."""
    return ResNeXt(stages=(3, 3, 3), **{"cardinality": 16, "base_width": 64, **kwargs})


@register_model("resnext50_32x4d", input_size=(3, 224, 224))
def resnext50_32x4d(**kwargs) -> ResNeXt:
    """ImageNet ResNeXt-50 (32x4d), the official SSS ResNeXt: 32 groups gated, block gates."""
    defaults = {"cardinality": 32, "base_width": 4, "num_classes": 1000, "imagenet_stem": True}
    return ResNeXt(stages=(3, 4, 6, 3), **{**defaults, **kwargs})
