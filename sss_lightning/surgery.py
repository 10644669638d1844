"""Structural surgery: a gated network -> a physically smaller network with the same eval outputs.

How structures are found (what depends on what) is kept apart from how a layer is cut (the layer table
of :mod:`sss_lightning.layers`, which also holds the ``cut_*`` primitives), as in Torch-Pruning, but
without tracing: gates declare what they control by *where they sit*, which is why one code path serves
every architecture built from these two shapes:

* an ``nn.Sequential`` holding a :class:`~sss_lightning.gates.ChannelGate` or
  :class:`~sss_lightning.gates.GroupGate`: the gate indexes the channels of the nearest conv/linear
  before it (its *producer*, with the BNs in between and any depthwise or grouped conv, whose input
  channels are cut together with their output) and the input of the first conv/linear after it (its
  *consumer*; only zero-preserving, positively homogeneous layers such as ReLU, pooling, dropout and
  flatten may stand between). Zero gates cut the channels from producer and consumer; non-zero gates
  are folded into the consumer's input weights.
* a :class:`~sss_lightning.residual.GatedResidual`: a zero :class:`~sss_lightning.gates.BlockGate`
  removes the branch (the block becomes its shortcut); a non-zero one is folded into the branch's last
  BN/conv. A branch whose inner channels are all cut becomes the constant it outputs.

* a :class:`~sss_lightning.gates.StreamGate` (one instance after every writer of a residual stream,
  its readers declared by ``sss_streams()``, see :mod:`sss_lightning.streams`): zero factors cut the
  channel from every writer and every reader; non-zero ones are folded into each writer's last BN/conv.

Which layers may stand where, and how each is cut, is the layer's entry in that table: a layer type it
lacks is supported by :func:`~sss_lightning.layers.register_layer`. A module with another shape plugs in
by defining ``sss_prune(self) -> nn.Module`` (it may call
:func:`prune_sequential` and the ``cut_*`` primitives); surgery calls it instead of descending into it.
To also support ``fold_gates=False`` or ``round_to`` it takes that keyword and passes it on.

``prune(model, fold_gates=False)`` only *slices*: zero structures are cut as above, but surviving gates
stay in place (cut to their surviving entries, ``requires_grad`` kept) and nothing is folded, so every
parameter of the result is a sub-tensor of the parameter with the same name in ``model``. That is what
lets in-training shrink (:mod:`sss_lightning.shrink`) carry optimizer state over by indexing.

``prune(model, round_to=8)`` keeps each cut layer's channel count a multiple of 8 by keeping some
zero-gated channels too (their folded weights are zero, so outputs are still exact): runtimes with
blocked layouts (oneDNN, ONNX Runtime) run such widths much faster than odd ones, for a few more MACs.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .gates import Gate, GroupGate, StreamGate, iter_gates
from .layers import SurgeryError, cut_batchnorm, cut_conv, cut_linear, layer_kind, scale_inputs
from .residual import GatedResidual
from .streams import StreamOwner, gate_positions, stream_owners

__all__ = [
    "SurgeryError",
    "prune",
    "check_round_to",
    "prune_sequential",
    "cut_conv",
    "cut_batchnorm",
    "cut_linear",
    "scale_inputs",
    "find_consumer",
]


def _index(mask: Tensor) -> Tensor:
    return mask.nonzero().flatten()


def _scale_outputs(layer: nn.Module, factor: Tensor, where: str) -> None:
    """Fold a scalar block gate into the last affine layer of a branch: ``g * layer(x) == layer'(x)``."""
    scale_out = layer_kind(layer).scale_out
    with torch.no_grad():
        folded = scale_out is not None and scale_out(layer, factor)
    if not folded:
        raise SurgeryError(
            f"{where}: the block gate can only be folded into a final affine BN, conv or linear of the "
            f"branch, found {type(layer).__name__}; end the branch with one of those"
        )


# --------------------------------------------------------------------------------------------------
# What depends on what: gates in an nn.Sequential
# --------------------------------------------------------------------------------------------------


