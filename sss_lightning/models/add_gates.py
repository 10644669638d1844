"""``add_gates``: SSS for a model the user already has, without rewriting its class.

Each torchvision ``BasicBlock``/``Bottleneck`` (ResNet, ResNeXt, Wide ResNet) is replaced by a
:class:`GatedResidual` over the *same* layer objects (weights, pretrained or not, are kept) with the
requested gates, and our own gate-less ``GatedResidual`` blocks get gates inserted. The result goes
through the same surgery as the built-in models. State-dict keys of the blocks change
(``layer1.0.conv1.weight`` becomes ``layer1.0.branch.0.weight``): load pretrained weights before.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..gates import BlockGate, ChannelGate, Gate, GroupGate
from .blocks import GatedResidual
from .registry import register_model

__all__ = ["add_gates", "GATE_KIND_NAMES"]

GATE_KIND_NAMES = ("block", "channel", "group")


def _check_kinds(kinds: Sequence[str]) -> set[str]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = set(kinds) - set(GATE_KIND_NAMES)
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {GATE_KIND_NAMES}, got {tuple(kinds)}")
    return set(kinds)


def _gated_branch(layers: list[nn.Module], kinds: set[str], where: str) -> nn.Sequential:
    """Insert a gate after each ReLU that sits between a producing conv and a consuming conv."""
    out: list[nn.Module] = []
    for i, layer in enumerate(layers):
        out.append(layer)
        if not isinstance(layer, nn.ReLU) or not any(isinstance(m, nn.Conv2d) for m in layers[i + 1 :]):
            continue
        producer = next(m for m in reversed(layers[:i]) if isinstance(m, nn.Conv2d))
        consumer = next(m for m in layers[i + 1 :] if isinstance(m, nn.Conv2d))
        if producer.groups > 1:
            if "group" in kinds:
                out.append(GroupGate(producer.groups))
            elif "channel" in kinds:
                raise ValueError(
                    f"{where}: channel gates cannot cut part of a group of its grouped conv "
                    f"(groups={producer.groups}); supported kinds for this block: block, group"
                )
        elif "channel" in kinds:
            if consumer.groups > 1:
                continue  # this width feeds a grouped conv: cut by that conv's group gates instead
            out.append(ChannelGate(producer.out_channels))
    if "group" in kinds and not any(isinstance(m, GroupGate) for m in out):
        raise ValueError(
            f"{where}: 'group' needs a grouped conv, found none; supported kinds for this block: block, channel"
        )
    return nn.Sequential(*out)


def _from_torchvision(block: BasicBlock | Bottleneck, kinds: set[str], where: str) -> GatedResidual:
    if isinstance(block, BasicBlock):
        layers = [block.conv1, block.bn1, nn.ReLU(inplace=True), block.conv2, block.bn2]
    else:
        layers = [
            block.conv1,
            block.bn1,
            nn.ReLU(inplace=True),
            block.conv2,
            block.bn2,
            nn.ReLU(inplace=True),
            block.conv3,
            block.bn3,
        ]
    return GatedResidual(
        _gated_branch(layers, kinds, where),
        shortcut=block.downsample,
        gate=BlockGate() if "block" in kinds else None,
        post_act=nn.ReLU(inplace=True),
    )


def _into_own_block(block: GatedResidual, kinds: set[str], where: str) -> GatedResidual:
    if block.branch is None or any(isinstance(m, Gate) for m in block.modules()):
        raise ValueError(f"{where}: this GatedResidual already has gates (or was pruned); add_gates needs a plain one")
    return GatedResidual(
        _gated_branch(list(block.branch), kinds, where),
        shortcut=block.shortcut,
        gate=BlockGate() if "block" in kinds else None,
        post_act=block.post_act,
        branch_bias=block.branch_bias,
    )


def add_gates(model: nn.Module, kinds: Sequence[str] = ("block",)) -> nn.Module:
    """Insert SSS gates of the given ``kinds`` ("block", "channel", "group") into ``model`` in place.

    Raises ``ValueError`` naming the module path when a block cannot take a requested kind, and when the
    model has no block this function knows (then declare the gates in your own modules instead).
    """
    wanted = _check_kinds(kinds)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck, GatedResidual))]
    if not targets:
        raise ValueError(
            f"add_gates found no block it knows in {type(model).__name__}: it gates torchvision BasicBlock/"
            "Bottleneck (ResNet, ResNeXt, Wide ResNet) and sss_lightning GatedResidual blocks. For other layers, "
            "put ChannelGate/GroupGate/BlockGate modules in your network (README: Adding an architecture)"
        )
    for name, block in targets:
        where = f"{name} ({type(block).__name__})"
        if isinstance(block, GatedResidual):
            new = _into_own_block(block, wanted, where)
        else:
            new = _from_torchvision(block, wanted, where)
        model.set_submodule(name, new)
    return model


def _torchvision_builder(fn_name: str):
    def builder(num_classes: int = 1000, in_channels: int = 3, gates: str = "block") -> nn.Module:
        import torchvision

        kinds = {
            "block": ("block",),
            "channel": ("channel",),
            "group": ("group",),
            "both": ("block", "channel"),
            "block+group": ("block", "group"),
        }
        if gates not in kinds:
            raise ValueError(f"gates must be one of {tuple(kinds)}, got {gates!r}")
        model = getattr(torchvision.models, fn_name)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return add_gates(model, kinds[gates])

    builder.__name__ = f"tv_{fn_name}"
    builder.__doc__ = f"torchvision.models.{fn_name} with SSS gates inserted by add_gates."
    return builder


register_model("tv_resnet50", input_size=(3, 224, 224))(_torchvision_builder("resnet50"))
register_model("tv_resnext50_32x4d", input_size=(3, 224, 224))(_torchvision_builder("resnext50_32x4d"))
