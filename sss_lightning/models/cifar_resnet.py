"""He et al.'s CIFAR ResNets (depth 6n+2 basic, 9n+2 bottleneck) with SSS gates.

``gates`` picks what SSS may remove: ``"block"`` puts a :class:`BlockGate` on every residual branch
(adaptive depth, as in the official code), ``"channel"`` puts :class:`ChannelGate` on the blocks' inner
channels after their activation (adaptive width), ``"both"`` does both, ``"stream"`` puts one
:class:`StreamGate` on each residual stream (the channels a stage's blocks share: the width of the
residual path), ``"all"`` (the default) is ``"both"`` plus ``"stream"``, and ``"none"`` builds the plain
network (the baseline for cost comparisons). ``"all"`` is the default because it measured the most
accurate at equal MACs (the benchmarks page): ``"both"`` cannot narrow the residual path. Downsampling
shortcuts are 1x1 conv + BN projections.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ..gates import BlockGate, ChannelGate, StreamGate
from ..streams import Stream
from .blocks import GatedResidual, GateSpec, check_gate_spec, conv_bn
from .registry import register_model

__all__ = ["CifarResNet"]

BlockType = Literal["basic", "bottleneck"]


def _branch(in_ch: int, planes: int, stride: int, block: BlockType, channel_gates: bool) -> nn.Sequential:
    def gate(ch: int) -> list[nn.Module]:
        return [ChannelGate(ch)] if channel_gates else []

    if block == "basic":
        layers = [*conv_bn(in_ch, planes, 3, stride), nn.ReLU(inplace=True), *gate(planes)]
        layers += conv_bn(planes, planes, 3)
    else:
        layers = [*conv_bn(in_ch, planes, 1), nn.ReLU(inplace=True), *gate(planes)]
        layers += [*conv_bn(planes, planes, 3, stride), nn.ReLU(inplace=True), *gate(planes)]
        layers += conv_bn(planes, planes * 4, 1)
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, three stages of widths ``width * (1, 2, 4)``, global pool, linear head."""

    def __init__(
        self,
        depth: int = 20,
        block: BlockType | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        gates: GateSpec = "all",
    ) -> None:
        super().__init__()
        check_gate_spec(gates)
        block = block or ("bottleneck" if depth >= 164 else "basic")
        per_block = {"basic": 2, "bottleneck": 3}.get(block)
        if per_block is None:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if depth < 2 + 3 * per_block or (depth - 2) % (3 * per_block):
            raise ValueError(
                f"depth {depth} does not fit {block} blocks: it must be {3 * per_block}n+2 with n >= 1 "
                f"(e.g. {'20, 32, 56, 110' if block == 'basic' else '29, 164'})"
            )
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        n = (depth - 2) // (3 * per_block)
        expansion = 1 if block == "basic" else 4
        block_gates = gates in ("block", "both", "all")
        channel_gates = gates in ("channel", "both", "all")

        def stream(channels: int) -> list[nn.Module]:  # a new stream starts: its gate, after each writer
            return [StreamGate(channels)] if gates in ("stream", "all") else []

        self.stem = nn.Sequential(*conv_bn(in_channels, width, 3), nn.ReLU(inplace=True), *stream(width))
        stream_gate = list(self.stem)[3:]
        # each stream gate also under its own name, so that its parameter's name never depends on which
        # of the blocks that write the stream surgery keeps (in-training shrink matches parameters by name)
        gate_holder: list[nn.Module] = []
        if stream_gate:
            self.stream_gates = nn.ModuleList()
        in_ch = width
        stages = []
        for stage, planes in enumerate((width, width * 2, width * 4)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                out_ch = planes * expansion
                shortcut = None
                if stride != 1 or in_ch != out_ch:
                    stream_gate = stream(out_ch)
                    shortcut = nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride), *stream_gate)
                blocks.append(
                    GatedResidual(
                        nn.Sequential(*_branch(in_ch, planes, stride, block, channel_gates), *stream_gate),
                        shortcut=shortcut,
                        gate=BlockGate() if block_gates else None,
                        post_act=nn.ReLU(inplace=True),
                    )
                )
                in_ch = out_ch
                if stream_gate and stream_gate[0] not in gate_holder:
                    gate_holder.append(stream_gate[0])
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        if stream_gate:
            self.stream_gates.extend(gate_holder)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))

    def sss_streams(self) -> list[Stream]:
        """The residual streams and their readers: the stem's output with every block up to the first
        projection shortcut, then one stream per projection (read by the blocks' first convs, the next
        projection and, for the last stream, the head)."""
        streams: list[Stream] = []
        gate, readers = self.stem[-1], []
        for block in (*self.layer1, *self.layer2, *self.layer3):
            projection = isinstance(block.shortcut, nn.Sequential)
            if projection:
                readers.append(block.shortcut[0])
            if block.branch is not None:
                readers.append(block.branch[0])
            if projection:
                streams.append(Stream(gate, tuple(readers)))
                gate, readers = block.shortcut[-1], []
        streams.append(Stream(gate, (*readers, self.head[-1])))
        return [s for s in streams if isinstance(s.gate, StreamGate)]


def _make_builder(depth: int):
    def builder(**kwargs) -> CifarResNet:
        return CifarResNet(depth=depth, **kwargs)

    builder.__name__ = f"resnet{depth}"
    builder.__doc__ = f"CIFAR ResNet-{depth} with SSS gates (see :class:`CifarResNet`)."
    return builder


for _depth in (20, 32, 44, 56, 110, 164):
    register_model(f"resnet{_depth}")(_make_builder(_depth))
