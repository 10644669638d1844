"""Shared fixtures: offline W&B, tiny gated models, generated datasets in the formats the loaders read."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
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


def read_offline_wandb_history(root: Path) -> list[dict]:
    """History rows of the one offline W&B run under ``root``, read back from its ``run-*.wandb`` file.

    The file is a LevelDB-style log (``:W&B`` header, 32 KiB blocks of records with a 7-byte header:
    crc32, length, type FULL/FIRST/MIDDLE/LAST) of protobuf ``Record`` messages; wandb 0.31 ships the
    protobuf classes but no Python reader, so the tests carry this one.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = list(Path(root).glob("wandb/offline-run-*/run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, block, pending, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        space = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if space < 7 or kind == 0:  # block trailer / zero padding
            pos += space
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return rows
