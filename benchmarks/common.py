"""What the training benchmarks share: their run arguments, their data and a quiet Trainer.

One place, so that every benchmark trains on the same data (the same subset per epoch for a seed) with
the same Trainer settings, and a comparison across scripts compares methods, not set-ups.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser

from sss_lightning.data import CIFAR10DataModule, FashionMNISTDataModule, SyntheticDataModule

DATASETS = ("fashion_mnist", "cifar10", "synthetic")


def add_run_arguments(parser: ArgumentParser, *, batches_per_epoch: int) -> None:
    """``--arch --dataset --data_dir --epochs --batches_per_epoch``: what one training run is."""
    parser.add_argument("--arch", type=str, default="resnet20")
    parser.add_argument("--dataset", type=str, default="fashion_mnist", help=" | ".join(DATASETS))
    parser.add_argument("--data_dir", type=str, default="data")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--batches_per_epoch", type=int, default=batches_per_epoch, help="a random subset of this many batches"
    )


def check_run_arguments(parser: ArgumentParser, args: Any, name: str | None = None) -> None:
    """Refuse a bad dataset name before any training, default ``args.out`` (when ``None``) to
    ``benchmarks/results/<name>_<arch>[_<dataset>]`` (no dataset suffix for Fashion-MNIST), and set
    ``args.out_dir`` next to ``args.out``."""
    if args.dataset not in DATASETS:
        parser.error(f"--dataset must be one of {DATASETS}, got {args.dataset!r}")
    if args.out is None and name is not None:
        suffix = "" if args.dataset == "fashion_mnist" else f"_{args.dataset}"
        args.out = f"benchmarks/results/{name}_{args.arch}{suffix}"
    args.out_dir = str(Path(args.out).parent / "runs")


def datamodule(
    dataset: str, data_dir: str, synthetic_train_size: int = 2048
) -> tuple[L.LightningDataModule, list[int]]:
    """The data and its ``(C, H, W)``. CIFAR-10 is the GPU configuration (torchvision downloads it on first
    use); ``synthetic`` is for smoke tests."""
    if dataset == "fashion_mnist":
        return FashionMNISTDataModule(data_dir=data_dir, batch_size=128, num_workers=1, download=True), [1, 28, 28]
    if dataset == "cifar10":
        return CIFAR10DataModule(data_dir=data_dir, download=True, batch_size=128, num_workers=4), [3, 32, 32]
    data = SyntheticDataModule(
        num_classes=10, in_channels=1, image_size=16, train_size=synthetic_train_size, batch_size=64
    )
    return data, [1, 16, 16]


def quiet_trainer(args: Any, callbacks: list[L.Callback], **kwargs: Any) -> L.Trainer:
    """``args.epochs`` epochs of ``args.batches_per_epoch`` batches; no logger, checkpoints, bars or summary."""
    return L.Trainer(
        max_epochs=args.epochs,
        limit_train_batches=args.batches_per_epoch,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=args.out_dir,
        **kwargs,
    )


class RunLog:
    """A sweep's finished runs, one JSON line each in ``path``: a killed sweep run again skips what the
    log holds and goes on. A run is identified by the values of the ``key`` fields of its row."""

    def __init__(self, path: str | Path, key: Sequence[str], defaults: dict[str, Any] | None = None) -> None:
        """``defaults``: the value a key field had before the log recorded it (a row without the field was
        run with that value), so that adding a field to ``key`` keeps an older log's runs."""
        self.path, self.key = Path(path), tuple(key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = self.path.read_text() if self.path.exists() else ""
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        self.rows: list[dict[str, Any]] = [{**(defaults or {}), **row} for row in rows]

    def key_of(self, row: dict[str, Any]) -> tuple:
        return tuple(row[k] for k in self.key)

    def has(self, key: tuple) -> bool:
        return any(self.key_of(r) == key for r in self.rows)

    def add(self, row: dict[str, Any]) -> None:
        """Append a finished run (to the file at once: a later kill keeps it)."""
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def select(self, keys: Sequence[tuple]) -> list[dict[str, Any]]:
        """The logged runs among ``keys``, in log order."""
        wanted = set(keys)
        return [r for r in self.rows if self.key_of(r) in wanted]

    def sweep(self, keys: Sequence[tuple], run: Callable[[tuple], dict[str, Any] | None], say: Callable[[dict], str]):
        """Run every key the log lacks, in order (``run`` may return None to skip one), logging each row
        and printing ``say(row)``; returns the logged runs among ``keys``."""
        for key in keys:
            if self.has(key):
                continue
            row = run(key)
            if row is None:
                continue
            self.add(row)
            print(say(row), flush=True)
        return self.select(keys)
