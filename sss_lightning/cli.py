"""Command line: ``sss-lightning fit --config experiments/fashion_mnist_quick.yaml``.

``fit``/``validate``/``test``/``predict`` are a LightningCLI whose model is any
:class:`~sss_lightning.module.SSSModule` subclass and whose data is any LightningDataModule, both chosen
by ``class_path`` in YAML; ``prune`` turns a training checkpoint into a pruned model file, ``export``
writes it as TorchScript or ONNX, and ``models`` lists the registered architectures with their MACs.
LightningCLI's ``--optimizer`` and ``--lr_scheduler`` would silently replace the two-group APG set-up
that SSS depends on, so they are refused with an error that says which model arguments to set instead.

The model's ``input_size`` (the ``(C, H, W)`` that MACs are counted at, and that ``cost_weighted`` needs)
comes from the datamodule: its ``input_size`` attribute is linked to ``model.init_args.input_size`` when
the two are built (LightningCLI ``link_arguments``, ``apply_on="instantiate"``), so a config names the
image shape once, in ``data``. A ``model.init_args.input_size`` in a config or on the command line must
then agree with the datamodule's (a mismatch is an error, exit code 2); it is used only when the
datamodule has no ``input_size`` of its own. ``--print_config`` and the saved ``config.yaml`` do not list
the linked value (jsonargparse writes them before anything is built); ``--help`` lists the link.

Errors are the command line's, not Python's: a bad value (``--model.init_args.gamma=-1``, an unknown
architecture, a missing or damaged file) prints one line ``sss-lightning: error: <option>=<value>: <what is
wrong and the fix>`` and exits with code 2 (1 for an error during the run); ``--debug`` or ``SSS_DEBUG=1``
shows the traceback instead.
"""

from __future__ import annotations

import importlib
import netrc
import os
import re
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from .export import FORMATS, export_model
from .flops import check_input_size, count_flops, format_comparison
from .gates import iter_gates, random_gate_pattern
from .io import load_pruned, save_pruned
from .models import build_model, default_input_size, list_models
from .module import SSSModule, load_sss_checkpoint
from .surgery import check_round_to, prune

__all__ = [
    "SSSLightningCLI",
    "ConfigError",
    "RunError",
    "main",
    "export_command",
    "models_command",
    "prune_command",
]

TRAINER_COMMANDS = {
    "fit": "train (and prune, with StructuralSurgery in the config's callbacks)",
    "validate": "one evaluation epoch over the validation set",
    "test": "one evaluation epoch over the test set",
    "predict": "run inference on the predict data",
}
SSS_COMMANDS = {
    "prune": "turn a training checkpoint into a pruned model file (MACs/params, accuracy before/after)",
    "export": "write a pruned model file as TorchScript or ONNX, checked against the model",
    "models": "list the registered architectures with their MACs and parameters",
}
DEBUG_HINT = "(--debug or SSS_DEBUG=1 shows the traceback)"


class ConfigError(ValueError):
    """A configuration or argument SSS cannot honour, found before any work; the message says what to change."""


class RunError(RuntimeError):
    """A run that stopped on a user-fixable problem (bad data, non-finite loss...); the message says which."""


