"""``add_gates``: SSS for a model the user already has, without rewriting its class.

Each torchvision ``BasicBlock``/``Bottleneck`` (ResNet, ResNeXt, Wide ResNet) is replaced by a
:class:`GatedResidual` over the *same* layer objects (weights, pretrained or not, are kept) with the
requested gates, and our own gate-less ``GatedResidual`` blocks get gates inserted. The result goes
through the same surgery as the built-in models. State-dict keys of the blocks change
(``layer1.0.conv1.weight`` becomes ``layer1.0.branch.0.weight``): load pretrained weights before.

To save the pruned model and reload it in a fresh process, the gated model needs a construction record:
``add_gates("resnet18", kinds, num_classes=10)`` builds the torchvision model itself and records the
builder, its arguments and the kinds; ``add_gates(model, kinds)`` extends the record ``model`` already has
(a registry or :func:`~sss_lightning.models.registry.rebuildable` model). A bare torchvision instance has
none, and the callbacks that save files say so, with this fix, before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..gates import BlockGate, ChannelGate, Gate, GroupGate
from .blocks import GatedResidual
from .registry import build_from_record, import_path, register_model

__all__ = ["add_gates", "gated_model", "GATE_KIND_NAMES"]

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


def _torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``torchvision.models.<name>(**kwargs)``, recorded without ``weights``: a pruned file holds its own."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError as err:
        raise ValueError(
            f"add_gates({name!r}): {err}; pass a torchvision.models builder name such as 'resnet18' or "
            "'resnext50_32x4d', or an nn.Module"
        ) from None
    model = builder(**kwargs)
    recorded = {k: v for k, v in kwargs.items() if k != "weights"}
    model.sss_arch = {"name": import_path(builder), "kwargs": recorded}
    return model


def add_gates(model: nn.Module | str, kinds: Sequence[str] = ("block",), **builder_kwargs: Any) -> nn.Module:
    """Insert SSS gates of the given ``kinds`` ("block", "channel", "group") into ``model`` in place.

    ``model`` may also be a torchvision builder name (``add_gates("resnet18", num_classes=10)``): the model
    is built with ``builder_kwargs`` and the call is recorded, so its pruned form can be saved and reloaded
    in a fresh process (``weights=`` is used for the build but not recorded: the file holds the weights).

    Raises ``ValueError`` naming the module path when a block cannot take a requested kind, and when the
    model has no block this function knows (then declare the gates in your own modules instead).
    """
    wanted = _check_kinds(kinds)
    if isinstance(model, str):
        model = _torchvision(model, builder_kwargs)
    elif builder_kwargs:
        raise TypeError(
            f"add_gates got builder arguments {sorted(builder_kwargs)} with an already built "
            f"{type(model).__name__}; they are for a builder name: add_gates('resnet18', kinds, num_classes=10)"
        )
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
    _record_gating(model, sorted(wanted))
    return model


def gated_model(base: dict[str, Any], kinds: list[str]) -> nn.Module:
    """The model the construction record ``base`` describes, with gates of ``kinds`` added: how a model
    gated by :func:`add_gates` is rebuilt in a fresh process (its record names this function)."""
    return add_gates(build_from_record(base), kinds)


def _record_gating(model: nn.Module, kinds: list[str]) -> None:
    base = getattr(model, "sss_arch", None)
    if base is not None:
        model.sss_arch = {"name": import_path(gated_model), "kwargs": {"base": base, "kinds": kinds}}
        return
    if getattr(model, "sss_arch_problem", None):  # a more precise reason is already known (e.g. @rebuildable's)
        return
    model.sss_arch_problem = (
        f"this {type(model).__name__} was gated by add_gates(model, kinds={kinds}), but how the model itself was "
        "built is not recorded, so a fresh process cannot rebuild it. Fix: let add_gates build it, "
        f"add_gates('<torchvision builder, e.g. resnet18>', kinds={kinds}, num_classes=...) with the builder's "
        "keyword arguments, or build it in a class decorated with @sss_lightning.rebuildable"
    )


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
