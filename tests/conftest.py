"""Shared fixtures: offline W&B, the seed, one factory per tiny test object (model, classifier, trainer, data),
the checks surgery tests share, and generated datasets in the formats the loaders read.

Test modules import nothing from one another: what several of them use lives here, as a fixture. Each
helper is a plain function below and a session-scoped fixture of the same name whose value is that
function (``tiny_model("vgg11", num_classes=3)`` in a test that asks for ``tiny_model``), so a test
builds its objects where it always did, from the same random draws, and hypothesis tests can use them.
tests/persist_models.py is not a test module but networks a fresh process imports by name.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import pickle
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from torch import nn

# Lightning (which sss_lightning imports) is imported in the helpers, not here: imported while pytest loads
# this file, before its logging plugin has given the root logger a handler, Lightning would stop its logger
# propagating to the root, and caplog would see nothing Lightning or our callbacks log.
if TYPE_CHECKING:
    import lightning as L

    from sss_lightning import SSSClassifier
    from sss_lightning.data import SyntheticDataModule

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _as_fixture(fn: Callable) -> Callable:
    """A session-scoped fixture named like ``fn`` whose value is ``fn`` itself."""

    def fixture() -> Callable:
        return fn

    fixture.__doc__ = fn.__doc__
    return pytest.fixture(fixture, name=fn.__name__, scope="session")


@pytest.fixture(scope="session")
def repo() -> Path:
    """The checkout's root folder."""
    return REPO


# --------------------------------------------------------------------------------------------------
# Tiny models, classifiers, trainers and data
# --------------------------------------------------------------------------------------------------


def _is_cifar_resnet(arch: str) -> bool:
    from sss_lightning.models import default_input_size

    return arch.startswith("resnet") and default_input_size(arch)[1] <= 32


def tiny_arch_kwargs(arch: str) -> dict[str, Any]:
    """The small sizes the tests build a registry family at: CIFAR ResNets of width 4, VGG at 1/8 width,
    ResNeXt-29 with base width 2, stem 8 and output width 16; other families (ImageNet) as they are."""
    if arch.startswith("vgg"):
        return {"width_mult": 0.125}
    if arch.startswith("resnext29"):
        return {"base_width": 2, "stem_width": 8, "out_width": 16}
    if _is_cifar_resnet(arch):
        return {"width": 4}
    return {}


def tiny_model(arch: str = "resnet20", *, depth: int | None = None, **kwargs: Any) -> nn.Module:
    """A fresh small network: registry model ``arch`` at its tiny size (:func:`tiny_arch_kwargs`), built
    by ``build_model`` (so it carries its construction record); or, with ``depth``, a ``CifarResNet`` of
    that depth and width 4 built from the class (no record). CIFAR ResNets get block and channel gates
    (their builder's default adds stream gates: a test asks for those by name). ``kwargs`` override any of
    it; whatever they leave out is the builder's default (10 classes, 3 input channels)."""
    from sss_lightning.models import CifarResNet, build_model

    if depth is not None:
        return CifarResNet(depth=depth, **{"width": 4, "gates": "both", **kwargs})
    gates = {"gates": "both"} if _is_cifar_resnet(arch) else {}
    return build_model(arch, **{**tiny_arch_kwargs(arch), **gates, **kwargs})


def tiny_classifier(**kwargs: Any) -> SSSClassifier:
    """An SSSClassifier over a tiny ResNet-20 (both kinds of gates, width 4) for tiny_data's 4 classes;
    ``kwargs`` override any of it (another ``arch`` gets that family's tiny ``arch_kwargs``)."""
    from sss_lightning import SSSClassifier

    arch = kwargs.get("arch", "resnet20")
    settings = {"arch": arch, "num_classes": 4, "gates": "both", "arch_kwargs": tiny_arch_kwargs(arch)}
    return SSSClassifier(**{**settings, **kwargs})


