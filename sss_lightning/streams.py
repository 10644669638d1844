"""Residual streams: channels that several layers write and several read, selected by one gate.

In a residual network the channels of a stage's stream are written by the layer before its first block
(a stem, or a projection shortcut) and by every block's branch, and summed by the blocks' adds; they are
read by every block's first conv, by the next stage's first block and finally by the head. Cutting one of
those channels means cutting it from all of them at once (Torch-Pruning calls such a set a *group*).

A network declares a stream in two parts:

* **writers**, by where its :class:`~sss_lightning.gates.StreamGate` sits: the *same* instance is placed
  in an ``nn.Sequential`` right after every layer whose output joins the stream (only BN and channel-wise
  layers such as ReLU may stand between the writing conv and the gate). It scales the whole stream; a
  zero factor makes that channel exactly zero everywhere in it.
* **readers**, by a method ``sss_streams(self) -> list[Stream]`` on the module that owns the stream,
  naming the conv/linear layers whose input is the stream (inside that module).

:func:`check_streams` runs the network once and verifies both halves (every writer gated, every reader
declared, nothing else reading), so a wrong declaration is an error before training instead of a
pruned network whose outputs differ.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .gates import StreamGate
from .layers import SurgeryError, layer_kind

__all__ = ["Stream", "StreamOwner", "stream_owners", "gate_positions", "check_streams"]


@dataclass(frozen=True)
class Stream:
    """A stream's gate and the layers that read its channels (conv/linear modules of the declaring module)."""

    gate: StreamGate
    readers: tuple[nn.Module, ...]


@dataclass(frozen=True)
class StreamOwner:
    """A module that declares streams, with its path in the model and its declarations."""

    path: str
    module: nn.Module
    streams: tuple[Stream, ...]

    def reader_paths(self, stream: Stream) -> list[str]:
        """Module paths (inside the owner) of ``stream``'s readers."""
        where = {id(m): name for name, m in self.module.named_modules(remove_duplicate=False)}
        paths = []
        for reader in stream.readers:
            if id(reader) not in where:
                raise SurgeryError(
                    f"{self.path or 'model'}: a reader declared by sss_streams() ({type(reader).__name__}) is not "
                    "a submodule of the declaring module; declare streams on a module that contains their readers"
                )
            paths.append(where[id(reader)])
        return paths


def _declared(module: nn.Module, path: str) -> tuple[Stream, ...]:
    streams = tuple(module.sss_streams())
    for stream in streams:
        if not isinstance(stream, Stream):
            raise SurgeryError(
                f"{path or 'model'}: sss_streams() must return Stream(gate, readers) items, got {type(stream).__name__}"
            )
        problems = [type(r).__name__ for r in stream.readers if layer_kind(r).cut_in is None]
        if problems or not stream.readers:
            raise SurgeryError(
                f"{path or 'model'}: a stream's readers must be conv/linear layers (their input channels are cut), "
                f"got {problems or 'none'}"
            )
        for reader in stream.readers:
            problem = layer_kind(reader).consumer_problem
            why = problem(reader) if problem is not None else None
            if why is not None:
                raise SurgeryError(f"{path or 'model'}: a stream reader cannot be cut: {why}")
    return streams


def stream_owners(model: nn.Module) -> list[StreamOwner]:
    """Every module of ``model`` that declares streams whose gate is still a :class:`StreamGate` (surgery
    replaces folded ones), checked: every stream gate of ``model`` is declared exactly once."""
    owners = []
    declared: dict[int, str] = {}
    gates: list[tuple[str, StreamGate]] = []
    for path, module in model.named_modules():  # one walk: this runs after every optimizer step (rescaling)
        if isinstance(module, StreamGate):
            gates.append((path, module))
        if not callable(getattr(module, "sss_streams", None)):
            continue
        streams = tuple(s for s in _declared(module, path) if isinstance(s.gate, StreamGate))
        for stream in streams:
            if id(stream.gate) in declared:
                raise SurgeryError(
                    f"the StreamGate declared by {path or 'model'} is declared again by {declared[id(stream.gate)]}; "
                    "each stream is declared once, by the module that contains all of its readers"
                )
            declared[id(stream.gate)] = path or "model"
        if streams:
            owners.append(StreamOwner(path, module, streams))
    undeclared = [name for name, m in gates if id(m) not in declared]
    if undeclared:
        raise SurgeryError(
            f"StreamGate at {undeclared} is not declared by any module's sss_streams(), so surgery does not know "
            "which layers read its channels; return Stream(gate, readers) for it from sss_streams() of the module "
            "that contains the stream"
        )
    return owners


