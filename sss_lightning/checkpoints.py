"""Rebuilding an :class:`~sss_lightning.module.SSSModule` and its network from what it wrote: Lightning
checkpoints (:func:`load_sss_checkpoint`) and the construction record that lets a pruned file of a
network built in ``build_network()`` be rebuilt in a fresh process (:func:`network_of`)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models.registry import import_path, resolve_import_path

__all__ = ["load_sss_checkpoint", "network_of", "record_built_network", "write_record", "read_record"]


def network_of(module: dict[str, Any]) -> nn.Module:
    """The network an SSSModule subclass builds in ``build_network()``, from the subclass's construction
    record ``{"name": "package.module:Class", "kwargs": hyper-parameters}``: how a pruned file of such a
    network is rebuilt in a fresh process (its record names this function)."""
    from .module import SSSModule

    cls = resolve_import_path(module["name"])
    if not (isinstance(cls, type) and issubclass(cls, SSSModule)):
        raise TypeError(f"{module['name']} is not an SSSModule subclass, so network_of() does not build it")
    kwargs = dict(module["kwargs"])
    parameters = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in parameters}  # as load_from_checkpoint does
    return cls(**kwargs).net


network_of.sss_builder = True  # records may name it (see models.registry._may_build)


def record_built_network(module: Any) -> None:
    """Give a network that ``build_network()`` returned without a construction record its module's:
    the subclass's import path and hyper-parameters (checked by ``rebuild_problem`` where it matters)."""
    net = module.net
    if isinstance(net, nn.Module) and getattr(net, "sss_arch", None) is None:
        record = {"name": import_path(type(module)), "kwargs": dict(module.hparams)}
        net.sss_arch = {"name": _NETWORK_OF, "kwargs": {"module": record}}


# The import path pruned files hold; it stays "sss_lightning.module:network_of" (re-exported there) so
# that files written by every version rebuild.
_NETWORK_OF = "sss_lightning.module:network_of"


def write_record(module: Any, checkpoint: dict[str, Any]) -> None:
    """Put into a Lightning checkpoint what rebuilding ``module`` needs beyond its hyper-parameters and state
    dict (the network's shape travels in the state dict itself): its class, one input's shape, the
    fine-tune settings after surgery and the cost weights of the gates' penalty."""
    cls, x = type(module), module.example_input_array
    checkpoint["sss"] = {
        "module_class": f"{cls.__module__}.{cls.__qualname__}",
        "input_shape": list(x.shape[1:]) if isinstance(x, torch.Tensor) else None,
        "finetune": module._finetune,
        "gate_weights": module._gate_weights,
    }


def read_record(module: Any, checkpoint: dict[str, Any]) -> None:
    """Restore what :func:`write_record` put into ``checkpoint`` onto ``module`` (before its state dict)."""
    record = checkpoint.get("sss", {})
    shape = record.get("input_shape")
    if shape and module.example_input_array is None:
        module.example_input_array = torch.zeros(1, *shape)
    state = checkpoint.get("state_dict")
    if isinstance(state, dict) and "_extra_state" not in state:  # written before the network shape was in it
        state["_extra_state"] = {"architecture": record.get("pruned_spec"), "frozen_gates": []}
    module._finetune = record.get("finetune")
    module._gate_weights = record.get("gate_weights") or module._gate_weights


def load_sss_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild the SSSModule subclass that wrote a Lightning checkpoint, with its ``sss`` record.

    The class is read from the checkpoint, so any subclass that rebuilds its network from its
    hyper-parameters (``SSSClassifier``, or one overriding ``build_network``) loads without naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # the user's own training file
    info = checkpoint.get("sss") if isinstance(checkpoint, dict) else None
    if not info:
        raise ValueError(f"{path} is not a Lightning checkpoint of an SSSModule (it has no 'sss' record)")
    module_path, _, cls_name = info["module_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_path), cls_name)
    try:
        module = cls.load_from_checkpoint(path, map_location="cpu")
    except TypeError as err:
        raise ValueError(
            f"cannot rebuild {info['module_class']} from {path}: {err}. A module built with net=... cannot be "
            "rebuilt from a checkpoint; use SSSClassifier or a subclass that overrides build_network()"
        ) from err
    return module, info
