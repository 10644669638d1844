"""ImageNet (or any ImageFolder tree) with the standard ResNet augmentation."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision import transforms
from torchvision.datasets import ImageFolder

from .base import ImageClassificationDataModule

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageNetDataModule(ImageClassificationDataModule):
    """``data_dir/train/<class>/<image>`` and ``data_dir/val/<class>/<image>`` (torchvision ImageFolder).

    Train: RandomResizedCrop(``image_size``) + horizontal flip; val: Resize(``val_resize``) +
    CenterCrop(``image_size``); ImageNet normalisation. ImageNet cannot be downloaded automatically
    (its licence requires a sign-in): prepare the tree, e.g. with the ``valprep.sh`` layout for val.
    """

    in_channels = 3

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        batch_size: int = 256,
        num_workers: int = 8,
        image_size: int = 224,
        val_resize: int = 256,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=torch.cuda.is_available())
        if image_size < 1 or val_resize < image_size:
            raise ValueError(
                f"need 1 <= image_size <= val_resize, got image_size={image_size}, val_resize={val_resize}"
            )
        self.data_dir, self.image_size, self.val_resize = str(data_dir), image_size, val_resize
        classes = []
        for split in ("train", "val"):
            folder = Path(data_dir) / split
            found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
            if not found:
                raise FileNotFoundError(
                    f"{folder} is missing or has no class folders. ImageNetDataModule expects the ImageFolder layout "
                    f"{data_dir}/train/<class>/<image> and {data_dir}/val/<class>/<image>; point data_dir at it"
                )
            classes.append(found)
        if classes[0] != classes[1]:
            raise ValueError(
                f"train and val of {data_dir} have different class folders ({len(classes[0])} vs {len(classes[1])})"
            )
        self.num_classes = len(classes[0])

    def setup(self, stage: str | None = None) -> None:
        norm = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        train_tf = [transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip()]
        val_tf = [transforms.Resize(self.val_resize), transforms.CenterCrop(self.image_size)]
        self.train_set = ImageFolder(str(Path(self.data_dir) / "train"), transform=transforms.Compose(train_tf + norm))
        self.val_set = ImageFolder(str(Path(self.data_dir) / "val"), transform=transforms.Compose(val_tf + norm))
