"""Which SSS recipe makes the exact zeros the selection? The ablation behind the default recipe.

    python -m benchmarks.recipes                                   # ResNet-20, full Fashion-MNIST, 4 epochs
    python -m benchmarks.recipes --recipes [plain,rescale] --seeds [0]
    python -m benchmarks.recipes --report_only true                # the table of every logged run
    python -m benchmarks.recipes --dataset synthetic --epochs 2 --batches_per_epoch 4 --seeds [0]   # smoke

Every recipe trains the same gated ResNet (block and channel gates, or the gates the recipe names) from the
same seed and data order
for the same steps, then surgery removes the zero structures (one pass, no fine-tune). A recipe is a set
of :class:`~sss_lightning.module.SSSClassifier` arguments (:data:`RECIPES`); its row reports the pruned
network's test accuracy and MACs and the selection's stability from
:class:`~sss_lightning.callbacks.GateMonitor`: the fraction of the final zero gates that stayed zero
over the last 10% of the steps, and the zero/non-zero switches in the last epoch. Finished runs are
appended to ``<out>.runs.jsonl`` and not repeated.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
from jsonargparse import ArgumentParser

from benchmarks.common import RunLog, add_run_arguments, check_run_arguments, datamodule, quiet_trainer
from benchmarks.report import write_report
from sss_lightning.callbacks import GateMonitor, InTrainingShrink, StructuralSurgery
from sss_lightning.flops import count_flops
from sss_lightning.module import SSSClassifier

PLAIN: dict[str, Any] = {"gate_rescale": False, "zero_hold": 0, "gate_momentum_units": "gradient", "settle_at": None}
RECIPES: dict[str, dict[str, Any]] = {
    "plain": {**PLAIN},
    "rescale": {**PLAIN, "gate_rescale": True},
    "rescale_hold": {**PLAIN, "gate_rescale": True, "zero_hold": 100},
    "rescale_hold_param": {**PLAIN, "gate_rescale": True, "zero_hold": 100, "gate_momentum_units": "parameter"},
    "param": {**PLAIN, "gate_momentum_units": "parameter"},
    "rescale_hold_settle": {**PLAIN, "gate_rescale": True, "zero_hold": 100, "settle_at": 0.75},
    "rescale_hold_settle_param": {
        **PLAIN,
        "gate_rescale": True,
        "zero_hold": 100,
        "settle_at": 0.75,
        "gate_momentum_units": "parameter",
    },
}
# candidates beyond the gates' own dynamics, on top of the default recipe (rescale, hold, settle): the
# cost-weighted penalty (gamma per gate times its structure's MACs over the mean), and stream gates too
_DEFAULT = RECIPES["rescale_hold_settle"]
RECIPES["rescale_hold_settle_cost"] = {**_DEFAULT, "cost_weighted": True}
RECIPES["rescale_hold_settle_streams"] = {**_DEFAULT, "gates": "all"}
RECIPES["rescale_hold_settle_streams_cost"] = {**_DEFAULT, "gates": "all", "cost_weighted": True}


def run_one(recipe: str, gamma: float, seed: int, args) -> dict:
    L.seed_everything(seed)
    data, size = datamodule(args.dataset, args.data_dir, synthetic_train_size=1024)
    settings = {"gates": "both", **RECIPES[recipe]}  # block + channel gates unless the recipe says otherwise
    module = SSSClassifier(arch=args.arch, in_channels=size[0], input_size=size, gamma=gamma, lr=args.lr, **settings)
    monitor = GateMonitor(log_every_n_steps=10**9, plots=False)
    surgery = StructuralSurgery(dirpath=args.out_dir, filename=f"{recipe}-{gamma}-{seed}.pt")
    callbacks: list[L.Callback] = [monitor, surgery]
    if RECIPES[recipe]["settle_at"] is not None:  # the settled structure trains at its smaller size
        callbacks.insert(1, InTrainingShrink())
    trainer = quiet_trainer(args, callbacks, check_val_every_n_epoch=args.epochs, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    flops = count_flops(module.net, size)
    return {
        "arch": args.arch,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batches_per_epoch": args.batches_per_epoch,
        "recipe": recipe,
        "gamma": gamma,
        "seed": seed,
        "val_acc": float(surgery.report.get("val_acc", trainer.callback_metrics["val/acc"])),
        "macs": flops.macs,
        "macs_ratio": 1.0 - surgery.report["macs_reduction"],
        "params": flops.params,
        "stable_zero_fraction": monitor.stability.get("stable_zero_fraction"),
        "final_zeros": monitor.stability.get("final_zeros"),
        "last_epoch_churn": monitor.churn[-1]["gates/churn"] if monitor.churn else None,
        "seconds": time.perf_counter() - start,
    }


KEY = ("arch", "dataset", "epochs", "batches_per_epoch", "recipe", "gamma", "seed")


def report(runs: list[dict], args) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["recipe"], r["gamma"]), []).append(r)
    lines = [
        f"{args.arch} on {args.dataset}: {args.epochs} epochs x {args.batches_per_epoch} batches of 128, cosine LR "
        f"from {args.lr}, block + channel gates (+ stream gates where the recipe says streams), surgery at the end "
        "(no fine-tune). Test-split accuracy of the "
        "pruned network; mean (std) over seeds.",
        "",
        "| recipe | gamma | seeds | acc | MACs kept | final zeros | zeros stable over last 10% | "
        "switches, last epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def mean(rs: list[dict], key: str) -> float:
        values = [r[key] for r in rs if r[key] is not None]
        return statistics.mean(values) if values else float("nan")

    for (recipe, gamma), rs in groups.items():
        accs = [r["val_acc"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(
            f"| {recipe} | {gamma} | {len(rs)} | {statistics.mean(accs):.4f} ({std:.4f}) | "
            f"{mean(rs, 'macs_ratio'):.3f} | {mean(rs, 'final_zeros'):.0f} | {mean(rs, 'stable_zero_fraction'):.3f} | "
            f"{mean(rs, 'last_epoch_churn'):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    add_run_arguments(parser, batches_per_epoch=469)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=list[int], default=[0])
    parser.add_argument("--recipes", type=list[str], default=list(RECIPES), help=f"a subset of {list(RECIPES)}")
    parser.add_argument("--gammas", type=list[float], default=[0.01])
    parser.add_argument("--out", type=str | None, default=None, help="default: benchmarks/results/recipes_<arch>")
    parser.add_argument(
        "--report_only", type=bool, default=False, help="train nothing; report every logged run of this setting"
    )
    args = parser.parse_args(argv)
    unknown = set(args.recipes) - set(RECIPES)
    if unknown:
        parser.error(f"--recipes: unknown {sorted(unknown)}; choose from {list(RECIPES)}")
    check_run_arguments(parser, args, "recipes")
    log = RunLog(f"{args.out}.runs.jsonl", KEY)
    setting = {k: getattr(args, k) for k in KEY[:4]}
    wanted = [
        tuple({**setting, "recipe": r, "gamma": g, "seed": s}[k] for k in KEY)
        for s in args.seeds
        for g in args.gammas
        for r in args.recipes
    ]
    if args.report_only:
        wanted = [log.key_of(r) for r in log.rows if all(r[k] == setting[k] for k in setting)]
    current = log.sweep(
        wanted,
        lambda key: None if args.report_only else run_one(*key[-3:], args),
        lambda row: (
            f"[recipes] {row['recipe']} gamma {row['gamma']} seed {row['seed']}: acc {row['val_acc']:.4f}, MACs "
            f"kept {row['macs_ratio']:.3f}, stable {row['stable_zero_fraction']}, {row['seconds']:.0f} s"
        ),
    )
    write_report(args.out, report(current, args), {"runs": current})
    return current


if __name__ == "__main__":
    main()
