"""A learnable synthetic dataset for tests and smoke runs (no files, no network)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from .base import ImageClassificationDataModule


class SyntheticDataModule(ImageClassificationDataModule):
    """Images = a fixed random prototype per class + Gaussian noise, so a small net can learn them."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 16,
        train_size: int = 256,
        val_size: int = 128,
        noise: float = 1.0,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        for name, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("train_size", train_size),
            ("val_size", val_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.train_size, self.val_size, self.noise, self.seed = train_size, val_size, noise, seed

    def _make(self, n: int, gen: torch.Generator, prototypes: torch.Tensor) -> TensorDataset:
        labels = torch.randint(self.num_classes, (n,), generator=gen)
        images = prototypes[labels] + self.noise * torch.randn(n, *prototypes.shape[1:], generator=gen)
        return TensorDataset(images, labels)

    def setup(self, stage: str | None = None) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.num_classes, self.in_channels, self.image_size, self.image_size)
        prototypes = torch.randn(shape, generator=gen)
        self.train_set = self._make(self.train_size, gen, prototypes)
        self.val_set = self._make(self.val_size, gen, prototypes)
