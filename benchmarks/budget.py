"""Beyond the paper: a MACs budget hit in one run, trained faster by in-training shrink.

    python -m benchmarks.budget                                    # ResNet-20 on Fashion-MNIST (subset)
    python -m benchmarks.budget --epochs 2 --batches_per_epoch 10 --dataset synthetic

Three runs of the same network (the architecture's default gates and the default recipe), seed and data
order, each with ``MacsBudget(target, by_epoch)``: plain penalty at full width to the end, plain penalty
shrunk in training once the budget is met
(``InTrainingShrink``), and the cost-weighted penalty shrunk in training. The table gives each run's wall
time (one after the other in this process), each final network's training-step time (interleaved,
the reliable ratio), the MACs it landed at, and validation accuracy.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentParser

from benchmarks.common import add_run_arguments, check_run_arguments, datamodule, quiet_trainer
from benchmarks.report import png_figure, write_report
from sss_lightning.callbacks import InTrainingShrink, MacsBudget
from sss_lightning.flops import count_flops
from sss_lightning.module import SSSClassifier
from sss_lightning.optim import APG
from sss_lightning.surgery import prune

RUNS = (
    ("plain, full width", False, False),
    ("plain, shrunk in training", False, True),
    ("cost-weighted, shrunk in training", True, True),
)


def run_one(name: str, cost_weighted: bool, shrink: bool, args) -> dict:
    L.seed_everything(args.seed)
    data, size = datamodule(args.dataset, args.data_dir)
    module = SSSClassifier(
        arch=args.arch,
        num_classes=10,
        in_channels=size[0],
        gamma=args.gamma,
        cost_weighted=cost_weighted,
        input_size=size,
    )
    budget = MacsBudget(args.target, by_epoch=args.by_epoch, every_n_steps=args.every_n_steps)
    trainer = quiet_trainer(args, [budget, *([InTrainingShrink()] if shrink else [])])
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    full = budget.full_macs  # the unpruned network (the live one may have been shrunk)
    net = module.net
    pruned = count_flops(prune(module.net), size).macs
    return {
        "run": name,
        "cost_weighted": cost_weighted,
        "shrink": shrink,
        "seconds": seconds,
        "val_acc": float(trainer.callback_metrics["val/acc"]),
        "macs": pruned,
        "macs_ratio": pruned / full,
        "target_macs": budget.result["target_macs"],
        "landed_vs_target": pruned / budget.result["target_macs"] - 1,
        "controller_vs_target": budget.result["macs_reached"] / budget.result["target_macs"] - 1,
        "fixed_at_step": budget.result["step"],  # the first in-band measurement from land_from on, or the deadline
        "fixed_at_deadline": budget.result.get("at_deadline", True),
        "budget_curve": [(h["step"], h["macs"] / full, h["gamma"]) for h in budget.history],
        "input_size": size,
        "net": net,  # for the interleaved step timing; dropped before the JSON is written
    }


def interleaved_step_ms(nets: dict[str, torch.nn.Module], size: list[int], batch: int, steps: int) -> dict[str, float]:
    """Median training-step time of each network, the steps interleaved (a, b, a, b, ...) in one process so
    that machine load hits all alike: sequential wall times of whole runs vary by 20% here."""
    x, y = torch.randn(batch, *size), torch.randint(0, 10, (batch,))
    fns = {}
    for name, net in nets.items():
        net.train()
        optimizer = APG([p for p in net.parameters() if p.requires_grad], lr=0.01, momentum=0.9)

        def step(net=net, optimizer=optimizer) -> float:
            start = time.perf_counter()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
            return time.perf_counter() - start

        step()  # warm-up
        fns[name] = step
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(steps):
        for name, fn in fns.items():
            times[name].append(fn())
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    add_run_arguments(parser, batches_per_epoch=120)
    parser.add_argument("--by_epoch", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.5, help="MACs budget, a fraction of the full network's")
    parser.add_argument("--gamma", type=float, default=0.01, help="the controller's starting gamma")
    parser.add_argument("--every_n_steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing_steps", type=int, default=20, help="interleaved steps per network, for step time")
    parser.add_argument("--out", type=str, default="benchmarks/results/budget")
    args = parser.parse_args(argv)
    if args.by_epoch >= args.epochs:
        parser.error("--by_epoch must be smaller than --epochs: shrink speeds up the epochs after it")
    check_run_arguments(parser, args)
    rows = [run_one(name, cw, shrink, args) for name, cw, shrink in RUNS]
    size = rows[0]["input_size"]
    nets = {r["run"]: r.pop("net") for r in rows}
    step_ms = interleaved_step_ms(nets, size, batch=128, steps=args.timing_steps)
    for r in rows:
        r["step_ms_after_deadline"] = step_ms[r["run"]]

    base = rows[0]["seconds"]
    lines = [
        f"{args.arch} on {args.dataset}: {args.epochs} epochs x {args.batches_per_epoch} batches (a subset), budget "
        f"{args.target:g} x full MACs by the end of epoch {args.by_epoch}, starting gamma {args.gamma}, seed "
        f"{args.seed}; runs one after the other in one process",
        "",
        "| run | wall time | time / full width | step after deadline | step / full width | MACs / full "
        "| landed vs budget | controller alone | structure fixed | val acc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {r['run']} | {r['seconds']:.0f} s | {r['seconds'] / base:.2f} | {r['step_ms_after_deadline']:.0f} ms "
            f"| {r['step_ms_after_deadline'] / rows[0]['step_ms_after_deadline']:.2f} | {r['macs_ratio']:.3f} "
            f"| {r['landed_vs_target']:+.1%} | {r['controller_vs_target']:+.1%} "
            f"| {'deadline' if r['fixed_at_deadline'] else 'in band'}, step {r['fixed_at_step']} | {r['val_acc']:.4f} |"
            for r in rows
        ],
        "",
        "wall time: each whole run, one after the other (machine load varies between runs); step after deadline: "
        f"median training step (batch 128) of each run's final network, {args.timing_steps} steps interleaved "
        "across the three networks in one process, so the ratio is the reliable speed-up.",
        "landed vs budget: the pruned network's fvcore MACs at the end; controller alone: where the gamma "
        "controller had brought it when the structure was fixed (in band: at the first measurement inside the "
        "tolerance band from MacsBudget's land_from on, no gate moved; deadline: before the bisection moved the "
        "fewest gates into the band).",
    ]
    out = write_report(args.out, "\n".join(lines), rows)
    _plot(rows, args, out.with_suffix(".png"))
    return rows


def _plot(rows: list[dict], args, path: Path) -> None:
    with png_figure(path, ncols=2, figsize=(10, 3.8)) as (left, right):
        for row in rows:
            steps = [c[0] for c in row["budget_curve"]]
            left.plot(steps, [c[1] for c in row["budget_curve"]], label=row["run"])
            right.plot(steps, [c[2] for c in row["budget_curve"]], label=row["run"])
        left.axhline(args.target, color="k", ls="--", lw=1, label="budget")
        left.set(xlabel="optimizer step", ylabel="MACs after surgery / full", title="Budget vs current MACs")
        right.set(xlabel="optimizer step", ylabel="gamma", yscale="log", title="Controller's gamma")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)


if __name__ == "__main__":
    main()