def quiet_trainer(root: Any = None, callbacks: Iterable[L.Callback] = (), **kwargs: Any) -> L.Trainer:
    """A Trainer without logger, progress bar, model summary or checkpoints unless ``kwargs`` asks for them."""
    import lightning as L

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
    from sss_lightning.data import SyntheticDataModule

    return SyntheticDataModule(**{"num_classes": 4, "image_size": 8, "train_size": 64, "batch_size": 16, **kwargs})


# --------------------------------------------------------------------------------------------------
# What surgery tests set up and check
# --------------------------------------------------------------------------------------------------


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Random running statistics and affine parameters, so BN shifts are non-trivial everywhere."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen))


def set_gates(model: nn.Module, pattern: str, gen: torch.Generator, p_zero: float = 0.5) -> None:
    """Every gate at one ("ones"), at zero ("zeros"), or random in [0, 2) with a ``p_zero`` chance of zero."""
    from sss_lightning.gates import iter_gates

    with torch.no_grad():
        for info in iter_gates(model):
            s = info.module.scale
            if pattern == "ones":
                s.fill_(1.0)
            elif pattern == "zeros":
                s.zero_()
            else:
                values = torch.rand(s.shape, generator=gen) * 2
                s.copy_(torch.where(torch.rand(s.shape, generator=gen) < p_zero, 0.0, values))


def assert_same_outputs(gated: nn.Module, pruned: nn.Module, x: torch.Tensor) -> None:
    """Both in eval mode give the same outputs on ``x``, to 1e-4 of the largest output (at least 1)."""
    gated.eval(), pruned.eval()
    with torch.no_grad():
        a, b = gated(x), pruned(x)
    assert a.shape == b.shape
    scale = max(1.0, a.abs().max().item())
    assert (a - b).abs().max().item() <= 1e-4 * scale, (a - b).abs().max()


def pruned_resnet(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(gated, pruned), both in eval mode: a 1-channel, 3-class tiny ResNet-20 with random BN statistics,
    random gates, one branch reduced to a constant and one branch removed, and the network pruned from it."""
    from sss_lightning.surgery import prune

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = tiny_model("resnet20", in_channels=1, num_classes=3, gates="both")
    randomize_bn(model, gen)
    set_gates(model, "random", gen, p_zero=0.5)
    with torch.no_grad():
        model.layer1[0].branch[3].scale.zero_()  # one branch reduced to a constant
        model.layer2[0].gate.scale.zero_()  # one branch removed
    return model.eval(), prune(model).eval()


@functools.cache
def registry_model(name: str) -> nn.Module:
    """Registry model ``name`` at full size with 5 classes, built once per session: deep-copy it to change it."""
    from sss_lightning.models import build_model

    return build_model(name, num_classes=5)


# --------------------------------------------------------------------------------------------------
# Data on disk, logs
# --------------------------------------------------------------------------------------------------


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


def make_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, size: int = 40) -> Path:
    """An ImageNet-style tree ``root/{train,val}/<class>/<j>.png`` of small single-colour images."""
    from PIL import Image

    for split in ("train", "val"):
        for i, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", (size, size), color=(40 * i, 20 * j, 100)).save(folder / f"{j}.png")
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


# The fixtures: each helper above under its own name.
_tiny_model = _as_fixture(tiny_model)
_tiny_classifier = _as_fixture(tiny_classifier)
_quiet_trainer = _as_fixture(quiet_trainer)
_tiny_data = _as_fixture(tiny_data)
_randomize_bn = _as_fixture(randomize_bn)
_set_gates = _as_fixture(set_gates)
_assert_same_outputs = _as_fixture(assert_same_outputs)
_pruned_resnet = _as_fixture(pruned_resnet)
_registry_model = _as_fixture(registry_model)
_make_image_folder = _as_fixture(make_image_folder)
_read_offline_wandb_history = _as_fixture(read_offline_wandb_history)
