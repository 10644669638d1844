"""Save and reload pruned models as an architecture spec plus a state dict: no pickled modules.

The file holds the registry name and build arguments of the original model, the recipe of every module
surgery changed (new conv/BN/linear shapes, gates turned into ``Identity``, removed branches), and the
state dict. Loading rebuilds the original by name, applies the recipes (as timm's
``adapt_model_from_string`` does for its pruned models) and loads the weights strictly, so
``torch.load(weights_only=True)`` is all it takes and a fresh process gets identical outputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .gates import ChannelGate, GroupGate
from .models.blocks import GatedResidual
from .models.registry import build_model

__all__ = ["FORMAT", "save_pruned", "load_pruned", "architecture_spec", "apply_spec", "PrunedFileError"]

FORMAT = "sss-lightning/pruned"
VERSION = 1


class PrunedFileError(ValueError):
    """A pruned-model file that cannot be loaded; the message says why and what to do."""


def _recipe(m: nn.Module) -> dict[str, Any]:
    """The constructor arguments that define ``m``'s shape (type name only for other modules)."""
    kind = type(m).__name__
    if isinstance(m, nn.Conv2d):
        return {
            "type": kind,
            "in_channels": m.in_channels,
            "out_channels": m.out_channels,
            "kernel_size": list(m.kernel_size),
            "stride": list(m.stride),
            "padding": list(m.padding),
            "dilation": list(m.dilation),
            "groups": m.groups,
            "bias": m.bias is not None,
            "padding_mode": m.padding_mode,
        }
    if isinstance(m, _BatchNorm):
        return {
            "type": kind,
            "num_features": m.num_features,
            "eps": m.eps,
            "momentum": m.momentum,
            "affine": m.affine,
            "track_running_stats": m.track_running_stats,
        }
    if isinstance(m, nn.Linear):
        return {"type": kind, "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, (ChannelGate, GroupGate)):  # sliced by in-training shrink: fewer structures
        return {"type": kind, "n": m.num_structures}
    if isinstance(m, GatedResidual):
        bias = m.branch_bias
        return {"type": kind, "branch": m.branch is not None, "branch_bias": None if bias is None else bias.numel()}
    return {"type": kind}


_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "Conv2d": lambda r: nn.Conv2d(**{k: v for k, v in r.items() if k != "type"}),
    "BatchNorm2d": lambda r: nn.BatchNorm2d(**{k: v for k, v in r.items() if k != "type"}),
    "BatchNorm1d": lambda r: nn.BatchNorm1d(**{k: v for k, v in r.items() if k != "type"}),
    "Linear": lambda r: nn.Linear(**{k: v for k, v in r.items() if k != "type"}),
    "Identity": lambda r: nn.Identity(),
    "ChannelGate": lambda r: ChannelGate(r["n"]),
    "GroupGate": lambda r: GroupGate(r["n"]),
}


def architecture_spec(pruned: nn.Module) -> dict[str, Any]:
    """What distinguishes ``pruned`` from a fresh build of its registry architecture."""
    arch = getattr(pruned, "sss_arch", None)
    if arch is None:
        raise PrunedFileError(
            f"{type(pruned).__name__} was not built by sss_lightning.build_model, so there is no architecture "
            "to rebuild it from; register its builder with @register_model and build it with build_model"
        )
    with torch.random.fork_rng(devices=[]):  # a reference build must not move the caller's RNG
        base = build_model(arch["name"], **arch["kwargs"])
    changed: dict[str, dict[str, Any]] = {}
    for path, module in pruned.named_modules():
        recipe = _recipe(module)
        try:
            reference = _recipe(base.get_submodule(path))
        except AttributeError:
            reference = None
        if recipe != reference:
            if recipe["type"] not in _BUILDERS and recipe["type"] != "GatedResidual":
                raise PrunedFileError(f"cannot record module {path} of type {recipe['type']} in a pruned spec")
            changed[path] = recipe
    return {"arch": {"name": arch["name"], "kwargs": dict(arch["kwargs"])}, "modules": changed}


def apply_spec(spec: dict[str, Any]) -> nn.Module:
    """Build the registry architecture and reshape it as ``spec`` records (weights uninitialised)."""
    arch = spec["arch"]
    with torch.random.fork_rng(devices=[]):  # its weights are overwritten; leave the caller's RNG alone
        model = build_model(arch["name"], **arch["kwargs"])
    for path, recipe in sorted(spec["modules"].items(), key=lambda item: item[0].count(".")):
        if recipe["type"] == "GatedResidual":
            block = model.get_submodule(path)
            if not recipe["branch"]:
                block.branch = None
            if recipe["branch_bias"] is not None:
                block.branch_bias = torch.zeros(recipe["branch_bias"])
            continue
        try:
            model.get_submodule(path.rpartition(".")[0])
        except AttributeError:
            continue  # inside a branch removed above
        model.set_submodule(path, _BUILDERS[recipe["type"]](recipe))
    return model


def save_pruned(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a pruned registry model) as spec + state dict; ``metadata`` must be plain data."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        **architecture_spec(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # never leave a half-written file under the real name
    return path


def read_pruned(path: str | os.PathLike) -> dict[str, Any]:
    """The raw payload of a pruned-model file, checked to be ours (``weights_only`` loading)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise PrunedFileError(
            f"cannot read {path}: {str(err).splitlines()[0]} (truncated, or not a torch file). "
            "Re-create it with save_pruned or `sss-lightning prune`"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise PrunedFileError(
            f"{path} is not an sss-lightning pruned model (no format={FORMAT!r} marker); a Lightning checkpoint "
            "is turned into one with `sss-lightning prune --ckpt <file> --out <file>`"
        )
    if payload.get("version") != VERSION:
        raise PrunedFileError(f"{path} has format version {payload.get('version')}, this build reads {VERSION}")
    return payload


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a pruned model saved by :func:`save_pruned`, in eval mode, with its metadata attached."""
    payload = read_pruned(path)
    model = apply_spec(payload)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:  # torch's message lists every missing/unexpected key and size mismatch
        raise PrunedFileError(
            f"{path} does not match the architecture its spec describes ({payload['arch']['name']}): {err}"
        ) from err
    model.sss_arch = payload["arch"]
    model.sss_metadata = payload["metadata"]
    return model.eval()
