"""Accuracy vs MACs, protocol v2: one-pass SSS against uniform width, Network Slimming and DepGraph.

    python -m benchmarks.pareto                                # ResNet-20, full Fashion-MNIST, 4 epochs, seeds 0-2
    python -m benchmarks.pareto --seeds [0] --methods [unpruned,sss]          # a subset; the log keeps the rest
    python -m benchmarks.pareto --dataset synthetic --epochs 2 --batches_per_epoch 3 --seeds [0]   # smoke

Every method trains ResNet-20 from the same initialisation and data order for a seed (paired: seed
``s`` builds every network after ``seed_everything(s)``, and the data order depends on the seed alone)
for the same number of optimizer steps, ``epochs x batches_per_epoch`` (the default is the whole
Fashion-MNIST train split, 469 batches of 128, four times):

* ``unpruned``: the full network (gates fixed at 1), the reference;
* ``sss``: the default SSS recipe of :class:`~sss_lightning.module.SSSClassifier` with the
  architecture's default gates (on ResNet-20 ``gates="all"``: block, channel and stream gates), one pass,
  surgery at the end, no fine-tune; one point per ``--gammas`` entry;
* ``sss_block_channel``: the same with block and channel gates only (``gates="both"``: the residual
  stream keeps its width), the ablation of stream gates; one point per ``--block_channel_gammas`` entry;
* ``sss_late``: the default recipe with ``penalty_start=0.5``: the full network trains half the run before
  the L1 penalty starts selecting; one point per ``--late_gammas`` entry;
* ``sss_ramp``: the default recipe with ``penalty_ramp=0.5``: the L1 strength grows linearly from 0 to gamma
  over the first half of the run, so structures leave gradually; one point per ``--ramp_gammas`` entry;
* ``sss_norm``: the default recipe with ``rescale_into="norm"``: gate rescaling leaves a consumer followed by
  BN untouched (the BN absorbs the factor), so its weights train as without gates; one point per
  ``--norm_gammas`` entry;
* ``sss_slow_gates``: the default recipe with ``gate_lr=0.05``, half the weights' learning rate: the gates
  move more slowly, so (with a larger gamma for the same sparsity) the structures reach zero later in the
  run; one point per ``--slow_gate_gammas`` entry;
* ``sss_zeros_train``: the default recipe with ``zeros_pass_gradient=True``: while the gates select, the layers
  before a zero gate get their gradient as if it were 1, so a structure that is off keeps training, as every
  structure does under a pruner that cuts once; one point per ``--zeros_train_gammas`` entry;
* ``sss_budget_landing``: the default recipe steered to a MACs budget by :class:`~sss_lightning.callbacks.MacsBudget`
  with its defaults: from 9/10 of the steps to the deadline (the end of epoch ``epochs - finetune_epochs``) the
  first measurement inside the tolerance band fixes the structure, which then trains shrunk; one point per budget;
* ``sss_budget``: the same with ``MacsBudget(land_from=None)``: the structure is fixed at the deadline, where the
  fewest gates that bring it into the band are moved;
* ``sss_budget_pinned``: ``sss_budget`` with ``pin_zeros_from=0.75``: over the last quarter of the steps to the
  deadline, gates that stayed at zero for the module's ``zero_hold`` steps are pinned there;
* ``uniform``: a thinner network (one width per point) trained from scratch;
* ``slimming`` and ``depgraph``: Torch-Pruning's ``BNScalePruner`` and ``GroupNormPruner`` with their
  sparsity regularisers for ``epochs - finetune_epochs`` epochs, pruned to the MACs that the same seed's
  SSS point reached (knob ``sss:<gamma>``, ``sss_block_channel:<gamma>`` or ``sss_budget:<budget>``),
  then fine-tuned for the rest; the pruned network is saved as ``<out_dir>/<method>-<sss method>-<knob>-<seed>.pt``
  (the SSS runs' surgery saves theirs as ``<method>-<knob>-<seed>.pt``), for :mod:`benchmarks.from_scratch`.

Accuracy is measured once, at the end, on the 10k test split. Each finished run is a line of
``<out>.runs.jsonl`` and is not repeated: a killed sweep continues where it stopped. The table gives
mean and std over seeds and, for every SSS point, the paired difference to each baseline (uniform is
interpolated per seed between its two widths nearest in MACs) with a 95% t interval over the seeds.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from jsonargparse import ArgumentParser

from benchmarks.common import RunLog, add_run_arguments, check_run_arguments, datamodule, quiet_trainer
from benchmarks.report import png_figure, write_report
from sss_lightning.callbacks import GateMonitor, InTrainingShrink, MacsBudget, StructuralSurgery
from sss_lightning.flops import count_flops
from sss_lightning.io import save_pruned
from sss_lightning.models import build_model
from sss_lightning.module import SSSClassifier


class Method(NamedTuple):
    """One method of the sweep: how the report and plot name it, and how it trains."""

    label: str  # its name in the report and the plot legend
    marker: str  # its matplotlib format in the plot
    kind: str  # "reference" (unpruned), "gamma" or "budget" (SSS points), "uniform" or "matched" (TP)
    overrides: dict[str, Any] = {}  # gamma: SSSClassifier's arguments besides the default recipe; budget: MacsBudget's
    arg: str = ""  # gamma: the command-line argument that lists its gammas
    default: tuple[float, ...] = ()  # gamma: the gammas it runs by default
    help: str = ""  # gamma: the help text of ``arg``


def _gammas(label: str, marker: str, arg: str, default: tuple[float, ...], help: str, **overrides: Any) -> Method:
    return Method(label, marker, "gamma", overrides, arg, default, help)


def _budget(label: str, marker: str, **overrides: Any) -> Method:
    return Method(label, marker, "budget", overrides)


# every method, in table order
METHODS_TABLE: dict[str, Method] = {
    "unpruned": Method("unpruned", "k*", "reference"),
    "sss": _gammas("SSS (default recipe)", "o-", "gammas", (0.0037,), "SSS (default recipe) points"),
    "sss_block_channel": _gammas(
        "SSS, block + channel gates only", "v-", "block_channel_gammas", (0.005, 0.009),
        "SSS block + channel gates points", gates="both",
    ),
    "sss_late": _gammas(
        "SSS, penalty from half-way", "D-", "late_gammas", (),
        "SSS points with the penalty from half-way (penalty_start=0.5)", penalty_start=0.5,
    ),
    "sss_ramp": _gammas(
        "SSS, penalty ramped over half the run", "X-", "ramp_gammas", (),
        "SSS points with the penalty ramped from 0 over the first half of the run (penalty_ramp=0.5)",
        penalty_ramp=0.5,
    ),
    "sss_norm": _gammas(
        "SSS, rescaling into BN", "h-", "norm_gammas", (),
        'SSS points with gate rescaling into the BN after each consumer (rescale_into="norm")', rescale_into="norm",
    ),
    "sss_slow_gates": _gammas(
        "SSS, gates at half the LR", "p-", "slow_gate_gammas", (),
        "SSS points with the gates at half the weights' learning rate (gate_lr=0.05)", gate_lr=0.05,
    ),
    "sss_zeros_train": _gammas(
        "SSS, zero gates pass the gradient", "<-", "zeros_train_gammas", (),
        "SSS points whose zero gates pass the gradient to the layers before them (zeros_pass_gradient=True)",
        zeros_pass_gradient=True,
    ),
    "sss_budget_landing": _budget("SSS + MacsBudget (fixed in the band from 9/10 of the way)", "*"),
    "sss_budget": _budget("SSS + MacsBudget, fixed at the deadline", "P", land_from=None),
    "sss_budget_pinned": _budget(
        "SSS + MacsBudget, fixed at the deadline, zeros pinned from 3/4 of the way", "X",
        land_from=None, pin_zeros_from=0.75,
    ),
    "uniform": Method("uniform width", "kD:", "uniform"),
    "slimming": Method("Network Slimming (TP)", "ms", "matched"),
    "depgraph": Method("DepGraph (TP)", "g^", "matched"),
}  # fmt: skip
METHODS = tuple(METHODS_TABLE)
NAMES = {method: m.label for method, m in METHODS_TABLE.items()}


def _of_kind(kind: str) -> dict[str, Method]:
    return {name: m for name, m in METHODS_TABLE.items() if m.kind == kind}


GAMMA_POINTS, BUDGET_POINTS, MATCHED = _of_kind("gamma"), _of_kind("budget"), tuple(_of_kind("matched"))
SSS_METHODS = (*GAMMA_POINTS, *BUDGET_POINTS)
KEY = ("arch", "dataset", "epochs", "batches_per_epoch", "weight_decay", "method", "knob", "seed")
SETTING = KEY[:5]  # what every run of one sweep shares
BEFORE_LOGGED = {"weight_decay": 1e-4}  # what a key field was in the rows logged before the log recorded it


def configs(args) -> list[tuple[str, Any]]:
    """(method, knob) in the order they run for one seed: the matched baselines after the SSS points."""
    sss_points = [(m, g) for m, point in GAMMA_POINTS.items() for g in getattr(args, point.arg)]
    sss_points += [(m, b) for m in BUDGET_POINTS for b in args.budgets]
    every = [
        ("unpruned", None),
        *sss_points,
        *[("uniform", w) for w in args.widths],
        *[(m, f"{s}:{k}") for m in MATCHED for s, k in sss_points if f"{s}:{k}" in args.match],
    ]
    return [(method, knob) for method, knob in every if method in args.methods]


def _target(knob: str, seed: int, runs: list[dict], args) -> float:
    """The MACs ratio the same seed's SSS point reached (the matched baselines prune to it)."""
    method, value = knob.split(":")
    for r in runs:
        if r["method"] == method and str(r["knob"]) == value and r["seed"] == seed and _same_setting(r, args):
            return r["macs_ratio"]
    raise RuntimeError(f"the matched baseline {knob} needs the {method} {value} run of seed {seed} first")


