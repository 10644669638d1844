"""Gated architectures and the model registry."""

from .blocks import GatedResidual
from .cifar_resnet import CifarResNet
from .registry import build_model, list_models, register_model

__all__ = ["CifarResNet", "GatedResidual", "build_model", "list_models", "register_model"]
