"""Shared fixtures: offline W&B, tiny gated models, generated datasets in the formats the loaders read."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (the MNIST format: magic, dims, big-endian uint8 payload), gzipped."""
    dtype_code = 0x08  # unsigned byte
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_gz_dir(tmp_path: Path) -> Path:
    """A tiny Fashion-MNIST in the layout of Debian's dataset-fashion-mnist (*-ubyte.gz files)."""
    rng = np.random.default_rng(0)
    src = tmp_path / "fashion-src"
    src.mkdir()
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx_gz(src / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx_gz(src / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return src


@pytest.fixture
def cifar10_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny CIFAR-10 in torchvision's python-pickle layout (md5 check bypassed: the data is ours)."""
    import torchvision

    rng = np.random.default_rng(0)
    root = tmp_path / "cifar"
    folder = root / torchvision.datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    names = [name for name, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list]
    for name in names:
        batch = {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 8))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    return root
