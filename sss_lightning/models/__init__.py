"""Gated architectures and the model registry (importing this package registers every builder)."""

from .add_gates import add_gates
from .blocks import GatedResidual
from .cifar_resnet import CifarResNet
from .imagenet_resnet import ImageNetResNet
from .registry import build_model, default_input_size, list_models, rebuildable, register_model
from .resnext import ResNeXt
from .vgg import VGG

__all__ = [
    "CifarResNet",
    "GatedResidual",
    "ImageNetResNet",
    "ResNeXt",
    "VGG",
    "add_gates",
    "build_model",
    "default_input_size",
    "list_models",
    "rebuildable",
    "register_model",
]
