"""Model registry: ``build_model("resnet56", num_classes=10)`` like torchvision's model builders.

``build_model`` records the name and keyword arguments on the model (``model.sss_arch``) so a pruned
model can be saved as an architecture spec plus a state dict and rebuilt without pickling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["register_model", "build_model", "list_models", "default_input_size"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SIZES: dict[str, tuple[int, int, int]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str, input_size: tuple[int, int, int] = (3, 32, 32)) -> Callable[[F], F]:
    """Decorator registering a builder function under ``name``; ``input_size`` is its usual (C, H, W)."""

    def decorator(fn: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"a model named {name!r} is already registered ({_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        _INPUT_SIZES[name] = tuple(input_size)
        return fn

    return decorator


def default_input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) a registered model is usually trained at (CIFAR 32x32, ImageNet 224x224)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _INPUT_SIZES[name]


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    model = _REGISTRY[name](**kwargs)
    model.sss_arch = {"name": name, "kwargs": dict(kwargs)}
    return model
