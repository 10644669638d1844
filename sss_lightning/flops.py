"""FLOPs with fvcore: MACs and parameters of a model, and a before/after table for surgery.

fvcore counts one "flop" per fused multiply-add of a conv, linear or matmul; that is what we report, and
we call it **MACs**. Only those ops are counted: BN (folded into the conv at deployment), activations,
pooling, the gates' multiplies and the residual adds are ignored on purpose, so fvcore has no
unsupported-op warnings to print and a gated model and its pruned copy are counted alike.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .gates import iter_gates
from .layers import layer_kind
from .surgery import prune

with warnings.catch_warnings():  # fvcore (last released 2022) calls torch.jit.script at import time
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from fvcore.nn.jit_analysis import JitModelAnalysis
    from fvcore.nn.jit_handles import (
        addmm_flop_jit,
        bmm_flop_jit,
        conv_flop_jit,
        einsum_flop_jit,
        linear_flop_jit,
        matmul_flop_jit,
    )

__all__ = [
    "FlopReport",
    "MacEstimator",
    "check_input_size",
    "count_flops",
    "format_comparison",
    "comparison_dict",
    "structure_costs",
]

# fvcore's own handles for the fused multiply-add ops (those of FlopCountAnalysis), and no others.
_MAC_HANDLES = {
    "aten::_convolution": conv_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::bmm": bmm_flop_jit,
    "aten::einsum": einsum_flop_jit,
    "aten::linear": linear_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
}


@dataclass(frozen=True)
class FlopReport:
    """MACs and parameters of a model for one input size, with MACs per top-level child ("stage")."""

    macs: int | float  # a float only when an op handle counts fractions (fvcore's are whole numbers)
    params: int
    input_size: tuple[int, ...]
    stages: dict[str, int | float] = field(default_factory=dict)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat numbers for a logger: ``{prefix}macs``, ``{prefix}params``, ``{prefix}macs/<stage>``."""
        out = {f"{prefix}macs": float(self.macs), f"{prefix}params": float(self.params)}
        out.update({f"{prefix}macs/{name}": float(v) for name, v in self.stages.items()})
        return out


def check_input_size(input_size: object, name: str = "input_size", batch: bool = False) -> list[int]:
    """``input_size`` as ``[C, H, W]`` of positive ints (with ``batch``, ``[N, C, H, W]`` too), or a
    ``ValueError`` naming ``name``, what it got and the form it takes: the one rule for every input size."""

    def positive_int(v: object) -> bool:
        try:
            return not isinstance(v, bool) and int(v) == v and int(v) >= 1  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    lengths = (3, 4) if batch else (3,)
    sized = not isinstance(input_size, (str, bytes)) and isinstance(input_size, Sequence)
    if not sized or len(input_size) not in lengths or not all(positive_int(v) for v in input_size):
        raise ValueError(
            f"{name} must be three positive ints [C,H,W]{' (or [N,C,H,W])' if batch else ''}, got {input_size!r}; "
            "e.g. [3,32,32] for CIFAR or [1,28,28] for Fashion-MNIST"
        )
    return [int(v) for v in input_size]


