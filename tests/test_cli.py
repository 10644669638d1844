import subprocess
import sys

import pytest

from sss_lightning.cli import main
from tests.conftest import REPO
from tests.helpers import quiet_trainer, tiny_data

EXPERIMENTS = REPO / "experiments"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """main(args) is the command line; pytest's own argv must not look like extra CLI arguments."""
    monkeypatch.setattr(sys, "argv", ["sss-lightning"])


def test_fashion_mnist_quick_config_fits_with_fast_dev_run(tmp_path, monkeypatch, fashion_gz_dir, capsys):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "fashion_mnist_quick.yaml"),
            "--trainer.fast_dev_run=2",
            "--data.init_args.data_dir",
            str(tmp_path / "data"),
            "--data.init_args.source_dir",
            str(fashion_gz_dir),
            "--data.init_args.batch_size=8",
            "--data.init_args.num_workers=0",
        ]
    )
    assert (tmp_path / "data" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    # the run ends with surgery: a pruned model that reloads (fresh-process reload: tests/test_io.py)
    from sss_lightning import load_pruned

    model = load_pruned(tmp_path / "runs" / "fashion_mnist_quick" / "pruned.pt")
    assert model.sss_metadata["input_size"] == [1, 28, 28]


@pytest.mark.slow
def test_budget_config_lands_shrinks_and_prunes(tmp_path, monkeypatch, fashion_gz_dir):
    """The YAML names every budget/shrink setting by class_path, so a typo there would fail here."""
    from sss_lightning.cli import SSSLightningCLI

    monkeypatch.chdir(tmp_path)
    cli = SSSLightningCLI(
        args=[
            "fit",
            "--config",
            str(EXPERIMENTS / "fashion_mnist_budget.yaml"),
            "--trainer.max_epochs=3",
            "--trainer.limit_train_batches=12",
            "--trainer.limit_val_batches=2",
            "--data.init_args.data_dir",
            str(tmp_path / "data"),
            "--data.init_args.source_dir",
            str(fashion_gz_dir),
            "--data.init_args.batch_size=16",
            "--data.init_args.num_workers=0",
            "--model.init_args.arch_kwargs={width: 4}",
        ]
    )
    budget = next(c for c in cli.trainer.callbacks if type(c).__name__ == "MacsBudget")
    shrink = next(c for c in cli.trainer.callbacks if type(c).__name__ == "InTrainingShrink")
    assert budget.result["epoch"] == 2 and abs(budget.result["macs"] / budget.result["target_macs"] - 1) <= 0.03
    assert [row["epoch"] for row in shrink.history] == [3]
    assert (tmp_path / "runs" / "fashion_mnist_budget" / "pruned.pt").is_file()


def test_resnet_cifar_config_fits_with_fast_dev_run(tmp_path, monkeypatch, cifar10_dir):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "resnet_cifar.yaml"),
            "--trainer.fast_dev_run=1",
            "--trainer.accelerator=cpu",
            "--data.init_args.data_dir",
            str(cifar10_dir),
            "--data.init_args.download=false",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
        ]
    )


