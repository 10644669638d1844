"""The model's input size comes from the datamodule: ``data.input_size`` is linked to
``model.init_args.input_size`` when the command line builds them (LightningCLI ``link_arguments``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from sss_lightning.cli import SSSLightningCLI, main

REPO = Path(__file__).resolve().parents[1]  # the checkout
EXPERIMENTS = REPO / "experiments"


def image_folder(root):
    """``root/{train,val}/{a,b}/0.png``: the ImageFolder layout ImageNetDataModule reads."""
    from PIL import Image

    for split in ("train", "val"):
        for i, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 40), color=(100 * i, 50, 100)).save(root / split / cls / "0.png")
    return root


TINY = """\
seed_everything: 0
trainer: {logger: false, enable_checkpointing: false, enable_progress_bar: false, enable_model_summary: false,
          max_steps: 1, limit_val_batches: 1}
model:
  class_path: sss_lightning.SSSClassifier
  init_args: {num_classes: 4, arch: resnet20, arch_kwargs: {width: 4}, settle_at: null}
data:
  class_path: sss_lightning.data.SyntheticDataModule
  init_args: {num_classes: 4, image_size: 12, train_size: 16, val_size: 8, batch_size: 8}
"""


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """main(args) is the command line; pytest's own argv must not look like extra CLI arguments."""
    monkeypatch.setattr(sys, "argv", ["sss-lightning"])


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_help_lists_the_link(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    assert (
        "datamodule_input_size(data) --> model.init_args.input_size [applied on instantiate]" in capsys.readouterr().out
    )


@pytest.mark.parametrize("config", sorted(p.name for p in EXPERIMENTS.glob("*.yaml")))
def test_print_config_leaves_the_input_size_to_the_datamodule(config, capsys):
    """The experiments name the image shape once, in data; jsonargparse prints the config before the link
    is applied, so the model's linked input_size is not in it."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(EXPERIMENTS / config), "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "input_size" not in printed["model"]["init_args"]
    assert printed["data"]["class_path"].startswith("sss_lightning.data.")
    assert "input_size" not in yaml.safe_load((EXPERIMENTS / config).read_text())["model"]["init_args"]


def test_a_fit_gives_the_module_the_datamodules_input_size(tiny_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = SSSLightningCLI(args=["fit", "--config", str(tiny_config)])
    assert cli.datamodule.input_size == (3, 12, 12)
    assert cli.model.hparams.input_size == [3, 12, 12]  # a constructor argument, not the first batch's shape
    assert tuple(cli.model.example_input_array.shape) == (1, 3, 12, 12)
    assert cli.trainer.global_step == 1


def test_the_link_follows_a_data_override_before_any_batch(tiny_config):
    overrides = ["--data.init_args.in_channels=1", "--model.init_args.in_channels=1", "--data.init_args.image_size=9"]
    cli = SSSLightningCLI(args=["--config", str(tiny_config), *overrides], run=False)
    assert cli.model.hparams.input_size == [1, 9, 9]
    assert tuple(cli.model.example_input_array.shape) == (1, 1, 9, 9)


def test_an_explicit_input_size_that_agrees_with_the_datamodule_is_accepted(tiny_config):
    cli = SSSLightningCLI(args=["--config", str(tiny_config), "--model.init_args.input_size=[3, 12, 12]"], run=False)
    assert cli.model.hparams.input_size == [3, 12, 12]


def test_an_explicit_input_size_that_disagrees_is_one_line_naming_both(tiny_config, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(tiny_config), "--model.init_args.input_size=[1, 28, 28]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(
        "sss-lightning: error: --model.init_args.input_size=[1, 28, 28] disagrees with the datamodule's input size "
        "[3, 12, 12] (SyntheticDataModule.input_size"
    )
    assert "remove model.init_args.input_size from the config" in err


def test_a_datamodule_without_input_size_leaves_the_models_own(tmp_path):
    config = TINY.split("data:")[0] + "data:\n  class_path: lightning.pytorch.demos.boring_classes.BoringDataModule\n"
    path = tmp_path / "boring.yaml"
    path.write_text(config)
    cli = SSSLightningCLI(args=["--config", str(path), "--model.init_args.input_size=[3, 5, 5]"], run=False)
    assert cli.model.hparams.input_size == [3, 5, 5]
    cli = SSSLightningCLI(args=["--config", str(path)], run=False)
    assert cli.model.hparams.input_size is None  # SSSModule then records the first training batch's shape


def test_experiment_configs_get_their_input_size_from_the_datamodule(
    tmp_path, monkeypatch, fashion_gz_dir, cifar10_dir
):
    monkeypatch.chdir(tmp_path)
    quiet = ["--trainer.logger=false", "--data.init_args.num_workers=0"]
    fashion = ["--data.init_args.data_dir", str(tmp_path / "data"), "--data.init_args.source_dir", str(fashion_gz_dir)]
    cli = SSSLightningCLI(
        args=["--config", str(EXPERIMENTS / "fashion_mnist_budget.yaml"), *fashion, *quiet], run=False
    )
    assert cli.model.hparams.input_size == [1, 28, 28]
    cifar = ["--data.init_args.data_dir", str(cifar10_dir), "--data.init_args.download=false"]
    cli = SSSLightningCLI(args=["--config", str(EXPERIMENTS / "resnet_cifar.yaml"), *cifar, *quiet], run=False)
    assert cli.model.hparams.input_size == [3, 32, 32]
    root = image_folder(tmp_path / "imnet")
    imagenet = [
        "--data.init_args.data_dir",
        str(root),
        "--data.init_args.image_size=32",
        "--data.init_args.val_resize=36",
    ]
    cli = SSSLightningCLI(
        args=[
            "--config",
            str(EXPERIMENTS / "resnet50_imagenet.yaml"),
            "--model.init_args.num_classes=2",
            *imagenet,
            *quiet,
        ],
        run=False,
    )
    assert cli.model.hparams.input_size == [3, 32, 32]  # the crop the datamodule was told, not ImageNet's 224
