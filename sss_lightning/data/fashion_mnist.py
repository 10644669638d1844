"""Fashion-MNIST from local ``*-ubyte.gz`` files (Debian's ``dataset-fashion-mnist``) or torchvision."""

from __future__ import annotations

import os
from pathlib import Path

from torchvision import transforms
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from .base import ImageClassificationDataModule

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = (0.2860,), (0.3530,)


class FashionMNISTDataModule(ImageClassificationDataModule):
    """Fashion-MNIST (28x28 grey, 10 classes, 60k train / 10k test).

    Looks for the raw files in ``data_dir/FashionMNIST/raw``; if absent, unpacks the ``*-ubyte.gz``
    files found in ``source_dir`` (default: the Debian package's folder) into it; with ``download=True``
    torchvision fetches them instead. Missing data raises at construction, before any training.
    """

    num_classes = 10
    in_channels = 1
    image_size = 28

    def __init__(
        self,
        data_dir: str = "data",
        source_dir: str | None = DEBIAN_DIR,
        download: bool = False,
        batch_size: int = 128,
        num_workers: int = 2,
        augment: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.data_dir = str(data_dir)
        self.source_dir = source_dir
        self.download = download
        self.augment = augment
        if not download and not self._raw_present() and not self._source_files():
            raise FileNotFoundError(
                f"Fashion-MNIST not found: no raw files in {self._raw_folder()} and no *-ubyte.gz files in "
                f"source_dir={source_dir!r}. Fix: `apt-get install dataset-fashion-mnist` (puts them in "
                f"{DEBIAN_DIR}), or set source_dir to a folder holding {', '.join(self._gz_names())}, "
                "or set download: true to fetch them with torchvision."
            )

    @staticmethod
    def _gz_names() -> list[str]:
        return [name for name, _md5 in FashionMNIST.resources]

    def _raw_folder(self) -> Path:
        return Path(self.data_dir) / FashionMNIST.__name__ / "raw"

    def _raw_present(self) -> bool:
        return all((self._raw_folder() / name.removesuffix(".gz")).is_file() for name in self._gz_names())

    def _source_files(self) -> list[Path] | None:
        if not self.source_dir:
            return None
        files = [Path(self.source_dir) / name for name in self._gz_names()]
        return files if all(f.is_file() for f in files) else None

    def prepare_data(self) -> None:
        if self._raw_present():
            return
        sources = self._source_files()
        if sources:
            os.makedirs(self._raw_folder(), exist_ok=True)
            for src in sources:
                extract_archive(str(src), str(self._raw_folder()))
        else:
            try:
                FashionMNIST(self.data_dir, train=True, download=True)
                FashionMNIST(self.data_dir, train=False, download=True)
            except (OSError, RuntimeError) as err:
                raise FileNotFoundError(
                    f"Fashion-MNIST download failed ({err}). Fix: without internet, "
                    f"`apt-get install dataset-fashion-mnist` (files land in {DEBIAN_DIR}), or copy the "
                    f"*-ubyte.gz files into a folder and set source_dir to it."
                ) from err

    def setup(self, stage: str | None = None) -> None:
        norm = [transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
        aug = [transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip()] if self.augment else []
        try:
            self.train_set = FashionMNIST(self.data_dir, train=True, transform=transforms.Compose(aug + norm))
            self.val_set = FashionMNIST(self.data_dir, train=False, transform=transforms.Compose(norm))
        except (AssertionError, RuntimeError, ValueError, OSError) as err:
            raise ValueError(
                f"the files in {self._raw_folder()} are not Fashion-MNIST IDX files ({type(err).__name__}: {err}). "
                "Fix: delete that folder so they are unpacked again, or point data_dir elsewhere"
            ) from err
