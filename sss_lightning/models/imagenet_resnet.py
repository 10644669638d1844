"""ImageNet ResNet-50 (bottleneck, [3, 4, 6, 3]) with SSS gates, as in the official code.

``gates="block"`` (the official setting) gates every residual branch; ``"channel"``/``"both"`` add channel
gates on the bottleneck's two inner widths.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..gates import BlockGate, ChannelGate
from .blocks import GatedResidual, check_gate_spec, conv_bn
from .registry import register_model

__all__ = ["ImageNetResNet"]


def bottleneck(in_ch: int, planes: int, stride: int, block_gate: bool, channel_gates: bool) -> GatedResidual:
    def gate(ch: int) -> list[nn.Module]:
        return [ChannelGate(ch)] if channel_gates else []

    out_ch = planes * 4
    branch = nn.Sequential(
        *conv_bn(in_ch, planes, 1),
        nn.ReLU(inplace=True),
        *gate(planes),
        *conv_bn(planes, planes, 3, stride),
        nn.ReLU(inplace=True),
        *gate(planes),
        *conv_bn(planes, out_ch, 1),
    )
    shortcut = nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride)) if stride != 1 or in_ch != out_ch else None
    return GatedResidual(branch, shortcut, BlockGate() if block_gate else None, nn.ReLU(inplace=True))


class ImageNetResNet(nn.Module):
    """Bottleneck ResNet with the 7x7/2 stem and max pool, stage widths ``width * (1, 2, 4, 8)``."""

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        num_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        gates: str = "block",
    ) -> None:
        super().__init__()
        check_gate_spec(gates, ("block", "channel", "both", "none"))
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.stem = nn.Sequential(*conv_bn(in_channels, width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        in_ch = width
        stages = []
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for b in range(n):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(
                    bottleneck(in_ch, planes, stride, gates in ("block", "both"), gates in ("channel", "both"))
                )
                in_ch = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.head(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


@register_model("resnet50", input_size=(3, 224, 224))
def resnet50(**kwargs) -> ImageNetResNet:
    """ImageNet ResNet-50 with a block gate per residual branch (the official SSS ResNet)."""
    return ImageNetResNet(layers=(3, 4, 6, 3), **kwargs)