class SSSLightningCLI(LightningCLI):
    """LightningCLI for SSS: subclass mode for model and data, CLI optimizers refused, and the datamodule's
    ``input_size`` passed to the model's (see :meth:`datamodule_input_size`)."""

    def __init__(self, args: ArgsType = None, **kwargs: Any) -> None:
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        # Re-running a config (e.g. the quick start) replaces its saved config.yaml instead of aborting.
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self._explicit_input_size: list[int] | None = None
        super().__init__(
            SSSModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the datamodule's ``input_size`` to the model's, applied when both are built."""
        parser.link_arguments(
            "data", "model.init_args.input_size", compute_fn=self.datamodule_input_size, apply_on="instantiate"
        )

    def datamodule_input_size(self, data: Any) -> list[int] | None:
        """The model's ``input_size``: the datamodule's ``(C, H, W)``; without one, what the config set for the
        model (``None``: SSSModule records the shape of its first training batch).

        Raises:
            ConfigError: the config sets a ``model.init_args.input_size`` the datamodule's disagrees with.
        """
        explicit = self._explicit_input_size
        size = getattr(data, "input_size", None)
        if size is None:
            return explicit
        size = [int(s) for s in size]
        if explicit is not None and explicit != size:
            raise ConfigError(
                f"--model.init_args.input_size={explicit} disagrees with the datamodule's input size {size} "
                f"({type(data).__name__}.input_size, which the command line passes to the model); remove "
                "model.init_args.input_size from the config and the command line: the datamodule provides it"
            )
        return size

    def instantiate_classes(self) -> None:
        """LightningCLI's, with a constructor's ValueError/TypeError (and the Trainer's
        MisconfigurationException) turned into a ConfigError that names the option and its value."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as err:
            if isinstance(err, ConfigError):
                raise
            if isinstance(_root_cause(err), ConfigError):  # raised in a link's compute_fn: it names the option
                raise ConfigError(str(_root_cause(err))) from err
            config = self.config[self.subcommand] if self.subcommand else self.config
            raise ConfigError(explain(err, config)) from err

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _offline_without_wandb_key(config)
        explicit = config.get("model.init_args.input_size") if config.get("model.init_args") else None
        self._explicit_input_size = [int(s) for s in explicit] if explicit is not None else None
        for key in ("optimizer", "lr_scheduler"):
            if config.get(key) is not None:
                raise ConfigError(
                    f"--{key} is not supported: SSSModule builds one APG optimizer with a weight group "
                    "(Nesterov SGD) and a gate group (L1 proximal step), and a CLI optimizer would silently "
                    "replace it. Set model.init_args.lr, momentum, weight_decay, gamma, gate_lr, gate_mode, "
                    "schedule and milestones instead."
                )


# --------------------------------------------------------------------------------------------------
# Which option an instantiation error is about
# --------------------------------------------------------------------------------------------------


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes, outermost first."""
    chain, seen = [err], {id(err)}
    while True:
        nxt = chain[-1].__cause__ or (None if chain[-1].__suppress_context__ else chain[-1].__context__)
        if nxt is None or id(nxt) in seen:
            return chain
        chain.append(nxt)
        seen.add(id(nxt))


def _root_cause(err: BaseException) -> BaseException:
    """The innermost ValueError/TypeError/MisconfigurationException: the constructor's own message, not
    jsonargparse's "Does not validate against any of the Union subtypes" wrapper around it."""
    for cause in reversed(_chain(err)):
        if isinstance(cause, (ValueError, TypeError, MisconfigurationException)):
            return cause
    return err


def _failing_class(err: BaseException) -> type | None:
    """The class whose constructor raised: the innermost ``class_type`` LightningCLI/jsonargparse called."""
    found = None
    for cause in _chain(err):
        tb: TracebackType | None = cause.__traceback__
        while tb is not None:
            candidate = tb.tb_frame.f_locals.get("class_type")
            if isinstance(candidate, type):
                found = candidate
            tb = tb.tb_next
    return found


def _resolve(class_path: Any) -> Any:
    module, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _option_groups(config: Any) -> list[tuple[str, Any, Any]]:
    """``(option prefix, class_path, arguments)`` of every configured object: model, data, trainer
    callbacks and loggers, and the Trainer itself (class_path ``None``)."""
    groups: list[tuple[str, Any, Any]] = []

    def add(prefix: str, node: Any) -> None:
        if hasattr(node, "get") and node.get("class_path"):
            groups.append((f"{prefix}.init_args", node.get("class_path"), node.get("init_args")))

    for key in ("model", "data"):
        add(key, config.get(key))
    trainer = config.get("trainer") or {}
    for key in ("callbacks", "logger"):
        nodes = trainer.get(key) if hasattr(trainer, "get") else None
        if isinstance(nodes, list):
            for i, node in enumerate(nodes):
                add(f"trainer.{key}[{i}]", node)
        else:
            add(f"trainer.{key}", nodes)
    groups.append(("trainer", None, trainer))
    return groups


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _score(key: str, value: Any, message: str) -> int:
    """How surely ``message`` is about argument ``key``: its name (2) and its value (1) appear in it."""
    score = 2 if re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message) else 0
    if value is not None and not isinstance(value, bool) and not hasattr(value, "keys"):
        text = re.escape(_format_value(value))
        if text and re.search(rf"(?<![\w.]){text}(?![\w])", message):
            score += 1
    return score