def _channel_scale(gate: Gate, channels: int | None) -> Tensor:
    """The gate as one factor per channel (a group gate repeats its factor over the group's channels)."""
    if not isinstance(gate, GroupGate):
        return gate.scale.detach()
    if channels is None:
        raise SurgeryError(f"GroupGate({gate.num_structures}): no conv/linear/BN before it tells its channel count")
    try:
        return gate.channel_factors(channels).detach()
    except ValueError as err:  # the gate's own message: which count it got and what it needs
        raise SurgeryError(str(err)) from None


def _producer_channels(layers: list[nn.Module], i: int) -> int | None:
    for m in reversed(layers[:i]):
        channels = layer_kind(m).channels
        if channels is not None:
            return channels(m)
    return None


def _cut_producers(layers: list[nn.Module], i: int, keep: Tensor, where: str) -> None:
    """Cut ``keep``'s False channels from every layer before the gate at ``i`` that produces them."""
    for k in range(i - 1, -1, -1):
        m = layers[k]
        kind = layer_kind(m)
        if kind.cut_out is not None:
            layers[k], keep = kind.cut_out(m, keep)  # per-channel layers (BN, gates) pass the cut on
            if keep is None:
                return
        elif not kind.channelwise:
            raise SurgeryError(
                f"{where}: cannot cut channels through {type(m).__name__} at position {k}; between a gate and "
                "the conv/linear producing its channels only BN and channel-wise layers may stand"
            )
    raise SurgeryError(
        f"{where}: no conv/linear before the gate produces its channels (the sequence's input cannot be cut; "
        "its channels belong to the layer before it)"
    )


def find_consumer(layers: list[nn.Module], i: int, scale: Tensor, where: str) -> int:
    """Index of the conv/linear in ``layers`` that consumes the channels of the gate at ``i`` (scaled by
    ``scale``), or a :class:`SurgeryError` saying why the gate has none surgery can fold into."""
    for j in range(i + 1, len(layers)):
        m = layers[j]
        kind = layer_kind(m)
        if kind.cut_in is not None:
            problem = kind.consumer_problem(m) if kind.consumer_problem is not None else None
            if problem is not None:
                raise SurgeryError(f"{where}: {problem}")
            return j
        if kind.sign_sensitive and (scale < 0).any():
            raise SurgeryError(
                f"{where}: a negative gate cannot be folded across {type(m).__name__}; train gates with "
                "nonnegative=True (the default for apg/ista)"
            )
        if not kind.homogeneous:
            raise SurgeryError(
                f"{where}: {type(m).__name__} between the gate and the next conv/linear does not map a zero "
                "channel to zero (or a scaled channel to a scaled one); place the gate right before its consumer"
            )
    raise SurgeryError(f"{where}: no conv/linear after the gate consumes its channels in the same nn.Sequential")


def _cut_consumer(layer: nn.Module, keep: Tensor, scale: Tensor | None, where: str) -> nn.Module:
    """The consumer without the cut input channels, with the surviving gate factors folded in (if given)."""
    new = layer_kind(layer).cut_in(layer, keep, where)
    if scale is not None:
        scale_inputs(new, scale[_index(keep.cpu())])
    return new


@torch.no_grad()
def _constant_output(layers: list[nn.Module], channels: int, where: str) -> Tensor:
    """What ``layers`` output (one value per channel) when their input is all zeros."""
    v = torch.zeros(1, channels, 1, 1, dtype=layers[0].weight.dtype, device=layers[0].weight.device)
    for m in layers:
        constant = layer_kind(m).constant
        v = constant(m, v, where) if constant is not None else copy.deepcopy(m).eval()(v)
    return v.flatten()


def _round_up(keep: Tensor, structures: int, round_to: int) -> Tensor:
    """``keep`` plus the first dropped structures, until the kept channels are a multiple of ``round_to``
    (or every structure is kept): a zero-gated structure costs MACs but never changes the output."""
    per = keep.numel() // structures
    kept = keep.view(structures, per).all(1)
    alive = int(kept.sum())
    target = next((k for k in range(alive, structures + 1) if k * per % round_to == 0), structures)
    kept[(~kept).nonzero().flatten()[: target - alive]] = True
    return kept.repeat_interleave(per)