def _same_setting(row: dict, args) -> bool:
    return all(row[k] == getattr(args, k) for k in SETTING)


def run_one(method: str, knob: Any, seed: int, args, runs: list[dict]) -> dict:
    L.seed_everything(seed)
    data, size = datamodule(args.dataset, args.data_dir, synthetic_train_size=1024)
    common = {
        "arch": args.arch, "num_classes": 10, "in_channels": size[0], "input_size": size,
        "lr": args.lr, "weight_decay": args.weight_decay,
    }  # fmt: skip
    callbacks: list[L.Callback] = []
    monitor = GateMonitor(log_every_n_steps=10**9, plots=False)
    surgery = StructuralSurgery(dirpath=args.out_dir, filename=f"{method}-{knob}-{seed}.pt")
    tp = budget = None
    fixed_epoch = args.epochs - args.finetune_epochs
    kind = METHODS_TABLE[method].kind
    if kind == "gamma":
        module = SSSClassifier(gamma=knob, **GAMMA_POINTS[method].overrides, **common)
        callbacks += [monitor, surgery]
    elif kind == "budget":
        module = SSSClassifier(gamma=args.budget_gamma, **common)
        budget = MacsBudget(knob, by_epoch=fixed_epoch, **BUDGET_POINTS[method].overrides)
        callbacks += [monitor, budget, InTrainingShrink(), surgery]
    elif kind == "uniform":
        module = SSSClassifier(gates="channel", freeze_gates=True, arch_kwargs={"width": int(knob)}, **common)
    elif kind == "matched":
        from benchmarks.torch_pruning_baselines import PlainClassifier, TorchPruningBaseline

        module = PlainClassifier(
            arch=args.arch, num_classes=10, in_channels=size[0], lr=args.lr, weight_decay=args.weight_decay
        )
        target = _target(knob, seed, runs, args)
        tp = TorchPruningBaseline(
            method,
            target_macs=target,
            prune_at_epoch=fixed_epoch,
            input_size=size,
            tolerance=args.match_tolerance * target,
        )
        callbacks.append(tp)
    else:  # unpruned: ordinary training of the full network (gates fixed at 1)
        module = SSSClassifier(gates="channel", freeze_gates=True, **common)
    trainer = quiet_trainer(args, callbacks, check_val_every_n_epoch=args.epochs, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    acc = float(trainer.callback_metrics["val/acc"])
    if method in SSS_METHODS:  # the pruned network's own accuracy (= the gated one's: exact surgery)
        acc = surgery.report.get("val_acc", acc)
    flops = count_flops(module.net, size)
    full = count_flops(build_model(args.arch, gates="none", num_classes=10, in_channels=size[0]), size).macs
    row = {
        "arch": args.arch,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batches_per_epoch": args.batches_per_epoch,
        "weight_decay": args.weight_decay,
        "method": method,
        "knob": knob,
        "seed": seed,
        "val_acc": float(acc),
        "macs": flops.macs,
        "macs_ratio": flops.macs / full,
        "params": flops.params,
        "seconds": seconds,
        "steps": trainer.global_step,
    }
    if method in SSS_METHODS:
        row.update({f"stability_{k}": v for k, v in monitor.stability.items()})
        row["churn_per_epoch"] = [c["gates/churn"] for c in monitor.churn]
    if tp is not None:
        row["tp_report"] = dict(tp.report)
        # the pruned network, as SSS's surgery saves its own: benchmarks.from_scratch retrains its structure
        save_pruned(module.net, Path(args.out_dir) / f"{method}-{str(knob).replace(':', '-')}-{seed}.pt")
    if method in BUDGET_POINTS and budget.result:  # where the gamma controller alone had brought the network
        row["controller_vs_budget"] = budget.result["macs_reached"] / budget.result["target_macs"] - 1
        row["budget_fixed_at_step"] = budget.result["step"]  # the deadline, or an earlier landing in the band
        row["budget_history"] = budget.history  # the controller's trajectory: MACs, look-ahead MACs, gamma
    return row


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def t_quantile(dof: int, p: float = 0.975) -> float:
    """Student's t quantile (scipy), for the 95% intervals of paired differences over seeds."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


def paired(diffs: list[float]) -> dict[str, float] | None:
    """Mean of paired differences and the half-width of its 95% t interval (None with no pairs)."""
    if not diffs:
        return None
    mean = statistics.mean(diffs)
    half = t_quantile(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.inf
    return {"mean": mean, "half_width": half, "n": len(diffs)}


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    for (x0, y0), (x1, y1) in itertools.pairwise(sorted(points)):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    return None


def comparisons(runs: list[dict]) -> list[dict]:
    """For each SSS point: paired differences (SSS minus baseline, accuracy points) over the seeds that have both."""
    by_seed: dict[int, dict[tuple, dict]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[(r["method"], str(r["knob"]))] = r
    points = sorted({(r["method"], str(r["knob"])) for r in runs if r["method"] in SSS_METHODS})
    out = []
    for method, knob in points:
        diffs: dict[str, list[float]] = {"unpruned": [], "uniform": [], **{m: [] for m in MATCHED}}
        macs_gap: dict[str, list[float]] = {m: [] for m in MATCHED}
        for rows in by_seed.values():
            ours = rows.get((method, knob))
            if ours is None:
                continue
            if ("unpruned", "None") in rows:
                diffs["unpruned"].append(100 * (ours["val_acc"] - rows[("unpruned", "None")]["val_acc"]))
            uniform = [(r["macs_ratio"], r["val_acc"]) for (m, _), r in rows.items() if m == "uniform"]
            acc = _interpolate(uniform, ours["macs_ratio"])
            if acc is not None:
                diffs["uniform"].append(100 * (ours["val_acc"] - acc))
            for m in MATCHED:
                theirs = rows.get((m, f"{method}:{knob}"))
                if theirs is not None:
                    diffs[m].append(100 * (ours["val_acc"] - theirs["val_acc"]))
                    macs_gap[m].append(theirs["macs_ratio"] / ours["macs_ratio"] - 1)
        out.append(
            {
                "method": method,
                "knob": knob,
                "vs": {k: paired(v) for k, v in diffs.items()},
                "macs_gap": {k: max(map(abs, v)) if v else None for k, v in macs_gap.items()},
            }
        )
    return out


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and spread over seeds per (method, knob)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], str(r["knob"])), []).append(r)
    rows = []
    for (method, knob), rs in groups.items():
        accs = [r["val_acc"] for r in rs]
        row = {
            "method": method,
            "knob": knob,
            "seeds": sorted(r["seed"] for r in rs),
            "acc_mean": statistics.mean(accs),
            "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "macs_ratio": statistics.mean(r["macs_ratio"] for r in rs),
            "params": statistics.mean(r["params"] for r in rs),
        }
        key = "stability_stable_zero_fraction"
        stable = [r[key] for r in rs if r.get(key) is not None]
        # per seed, in seed order: a mean would let a run above the budget cancel one below it
        budgeted = [r for r in sorted(rs, key=lambda r: r["seed"]) if "controller_vs_budget" in r]
        if budgeted:
            row["controller_vs_budget"] = [r["controller_vs_budget"] for r in budgeted]
            row["budget_fixed_at_step"] = [r.get("budget_fixed_at_step") for r in budgeted]  # None: not recorded
        if stable:
            row["stable_zero_fraction"] = statistics.mean(stable)
            row["last_epoch_churn"] = statistics.mean(r["churn_per_epoch"][-1] for r in rs)
        rows.append(row)
    rows.sort(key=lambda r: (METHODS.index(r["method"]), -r["macs_ratio"]))
    return rows


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _setting(method: str, knob: str) -> str:
    kind = METHODS_TABLE[method].kind
    if kind == "reference":
        return "-"
    if kind == "gamma":
        return f"gamma {knob}"
    if kind == "budget":
        return f"budget {float(knob):.0%}"
    if kind == "uniform":
        return f"width {knob}"
    source, value = knob.split(":")
    return f"MACs of {NAMES[source]}, {_setting(source, value)}"


def _ci(entry: dict[str, float] | None) -> str:
    if entry is None:
        return "-"
    if not math.isfinite(entry["half_width"]):
        return f"{entry['mean']:+.2f} (1 seed)"
    return f"{entry['mean']:+.2f} ± {entry['half_width']:.2f} ({entry['n']} seeds)"


def _recorded_steps(args) -> list[int]:
    """The optimizer steps the runs recorded (an epoch's last partial batch is dropped), else the plan."""
    return sorted(set(getattr(args, "recorded_steps", []))) or [args.epochs * args.batches_per_epoch]


def _steps(args) -> str:
    return " / ".join(map(str, _recorded_steps(args)))


def report(rows: list[dict], cmps: list[dict], args) -> str:
    lines = [
        f"{args.arch} on {args.dataset}: {args.epochs} epochs x {args.batches_per_epoch} batches of 128 "
        f"({_steps(args)} optimizer steps for every method), cosine LR from {args.lr}, weight decay "
        f"{args.weight_decay:g}, seeds {args.seeds} paired (same initialisation and data order per seed). SSS: "
        "one pass, surgery at the end; budget / TP pruners fix the structure after epoch "
        f"{args.epochs - args.finetune_epochs}. Accuracy on the 10k test split, mean (std) over seeds.",
        "",
        "| method | setting | seeds | MACs / unpruned | params | acc | zeros stable over last 10% |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        stable = f"{r['stable_zero_fraction']:.3f}" if "stable_zero_fraction" in r else "-"
        lines.append(
            f"| {NAMES[r['method']]} | {_setting(r['method'], r['knob'])} | {len(r['seeds'])} | "
            f"{r['macs_ratio']:.3f} | {r['params'] / 1e3:.1f}K | {r['acc_mean']:.4f} ({r['acc_std']:.4f}) | {stable} |"
        )
    deadline = (args.epochs - args.finetune_epochs) * (_recorded_steps(args)[0] // args.epochs)  # in steps
    for r in rows:
        if "controller_vs_budget" in r:
            steps = r.get("budget_fixed_at_step") or []
            lines += [
                "",
                f"{NAMES[r['method']]}, budget {float(r['knob']):.0%}: the gamma controller alone ended "
                + " / ".join(f"{100 * v:+.1f}%" for v in r["controller_vs_budget"])
                + " from the budget (per seed) when the structure was fixed"
                + (f", at step {' / '.join(str(s) for s in steps)}" if steps and None not in steps else "")
                + f" (the deadline, the end of epoch {args.epochs - args.finetune_epochs}, is step {deadline}); "
                "a landing at the deadline outside the band is then brought into it by moving the fewest gates.",
            ]
    lines += [
        "",
        "Paired differences, SSS minus baseline, in accuracy points: mean ± half-width of the 95% t interval "
        "over seeds (uniform width interpolated per seed at SSS's MACs; '-' where no pair exists).",
        "",
        "| SSS point | MACs / unpruned | vs unpruned | vs uniform | vs Network Slimming | vs DepGraph |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    macs = {(r["method"], r["knob"]): r["macs_ratio"] for r in rows}
    for c in cmps:
        vs = c["vs"]
        lines.append(
            f"| {NAMES[c['method']]}, {_setting(c['method'], c['knob'])} | {macs[(c['method'], c['knob'])]:.3f} | "
            f"{_ci(vs['unpruned'])} | {_ci(vs['uniform'])} | {_ci(vs['slimming'])} | {_ci(vs['depgraph'])} |"
        )
    gaps = [g for c in cmps for g in c["macs_gap"].values() if g is not None]
    if gaps:
        lines += ["", f"Matched baselines land within {100 * max(gaps):.1f}% of their SSS point's MACs."]
    return "\n".join(lines)


def plot(rows: list[dict], args, path: Path) -> None:
    from matplotlib import colormaps

    with png_figure(path, figsize=(10.5, 5.0)) as ax:
        tab20 = colormaps["tab20"]
        ax.set_prop_cycle(color=[tab20(i) for i in (*range(0, 20, 2), *range(1, 20, 2))])  # one colour per method
        for method in METHODS:
            pts = sorted((r["macs_ratio"], r["acc_mean"], r["acc_std"]) for r in rows if r["method"] == method)
            if pts:
                xs, ys, es = zip(*pts, strict=True)
                ax.errorbar(xs, ys, yerr=es, fmt=METHODS_TABLE[method].marker, label=NAMES[method], capsize=3, ms=6)
        ax.set(
            xlabel="MACs / unpruned network",
            ylabel="test accuracy",
            title=f"{args.arch} on {args.dataset}: {_steps(args)} steps, seeds {args.seeds}",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points, not over them


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    add_run_arguments(parser, batches_per_epoch=469)
    parser.add_argument("--finetune_epochs", type=int, default=1, help="epochs after budget/TP fix the structure")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight_decay", type=float, default=1e-4, help="the weights' weight decay, every method")
    parser.add_argument("--seeds", type=list[int], default=[0, 1, 2])
    parser.add_argument("--methods", type=list[str], default=list(METHODS), help=f"a subset of {METHODS}")
    for point in GAMMA_POINTS.values():
        parser.add_argument(f"--{point.arg}", type=list[float], default=list(point.default), help=point.help)
    parser.add_argument("--budgets", type=list[float], default=[0.4], help="SSS + MacsBudget targets")
    parser.add_argument("--budget_gamma", type=float, default=0.01, help="SSS + MacsBudget's starting gamma")
    parser.add_argument("--widths", type=list[int], default=[13, 10, 7], help="uniform widths (16 = unpruned)")
    parser.add_argument(
        "--match",
        type=list[str],
        default=None,
        help="SSS points the TP baselines prune to, as sss:<gamma> / sss_block_channel:<gamma> / "
        "sss_budget:<budget> (default: every gamma of the SSS gamma points)",
    )
    parser.add_argument("--match_tolerance", type=float, default=0.01, help="relative MACs gap of matched baselines")
    parser.add_argument("--out", type=str | None, default=None, help="default: benchmarks/results/pareto_<arch>")
    parser.add_argument("--report_only", type=bool, default=False, help="write the report from the log, train nothing")
    args = parser.parse_args(argv)
    if set(args.methods) - set(METHODS):
        parser.error(f"--methods must come from {METHODS}, got {args.methods}")
    if args.match is None:
        args.match = [f"{m}:{g}" for m, point in GAMMA_POINTS.items() for g in getattr(args, point.arg)]
    if not 0 < args.finetune_epochs < args.epochs:
        parser.error("--finetune_epochs must be at least 1 and less than --epochs")
    check_run_arguments(parser, args, "pareto")
    log = RunLog(f"{args.out}.runs.jsonl", KEY, BEFORE_LOGGED)
    runs = log.rows
    setting = {k: getattr(args, k) for k in SETTING}
    wanted = [log.key_of({**setting, "method": m, "knob": k, "seed": s}) for s in args.seeds for m, k in configs(args)]

    def run(key: tuple) -> dict | None:
        method, knob, seed = key[-3:]
        if args.report_only:
            return None
        if method in MATCHED and _target(knob, seed, runs, args) >= 1.0:
            print(f"[pareto] {method} {knob} seed {seed}: skipped, that SSS point pruned nothing", flush=True)
            return None
        return run_one(method, knob, seed, args, runs)

    current = log.sweep(
        wanted,
        run,
        lambda row: (
            f"[pareto] {row['method']} {row['knob']} seed {row['seed']}: acc {row['val_acc']:.4f}, MACs "
            f"{row['macs_ratio']:.3f}, {row['seconds']:.0f} s"
        ),
    )
    if not current:
        if args.report_only:
            parser.error(f"no finished run of these settings in {log.path}; run without --report_only first")
        print("[pareto] nothing to report: every requested run was skipped", flush=True)
        return []
    args.recorded_steps = [r["steps"] for r in current if "steps" in r]
    rows = summarize(current)
    cmps = comparisons(current)
    out = write_report(args.out, report(rows, cmps, args), {"summary": rows, "comparisons": cmps, "runs": current})
    plot(rows, args, out.with_suffix(".png"))
    return rows


if __name__ == "__main__":
    main()
