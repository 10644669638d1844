"""Command line: ``sss-lightning fit --config experiments/fashion_mnist_quick.yaml``.

A LightningCLI whose model is any :class:`~sss_lightning.module.SSSModule` subclass and whose data is
any LightningDataModule, both chosen by ``class_path`` in YAML. LightningCLI's ``--optimizer`` and
``--lr_scheduler`` would silently replace the two-group APG set-up that SSS depends on, so they are
refused with an error that says which model arguments to set instead.
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningCLI

from .module import SSSModule

__all__ = ["SSSLightningCLI", "ConfigError", "main"]


class ConfigError(ValueError):
    """A configuration SSS cannot honour; the message says what to change."""


class SSSLightningCLI(LightningCLI):
    """LightningCLI for SSS: subclass mode for model and data, CLI optimizers refused."""

    def __init__(self, args: ArgsType = None, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        # Re-running a config (e.g. the quick start) replaces its saved config.yaml instead of aborting.
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            SSSModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for key in ("optimizer", "lr_scheduler"):
            if config.get(key) is not None:
                raise ConfigError(
                    f"--{key} is not supported: SSSModule builds one APG optimizer with a weight group "
                    "(Nesterov SGD) and a gate group (L1 proximal step), and a CLI optimizer would silently "
                    "replace it. Set model.init_args.lr, momentum, weight_decay, gamma, gate_lr, gate_mode, "
                    "schedule and milestones instead."
                )


def main(args: ArgsType = None) -> None:
    """Entry point of ``sss-lightning`` and ``python -m sss_lightning``."""
    try:
        SSSLightningCLI(args=args)
    except ConfigError as err:
        print(f"sss-lightning: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
