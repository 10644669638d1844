"""The paper's optimizer comparison (RQ5): APG vs ISTA vs SGD+L1 on the gates, same run otherwise.

    python -m benchmarks.optimizers                                  # ResNet-20 on Fashion-MNIST (subset)
    python -m benchmarks.optimizers --epochs 2 --batches_per_epoch 20 --dataset synthetic

Each optimizer trains the same gated network from the same seed and data order; GateMonitor records
the fraction of exactly-zero gates and the MACs surgery would give over training. Writes a Markdown
table, JSON and a PNG of the curves to --out. On 2 CPU cores the default takes about 5 minutes: the
training set is a random subset of ``batches_per_epoch`` batches per epoch, which the table says.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from jsonargparse import ArgumentParser

from benchmarks.common import add_run_arguments, check_run_arguments, datamodule, quiet_trainer
from benchmarks.report import png_figure, write_report
from sss_lightning.callbacks import GateMonitor
from sss_lightning.flops import count_flops
from sss_lightning.module import SSSClassifier
from sss_lightning.surgery import prune

MODES = ("apg", "ista", "sgd")


def run_one(mode: str, args) -> dict:
    L.seed_everything(args.seed)
    data, size = datamodule(args.dataset, args.data_dir)
    module = SSSClassifier(
        arch=args.arch,
        num_classes=10,
        in_channels=size[0],
        gates="both",
        gamma=args.gamma,
        gate_mode=mode,
        input_size=size,
    )
    monitor = GateMonitor(log_every_n_steps=max(1, args.batches_per_epoch // 4), plots=False)
    trainer = quiet_trainer(args, [monitor])
    trainer.fit(module, datamodule=data)
    full = count_flops(module.net, size).macs
    pruned = count_flops(prune(module.net), size).macs
    return {
        "mode": mode,
        "val_acc": float(trainer.callback_metrics["val/acc"]),
        "zero_frac": monitor.history[-1]["gates/zero_frac/overall"],
        "macs": pruned,
        "macs_ratio": pruned / full,
        "curve": [(h["step"], h["gates/zero_frac/overall"], h.get("gates/macs_ratio")) for h in monitor.history],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    add_run_arguments(parser, batches_per_epoch=60)
    parser.add_argument("--gamma", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default="benchmarks/results/optimizers")
    args = parser.parse_args(argv)
    check_run_arguments(parser, args)
    rows = [run_one(mode, args) for mode in MODES]

    lines = [
        f"{args.arch} on {args.dataset}: {args.epochs} epochs x {args.batches_per_epoch} batches (a subset), "
        f"gamma {args.gamma}, seed {args.seed}; the same network, data order and schedule for each optimizer",
        "",
        "| gate optimizer | val acc | gates exactly 0 | MACs after surgery | MACs / full |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {r['mode']} | {r['val_acc']:.4f} | {r['zero_frac']:.1%} | {r['macs'] / 1e6:.2f}M "
            f"| {r['macs_ratio']:.3f} |"
            for r in rows
        ],
    ]
    out = write_report(args.out, "\n".join(lines), rows)
    _plot(rows, out.with_suffix(".png"))
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    with png_figure(path, ncols=2, figsize=(10, 3.8)) as (left, right):
        for row in rows:
            steps = [c[0] for c in row["curve"]]
            left.plot(steps, [c[1] for c in row["curve"]], label=row["mode"])
            right.plot(steps, [c[2] for c in row["curve"]], label=row["mode"])
        left.set(xlabel="optimizer step", ylabel="fraction of gates exactly 0", title="Sparsity")
        right.set(xlabel="optimizer step", ylabel="MACs after surgery / full", title="MACs")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend()


if __name__ == "__main__":
    main()
