"""CIFAR-10/100 through torchvision, with the standard crop+flip augmentation and normalisation."""

from __future__ import annotations

import pickle
from pathlib import Path

from torchvision import transforms
from torchvision.datasets import CIFAR10, CIFAR100

from .base import ImageClassificationDataModule


class CIFAR10DataModule(ImageClassificationDataModule):
    """CIFAR-10 (32x32 RGB, 50k train / 10k test). ``download=True`` fetches it with torchvision."""

    dataset_cls = CIFAR10
    num_classes = 10
    in_channels = 3
    image_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 2,
        augment: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.data_dir = str(data_dir)
        self.download = download
        self.augment = augment
        folder = Path(self.data_dir) / self.dataset_cls.base_folder
        if not download and not folder.is_dir():
            raise FileNotFoundError(
                f"{self.dataset_cls.__name__} not found: {folder} does not exist. Fix: set download: true "
                f"(torchvision fetches it into data_dir={self.data_dir!r}), or point data_dir at the folder "
                f"that contains {self.dataset_cls.base_folder}/"
            )

    def prepare_data(self) -> None:
        if self.download:
            self.dataset_cls(self.data_dir, train=True, download=True)
            self.dataset_cls(self.data_dir, train=False, download=True)

    def setup(self, stage: str | None = None) -> None:
        norm = [transforms.ToTensor(), transforms.Normalize(self.mean, self.std)]
        aug = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if self.augment else []
        try:
            self.train_set = self.dataset_cls(self.data_dir, train=True, transform=transforms.Compose(aug + norm))
            self.val_set = self.dataset_cls(self.data_dir, train=False, transform=transforms.Compose(norm))
        except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
            raise RuntimeError(
                f"{self.dataset_cls.__name__} in {self.data_dir!r} is incomplete or corrupted ({err}). "
                "Fix: delete the folder and run with download: true."
            ) from err


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (32x32 RGB, 100 classes)."""

    dataset_cls = CIFAR100
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
