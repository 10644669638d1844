"""The layer table: what surgery, pruned files and MAC counting know about each layer type, in one place.

Surgery (:mod:`sss_lightning.surgery`), pruned files (:mod:`sss_lightning.io`) and the MAC estimate
(:class:`~sss_lightning.flops.MacEstimator`) look a layer up here with :func:`layer_kind` (its class, else
its nearest registered base class) instead of testing its type, so supporting another layer type is one
:func:`register_layer` call. As in Torch-Pruning's per-layer pruning functions, a :class:`LayerKind` says
how a layer's output channels and input channels are cut and how many channels it has; it also says how
a pruned file records the layer's shape and builds it again, what it outputs for a constant input, and
how many multiply-adds it costs. Three traits tell the structure walks what may stand between layers:

* ``channelwise``: never mixes channels, so a cut passes through it to the layer producing the channels;
* ``homogeneous``: ``f(0) = 0`` and ``f(g * h) = g * f(h)`` for ``g >= 0``, so a gate folds across it;
* ``sign_sensitive``: that holds for ``g >= 0`` only (ReLU, max pooling), so a negative gate cannot cross.

New layers are made with ``skip_init``: no random init, so cutting never moves the RNG.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import skip_init

from .gates import ChannelGate, Gate, GroupGate, StreamGate
from .residual import GatedResidual

__all__ = [
    "COUNT",
    "FLAG",
    "SIZES",
    "LayerKind",
    "SurgeryError",
    "cut_batchnorm",
    "cut_conv",
    "cut_linear",
    "layer_kind",
    "recorded_kind",
    "recorded_types",
    "register_layer",
    "scale_inputs",
    "unregister_layer",
]

# How a pruned file's loader checks a recorded field before building anything (LayerKind.record_fields).
COUNT = "count"  # an int >= 1
SIZES = "sizes"  # a list of ints >= 0
FLAG = "flag"  # a bool


class SurgeryError(ValueError):
    """The model cannot be cut as its gates ask; the message names the module and what to change."""


@dataclass(frozen=True)
class LayerKind:
    """What the library knows about one layer type; every field may be left out (``None``: not supported).

    Traits: ``channelwise``, ``homogeneous`` and ``sign_sensitive``, as the module docstring defines them.
    Surgery:
        channels: ``(layer) -> int``, the channels of its output: what a gate after it counts.
        in_channels: ``(layer) -> int``, the channels (or features) of its input.
        cut_out: ``(layer, keep) -> (new layer, keep of its input or None)``, a new layer without the output
            channels where the boolean ``keep`` is False; the second item is ``None`` when the layer mixes
            channels (the walk back to the gate's producer ends there) and otherwise the mask of its input
            channels to cut further back (``keep`` itself for a per-channel layer such as BN).
        cut_in: ``(layer, keep, where) -> new layer`` without the input channels where ``keep`` is False:
            the layer may *consume* a gate's channels. Raises :class:`SurgeryError` (prefixed ``where``)
            when the count does not fit.
        consumer_problem: ``(layer) -> str | None``, why this instance cannot consume a gate's channels and
            what to do instead; ``None`` when it can.
        scale_in: ``(layer, scale) -> None``, multiplies its weights per input channel in place.
        scale_out: ``(layer, factor) -> bool``, multiplies its output in place by a scalar or by one factor
            per output channel, by changing its weights; False when this instance cannot (a BN without
            affine parameters).
        constant: ``(layer, value, where) -> value``, its output for a spatially constant input, given as a
            ``(1, C, 1, 1)`` map; ``None`` runs the layer on that map.
    Gate rescaling:
        absorb_in: ``(layer, factor) -> None``, for a layer whose output does not change when its input is
            multiplied by a positive scalar (a normalisation, up to its ``eps``): adjusts its state in place
            so that this also holds in eval mode (BN's running statistics).
    Pruned files:
        record: ``(layer) -> dict`` of the plain-data constructor arguments that define its shape; a layer
            whose record differs from the network as built is written into the file.
        record_fields: the recorded fields the loader checks before building (:data:`COUNT`,
            :data:`SIZES`, :data:`FLAG`).
        rebuild: ``(fields) -> layer``, builds the layer again from its record (weights come from the file).
        reshape: ``(layer, fields) -> None``, instead of ``rebuild``: changes the layer as built in place.
    MACs:
        macs: ``(layer, shape) -> int``, its multiply-adds per sample, given the output shape it had in
            the network as built (``None`` when it did not run); cut layers keep their spatial sizes.
    """

    channelwise: bool = False
    homogeneous: bool = False
    sign_sensitive: bool = False
    channels: Callable[[nn.Module], int] | None = None
    in_channels: Callable[[nn.Module], int] | None = None
    cut_out: Callable[[nn.Module, Tensor], tuple[nn.Module, Tensor | None]] | None = None
    cut_in: Callable[[nn.Module, Tensor, str], nn.Module] | None = None
    consumer_problem: Callable[[nn.Module], str | None] | None = None
    scale_in: Callable[[nn.Module, Tensor], None] | None = None
    scale_out: Callable[[nn.Module, Tensor], bool] | None = None
    constant: Callable[[nn.Module, Tensor, str], Tensor] | None = None
    absorb_in: Callable[[nn.Module, float], None] | None = None
    record: Callable[[nn.Module], dict[str, Any]] | None = None
    record_fields: Mapping[str, str] = field(default_factory=dict)
    rebuild: Callable[[dict[str, Any]], nn.Module] | None = None
    reshape: Callable[[nn.Module, dict[str, Any]], None] | None = None
    macs: Callable[[nn.Module, tuple[int, ...] | None], int] | None = None


_UNKNOWN = LayerKind()
_TABLE: dict[type, LayerKind] = {}
_RECORDED: dict[str, type] = {}  # recipe type name -> the class whose entry builds it again


def register_layer(cls: type, kind: LayerKind) -> LayerKind:
    """Make ``kind`` what surgery, pruned files and MAC counting use for ``cls`` and its subclasses (a
    subclass registered itself wins); with ``rebuild`` or ``reshape``, pruned files record it under
    ``cls.__name__``. Registering ``cls`` again replaces its entry. Returns ``kind``."""
    if not isinstance(cls, type):
        raise TypeError(f"register_layer takes a class (e.g. nn.Conv2d), got {cls!r}")
    if not isinstance(kind, LayerKind):
        raise TypeError(f"register_layer({cls.__name__}, ...) takes a LayerKind, got {type(kind).__name__}")
    if kind.rebuild is not None and kind.reshape is not None:
        raise ValueError(f"the LayerKind of {cls.__name__} sets both rebuild and reshape; a recipe is applied one way")
    rebuilds = kind.rebuild is not None or kind.reshape is not None
    owner = _RECORDED.get(cls.__name__)
    if rebuilds and owner is not None and owner is not cls:
        raise ValueError(
            f"pruned files already record {owner.__module__}.{owner.__qualname__} under the name "
            f"{cls.__name__!r}; rename {cls.__qualname__}, or register it without rebuild/reshape"
        )
    _TABLE[cls] = kind
    if rebuilds:
        _RECORDED[cls.__name__] = cls
    elif owner is cls:
        del _RECORDED[cls.__name__]
    return kind


def unregister_layer(cls: type) -> None:
    """Remove the entry of ``cls`` (a ``KeyError`` names it when it has none)."""
    if cls not in _TABLE:
        raise KeyError(f"{cls.__name__} has no entry in the layer table")
    del _TABLE[cls]
    if _RECORDED.get(cls.__name__) is cls:
        del _RECORDED[cls.__name__]


def layer_kind(layer: object) -> LayerKind:
    """The entry of ``layer``'s class, else of its nearest registered base class, else one that supports
    nothing (surgery refuses to cut through such a layer and says so)."""
    for cls in type(layer).__mro__:
        kind = _TABLE.get(cls)
        if kind is not None:
            return kind
    return _UNKNOWN


def recorded_kind(name: str) -> LayerKind | None:
    """The entry that builds a recipe of type ``name`` again (``None``: a pruned file cannot hold one)."""
    cls = _RECORDED.get(name)
    return None if cls is None else _TABLE[cls]


def recorded_types() -> list[str]:
    """The type names a pruned file may record, sorted."""
    return sorted(_RECORDED)


# --------------------------------------------------------------------------------------------------
# How a layer is cut
# --------------------------------------------------------------------------------------------------


def _index(mask: Tensor) -> Tensor:
    return mask.nonzero().flatten()


def cut_conv(conv: nn.Conv2d, out_keep: Tensor | None = None, in_keep: Tensor | None = None) -> nn.Conv2d:
    """A new ``Conv2d`` keeping the output/input channels where the boolean masks are True.

    For a grouped conv both masks must keep whole groups and agree on which groups survive (a
    depthwise conv has one channel per group); ``groups`` shrinks to the surviving count.
    """
    groups = conv.groups
    out_keep = torch.ones(conv.out_channels, dtype=torch.bool) if out_keep is None else out_keep.cpu()
    in_keep = torch.ones(conv.in_channels, dtype=torch.bool) if in_keep is None else in_keep.cpu()
    weight = conv.weight.detach()
    if groups == 1:
        weight = weight[_index(out_keep)][:, _index(in_keep)]
        new_groups = 1
    else:
        group_out = out_keep.view(groups, -1)
        group_in = in_keep.view(groups, -1)
        alive = group_out.all(1)
        if not (
            torch.equal(alive, group_out.any(1))
            and torch.equal(alive, group_in.all(1))
            and torch.equal(alive, group_in.any(1))
        ):
            raise SurgeryError(
                f"a grouped conv ({conv}) can only lose whole groups, the same ones on input and output; "
                "gate it with GroupGate(groups) instead of per-channel gates"
            )
        weight = weight[_index(out_keep)]
        new_groups = int(alive.sum())
    new = skip_init(
        nn.Conv2d,
        int(in_keep.sum()),
        int(out_keep.sum()),
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=max(new_groups, 1),
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[_index(out_keep)])
    new.train(conv.training)
    return new


def cut_batchnorm(bn: _BatchNorm, keep: Tensor) -> _BatchNorm:
    """A new BN of the same class keeping the channels where ``keep`` is True (affine and running stats)."""
    idx = _index(keep.cpu())
    like = next(iter([*bn.parameters(), *bn.buffers()]), torch.empty(0))
    new = skip_init(
        type(bn),
        len(idx),
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device=like.device,
        dtype=like.dtype,
    )
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[idx])
            new.bias.copy_(bn.bias[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new


def cut_linear(linear: nn.Linear, out_keep: Tensor | None = None, in_keep: Tensor | None = None) -> nn.Linear:
    """A new ``Linear`` keeping the output rows / input columns where the masks are True."""
    weight = linear.weight.detach()
    if out_keep is not None:
        weight = weight[_index(out_keep.cpu())]
    if in_keep is not None:
        weight = weight[:, _index(in_keep.cpu())]
    new = skip_init(
        nn.Linear,
        weight.shape[1],
        weight.shape[0],
        bias=linear.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            new.bias.copy_(bias if out_keep is None else bias[_index(out_keep.cpu())])
    new.train(linear.training)
    return new


def scale_inputs(layer: nn.Module, scale: Tensor) -> None:
    """Multiply ``layer``'s weights per input channel in place: ``layer(x * s) == layer'(x)``.

    For a ``Linear`` after a flatten, each channel owns ``in_features / len(scale)`` contiguous columns.
    """
    kind = layer_kind(layer)
    if kind.scale_in is None:
        raise TypeError(
            f"scale_inputs: {type(layer).__name__} has no per-input-channel weights to scale; pass a Conv2d or "
            "Linear, or register a LayerKind with scale_in for it"
        )
    with torch.no_grad():
        kind.scale_in(layer, scale)


def _conv_out(conv: nn.Conv2d, keep: Tensor) -> tuple[nn.Conv2d, Tensor | None]:
    if conv.groups == 1:
        return cut_conv(conv, out_keep=keep), None
    # Depthwise/grouped: a group's inputs only feed that group, so they go too, and so do the channels that
    # produce them further back.
    in_keep = keep.view(conv.groups, -1).all(1).repeat_interleave(conv.in_channels // conv.groups)
    return cut_conv(conv, out_keep=keep, in_keep=in_keep), in_keep


def _conv_in(conv: nn.Conv2d, keep: Tensor, where: str) -> nn.Conv2d:
    if conv.in_channels != keep.numel():
        raise SurgeryError(f"{where}: the gate has {keep.numel()} channels but its consumer takes {conv.in_channels}")
    return cut_conv(conv, in_keep=keep)


def _conv_consumer_problem(conv: nn.Conv2d) -> str | None:
    if conv.groups == 1:
        return None
    return (
        "the gate's consumer is a grouped/depthwise conv; put the gate after it (the depthwise conv is then cut "
        "together with its producer)"
    )


def _conv_scale_in(conv: nn.Conv2d, scale: Tensor) -> None:
    groups = conv.groups
    w = conv.weight.view(groups, conv.out_channels // groups, conv.in_channels // groups, -1)
    w.mul_(scale.to(w).view(groups, 1, -1, 1))


def _linear_in(linear: nn.Linear, keep: Tensor, where: str) -> nn.Linear:
    channels = keep.numel()
    if linear.in_features % channels:
        raise SurgeryError(f"{where}: Linear({linear.in_features}) input is not a multiple of {channels} channels")
    return cut_linear(linear, in_keep=keep.repeat_interleave(linear.in_features // channels))


def _linear_scale_in(linear: nn.Linear, scale: Tensor) -> None:
    per_channel = linear.in_features // scale.numel()
    linear.weight.mul_(scale.repeat_interleave(per_channel).to(linear.weight).view(1, -1))


def _scale_weight_and_bias(layer: nn.Conv2d | nn.Linear, factor: Tensor) -> bool:
    """Scale the output by ``factor``: one scalar, or one factor per output channel."""
    layer.weight.mul_(factor.reshape(-1, *[1] * (layer.weight.dim() - 1)))
    if layer.bias is not None:
        layer.bias.mul_(factor)
    return True


def _scale_batchnorm(bn: _BatchNorm, factor: Tensor) -> bool:
    if not bn.affine:
        return False
    bn.weight.mul_(factor)
    bn.bias.mul_(factor)
    return True


def _absorb_batchnorm(bn: _BatchNorm, factor: float) -> None:
    """The input will be ``factor`` times larger: so are the running mean and, squared, the variance."""
    if bn.track_running_stats and bn.running_mean is not None:
        bn.running_mean.mul_(factor)
        bn.running_var.mul_(factor * factor)


def _affine_constant(layer: nn.Conv2d | nn.Linear, v: Tensor) -> Tensor:
    w = layer.weight.detach()
    out = w.new_zeros(w.shape[0]) if not v.any() else w.reshape(w.shape[0], -1) @ v.flatten()
    if layer.bias is not None:
        out = out + layer.bias.detach()
    return out.view(1, -1, 1, 1)


def _conv_constant(conv: nn.Conv2d, v: Tensor, where: str) -> Tensor:
    if v.any() and (conv.kernel_size != (1, 1) or conv.groups != 1):
        raise SurgeryError(
            f"{where}: a branch emptied by zero gates feeds a constant into a "
            f"{conv.kernel_size} conv, whose output is not constant at the borders; gate it differently"
        )
    return _affine_constant(conv, v)


def _conv_macs(conv: nn.Conv2d, shape: tuple[int, ...] | None) -> int:
    if shape is None:
        return 0  # it did not run in the network as built
    kh, kw = conv.kernel_size
    return conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * shape[-2] * shape[-1]


def _spatially_constant(layer: nn.Module, v: Tensor, where: str) -> Tensor:
    return v  # a spatially constant map stays constant


def _cut_gate(gate: Gate, keep: Tensor) -> tuple[Gate, Tensor]:
    new = copy.deepcopy(gate)
    scale = gate.scale.detach()[_index(keep.cpu())].clone()
    new.scale = nn.Parameter(scale, requires_grad=gate.scale.requires_grad)
    return new, keep


def _cut_group_gate(gate: GroupGate, keep: Tensor) -> tuple[GroupGate, Tensor]:
    new, _ = _cut_gate(gate, keep.view(gate.num_structures, -1).all(1))
    return new, keep


def _reshape_residual(block: GatedResidual, fields: dict[str, Any]) -> None:
    if not fields["branch"]:
        block.branch = None
    if fields["branch_bias"] is not None:
        block.branch_bias = torch.zeros(fields["branch_bias"])


def _build(cls: type[nn.Module]) -> Callable[[dict[str, Any]], nn.Module]:
    """Rebuild from a record whose fields are ``cls``'s keyword arguments."""
    return lambda fields: cls(**fields)


def _gate_kind(cls: type[Gate], cut_out: Callable) -> LayerKind:
    """A gate type's entry: cut with its channels; recorded by its structure count (in-training shrink slices it)."""
    return LayerKind(
        cut_out=cut_out,
        record=lambda m: {"n": m.num_structures},
        record_fields={"n": COUNT},
        rebuild=lambda fields: cls(fields["n"]),
    )


# --------------------------------------------------------------------------------------------------
# The built-in entries
# --------------------------------------------------------------------------------------------------

register_layer(
    nn.Conv2d,
    LayerKind(
        channels=lambda m: m.out_channels,
        in_channels=lambda m: m.in_channels,
        cut_out=_conv_out,
        cut_in=_conv_in,
        consumer_problem=_conv_consumer_problem,
        scale_in=_conv_scale_in,
        scale_out=_scale_weight_and_bias,
        constant=_conv_constant,
        record=lambda m: {
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size),
            "stride": list(m.stride),
            "padding": list(m.padding),
            "dilation": list(m.dilation),
            "groups": m.groups,
            "bias": m.bias is not None,
            "padding_mode": m.padding_mode,
        },
        record_fields={
            "in_channels": COUNT,
            "out_channels": COUNT,
            "groups": COUNT,
            "kernel_size": SIZES,
            "stride": SIZES,
            "padding": SIZES,
            "dilation": SIZES,
            "bias": FLAG,
        },
        rebuild=_build(nn.Conv2d),
        macs=_conv_macs,
    ),
)
register_layer(
    nn.Linear,
    LayerKind(
        channels=lambda m: m.out_features,
        in_channels=lambda m: m.in_features,
        cut_out=lambda m, keep: (cut_linear(m, out_keep=keep), None),
        cut_in=_linear_in,
        scale_in=_linear_scale_in,
        scale_out=_scale_weight_and_bias,
        constant=lambda m, v, where: _affine_constant(m, v),
        record=lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
        record_fields={"in_features": COUNT, "out_features": COUNT, "bias": FLAG},
        rebuild=_build(nn.Linear),
        macs=lambda m, shape: m.in_features * m.out_features,
    ),
)
_BATCHNORM = register_layer(
    _BatchNorm,  # every BN (1d/2d/3d, SyncBatchNorm) is cut alike; files rebuild the 1d and 2d ones
    LayerKind(
        channels=lambda m: m.num_features,
        in_channels=lambda m: m.num_features,
        cut_out=lambda m, keep: (cut_batchnorm(m, keep), keep),
        scale_out=_scale_batchnorm,
        absorb_in=_absorb_batchnorm,
        record=lambda m: {
            "num_features": m.num_features,
            "eps": m.eps,
            "momentum": m.momentum,
            "affine": m.affine,
            "track_running_stats": m.track_running_stats,
        },
        record_fields={"num_features": COUNT, "affine": FLAG, "track_running_stats": FLAG},
    ),
)
register_layer(nn.BatchNorm2d, replace(_BATCHNORM, rebuild=_build(nn.BatchNorm2d)))
register_layer(nn.BatchNorm1d, replace(_BATCHNORM, rebuild=_build(nn.BatchNorm1d)))

# Gates: cut with the channels they scale (a group gate loses a group once all its channels go).
register_layer(Gate, LayerKind(cut_out=_cut_gate))
for _cls, _cut in ((ChannelGate, _cut_gate), (StreamGate, _cut_gate), (GroupGate, _cut_group_gate)):
    register_layer(_cls, _gate_kind(_cls, _cut))
register_layer(
    GatedResidual,
    LayerKind(
        record=lambda m: {
            "branch": m.branch is not None,
            "branch_bias": None if m.branch_bias is None else m.branch_bias.numel(),
        },
        record_fields={"branch": FLAG},
        reshape=_reshape_residual,
    ),
)

# Layers that never mix channels; those that map zero to zero and commute with a gate's nonnegative scale
# are homogeneous too (a gate folds across them into its consumer); pooling keeps a constant map constant.
_ACTIVATION = LayerKind(channelwise=True)
for _cls in (
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Mish,
):
    register_layer(_cls, _ACTIVATION)
register_layer(nn.ReLU, LayerKind(channelwise=True, homogeneous=True, sign_sensitive=True))
register_layer(nn.Identity, LayerKind(channelwise=True, homogeneous=True, rebuild=lambda fields: nn.Identity()))
for _cls in (nn.Dropout, nn.Dropout2d):
    register_layer(_cls, LayerKind(channelwise=True, homogeneous=True))
for _cls in (nn.AvgPool2d, nn.AdaptiveAvgPool2d):
    register_layer(_cls, LayerKind(channelwise=True, homogeneous=True, constant=_spatially_constant))
for _cls in (nn.MaxPool2d, nn.AdaptiveMaxPool2d):
    register_layer(
        _cls, LayerKind(channelwise=True, homogeneous=True, sign_sensitive=True, constant=_spatially_constant)
    )
# Flatten maps zero to zero and commutes with scaling, but moves channels apart: a cut cannot pass it.
register_layer(nn.Flatten, LayerKind(homogeneous=True, constant=_spatially_constant))
del _cls, _cut
