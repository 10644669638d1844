"""Networks from outside the registry, in an importable module as a user's own would be: the README's
three ways to bring an architecture (an SSSModule subclass with ``build_network``, an ``nn.Module`` class
of one's own declaring gates, a torchvision model gated by ``add_gates``), for tests/test_persistence.py.
A fresh process imports this module by name to rebuild them (construction records name it, as
"tests.persist_models:GatedConvNet"), so it is a module of networks, not a test module, and keeps its name."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sss_lightning import BlockGate, ChannelGate, SSSModule, add_gates, rebuildable, register_model
from sss_lightning.models import GatedResidual


def gated_block(channels: int, hidden: int) -> GatedResidual:
    """A residual block whose inner width (channel gate) and whole branch (block gate) SSS selects."""
    branch = nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        ChannelGate(hidden),
        nn.Conv2d(hidden, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
    )
    return GatedResidual(branch, gate=BlockGate(), post_act=nn.ReLU(inplace=True))


class TinySubclass(SSSModule):
    """An SSSModule subclass that builds its own network (a plain ``nn.Sequential``) in ``build_network``."""

    def __init__(self, width: int = 4, num_classes: int = 4, **kwargs: Any) -> None:
        self.width, self.classes = width, num_classes
        super().__init__(num_classes=num_classes, **kwargs)

    def build_network(self) -> nn.Module:
        w = self.width
        return nn.Sequential(
            nn.Conv2d(3, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            ChannelGate(2 * w),
            nn.Conv2d(2 * w, w, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            gated_block(w, 3 * w),
            gated_block(w, 2 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(w, self.classes),
        )


@rebuildable
class GatedConvNet(nn.Module):
    """A user's own network class with gates and its own ``forward``, recorded by ``@rebuildable``."""

    def __init__(self, width: int = 4, num_classes: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            ChannelGate(width),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.block = gated_block(2 * width, 3 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.features(x)).mean((2, 3)))


class UnrecordedSubclass(GatedConvNet):
    """A subclass of a recorded class that is not decorated itself: it cannot claim its parent's record."""


def user_net() -> nn.Module:
    return GatedConvNet(width=4, num_classes=4)


def torchvision_net() -> nn.Module:
    """torchvision's ResNet-18, built and gated by add_gates, which records both."""
    return add_gates("resnet18", kinds=("block", "channel"), num_classes=4)


@register_model("persist_tiny", input_size=(3, 8, 8))
def tiny_registered(width: int = 4, num_classes: int = 4) -> nn.Module:
    """A builder the user's own module registers (the README's @register_model way)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        ChannelGate(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )
