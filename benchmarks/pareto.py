"""Accuracy vs MACs: SSS against Network Slimming, L1-norm filter pruning and uniform shrinking.

    python -m benchmarks.pareto                                   # ResNet-20 on Fashion-MNIST, 2 seeds
    python -m benchmarks.pareto --arch resnet56 --batches_per_epoch 60
    python -m benchmarks.pareto --dataset cifar10 --epochs 160 --finetune_epochs 40 --batches_per_epoch 391  # GPU
    python -m benchmarks.pareto --dataset synthetic --epochs 2 --batches_per_epoch 4 --seeds [0]   # smoke

Every method trains the same architecture from the same seed and data order for the same number of
epochs: SSS (gates on blocks and channels, one gamma per point) trains and prunes in one pass; SSS +
MacsBudget steers gamma to a MACs target (one per point) by the epoch where the pruners cut, then trains
the frozen, shrunk structure for the remaining epochs; Network
Slimming (L1 on BN scales) and L1-norm filter pruning train for ``epochs - finetune_epochs`` epochs, cut
the lowest-scored channels (one fraction per point) with the same surgery, and fine-tune for the rest;
uniform shrinking trains a thinner network (one width per point) from scratch; the unpruned network is
the reference. Validation accuracy is on the full 10k test split, once, at the end.

Each finished run is appended to ``<out>.runs.jsonl``, and runs found there are not repeated: a killed
sweep continues where it stopped. The table (mean over seeds), JSON and a PNG are written at the end.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentParser

from benchmarks.common import add_run_arguments, check_run_arguments, datamodule, quiet_trainer
from benchmarks.report import write_report
from sss_lightning.baselines import NetworkSlimming
from sss_lightning.callbacks import InTrainingShrink, MacsBudget, MagnitudePruning, StructuralSurgery
from sss_lightning.flops import count_flops
from sss_lightning.module import SSSClassifier

METHODS = ("unpruned", "sss", "sss_budget", "slimming", "l1_filter", "uniform")


def configs(args) -> list[tuple[str, float | None]]:
    """(method, knob) pairs: gamma for SSS, fraction of channels for the two pruners, width for uniform."""
    every = [
        ("unpruned", None),
        *[("sss", g) for g in args.gammas],
        *[("sss_budget", t) for t in args.budgets],
        *[("slimming", a) for a in args.amounts],
        *[("l1_filter", a) for a in args.amounts],
        *[("uniform", float(w)) for w in args.widths],
    ]
    return [(method, knob) for method, knob in every if method in args.methods]


def run_one(method: str, knob: float | None, seed: int, args) -> dict:
    L.seed_everything(seed)
    data, size = datamodule(args.dataset, args.data_dir, synthetic_train_size=1024)
    common = {"arch": args.arch, "num_classes": 10, "in_channels": size[0], "lr": args.lr, "input_size": size}
    callbacks: list[L.Callback] = []
    surgery = StructuralSurgery(dirpath=args.out_dir, filename=f"{method}-{knob}-{seed}.pt")
    if method == "sss":
        module = SSSClassifier(gates="both", gamma=knob, **common)
        callbacks.append(surgery)
    elif method == "sss_budget":  # the same epochs: search until the pruners would cut, then train the weights
        module = SSSClassifier(gates="both", gamma=args.budget_gamma, **common)
        budget = MacsBudget(knob, by_epoch=args.epochs - args.finetune_epochs)
        callbacks += [budget, InTrainingShrink(), surgery]
    elif method == "slimming":
        module = NetworkSlimming(sparsity=args.slimming_sparsity, **common)
    elif method == "uniform":
        module = SSSClassifier(gates="channel", freeze_gates=True, arch_kwargs={"width": int(knob)}, **common)
    else:  # unpruned, l1_filter: ordinary training of the full network (gates fixed at 1)
        module = SSSClassifier(gates="channel", freeze_gates=True, **common)
    if method in ("slimming", "l1_filter"):
        criterion = "bn_scale" if method == "slimming" else "filter_l1"
        callbacks.append(
            MagnitudePruning(
                criterion,
                amount=knob,
                scope=args.scope,
                finetune_epochs=args.finetune_epochs,
                dirpath=args.out_dir,
                filename=f"{method}-{knob}-{seed}.pt",
            )
        )
    trainer = quiet_trainer(args, callbacks, check_val_every_n_epoch=args.epochs, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    acc = trainer.callback_metrics["val/acc"]
    if method in ("sss", "sss_budget"):  # the pruned network's own accuracy (= the gated one's: exact surgery)
        acc = surgery.report.get("val_acc", acc)
    flops = count_flops(module.net, size)
    return {
        "arch": args.arch,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batches_per_epoch": args.batches_per_epoch,
        "method": method,
        "knob": knob,
        "seed": seed,
        "val_acc": float(acc),
        "macs": flops.macs,
        "params": flops.params,
        "seconds": seconds,
    }


KEY = ("arch", "dataset", "epochs", "batches_per_epoch", "method", "knob", "seed")


def _key(row: dict) -> tuple:
    return tuple(row[k] for k in KEY)


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (method, knob), MACs relative to the unpruned network's."""
    full = statistics.mean(r["macs"] for r in runs if r["method"] == "unpruned")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["knob"]), []).append(r)
    rows = []
    for (method, knob), rs in groups.items():
        accs = [r["val_acc"] for r in rs]
        rows.append(
            {
                "method": method,
                "knob": knob,
                "seeds": sorted(r["seed"] for r in rs),
                "acc_mean": statistics.mean(accs),
                "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "macs_ratio": statistics.mean(r["macs"] for r in rs) / full,
                "params": statistics.mean(r["params"] for r in rs),
            }
        )
    rows.sort(key=lambda r: (METHODS.index(r["method"]), -r["macs_ratio"]))
    return rows


def interpolate(rows: list[dict], method: str, macs_ratio: float) -> float | None:
    """``method``'s accuracy at ``macs_ratio`` by linear interpolation between its points (None outside)."""
    pts = sorted((r["macs_ratio"], r["acc_mean"]) for r in rows if r["method"] == method)
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= macs_ratio <= x1:
            return y0 + (y1 - y0) * (macs_ratio - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return None


def report(rows: list[dict], args) -> str:
    names = {
        "unpruned": "unpruned",
        "sss": "SSS",
        "sss_budget": "SSS + MacsBudget",
        "slimming": "Network Slimming",
        "l1_filter": "L1-norm filters",
        "uniform": "uniform width",
    }
    knobs = {
        "unpruned": "-",
        "sss": "gamma {}",
        "sss_budget": "budget {:.0%}",
        "slimming": "{:.0%} channels",
        "l1_filter": "{:.0%} channels",
        "uniform": "width {:.0f}",
    }
    base = next(r for r in rows if r["method"] == "unpruned")
    lines = [
        f"{args.arch} on {args.dataset}: {args.epochs} epochs x {args.batches_per_epoch} batches of 128 (a random "
        f"subset each epoch), cosine LR from {args.lr}, seeds {args.seeds}; pruners fine-tune for the last "
        f"{args.finetune_epochs} epoch(s). Accuracy on the 10k test split; mean (std) over seeds.",
        "",
        "| method | setting | MACs / unpruned | params | acc | drop vs unpruned (pt) | vs NS at equal MACs | "
        "vs uniform at equal MACs |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        setting = knobs[r["method"]].format(r["knob"]) if r["knob"] is not None else "-"
        drop = 100 * (base["acc_mean"] - r["acc_mean"])
        cmp = []
        for other in ("slimming", "uniform"):
            acc = interpolate(rows, other, r["macs_ratio"]) if r["method"].startswith("sss") else None
            cmp.append(f"{100 * (r['acc_mean'] - acc):+.2f} pt" if acc is not None else "-")
        lines.append(
            f"| {names[r['method']]} | {setting} | {r['macs_ratio']:.3f} | {r['params'] / 1e3:.1f}K | "
            f"{r['acc_mean']:.4f} ({r['acc_std']:.4f}) | {drop:+.2f} | {cmp[0]} | {cmp[1]} |"
        )
    lines += [
        "",
        "vs NS / uniform: SSS accuracy minus the baseline's, interpolated linearly between its two "
        "nearest points in MACs ('-' where SSS is outside the baseline's MACs range).",
    ]
    return "\n".join(lines)


def plot(rows: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"sss": "o-", "sss_budget": "P-", "slimming": "s--", "l1_filter": "^--", "uniform": "D:", "unpruned": "k*"}
    labels = {
        "sss": "SSS (ours)",
        "sss_budget": "SSS + MacsBudget (ours)",
        "slimming": "Network Slimming",
        "l1_filter": "L1-norm filters",
        "uniform": "uniform width",
        "unpruned": "unpruned",
    }
    for method in METHODS:
        pts = sorted((r["macs_ratio"], r["acc_mean"], r["acc_std"]) for r in rows if r["method"] == method)
        if pts:
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(
                xs,
                ys,
                yerr=es,
                fmt=styles[method],
                label=labels[method],
                capsize=3,
                ms=7 if method == "unpruned" else 5,
            )
    ax.set(
        xlabel="MACs / unpruned network",
        ylabel="test accuracy",
        title=f"{args.arch} on {args.dataset}: accuracy vs MACs ({len(args.seeds)} seeds)",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    add_run_arguments(parser, batches_per_epoch=120)
    parser.add_argument("--finetune_epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=list[int], default=[0, 1])
    parser.add_argument("--methods", type=list[str], default=list(METHODS), help=f"a subset of {METHODS}")
    parser.add_argument("--gammas", type=list[float], default=[0.01, 0.02, 0.04])
    parser.add_argument("--budgets", type=list[float], default=[0.6, 0.4], help="SSS + MacsBudget targets")
    parser.add_argument("--budget_gamma", type=float, default=0.03, help="SSS + MacsBudget's starting gamma")
    parser.add_argument("--amounts", type=list[float], default=[0.3, 0.6])
    parser.add_argument("--widths", type=list[int], default=[13, 10])
    parser.add_argument("--scope", type=str, default="global", help="pruners' threshold: global or layer")
    parser.add_argument("--slimming_sparsity", type=float, default=1e-4)
    parser.add_argument("--out", type=str | None, default=None, help="default: benchmarks/results/pareto_<arch>")
    args = parser.parse_args(argv)
    if "unpruned" not in args.methods or set(args.methods) - set(METHODS):
        parser.error(f"--methods must include 'unpruned' (the reference) and come from {METHODS}")
    if args.out is None:
        suffix = "" if args.dataset == "fashion_mnist" else f"_{args.dataset}"
        args.out = f"benchmarks/results/pareto_{args.arch}{suffix}"
    if not 0 < args.finetune_epochs < args.epochs:
        parser.error("--finetune_epochs must be at least 1 and less than --epochs")
    check_run_arguments(parser, args)
    log = Path(f"{args.out}.runs.jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    setting = {k: getattr(args, k) for k in KEY[:4]}
    wanted = [_key({**setting, "method": m, "knob": k, "seed": s}) for s in args.seeds for m, k in configs(args)]
    done = {_key(r) for r in runs}
    for key in wanted:
        if key in done:
            continue
        method, knob, seed = key[-3:]
        row = run_one(method, knob, seed, args)
        runs.append(row)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"[pareto] {method} {knob} seed {seed}: acc {row['val_acc']:.4f}, MACs {row['macs'] / 1e6:.2f}M, "
            f"{row['seconds']:.0f} s",
            flush=True,
        )
    current = [r for r in runs if _key(r) in set(wanted)]
    rows = summarize(current)
    out = write_report(args.out, report(rows, args), {"summary": rows, "runs": current})
    plot(rows, args, out.with_suffix(".png"))
    return rows


if __name__ == "__main__":
    main()
