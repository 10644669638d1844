"""LightningDataModules: CIFAR-10/100, Fashion-MNIST and a synthetic set for tests."""

from .base import ImageClassificationDataModule
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .fashion_mnist import FashionMNISTDataModule
from .imagenet import ImageNetDataModule
from .synthetic import SyntheticDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "ImageClassificationDataModule",
    "ImageNetDataModule",
    "SyntheticDataModule",
]
