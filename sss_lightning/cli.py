"""Command line: ``sss-lightning fit --config experiments/fashion_mnist_quick.yaml``.

``fit``/``validate``/``test``/``predict`` are a LightningCLI whose model is any
:class:`~sss_lightning.module.SSSModule` subclass and whose data is any LightningDataModule, both chosen
by ``class_path`` in YAML; ``prune`` turns a training checkpoint into a pruned model file, ``export``
writes it as TorchScript or ONNX, and ``models`` lists the registered architectures with their MACs.
LightningCLI's ``--optimizer`` and ``--lr_scheduler`` would silently replace the two-group APG set-up
that SSS depends on, so they are refused with an error that says which model arguments to set instead.
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from .export import FORMATS, export_model
from .flops import count_flops, format_comparison
from .gates import random_gate_pattern
from .io import load_pruned, save_pruned
from .models import build_model, default_input_size, list_models
from .module import SSSModule, load_sss_checkpoint
from .surgery import check_round_to, prune

__all__ = ["SSSLightningCLI", "ConfigError", "main", "export_command", "models_command", "prune_command"]


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
        _offline_without_wandb_key(config)
        for key in ("optimizer", "lr_scheduler"):
            if config.get(key) is not None:
                raise ConfigError(
                    f"--{key} is not supported: SSSModule builds one APG optimizer with a weight group "
                    "(Nesterov SGD) and a gate group (L1 proximal step), and a CLI optimizer would silently "
                    "replace it. Set model.init_args.lr, momentum, weight_decay, gamma, gate_lr, gate_mode, "
                    "schedule and milestones instead."
                )


def prune_command(argv: list[str]) -> Path:
    """``sss-lightning prune --ckpt last.ckpt --out pruned.pt``: surgery on a training checkpoint."""
    parser = ArgumentParser(prog="sss-lightning prune", description=prune_command.__doc__, default_env=False)
    parser.add_argument("--ckpt", type=str, required=True, help="Lightning checkpoint of an SSSModule")
    parser.add_argument("--out", type=str, default=None, help="pruned model file (default: <ckpt>-pruned.pt)")
    parser.add_argument("--input_size", type=list[int] | None, default=None, help="(C, H, W) for FLOPs")
    parser.add_argument("--config", type=str, default=None, help="fit config whose data to evaluate accuracy on")
    parser.add_argument(
        "--round_to", type=int, default=1, help="keep channel counts a multiple of this (8/16: faster on oneDNN/ORT)"
    )
    args = parser.parse_args(argv)
    try:
        check_round_to(args.round_to)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    ckpt = Path(args.ckpt)
    try:
        module, info = load_sss_checkpoint(ckpt)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err
    size = args.input_size or info.get("input_shape")
    if not size:
        raise ConfigError(f"{ckpt} records no input shape; pass --input_size C H W")
    gated = module.net
    pruned = prune(gated, round_to=args.round_to)
    before, after = count_flops(gated, size), count_flops(pruned, size)
    extra: dict[str, tuple[float, float]] = {}
    if args.config:
        cli = SSSLightningCLI(args=["--config", args.config, "--trainer.logger=false"], run=False)
        trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[])
        acc_before = trainer.validate(module, datamodule=cli.datamodule, verbose=False)[0]
        module.net = pruned
        acc_after = trainer.validate(module, datamodule=cli.datamodule, verbose=False)[0]
        extra = {k: (acc_before[k], acc_after[k]) for k in sorted(acc_before) if k in acc_after}
    out = Path(args.out) if args.out else ckpt.with_name(f"{ckpt.stem}-pruned.pt")
    metadata = {"checkpoint": str(ckpt), "input_size": list(size), "macs": after.macs, "params": after.params}
    metadata.update({f"{k} (pruned)": v[1] for k, v in extra.items()})
    save_pruned(pruned, out, metadata=metadata)
    print(format_comparison(before, after, extra=extra))
    print(f"pruned model: {out}")
    return out


def models_command(argv: list[str]) -> list[dict[str, Any]]:
    """``sss-lightning models``: every registered architecture with its MACs and parameters."""
    parser = ArgumentParser(prog="sss-lightning models", description=models_command.__doc__, default_env=False)
    parser.add_argument("--names", type=list[str] | None, default=None, help="only these models")
    parser.add_argument(
        "--zero_fraction",
        type=float | None,
        default=None,
        help="also show MACs/params after surgery of a random gate pattern with this zero fraction",
    )
    parser.add_argument("--num_classes", type=int | None, default=None, help="classes (default: the builder's)")
    args = parser.parse_args(argv)
    names = args.names or list_models()
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    header = "| model | input | MACs | params |"
    if args.zero_fraction is not None:
        header += f" MACs, {args.zero_fraction:.0%} zero gates | params, {args.zero_fraction:.0%} zero gates |"
    lines, rows = [header, "|" + "---|" * (header.count("|") - 1)], []
    for name in names:
        size = default_input_size(name)
        model = build_model(name, **kwargs)
        report = count_flops(model, size)
        row: dict[str, Any] = {"model": name, "input_size": list(size), "macs": report.macs, "params": report.params}
        line = f"| {name} | {'x'.join(map(str, size))} | {report.macs / 1e6:.1f}M | {report.params / 1e6:.2f}M |"
        if args.zero_fraction is not None:
            random_gate_pattern(model, args.zero_fraction)
            after = count_flops(prune(model), size)
            row.update(pruned_macs=after.macs, pruned_params=after.params)
            line += f" {after.macs / 1e6:.1f}M | {after.params / 1e6:.2f}M |"
        rows.append(row)
        lines.append(line)
    print("\n".join(lines))
    return rows


def export_command(argv: list[str]) -> Path:
    """``sss-lightning export --model pruned.pt --format onnx``: a deployable file, checked against the model."""
    parser = ArgumentParser(prog="sss-lightning export", description=export_command.__doc__, default_env=False)
    parser.add_argument("--model", type=str, required=True, help="pruned model file (save_pruned / prune)")
    parser.add_argument("--format", type=str, default="torchscript", help=f"one of {FORMATS}")
    parser.add_argument("--out", type=str | None, default=None, help="output file (default: next to --model)")
    parser.add_argument("--input_size", type=list[int] | None, default=None, help="(C, H, W); default: recorded")
    args = parser.parse_args(argv)
    if args.format not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got {args.format!r}")
    try:
        model = load_pruned(args.model)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from err
    size = args.input_size or model.sss_metadata.get("input_size")
    if not size:
        raise ConfigError(f"{args.model} records no input size; pass --input_size C H W")
    suffix = {"torchscript": ".ts", "onnx": ".onnx"}[args.format]
    out = Path(args.out) if args.out else Path(args.model).with_suffix(suffix)
    path, diff = export_model(model, out, size, args.format)
    check = "not checked (install onnxruntime to check)" if diff is None else f"max |difference| {diff:.2e}"
    print(f"exported {args.model} -> {path} ({args.format}); outputs vs the model: {check}")
    return path


def wandb_key_available() -> bool:
    """Whether W&B could log online without prompting: WANDB_API_KEY, or a key stored by `wandb login`."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def _offline_without_wandb_key(config: Any) -> None:
    """An online WandbLogger with no API key would prompt or fail mid-run: log offline instead, and say so."""
    loggers = config.get("trainer", {}).get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith("WandbLogger"):
            continue
        init_args = logger.get("init_args")
        if init_args is not None and not init_args.get("offline") and not wandb_key_available():
            init_args["offline"] = True
            rank_zero_warn(
                "W&B: no API key found (WANDB_API_KEY or `wandb login`), so this run logs offline instead of "
                "online; upload it later with `wandb login` and `wandb sync <run folder>`"
            )


def main(args: ArgsType = None) -> None:
    """Entry point of ``sss-lightning`` and ``python -m sss_lightning``."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv[:1] == ["prune"]:
            prune_command(argv[1:])
        elif argv[:1] == ["models"]:
            models_command(argv[1:])
        elif argv[:1] == ["export"]:
            export_command(argv[1:])
        else:
            SSSLightningCLI(args=args)
    except ConfigError as err:
        print(f"sss-lightning: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
