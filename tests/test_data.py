import pytest
import torch

from sss_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    SyntheticDataModule,
)


def test_fashion_mnist_unpacks_local_gz_files_and_loads_them(tmp_path, fashion_gz_dir):
    dm = FashionMNISTDataModule(
        data_dir=str(tmp_path / "data"), source_dir=str(fashion_gz_dir), batch_size=16, num_workers=0
    )
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 64 and len(dm.val_set) == 32
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= y.min() and y.max() < 10
    # A second run finds the unpacked files and needs no source any more.
    FashionMNISTDataModule(data_dir=str(tmp_path / "data"), source_dir=None).prepare_data()


def test_fashion_mnist_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist.*download: true"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "none"), source_dir=str(tmp_path / "missing"))


def test_cifar10_loads_torchvision_layout_with_augmentation(cifar10_dir):
    dm = CIFAR10DataModule(data_dir=str(cifar10_dir), batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 40 and len(dm.val_set) == 8
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)
    assert abs(float(x.mean())) < 1.0  # normalised


@pytest.mark.parametrize(
    "cls, folder", [(CIFAR10DataModule, "cifar-10-batches-py"), (CIFAR100DataModule, "cifar-100-python")]
)
def test_cifar_missing_directory_says_how_to_fix(tmp_path, cls, folder):
    with pytest.raises(FileNotFoundError, match=f"{folder} does not exist. Fix: set download: true"):
        cls(data_dir=str(tmp_path))


def test_cifar_corrupted_folder_gives_a_clear_error(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="incomplete or corrupted.*download: true"):
        dm.setup("fit")


def test_synthetic_is_deterministic_and_learnable_shape():
    a, b = SyntheticDataModule(seed=3), SyntheticDataModule(seed=3)
    a.setup(), b.setup()
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert a.train_set.tensors[0].shape == (256, 3, 16, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"num_workers": -1}, "num_workers must be an int >= 0"),
    ],
)
def test_loader_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDataModule(**kwargs)


def test_loader_before_setup_is_a_clear_error():
    with pytest.raises(RuntimeError, match="setup\\(\\) has not run"):
        SyntheticDataModule().train_dataloader()


def test_fashion_mnist_failed_download_points_to_offline_options(tmp_path, monkeypatch):
    import sss_lightning.data.fashion_mnist as fm

    def offline(self, *args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(fm.FashionMNIST, "__init__", offline)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), source_dir=None, download=True)
    with pytest.raises(FileNotFoundError, match="download failed .*apt-get install dataset-fashion-mnist"):
        dm.prepare_data()