def explain(err: BaseException, config: Any) -> str:
    """One line for an error raised while building the configured objects: ``--<option>=<value>: <the
    constructor's message>`` when the message points at one argument (by name or value), else
    ``--<group> (<class>): <message>``; the constructor's message carries the fix."""
    cause = _root_cause(err)
    message = " ".join(str(cause).split()) or type(cause).__name__
    failing = _failing_class(err)
    groups = _option_groups(config)
    if failing is not None:
        matching = [g for g in groups if g[1] is not None and _resolve(g[1]) is failing]
        groups = matching or groups
    elif isinstance(cause, MisconfigurationException) or any(
        _frames_named(cause, ("instantiate_trainer", "_instantiate_trainer"))
    ):
        groups = [g for g in groups if g[1] is None]
    best: tuple[int, str, Any] | None = None
    for prefix, _, arguments in groups:
        items = arguments.items() if hasattr(arguments, "items") else []
        for key, value in items:
            if key in ("callbacks", "logger", "plugins"):
                continue
            score = _score(str(key), value, message)
            if score and (best is None or score > best[0]):
                best = (score, f"{prefix}.{key}", value)
    if best is not None:
        return f"--{best[1]}={_format_value(best[2])}: {message}"
    if failing is not None and len(groups) == 1 and groups[0][1] is not None:
        return f"--{groups[0][0].removesuffix('.init_args')} ({groups[0][1]}): {message}"
    return message


def _frames_named(err: BaseException, names: tuple[str, ...]) -> list[bool]:
    """For each frame of ``err``'s traceback, whether its function is one of ``names`` (only matches kept)."""
    hits = []
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in names:
            hits.append(True)
        tb = tb.tb_next
    return hits


# --------------------------------------------------------------------------------------------------
# Argument checks of prune / export / models (before any work)
# --------------------------------------------------------------------------------------------------


def _existing_file(option: str, value: str, what: str) -> Path:
    path = Path(value)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; pass {what}")
    if not path.is_file():
        raise ConfigError(f"{option} {path}: no such file; pass {what}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{option} {path} is empty (0 bytes: an interrupted write or copy); pass {what}")
    return path


