import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sss_lightning.cli import main


@pytest.fixture(scope="session")
def experiments(repo):
    """The checkout's experiments/ folder of YAML configs."""
    return repo / "experiments"


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """main(args) is the command line; pytest's own argv must not look like extra CLI arguments."""
    monkeypatch.setattr(sys, "argv", ["sss-lightning"])


@pytest.mark.slow
def test_fashion_mnist_quick_config_fits_with_fast_dev_run(tmp_path, monkeypatch, fashion_gz_dir, capsys, experiments):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(experiments / "fashion_mnist_quick.yaml"),
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
def test_budget_config_lands_shrinks_and_prunes(tmp_path, monkeypatch, fashion_gz_dir, experiments):
    """The YAML names every budget/shrink setting by class_path, so a typo there would fail here."""
    from sss_lightning.cli import SSSLightningCLI

    monkeypatch.chdir(tmp_path)
    cli = SSSLightningCLI(
        args=[
            "fit",
            "--config",
            str(experiments / "fashion_mnist_budget.yaml"),
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
            # absolute: W&B fixes its root directory at its first setup in the process, which may have
            # been another test's working directory, so a relative save_dir could land in the checkout
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs' / 'fashion_mnist_budget'}",
        ]
    )
    budget = next(c for c in cli.trainer.callbacks if type(c).__name__ == "MacsBudget")
    shrink = next(c for c in cli.trainer.callbacks if type(c).__name__ == "InTrainingShrink")
    assert budget.result["epoch"] == 2 and abs(budget.result["macs"] / budget.result["target_macs"] - 1) <= 0.03
    assert [row["epoch"] for row in shrink.history] == [3]
    assert (tmp_path / "runs" / "fashion_mnist_budget" / "pruned.pt").is_file()


@pytest.mark.slow
def test_resnet_cifar_config_fits_with_fast_dev_run(tmp_path, monkeypatch, cifar10_dir, experiments):
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            str(experiments / "resnet_cifar.yaml"),
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
def test_cli_optimizer_flags_are_refused_before_any_work(flag, tmp_path, monkeypatch, capsys, experiments):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "fit",
                "--config",
                str(experiments / "fashion_mnist_quick.yaml"),
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


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning
def test_console_script_prints_config(repo, experiments):
    out = subprocess.run(
        ["sss-lightning", "fit", "--config", str(experiments / "resnet_cifar.yaml"), "--print_config"],
        capture_output=True,
        text=True,
        check=True,
        cwd=repo,
    ).stdout
    assert "class_path: sss_lightning.SSSClassifier" in out
    assert "arch: resnet56" in out and "gamma: 0.01" in out


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning
def test_python_dash_m_entry_point(repo):
    out = subprocess.run(
        [sys.executable, "-m", "sss_lightning", "--help"], capture_output=True, text=True, check=True, cwd=repo
    ).stdout
    assert "fit" in out and "validate" in out


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, tiny_classifier, quiet_trainer, tiny_data):
    """A checkpoint of 20 steps of the tiny classifier (gamma 0.5, constant lr), trained once for this file;
    the prune tests only read it, each from its own copy (``ckpt``)."""
    torch.manual_seed(0)  # what the autouse seed gave each test that trained its own
    root = tmp_path_factory.mktemp("trained")
    module = tiny_classifier(gamma=0.5, schedule="constant")
    trainer = quiet_trainer(root, max_steps=20)
    trainer.fit(module, datamodule=tiny_data())
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def ckpt(trained_checkpoint, tmp_path):
    """``tmp_path/last.ckpt``: this test's copy of the trained checkpoint."""
    return Path(shutil.copy(trained_checkpoint, tmp_path / "last.ckpt"))


def test_prune_command_turns_a_checkpoint_into_a_reloadable_pruned_model(tmp_path, capsys, ckpt):
    import torch

    from sss_lightning import load_pruned

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


