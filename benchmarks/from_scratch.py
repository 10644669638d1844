"""Is it the structure or the training? A pruned network's structure, re-initialised and trained from scratch.

    python -m benchmarks.from_scratch --files [benchmarks/results/runs/sss-0.0037-0.pt] --seeds [0]
    python -m benchmarks.from_scratch --dataset synthetic --epochs 1 --batches_per_epoch 2 --files [p.pt]  # smoke

Each pruned file (``save_pruned``: what the pareto and recipes benchmarks write for their SSS runs) is
loaded, every weight re-initialised as the registry networks initialise theirs (Kaiming normal, fan-out,
for convs; BN at 1 and 0; PyTorch's default for linears; constant branch outputs at zero), and trained with
the protocol of :mod:`benchmarks.pareto` (same data, steps, optimizer and schedule as its ``unpruned`` and
``uniform`` runs). Its test accuracy against the one-pass SSS run that found the structure separates what
the selection chose from how one-pass training trained it; against ``uniform`` at similar MACs it says
whether the selected structure is a better network to have.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentParser
from torch import nn

from benchmarks.common import RunLog, add_run_arguments, check_run_arguments, datamodule, quiet_trainer
from benchmarks.report import png_figure, write_report
from sss_lightning.flops import count_flops
from sss_lightning.io import load_pruned
from sss_lightning.models import build_model

KEY = ("arch", "dataset", "epochs", "batches_per_epoch", "file", "seed")


def reinitialise(net: nn.Module) -> nn.Module:
    """Fresh weights for every layer, in place (the global RNG draws them, so a seed fixes them)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Linear):
            m.reset_parameters()
        if getattr(m, "branch_bias", None) is not None:
            m.branch_bias.zero_()
    return net


def run_one(file: str, seed: int, args) -> dict:
    from benchmarks.torch_pruning_baselines import PlainClassifier  # the trainer of the unpruned/uniform runs

    L.seed_everything(seed)
    data, size = datamodule(args.dataset, args.data_dir, synthetic_train_size=1024)
    module = PlainClassifier(arch=args.arch, num_classes=10, in_channels=size[0], lr=args.lr)
    module.net = reinitialise(load_pruned(file)).train()
    trainer = quiet_trainer(args, [], check_val_every_n_epoch=args.epochs, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    full = count_flops(build_model(args.arch, gates="none", num_classes=10, in_channels=size[0]), size).macs
    macs = count_flops(module.net, size).macs
    return {
        **{k: getattr(args, k) for k in KEY[:4]},
        "file": file,
        "seed": seed,
        "val_acc": float(trainer.callback_metrics["val/acc"]),
        "macs": macs,
        "macs_ratio": macs / full,
        "params": sum(p.numel() for p in module.net.parameters()),
        "seconds": time.perf_counter() - start,
        "steps": trainer.global_step,
    }


def report(runs: list[dict], args) -> str:
    lines = [
        f"{args.arch} on {args.dataset}: pruned structures re-initialised and trained from scratch, {args.epochs} "
        f"epochs x {args.batches_per_epoch} batches of 128, cosine LR from {args.lr}. Test-split accuracy.",
        "",
        "| structure from | seed | MACs / unpruned | params | acc from scratch |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {Path(r['file']).name} | {r['seed']} | {r['macs_ratio']:.3f} | {r['params'] / 1e3:.1f}K | "
            f"{r['val_acc']:.4f} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict], args, path: Path) -> None:
    with png_figure(path) as ax:
        for r in runs:
            ax.plot(r["macs_ratio"], r["val_acc"], "o")
            ax.annotate(f"{Path(r['file']).stem} s{r['seed']}", (r["macs_ratio"], r["val_acc"]), fontsize=7)
        ax.set(xlabel="MACs / unpruned network", ylabel="test accuracy, from scratch", title=f"{args.arch}: structures")
        ax.grid(alpha=0.3)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    add_run_arguments(parser, batches_per_epoch=469)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=list[int], default=[0])
    parser.add_argument("--files", type=list[str], help="pruned files (save_pruned) whose structures to train")
    parser.add_argument("--out", type=str | None, default=None, help="default: benchmarks/results/from_scratch_<arch>")
    args = parser.parse_args(argv)
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        parser.error(f"--files: no such file {missing}; the pareto and recipes benchmarks write them to their runs/")
    check_run_arguments(parser, args, "from_scratch")
    log = RunLog(f"{args.out}.runs.jsonl", KEY)
    setting = {k: getattr(args, k) for k in KEY[:4]}
    wanted = [tuple({**setting, "file": f, "seed": s}[k] for k in KEY) for s in args.seeds for f in args.files]
    current = log.sweep(
        wanted,
        lambda key: run_one(key[-2], key[-1], args),
        lambda row: f"[from_scratch] {row['file']} seed {row['seed']}: acc {row['val_acc']:.4f}",
    )
    out = write_report(args.out, report(current, args), {"runs": current})
    plot(current, args, out.with_suffix(".png"))
    return current


if __name__ == "__main__":
    main()
