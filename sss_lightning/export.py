"""Export a pruned model for deployment: TorchScript, or ONNX when ``onnx`` and ``onnxscript`` are installed.

Both exports keep the batch dimension dynamic and are checked against the eager model on a random batch
before the function returns, so a file that would compute something else is never handed over.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .flops import check_input_size

__all__ = ["FORMATS", "export_model"]

FORMATS = ("torchscript", "onnx")
_SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}


def _example(model: nn.Module, input_size: Sequence[int], batch: int) -> torch.Tensor:
    param = next(model.parameters())
    return torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(0)).to(param)


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated; it is still what many runtimes load
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))(x)


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime
    except ImportError:
        return None  # exported, but not checkable here
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})[0])


def export_model(
    model: nn.Module, path: str | os.PathLike, input_size: Sequence[int], fmt: str = "torchscript", atol: float = 1e-4
) -> tuple[Path, float | None]:
    """Export ``model`` (traced in eval mode) to ``path``; returns the path and the max abs output difference
    against the eager model on a batch of 3 (``None`` for ONNX without onnxruntime to run it).

    The file is written under a temporary name next to ``path`` and only renamed once it is checked, so a
    failed or interrupted export leaves neither a wrong file nor a temporary one. ``model``'s train/eval
    mode is restored afterwards.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    check_input_size(input_size)
    path = Path(path)
    if path.is_dir():
        example = path / f"model{_SUFFIX[fmt]}"
        raise IsADirectoryError(f"export: {path} is a directory; pass a file path such as {example}")
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.eval()
        tmp = staging / path.name  # the final name: ONNX external-data files refer to it
        diff = _export_and_check(model, tmp, input_size, fmt, atol)
        for produced in staging.iterdir():  # the model file, and any external data written beside it
            os.replace(produced, path.parent / produced.name)
    finally:
        model.train(was_training)
        shutil.rmtree(staging, ignore_errors=True)
    return path, diff


def _export_and_check(model: nn.Module, path: Path, input_size: Sequence[int], fmt: str, atol: float) -> float | None:
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(model, _example(model, input_size, 1))
                torch.jit.save(traced, str(path))
        else:
            try:
                import onnx  # noqa: F401
                import onnxscript  # noqa: F401
            except ImportError as err:
                raise ImportError(
                    "ONNX export needs `pip install onnx onnxscript` (and onnxruntime to check it)"
                ) from err
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                model, (_example(model, input_size, 2),), dynamo=True, input_names=["input"],
                output_names=["output"], dynamic_shapes=({0: batch},), verbose=False,
            )  # fmt: skip
            program.save(str(path))
        x = _example(model, input_size, 3)
        exported = _run_torchscript(path, x) if fmt == "torchscript" else _run_onnx(path, x)
        if exported is None:
            return None
        reference = model(x).cpu()
        diff = float((exported.cpu() - reference).abs().max())
    if diff > atol * max(1.0, float(reference.abs().max())):
        raise RuntimeError(f"the {fmt} export of {type(model).__name__} differs from the model by {diff:.3g}; not kept")
    return diff