@pytest.mark.parametrize(
    "flag",
    ["--optimizer=torch.optim.Adam", "--lr_scheduler=torch.optim.lr_scheduler.ExponentialLR --lr_scheduler.gamma=0.9"],
)
def test_cli_optimizer_flags_are_refused_before_any_work(flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit",
                "--config",
                str(EXPERIMENTS / "fashion_mnist_quick.yaml"),
                *flag.split(),
                "--data.init_args.source_dir",
                str(tmp_path / "nowhere"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is not supported: SSSModule builds one APG optimizer" in err
    assert "model.init_args.lr" in err
    assert not (tmp_path / "runs").exists()


def test_console_script_prints_config():
    out = subprocess.run(
        ["sss-lightning", "fit", "--config", str(EXPERIMENTS / "resnet_cifar.yaml"), "--print_config"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    assert "class_path: sss_lightning.SSSClassifier" in out
    assert "arch: resnet56" in out and "gamma: 0.01" in out


def test_python_dash_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "sss_lightning", "--help"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert "fit" in out and "validate" in out


def _train_checkpoint(tmp_path):

    from sss_lightning import SSSClassifier

    module = SSSClassifier(
        arch="resnet20", num_classes=4, gates="both", arch_kwargs={"width": 4}, gamma=0.5, schedule="constant"
    )
    trainer = quiet_trainer(tmp_path, max_steps=20)
    trainer.fit(module, datamodule=tiny_data())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_prune_command_turns_a_checkpoint_into_a_reloadable_pruned_model(tmp_path, capsys):
    import torch

    from sss_lightning import load_pruned

    ckpt = _train_checkpoint(tmp_path)
    config = tmp_path / "data.yaml"
    config.write_text(
        "model:\n  class_path: sss_lightning.SSSClassifier\n  init_args: {num_classes: 4}\n"
        "data:\n  class_path: sss_lightning.data.SyntheticDataModule\n"
        "  init_args: {num_classes: 4, image_size: 8, train_size: 64, val_size: 32, batch_size: 16}\n"
    )
    main(["prune", "--ckpt", str(ckpt), "--out", str(tmp_path / "p.pt"), "--config", str(config)])
    out = capsys.readouterr().out
    assert "| MACs |" in out and "| params |" in out and "| val/acc |" in out
    model = load_pruned(tmp_path / "p.pt")
    assert model.sss_metadata["input_size"] == [3, 8, 8]
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_prune_command_rounds_channel_counts_and_refuses_a_bad_round_to(tmp_path, capsys):
    import torch

    from sss_lightning import load_pruned, prune
    from sss_lightning.module import load_sss_checkpoint

    def widths(model):
        return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    ckpt = _train_checkpoint(tmp_path)
    main(["prune", "--ckpt", str(ckpt), "--out", str(tmp_path / "p.pt"), "--round_to", "3"])
    assert widths(load_pruned(tmp_path / "p.pt")) == widths(prune(load_sss_checkpoint(ckpt)[0].net, round_to=3))
    with pytest.raises(SystemExit):
        main(["prune", "--ckpt", str(ckpt), "--round_to", "0"])
    assert "round_to must be a positive int" in capsys.readouterr().err


def test_prune_command_refuses_a_foreign_checkpoint(tmp_path, capsys):
    import torch

    torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
    with pytest.raises(SystemExit):
        main(["prune", "--ckpt", str(tmp_path / "x.ckpt")])
    assert "is not a Lightning checkpoint of an SSSModule" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, overrides",
    [
        ("resnext_cifar.yaml", ['--model.init_args.arch_kwargs={"base_width": 2, "stem_width": 8, "out_width": 16}']),
        ("vgg_cifar.yaml", ['--model.init_args.arch_kwargs={"width_mult": 0.125}']),
    ],
)
def test_resnext_and_vgg_configs_fit_from_the_cli(config, overrides, tmp_path, monkeypatch, cifar10_dir):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="no gate reached exactly zero"):
        main(
            [
                "fit",
                "--config",
                str(EXPERIMENTS / config),
                "--trainer.fast_dev_run=1",
                "--trainer.accelerator=cpu",
                "--data.init_args.data_dir",
                str(cifar10_dir),
                "--data.init_args.download=false",
                "--data.init_args.batch_size=4",
                "--data.init_args.num_workers=0",
                *overrides,
            ]
        )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:StructuralSurgery")  # whether one step zeroes a gate depends on the batch
def test_imagenet_config_fits_on_a_tiny_image_folder(tmp_path, monkeypatch):
    from tests.test_architectures import make_image_folder

    root = make_image_folder(tmp_path / "imnet")
    monkeypatch.chdir(tmp_path)
    if True:
        main(
            [
                "fit",
                "--config",
                str(EXPERIMENTS / "resnet50_imagenet.yaml"),
                "--trainer.fast_dev_run=1",
                "--trainer.accelerator=cpu",
                "--model.init_args.num_classes=2",
                "--data.init_args.data_dir",
                str(root),
                "--data.init_args.batch_size=2",
                "--data.init_args.num_workers=0",
                "--data.init_args.image_size=32",
                "--data.init_args.val_resize=36",
            ]
        )


def test_models_command_lists_macs_and_params(capsys):
    from sss_lightning.cli import models_command

    rows = models_command(["--names", "[resnet20, vgg11]", "--zero_fraction", "0.5"])
    out = capsys.readouterr().out
    assert "| resnet20 | 3x32x32 | 40.8M | 0.27M |" in out and "| vgg11 |" in out
    assert all(row["pruned_macs"] < row["macs"] for row in rows)


def test_online_wandb_without_a_key_falls_back_to_offline_instead_of_prompting(tmp_path, monkeypatch, fashion_gz_dir):
    from lightning.pytorch.loggers import WandbLogger

    from sss_lightning.cli import SSSLightningCLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a stored key
    monkeypatch.delenv("NETRC", raising=False)
    with pytest.warns(UserWarning, match="no API key found .* logs offline"):
        cli = SSSLightningCLI(
            args=[
                "--config",
                str(EXPERIMENTS / "fashion_mnist_quick.yaml"),
                "--trainer.logger.init_args.offline=false",
                "--data.init_args.source_dir",
                str(fashion_gz_dir),
            ],
            run=False,
        )
    (logger,) = [lg for lg in cli.trainer.loggers if isinstance(lg, WandbLogger)]
    assert logger._offline is True
