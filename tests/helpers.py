"""What many tests build: a quiet Trainer and a tiny synthetic dataset."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L

from sss_lightning.data import SyntheticDataModule


def quiet_trainer(root: Any = None, callbacks: Iterable[L.Callback] = (), **kwargs: Any) -> L.Trainer:
    """A Trainer without logger, progress bar, model summary or checkpoints unless ``kwargs`` asks for them."""
    settings: dict[str, Any] = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "callbacks": list(callbacks),
    }
    if root is not None:
        settings["default_root_dir"] = root
    return L.Trainer(**{**settings, **kwargs})


def tiny_data(**kwargs: Any) -> SyntheticDataModule:
    """4 classes of 8x8 RGB images, 64 for training in batches of 16 (override any of it)."""
    return SyntheticDataModule(**{"num_classes": 4, "image_size": 8, "train_size": 64, "batch_size": 16, **kwargs})