def test_prune_command_rounds_channel_counts_and_refuses_a_bad_round_to(tmp_path, capsys, ckpt):
    import torch

    from sss_lightning import load_pruned, prune
    from sss_lightning.module import load_sss_checkpoint

    def widths(model):
        return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

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
def test_resnext_and_vgg_configs_fit_from_the_cli(config, overrides, tmp_path, monkeypatch, cifar10_dir, experiments):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="no gate reached exactly zero"):
        main(
            [
                "fit",
                "--config",
                str(experiments / config),
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
def test_imagenet_config_fits_on_a_tiny_image_folder(tmp_path, monkeypatch, make_image_folder, experiments):
    root = make_image_folder(tmp_path / "imnet")
    monkeypatch.chdir(tmp_path)
    if True:
        main(
            [
                "fit",
                "--config",
                str(experiments / "resnet50_imagenet.yaml"),
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


def test_online_wandb_without_a_key_falls_back_to_offline_instead_of_prompting(
    tmp_path, monkeypatch, fashion_gz_dir, experiments
):
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
                str(experiments / "fashion_mnist_quick.yaml"),
                "--trainer.logger.init_args.offline=false",
                "--data.init_args.source_dir",
                str(fashion_gz_dir),
            ],
            run=False,
        )
    (logger,) = [lg for lg in cli.trainer.loggers if isinstance(lg, WandbLogger)]
    assert logger._offline is True


# --- errors the command-line way: one line naming the option, the value and the fix; no traceback ------


TINY_CONFIG = """\
seed_everything: 0
trainer: {logger: false, enable_checkpointing: false, enable_progress_bar: false, max_steps: 1}
model:
  class_path: sss_lightning.SSSClassifier
  init_args: {num_classes: 4, arch: resnet20, arch_kwargs: {width: 4}}
data:
  class_path: sss_lightning.data.SyntheticDataModule
  init_args: {num_classes: 4, image_size: 8, train_size: 16, val_size: 16, batch_size: 8}
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("sss-lightning: error: "), err
    return err


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--model.init_args.gamma=-0.1", "--model.init_args.gamma=-0.1: APG (gates): gamma (L1 strength) must be >= 0"),
        ("--model.init_args.arch=resnet9000", "--model.init_args.arch=resnet9000: unknown model 'resnet9000'; known"),
        ("--model.init_args.lr=0", "--model.init_args.lr=0.0: APG (weights): lr must be > 0"),
        ("--model.init_args.momentum=1.5", "--model.init_args.momentum=1.5: APG (weights): momentum must be in [0, 1)"),
        ("--data.init_args.batch_size=0", "--data.init_args.batch_size=0: batch_size must be a positive int"),
        ("--trainer.max_steps=-5", "--trainer.max_steps=-5: `max_steps` must be a non-negative integer"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_option_value_and_fix(override, expected, tiny_config, tmp_path, capsys):
    """One line and exit code 2, not a 70-line traceback through jsonargparse with exit code 1."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(tiny_config), override])
    assert exc.value.code == 2
    err = _error_line(capsys)
    assert expected in err and "--debug" in err


def test_debug_switch_and_env_var_show_the_traceback(tiny_config, monkeypatch):
    from sss_lightning.cli import ConfigError

    with pytest.raises(ConfigError, match="gamma=-0.1") as info:
        main(["fit", "--config", str(tiny_config), "--model.init_args.gamma=-0.1", "--debug"])
    assert isinstance(info.value.__cause__, ValueError)  # the constructor's error, with its traceback
    monkeypatch.setenv("SSS_DEBUG", "1")
    with pytest.raises(ConfigError):
        main(["fit", "--config", str(tiny_config), "--model.init_args.gamma=-0.1"])


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning
def test_console_script_error_has_no_traceback_and_a_non_zero_exit(tiny_config):
    out = subprocess.run(
        ["sss-lightning", "fit", "--config", str(tiny_config), "--model.init_args.gamma=-1"],
        capture_output=True,
        text=True,
        env={**os.environ, "SSS_DEBUG": ""},
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "sss-lightning: error: --model.init_args.gamma=-1.0: " in out.stderr


@pytest.mark.slow  # a fresh interpreter imports torch and Lightning
def test_help_lists_every_subcommand():
    """Not only LightningCLI's fit/validate/test/predict: prune, export and models too."""
    out = subprocess.run(["sss-lightning", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("fit", "validate", "test", "predict", "prune", "export", "models"):
        assert re.search(rf"^  {command} +\S", out, re.MULTILINE), (command, out)
    assert "{fit,validate,test,predict,prune,export,models}" in out and "--debug" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "a subcommand is required, one of {fit,validate,test,predict,prune,export,models}"),
        (["bogus"], "unknown subcommand 'bogus'; choose one of {fit,"),
    ],
)
def test_missing_or_unknown_subcommand(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err


def _prune_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["prune", *argv])
    assert exc.value.code == 2
    return _error_line(capsys)


def test_prune_of_an_empty_or_truncated_checkpoint_is_a_clear_error(tmp_path, capsys, ckpt):
    """`prune --ckpt empty.ckpt` is a one-line error, not a raw EOFError traceback."""
    (tmp_path / "empty.ckpt").write_bytes(b"")
    assert "--ckpt" in _prune_error(["--ckpt", str(tmp_path / "empty.ckpt")], capsys)
    assert "is empty (0 bytes" in _prune_error(["--ckpt", str(tmp_path / "empty.ckpt")], capsys)
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    err = _prune_error(["--ckpt", str(tmp_path / "cut.ckpt")], capsys)
    assert "cannot read it as a Lightning checkpoint" in err and "truncated" in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--ckpt", "{tmp}/nothing.ckpt"], "--ckpt {tmp}/nothing.ckpt: no such file; pass the .ckpt file"),
        (["--ckpt", "{tmp}"], "--ckpt {tmp} is a directory"),
        (["--ckpt", "{ckpt}", "--round_to", "-2"], "--round_to=-2: round_to must be a positive int"),
        (["--ckpt", "{ckpt}", "--input_size", "[3, 8]"], "--input_size must be three positive ints [C,H,W]"),
        (["--ckpt", "{ckpt}", "--input_size", "[3, 0, 8]"], "--input_size must be three positive ints [C,H,W]"),
        (["--ckpt", "{ckpt}", "--config", "{tmp}/none.yaml"], "--config {tmp}/none.yaml: no such file"),
        (["--ckpt", "{ckpt}", "--out", "{tmp}/out"], "--out {tmp}/out is a directory; pass a file path such as"),
    ],
)
def test_prune_checks_its_arguments_before_any_work(args, expected, tmp_path, capsys):
    ckpt = tmp_path / "fake.ckpt"
    ckpt.write_bytes(b"not read: the arguments are checked first")
    (tmp_path / "out").mkdir()
    fill = {"tmp": str(tmp_path), "ckpt": str(ckpt)}
    err = _prune_error([a.format(**fill) for a in args], capsys)
    assert expected.format(**fill) in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_prune_into_an_existing_folder_leaves_nothing_behind(tmp_path, capsys, ckpt):
    """`prune --out <existing dir>` fails before the work and leaves no <dir>.tmp next to it."""
    (tmp_path / "out").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    _prune_error(["--ckpt", str(ckpt), "--out", str(tmp_path / "out")], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not list((tmp_path / "out").iterdir())


def test_save_pruned_failures_leave_no_temporary_file(tmp_path, monkeypatch, pruned_resnet):
    import torch

    from sss_lightning import save_pruned

    _, pruned = pruned_resnet()
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory; pass a file path"):
        save_pruned(pruned, tmp_path / "dir.pt")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_pruned(pruned, tmp_path / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.pt"]


def test_prune_that_removes_nothing_says_how_to_get_zeros(tmp_path, capsys, tiny_classifier, quiet_trainer, tiny_data):
    module = tiny_classifier(gamma=0.0)
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=tiny_data())
    trainer.save_checkpoint(tmp_path / "dense.ckpt")
    removes_nothing = r"no gate in .*dense\.ckpt is exactly zero, so nothing is removed.*larger gamma"
    with pytest.warns(UserWarning, match=removes_nothing):
        main(["prune", "--ckpt", str(tmp_path / "dense.ckpt"), "--out", str(tmp_path / "p.pt")])
    assert (tmp_path / "p.pt").is_file()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "{tmp}/none.pt"], "--model {tmp}/none.pt: no such file"),
        (["--model", "{model}", "--format", "tflite"], "--format must be one of ('torchscript', 'onnx'), got 'tflite'"),
        (["--model", "{empty}"], "--model {empty} is empty (0 bytes"),
        (["--model", "{garbage}"], "--model: cannot read {garbage}: its 18 bytes hold no complete zip archive"),
        (["--model", "{model}", "--out", "{tmp}/out"], "--out {tmp}/out is a directory"),
        (["--model", "{model}", "--input_size", "[1, 2, 3, 4]"], "--input_size must be three positive ints"),
    ],
)
def test_export_checks_its_arguments(args, expected, tmp_path, capsys, pruned_resnet):
    from sss_lightning import save_pruned

    save_pruned(pruned_resnet()[1], tmp_path / "m.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "garbage.pt").write_bytes(b"no model in here!!")
    (tmp_path / "out").mkdir()
    fill = {"tmp": tmp_path, "model": tmp_path / "m.pt", "empty": tmp_path / "empty.pt"}
    fill["garbage"] = tmp_path / "garbage.pt"
    with pytest.raises(SystemExit) as exc:
        main(["export", *[a.format(**fill) for a in args]])
    assert exc.value.code == 2
    assert expected.format(**fill) in _error_line(capsys)
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--names", "[resnet20, resnet9000]"], "--names: unknown model(s) ['resnet9000']; known models: "),
        (["--zero_fraction", "1.5"], "--zero_fraction must be in [0, 1]"),
        (["--zero_fraction", "-0.1"], "--zero_fraction must be in [0, 1]"),
        (["--num_classes", "0"], "--num_classes must be a positive int, got 0"),
    ],
)
def test_models_checks_its_arguments(args, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models", *args])
    assert exc.value.code == 2
    assert expected in _error_line(capsys)