def _output_file(option: str, path: Path, example: str) -> Path:
    """A path a file can be written to: not a folder, in a folder that is one (or can be created)."""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; pass a file path such as {path / example}")
    parent = next((a for a in path.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    if parent is not None and not os.access(parent, os.W_OK):
        raise ConfigError(f"{option} {path}: cannot write into {parent} (permission denied); choose another path")
    return path


def _input_size(option: str, value: list[int] | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return check_input_size(value, name=option)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _smallest_gates(net: Any, k: int = 5) -> str:
    values = [(f"{g.name}[{i}]", float(v)) for g in iter_gates(net) for i, v in enumerate(g.module.scale.detach())]
    return ", ".join(f"{name}={v:.3g}" for name, v in sorted(values, key=lambda item: abs(item[1]))[:k])


# --------------------------------------------------------------------------------------------------
# Sub-commands
# --------------------------------------------------------------------------------------------------


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
        raise ConfigError(f"--round_to={args.round_to}: {err}") from err
    what = "the .ckpt file a training run's ModelCheckpoint wrote (e.g. runs/<name>/checkpoints/last.ckpt)"
    ckpt = _existing_file("--ckpt", args.ckpt, what)
    out = _output_file("--out", Path(args.out) if args.out else ckpt.with_name(f"{ckpt.stem}-pruned.pt"), "pruned.pt")
    input_size = _input_size("--input_size", args.input_size)
    if args.config:
        _existing_file("--config", args.config, "the YAML config of the fit run (for its validation data)")
    try:
        module, info = load_sss_checkpoint(ckpt)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--ckpt {ckpt}: {err}") from err
    except Exception as err:  # torch.load of a truncated or foreign file: EOFError, UnpicklingError, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"--ckpt {ckpt}: cannot read it as a Lightning checkpoint ({type(err).__name__}: {first}); it is "
            f"truncated or not a checkpoint. Pass {what}"
        ) from err
    size = input_size or info.get("input_shape")
    if not size:
        raise ConfigError(f"--ckpt {ckpt} records no input shape; pass --input_size [C,H,W], e.g. [3,32,32]")
    gated = module.net
    if not list(iter_gates(gated)):
        rank_zero_warn(
            f"prune: the network in {ckpt} has no gates (it was pruned during training, e.g. by "
            "StructuralSurgery with finetune_epochs); it is written as it is"
        )
    elif not getattr(module, "reshaped", False) and not any((g.module.scale == 0).any() for g in iter_gates(gated)):
        rank_zero_warn(
            f"prune: no gate in {ckpt} is exactly zero, so nothing is removed (the gates are only folded into the "
            f"weights; smallest: {_smallest_gates(gated)}). To get zeros, train with a larger gamma "
            "(--model.init_args.gamma, e.g. 2-5x) or for more epochs"
        )
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
    unknown = [name for name in names if name not in list_models()]
    if unknown:
        raise ConfigError(f"--names: unknown model(s) {unknown}; known models: {', '.join(list_models())}")
    if args.zero_fraction is not None and not 0.0 <= args.zero_fraction <= 1.0:
        raise ConfigError(f"--zero_fraction must be in [0, 1] (0.5: half the gates zero), got {args.zero_fraction}")
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num_classes must be a positive int, got {args.num_classes}")
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
    what = "a pruned model file written by `sss-lightning prune` or save_pruned"
    model_path = _existing_file("--model", args.model, what)
    suffix = {"torchscript": ".ts", "onnx": ".onnx"}[args.format]
    out = _output_file("--out", Path(args.out) if args.out else model_path.with_suffix(suffix), f"model{suffix}")
    input_size = _input_size("--input_size", args.input_size)
    try:
        model = load_pruned(model_path)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"--model: {err}") from err
    size = input_size or model.sss_metadata.get("input_size")
    if not size:
        raise ConfigError(f"--model {model_path} records no input size; pass --input_size [C,H,W], e.g. [3,32,32]")
    try:
        path, diff = export_model(model, out, size, args.format)
    except ImportError as err:
        raise ConfigError(f"--format {args.format}: {err}; or pip install -e '.[export]'") from err
    except RuntimeError as err:
        raise RunError(f"export to {out} failed, no file written: {err}") from err
    check = "not checked (install onnxruntime to check)" if diff is None else f"max |difference| {diff:.2e}"
    print(f"exported {model_path} -> {path} ({args.format}); outputs vs the model: {check}")
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


def top_level_help() -> str:
    """``sss-lightning --help``: every sub-command, the trainer's (LightningCLI) and SSS's own."""
    commands = {**TRAINER_COMMANDS, **SSS_COMMANDS}
    width = max(map(len, commands)) + 2
    lines = [
        f"usage: sss-lightning [-c CONFIG] {{{','.join(commands)}}} ...",
        "",
        "Sparse Structure Selection on PyTorch Lightning: train with gates, prune, export.",
        "",
        "subcommands (`sss-lightning <subcommand> --help` lists its options):",
        *(f"  {name:<{width}}{text}" for name, text in TRAINER_COMMANDS.items()),
        *(f"  {name:<{width}}{text}" for name, text in SSS_COMMANDS.items()),
        "",
        "options:",
        "  -h, --help            show this help and exit",
        "  -c CONFIG, --config CONFIG",
        "                        (fit/validate/test/predict) a YAML config, as in LightningCLI",
        "  --print_config        print the configuration after all other arguments and exit",
        "  --debug               show the traceback of an error (also SSS_DEBUG=1)",
        "",
        "example: sss-lightning fit --config experiments/fashion_mnist_quick.yaml",
    ]
    return "\n".join(lines)


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("SSS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def main(args: ArgsType = None) -> None:
    """Entry point of ``sss-lightning`` and ``python -m sss_lightning``.

    An error the user can fix is one line on stderr (``sss-lightning: error: ...``) and exit code 2
    (before any work) or 1 (during the run); ``--debug`` or ``SSS_DEBUG=1`` re-raises it with its traceback.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    commands = [*TRAINER_COMMANDS, *SSS_COMMANDS]
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(top_level_help(), file=sys.stdout if argv else sys.stderr)
            if not argv:
                raise ConfigError(f"a subcommand is required, one of {{{','.join(commands)}}}")
            return
        if argv[0] == "prune":
            prune_command(argv[1:])
        elif argv[0] == "models":
            models_command(argv[1:])
        elif argv[0] == "export":
            export_command(argv[1:])
        elif argv[0] in TRAINER_COMMANDS or argv[0].startswith("-"):
            if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
                sys.argv[1:] = argv
                SSSLightningCLI()
            else:
                SSSLightningCLI(args=argv)
        else:
            raise ConfigError(f"unknown subcommand {argv[0]!r}; choose one of {{{','.join(commands)}}} (see --help)")
    except (ConfigError, RunError, ValueError, FileNotFoundError, MisconfigurationException) as err:
        if debug:
            raise
        code = 2 if isinstance(err, ConfigError) else 1
        message = " ".join(str(err).split()) if "\n" not in str(err).strip() else str(err).strip()
        print(f"sss-lightning: error: {message} {DEBUG_HINT}", file=sys.stderr)
        raise SystemExit(code) from None