def gate_positions(module: nn.Module, gate: StreamGate) -> list[tuple[nn.Sequential, int]]:
    """Every ``(nn.Sequential, index)`` of ``module`` where ``gate`` sits: the writers of its stream."""
    positions = []
    seen: set[int] = set()
    for seq in module.modules():
        if isinstance(seq, nn.Sequential) and id(seq) not in seen:
            seen.add(id(seq))
            positions += [(seq, i) for i, m in enumerate(seq) if m is gate]
    return positions


def _iter_streams(model: nn.Module) -> Iterator[tuple[StreamOwner, Stream]]:
    for owner in stream_owners(model):
        for stream in owner.streams:
            yield owner, stream


def _trace(model: nn.Module, x: Tensor, mixers: list[nn.Module], gate: StreamGate, fill: float, sanitize: bool):
    """The input of every conv/linear that runs, with ``gate`` filled with ``fill``; with ``sanitize`` each
    of them outputs zeros, so that what the gate fills reaches only the layers that read it directly."""
    seen: dict[int, Tensor] = {}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        seen[id(module)] = inputs[0].detach()
        return torch.zeros_like(output) if sanitize else output

    gate.scale.fill_(fill)
    hooks = [m.register_forward_hook(record) for m in mixers]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def check_streams(model: nn.Module, input_size: Sequence[int]) -> None:
    """Run ``model`` twice per stream in eval mode (gates, mode and RNG restored after) to verify every
    declared stream, or raise a :class:`SurgeryError` saying what is wrong and how to fix it:

    * the layers whose input carries the stream are exactly the declared readers. The stream is traced
      by filling its gate with NaN while every conv/linear outputs zeros, so the NaN reaches only the
      layers that read the stream directly;
    * with the stream's gate at zero, every declared reader's input is exactly zero (no writer ungated).
    """
    streams = list(_iter_streams(model))
    if not streams:
        return
    param = next(model.parameters())
    shape = (1, *input_size) if len(input_size) == 3 else tuple(input_size)
    gen = torch.Generator().manual_seed(0)  # the caller's RNG stays where it was (resumes stay identical)
    x = torch.randn(shape, generator=gen, dtype=param.dtype).to(param.device)
    names = {id(m): name for name, m in model.named_modules()}
    mixers = [m for m in model.modules() if layer_kind(m).cut_in is not None]
    was_training = model.training
    model.eval()
    try:
        for owner, stream in streams:
            gate_name, saved = names[id(stream.gate)], stream.gate.scale.detach().clone()
            try:
                seen = _trace(model, x, mixers, stream.gate, float("nan"), sanitize=True)
                tainted = {i for i, v in seen.items() if torch.isnan(v).any()}
                missing = [names[i] for i in tainted - {id(r) for r in stream.readers}]
                idle = [names[id(r)] for r in stream.readers if id(r) not in tainted]
                if missing or idle:
                    raise SurgeryError(
                        f"stream gate {gate_name}: the readers declared by {owner.path or 'model'}.sss_streams() are "
                        f"wrong: {missing} read the stream but are not declared; {idle} are declared but do not read "
                        "it. Declare exactly the conv/linear layers whose input is the stream; if those do read it, "
                        "a layer writing into the stream before them is without the gate: place the same StreamGate "
                        "instance after every layer whose output joins the stream"
                    )
                seen = _trace(model, x, mixers, stream.gate, 0.0, sanitize=False)
                leaks = [names[id(r)] for r in stream.readers if seen[id(r)].abs().max() != 0]
                if leaks:
                    raise SurgeryError(
                        f"stream gate {gate_name}: with the gate at zero the input of {leaks} is not zero, so some "
                        "layer writes into the stream without the gate; place the same StreamGate instance after "
                        "every layer whose output joins the stream (e.g. the stem, a projection shortcut)"
                    )
            finally:
                stream.gate.scale.copy_(saved)
    finally:
        model.train(was_training)
