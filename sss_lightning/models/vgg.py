"""CIFAR VGG-16/19 with BN and SSS neuron (channel) selection.

A :class:`ChannelGate` follows each conv's activation; the whole network is one ``nn.Sequential``, so
surgery narrows each conv, its BN and the next conv (or the classifier's input) across the max pools.
The last max pool is an adaptive average pool, so 28x28 (Fashion-MNIST) and 32x32 (CIFAR) both work.
"""

from __future__ import annotations

from torch import nn

from ..gates import ChannelGate
from .blocks import check_gate_spec, conv_bn
from .registry import register_model

__all__ = ["VGG", "VGG_CONFIGS"]

VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class VGG(nn.Sequential):
    """VGG-``depth`` with BN: conv-BN-ReLU-[ChannelGate] blocks, max pools, global pool, linear head."""

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        gates: str = "channel",
    ) -> None:
        check_gate_spec(gates, ("channel", "none"))
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        layers: list[nn.Module] = []
        ch = in_channels
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, round(int(item) * width_mult))
            layers += [*conv_bn(ch, out, 3), nn.ReLU(inplace=True)]
            if gates == "channel":
                layers.append(ChannelGate(out))
            ch = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)]
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@register_model("vgg11")
def vgg11(**kwargs) -> VGG:
    """CIFAR VGG-11 with BN and channel gates."""
    return VGG(depth=11, **kwargs)


@register_model("vgg16")
def vgg16(**kwargs) -> VGG:
    """CIFAR VGG-16 with BN and channel gates."""
    return VGG(depth=16, **kwargs)


@register_model("vgg19")
def vgg19(**kwargs) -> VGG:
    """CIFAR VGG-19 with BN and channel gates (Network Slimming's benchmark network)."""
    return VGG(depth=19, **kwargs)
