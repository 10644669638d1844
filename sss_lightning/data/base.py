"""Shared plumbing of the image-classification datamodules: loaders and argument checks."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by ``seed + epoch`` (Lightning calls ``set_epoch``), so epoch k sees
    the same order whether or not the run was interrupted and resumed from a checkpoint in between.

    ``resume_at(epoch, start)`` makes that epoch's pass begin after its first ``start`` samples, the ones
    a mid-epoch checkpoint had already trained on.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, start: int) -> None:
        self._resume = (epoch, start)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self._resume is not None and self._resume[0] == self.epoch:
            order = order[self._resume[1] :]
            self._resume = None
        return iter(order)

    def __len__(self) -> int:
        return self.size


class ImageClassificationDataModule(L.LightningDataModule):
    """Train/val/test loaders over datasets a subclass provides in :meth:`setup`.

    The validation set is the dataset's official test split (the convention of the CIFAR/ImageNet
    papers SSS compares with); ``test`` uses the same split so ``trainer.test`` reports it too.

    :attr:`input_size` is the ``(C, H, W)`` of one image as the loaders yield it, known at construction
    (before any data is read); the command line passes it to the model's ``input_size``.
    """

    num_classes: int
    in_channels: int
    image_size: int

    def __init__(self, batch_size: int = 128, num_workers: int = 2, pin_memory: bool = False) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._resume: dict[str, int] | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as the loaders yield it: ``(in_channels, image_size, image_size)``."""
        return (int(self.in_channels), int(self.image_size), int(self.image_size))

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run; let the Trainer call it")
        # shuffling seeded by the run's seed (seed_everything) and the epoch: resumes see the same order
        sampler = EpochShuffleSampler(len(dataset), torch.initial_seed()) if shuffle else None
        if sampler is not None and self._resume is not None:
            sampler.resume_at(self._resume["epoch"], self._resume["batches_done"] * self.batch_size)
            self._resume = None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,
        )

    def state_dict(self) -> dict[str, int]:
        """Where in its epoch a checkpoint was taken, so a resumed run skips the batches already trained on.

        On one device only: under DDP, Lightning re-shuffles the shards with a distributed sampler, so a
        mid-epoch resume there starts its epoch's pass again (epoch-end checkpoints resume exactly)."""
        if self.trainer is None or self.trainer.world_size > 1:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.ready}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = dict(state_dict) if state_dict else None

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