def _input_size(input_size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(check_input_size(input_size, batch=True))
    return size if len(size) == 4 else (1, *size)


def count_flops(model: nn.Module, input_size: Sequence[int]) -> FlopReport:
    """Count MACs (batch 1 unless ``input_size`` has a batch dim) and parameters of ``model`` in eval mode."""
    size = _input_size(input_size)
    param = next(model.parameters(), None)
    x = torch.zeros(
        size,
        dtype=param.dtype if param is not None else torch.float32,
        device=param.device if param is not None else None,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                model(x)
            except RuntimeError as err:
                raise ValueError(
                    f"input_size {size[1:]} does not fit {type(model).__name__}: {str(err).splitlines()[0]}. "
                    "Pass the (C, H, W) of one training image, e.g. (1, 28, 28) for Fashion-MNIST"
                ) from err
            analysis = JitModelAnalysis(model, (x,)).set_op_handle(**_MAC_HANDLES)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            by_module = analysis.by_module()
            total = analysis.total()
    finally:
        model.train(was_training)
    stages = {name: _exact(by_module.get(name, 0)) for name, _ in model.named_children()}
    params = sum(p.numel() for p in model.parameters())
    return FlopReport(macs=_exact(total), params=params, input_size=size[1:], stages=stages)


def _exact(count: float) -> int | float:
    """An op count as it is: an int when whole, else the float (``int()`` would turn 3.5 MACs into 3)."""
    value = float(count)
    return int(value) if value.is_integer() else value


class MacEstimator:
    """MACs of pruned copies of one model from layer shapes alone: cheap enough to call every few steps.

    One forward pass of the original records the output shape of every layer whose entry in the layer
    table (:mod:`sss_lightning.layers`) counts multiply-adds; surgery keeps module paths and spatial sizes,
    so a pruned copy's MACs are the sum of those entries' counts over its layers: for a conv
    ``out * in / groups * kh * kw * H_out * W_out``, for a linear ``in * out``. This equals fvcore's count
    whenever the table's layers are the only multiply-adds (true for every model in the registry; the
    tests cross-check it).
    """

    def __init__(self, model: nn.Module, input_size: Sequence[int]) -> None:
        size = _input_size(input_size)
        self._shapes: dict[str, tuple[int, ...]] = {}
        hooks = [
            module.register_forward_hook(self._recorder(name))
            for name, module in model.named_modules()
            if layer_kind(module).macs is not None
        ]
        param = next(model.parameters())
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(size, dtype=param.dtype, device=param.device))
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
        self.batch = size[0]

    def _recorder(self, name: str):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            shape = getattr(output, "shape", None)
            if shape is not None:
                self._shapes[name] = tuple(shape)

        return hook

    def __call__(self, model: nn.Module) -> int:
        """MACs of ``model`` (the original or a pruned copy of it) at the recorded input size."""
        macs = 0
        for name, m in model.named_modules():
            count = layer_kind(m).macs
            if count is not None:
                macs += count(m, self._shapes.get(name))
        return macs * self.batch


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def format_comparison(
    before: FlopReport, after: FlopReport, extra: dict[str, tuple[float, float]] | None = None
) -> str:
    """A Markdown table: MACs (total and per stage), params and any ``extra`` rows, before/after/ratio."""
    rows: list[tuple[str, float, float, bool]] = [("MACs", before.macs, after.macs, True)]
    rows += [
        (f"  MACs {name}", before.stages[name], after.stages.get(name, 0), True)
        for name in before.stages
        if before.stages[name] or after.stages.get(name, 0)  # not a child without multiply-adds (gates)
    ]
    rows.append(("params", before.params, after.params, True))
    rows += [(name, b, a, False) for name, (b, a) in (extra or {}).items()]
    lines = ["| | gated | pruned | pruned/gated |", "|---|---:|---:|---:|"]
    for name, b, a, human in rows:
        ratio = f"{a / b:.3f}" if b else "-"
        fmt = _human if human else (lambda v: f"{v:.4f}")
        lines.append(f"| {name} | {fmt(b)} | {fmt(a)} | {ratio} |")
    return "\n".join(lines)


def comparison_dict(before: FlopReport, after: FlopReport) -> dict[str, float]:
    """Before/after numbers for a logger, with the reductions as fractions."""
    out = {**before.as_dict("gated/"), **after.as_dict("pruned/")}
    out["macs_reduction"] = 1.0 - after.macs / before.macs if before.macs else 0.0
    out["params_reduction"] = 1.0 - after.params / before.params if before.params else 0.0
    return out


def structure_costs(model: nn.Module, input_size: Sequence[int]) -> dict[str, float]:
    """MACs one structure of each gate costs: how much surgery saves when only that structure is zero.

    Measured on a copy with every gate at 1, zeroing the first structure of one gate at a time (the
    structures of one gate cost the same: channels of one layer, groups of one conv, a block's branch).
    Keys are the gates' module paths. Used by the cost-weighted L1 penalty.
    """

    probe = copy.deepcopy(model).eval()
    gates = list(iter_gates(probe))
    with torch.no_grad():
        for info in gates:
            info.module.scale.fill_(1.0)
    estimate = MacEstimator(probe, input_size)
    full = estimate(probe)
    costs: dict[str, float] = {}
    for info in gates:
        with torch.no_grad():
            info.module.scale[0] = 0.0
            costs[info.name] = float(full - estimate(prune(probe)))
            info.module.scale[0] = 1.0
    return costs