def check_round_to(round_to: int) -> int:
    """``round_to`` itself, or a ``ValueError`` saying what it must be (callbacks check it when built)."""
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int (1 keeps exactly the non-zero channels), got {round_to!r}")
    return round_to


def prune_sequential(
    seq: nn.Sequential,
    *,
    allow_constant: bool = False,
    where: str = "",
    fold_gates: bool = True,
    round_to: int = 1,
) -> nn.Module | Tensor:
    """Cut the channels behind the zero gates of ``seq`` and fold the others; gates become ``nn.Identity``.

    Returns the new ``nn.Sequential``, or, when a gate zeroes all its channels and ``allow_constant``,
    the constant (one value per output channel) that the sequence then outputs for every input.
    Without ``allow_constant`` such a layer keeps one channel, zeroed by its gate (exact, minimal).
    With ``fold_gates=False`` the gates stay, cut to their surviving entries, and no weight is scaled.
    With ``round_to`` > 1 each cut layer keeps a multiple of ``round_to`` channels where it has that many.
    """
    check_round_to(round_to)
    where = where or "nn.Sequential"
    layers = list(seq)
    for i, gate in enumerate(layers):
        if not isinstance(gate, Gate) or isinstance(gate, StreamGate):  # streams are cut by their owner
            continue
        here = f"{where}[{i}] ({type(gate).__name__})"
        channels = _producer_channels(layers, i)
        scale = _channel_scale(gate, channels)
        keep = scale != 0
        j = find_consumer(layers, i, scale, here)
        if not keep.any():
            consumer = layers[j]
            if allow_constant:
                consumes = layer_kind(consumer).in_channels
                width = consumes(consumer) if consumes is not None else scale.numel()
                return _constant_output(layers[j:], width, here)
            # the narrowest layer left: one structure (a channel, or a whole group), zeroed by its gate
            keep = torch.zeros_like(keep)
            keep[: keep.numel() // gate.num_structures] = True
        if round_to > 1:
            keep = _round_up(keep, gate.num_structures, round_to)
        if not keep.all():
            _cut_producers(layers, i, keep, here)
        if fold_gates:
            layers[j] = _cut_consumer(layers[j], keep, scale, here)
            layers[i] = nn.Identity()
        else:
            layers[j] = _cut_consumer(layers[j], keep, None, here)
            if not keep.all():
                layers[i], _ = layer_kind(gate).cut_out(gate, keep)
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------------
# Residual streams: one gate, many writers and readers
# --------------------------------------------------------------------------------------------------


def _fold_into_writer(layers: list[nn.Module], i: int, factor: Tensor, where: str) -> None:
    """Multiply the output of the last affine layer before the gate at ``i`` by ``factor`` (per channel)."""
    for k in range(i - 1, -1, -1):
        kind = layer_kind(layers[k])
        if kind.scale_out is not None:
            with torch.no_grad():
                if kind.scale_out(layers[k], factor):
                    return
        if kind.sign_sensitive and (factor < 0).any():
            raise SurgeryError(
                f"{where}: a negative stream gate cannot be folded across {type(layers[k]).__name__}; train gates "
                "with nonnegative=True (the default for apg/ista)"
            )
        if not kind.homogeneous:
            break
    raise SurgeryError(
        f"{where}: the stream gate can only be folded into an affine BN, conv or linear before it, with only "
        "zero-preserving, positively homogeneous layers (ReLU, pooling) between"
    )


def _put_back(seq: nn.Sequential, layers: list[nn.Module]) -> None:
    for key, layer in zip(list(seq._modules), layers, strict=True):
        seq._modules[key] = layer


def _prune_streams(owner: StreamOwner, opts: _Options) -> None:
    """Cut every stream ``owner`` declares, in place (the owner is surgery's own copy)."""
    for stream in owner.streams:
        gate = stream.gate
        where = f"{owner.path or 'model'} stream ({gate.num_structures} channels)"
        scale = gate.scale.detach()
        keep = scale != 0
        if not keep.any():  # the narrowest stream left: one channel, zeroed by its gate (exact, minimal)
            keep[0] = True
        if opts.round_to > 1:
            keep = _round_up(keep, gate.num_structures, opts.round_to)
        readers = owner.reader_paths(stream)
        replacement = nn.Identity() if opts.fold else (gate if keep.all() else layer_kind(gate).cut_out(gate, keep)[0])
        for seq, i in gate_positions(owner.module, gate):
            layers = list(seq)
            here = f"{where}, writer before {type(seq).__name__}[{i}]"
            if not keep.all():
                _cut_producers(layers, i, keep, here)
            if opts.fold:
                _fold_into_writer(layers, i, scale[_index(keep.cpu())], here)
            layers[i] = replacement
            _put_back(seq, layers)
        holders = [path for path, m in owner.module.named_modules(remove_duplicate=False) if m is gate]
        for path in holders:  # the gate held elsewhere too (an attribute naming it)
            owner.module.set_submodule(path, replacement)
        if not keep.all():
            for path in readers:
                reader = owner.module.get_submodule(path)
                owner.module.set_submodule(path, _cut_consumer(reader, keep, None, f"{where}, reader {path}"))


# --------------------------------------------------------------------------------------------------
# Walking a model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    """How a walk cuts: fold the surviving gates (or keep them), and the channel multiple to round up to."""

    fold: bool = True
    round_to: int = 1

    def sequential(self) -> dict[str, object]:
        return {"fold_gates": self.fold, "round_to": self.round_to}


def _prune_residual(block: GatedResidual, where: str, opts: _Options) -> GatedResidual:
    factor = block.gate.scale.detach() if isinstance(block.gate, Gate) else None
    shortcut = _prune_module(block.shortcut, f"{where}.shortcut", opts)
    if block.branch is None or (factor is not None and not factor.any()):  # removed now, or by an earlier cut
        return GatedResidual(None, shortcut=shortcut, post_act=block.post_act, branch_bias=block.branch_bias)
    if not isinstance(block.branch, nn.Sequential):
        raise SurgeryError(f"{where}: GatedResidual.branch must be an nn.Sequential, got {type(block.branch).__name__}")
    branch = _prune_non_gates(block.branch, f"{where}.branch", opts)
    # slicing keeps an emptied branch as one zero-gated structure: a constant has no weights to slice
    result = prune_sequential(branch, allow_constant=opts.fold, where=f"{where}.branch", **opts.sequential())
    bias = block.branch_bias
    if isinstance(result, Tensor):
        const = result if factor is None else result * factor
        bias = const if bias is None else bias + const
        return GatedResidual(None, shortcut=shortcut, post_act=block.post_act, branch_bias=bias)
    if factor is not None and opts.fold:
        last = next((m for m in reversed(result) if not isinstance(m, nn.Identity)), None)
        _scale_outputs(last, factor, f"{where}.branch")
    gate = None if opts.fold else block.gate
    return GatedResidual(result, shortcut=shortcut, gate=gate, post_act=block.post_act, branch_bias=bias)


def _refill(container: nn.Sequential, layers: nn.Module | Tensor) -> nn.Module | Tensor:
    """Put the cut ``layers`` back into ``container`` (surgery's own copy) under its original keys, so a
    subclass of ``nn.Sequential`` (``VGG``) keeps its class and attributes (such as the construction
    record ``sss_arch`` that saving needs) and named members keep their state-dict keys."""
    if not isinstance(layers, nn.Sequential) or len(layers) != len(container):
        return layers
    for key, layer in zip(list(container._modules), layers, strict=True):
        container._modules[key] = layer
    return container


def _prune_children(module: nn.Module, where: str, opts: _Options) -> nn.Module:
    for name, child in module.named_children():
        setattr(module, name, _prune_module(child, f"{where}.{name}" if where else name, opts))
    return module


def _call_sss_prune(module: nn.Module, where: str, opts: _Options) -> nn.Module:
    """A plug-in gets only the options that differ from the defaults, so one written before them still works."""
    kwargs = {k: v for k, v in opts.sequential().items() if v != _Options().sequential()[k]}
    accepted = inspect.signature(module.sss_prune).parameters
    for key, keyword, why in (
        ("fold_gates", "fold_gates: bool = True", "be cut while keeping its gates (in-training shrink needs that)"),
        ("round_to", "round_to: int = 1", "round its channel counts"),
    ):
        if key in kwargs and key not in accepted:
            raise SurgeryError(
                f"{where or 'model'}: {type(module).__name__}.sss_prune() takes no {key} argument, so it cannot "
                f"{why}; add a `{keyword}` keyword and pass it to prune_sequential"
            )
    return module.sss_prune(**kwargs)


def _prune_module(module: nn.Module, where: str, opts: _Options) -> nn.Module:
    if hasattr(module, "sss_prune"):
        return _call_sss_prune(module, where, opts)
    if isinstance(module, GatedResidual):
        return _prune_residual(module, where or "model", opts)
    if isinstance(module, StreamGate):
        return module  # cut with its stream before the walk
    if isinstance(module, Gate):
        raise SurgeryError(
            f"the {type(module).__name__} at {where or 'model'} is not inside an nn.Sequential or GatedResidual, "
            "so surgery cannot tell which layers it controls; put it in one, or give its owner an "
            "sss_prune() method"
        )
    if isinstance(module, nn.Sequential) and any(isinstance(m, Gate) for m in module):
        cut = prune_sequential(_prune_non_gates(module, where, opts), where=where or "model", **opts.sequential())
        return _refill(module, cut)
    return _prune_children(module, where, opts)


def _prune_non_gates(seq: nn.Sequential, where: str, opts: _Options) -> nn.Sequential:
    """``seq`` with its non-gate members pruned (nested blocks); its own gates are left for the caller."""
    return nn.Sequential(
        *[m if isinstance(m, Gate) else _prune_module(m, f"{where}.{i}", opts) for i, m in enumerate(seq)]
    )


def prune(model: nn.Module, *, fold_gates: bool = True, round_to: int = 1) -> nn.Module:
    """Return a new, physically smaller copy of ``model`` without its zero-gated structures.

    The input is never modified. Non-zero gates are folded into adjacent weights, so the result has no
    gate modules; its eval-mode outputs equal the gated model's up to float rounding. With
    ``fold_gates=False`` the surviving gates stay (sliced) and every parameter of the result is a slice of
    ``model``'s parameter of the same name; outputs are equal in train mode too. With ``round_to`` > 1
    every cut layer keeps a multiple of ``round_to`` channels (zero-gated ones fill up; outputs stay
    exact), which runtimes with blocked memory layouts run faster.
    """
    opts = _Options(fold=fold_gates, round_to=check_round_to(round_to))
    if next(iter_gates(model), None) is None:
        if _already_pruned(model):
            return copy.deepcopy(model)  # prune is idempotent on its own output (and on loaded pruned files)
        raise SurgeryError(
            f"prune: {type(model).__name__} has no gates (ChannelGate, GroupGate or BlockGate), so there is "
            "nothing to prune. Build it with gates (build_model(name, gates='both')) or add them "
            "(sss_lightning.add_gates(model)), train it with SSSModule so that some reach zero, then prune"
        )
    pruned = copy.deepcopy(model)
    for owner in stream_owners(pruned):  # checked first; a stream crosses the blocks the walk cuts one by one
        _prune_streams(owner, opts)
    pruned = _prune_module(pruned, "", opts)
    left = [info.name for info in iter_gates(pruned)]
    if left and fold_gates:
        raise SurgeryError(f"gates left after surgery at {left}; their owners' sss_prune() must remove them")
    if fold_gates:
        pruned.sss_pruned = True
    return pruned


def _already_pruned(model: nn.Module) -> bool:
    """Whether a network without gates is a pruned one: marked by prune/load_pruned, or a registry
    network whose construction record asked for gates that are gone (rebuilt from a checkpoint)."""
    if getattr(model, "sss_pruned", False):
        return True
    arch = getattr(model, "sss_arch", None)
    kwargs = arch.get("kwargs") if isinstance(arch, dict) else None
    return isinstance(kwargs, dict) and kwargs.get("gates") not in (None, False, "none")
