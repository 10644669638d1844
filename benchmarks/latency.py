"""CPU latency of a pruned model vs the unpruned one, next to the MACs ratio, in eager PyTorch and ONNX Runtime.

    python -m benchmarks.latency --ckpt runs/fashion_mnist_quick/checkpoints/last.ckpt
    python -m benchmarks.latency --arch resnet56 --zero_fraction 0.5 --input_size "[3, 32, 32]"

The unpruned reference is what one would deploy without SSS: the same network with every gate folded
in (no gate multiplies). Pruned models are cut with each ``--round_to`` (1: exactly the non-zero
channels; 8: channel counts rounded up to multiples of 8, which blocked-layout kernels prefer). Every
model is timed in rounds, one model after the other within a round (torch.utils.benchmark median per
model and round, then the median over rounds), so machine load hits all alike. ONNX Runtime rows need
``onnx``, ``onnxscript`` and ``onnxruntime`` (``pip install -e ".[export]"``) and are skipped without
them. Writes a Markdown table and JSON to --out (.md/.json).
"""

from __future__ import annotations

import copy
import importlib.util
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from torch import nn
from torch.utils.benchmark import Timer

from benchmarks.report import write_report
from sss_lightning.export import export_model
from sss_lightning.flops import count_flops
from sss_lightning.gates import iter_gates, random_gate_pattern
from sss_lightning.models import build_model
from sss_lightning.module import load_sss_checkpoint
from sss_lightning.surgery import prune

RUNTIMES = ("eager", "onnxruntime")


def unpruned(gated: nn.Module) -> nn.Module:
    """The full-width network as deployed without pruning: every gate set to 1 and folded away."""
    dense = copy.deepcopy(gated)
    with torch.no_grad():
        for info in iter_gates(dense):
            info.module.scale.fill_(1.0)
    return prune(dense).eval()


def _eager(model: nn.Module, x: torch.Tensor, folder: Path, name: str) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def _onnxruntime(model: nn.Module, x: torch.Tensor, folder: Path, name: str) -> Callable[[], object]:
    import onnxruntime

    path, _ = export_model(model, folder / f"{name}.onnx", tuple(x.shape[1:]), fmt="onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def median_ms(fns: dict[str, Callable[[], object]], rounds: int, min_run_time: float) -> dict[str, float]:
    """Median per function over ``rounds`` rounds that each time every function once, in turn."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
            times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    parser.add_argument("--ckpt", type=str | None, default=None, help="training checkpoint of an SSSModule")
    parser.add_argument("--arch", type=str, default="resnet56")
    parser.add_argument("--gates", type=str, default="both")
    parser.add_argument("--zero_fraction", type=float, default=0.5, help="random gate pattern without --ckpt")
    parser.add_argument("--input_size", type=list[int] | None, default=None)
    parser.add_argument("--batch_sizes", type=list[int], default=[1, 64])
    parser.add_argument("--round_to", type=list[int], default=[1, 8], help="channel multiples of the pruned models")
    parser.add_argument("--runtimes", type=list[str], default=list(RUNTIMES), help=f"a subset of {RUNTIMES}")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min_run_time", type=float, default=0.2, help="seconds per model and round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default="benchmarks/results/latency")
    args = parser.parse_args(argv)
    if unknown := set(args.runtimes) - set(RUNTIMES):
        parser.error(f"unknown runtimes {sorted(unknown)}; choose from {RUNTIMES}")
    runtimes = [r for r in args.runtimes if r != "onnxruntime" or importlib.util.find_spec("onnxruntime")]
    if runtimes != args.runtimes:
        print('onnxruntime is not installed: its rows are skipped (pip install -e ".[export]")')

    if args.ckpt:
        module, info = load_sss_checkpoint(args.ckpt)
        gated, source = module.net, args.ckpt
        size = args.input_size or info["input_shape"]
    else:
        size = args.input_size or [3, 32, 32]
        gated = build_model(args.arch, gates=args.gates, in_channels=size[0])
        random_gate_pattern(gated, args.zero_fraction, args.seed)
        source = f"{args.arch}, gates={args.gates}, random {args.zero_fraction:.0%} zero gates"
    gated.eval()
    models = {"unpruned": unpruned(gated)}
    surgery_s = {}
    for multiple in args.round_to:
        start = time.perf_counter()
        models[f"round_to={multiple}"] = prune(gated, round_to=multiple).eval()
        surgery_s[multiple] = time.perf_counter() - start
    flops = {name: count_flops(model, size) for name, model in models.items()}
    runners = {"eager": _eager, "onnxruntime": _onnxruntime}

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for runtime in runtimes:
            for batch in args.batch_sizes:
                x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(args.seed))
                fns = {name: runners[runtime](model, x, Path(folder), name) for name, model in models.items()}
                ms = median_ms(fns, args.rounds, args.min_run_time)
                for multiple in args.round_to:
                    name = f"round_to={multiple}"
                    speedup = ms["unpruned"] / ms[name]
                    macs_ratio = flops["unpruned"].macs / flops[name].macs
                    rows.append(
                        {
                            "runtime": runtime,
                            "batch": batch,
                            "round_to": multiple,
                            "unpruned_ms": ms["unpruned"],
                            "pruned_ms": ms[name],
                            "speedup": speedup,
                            "macs_ratio": macs_ratio,
                            "speedup_over_macs_ratio": speedup / macs_ratio,
                        }
                    )

    base = flops["unpruned"]
    lines = [
        f"Model: {source}; input {tuple(size)}; {torch.get_num_threads()} CPU threads "
        f"({platform.processor() or 'cpu'}); median of {args.rounds} interleaved rounds",
        f"Unpruned: {base.macs / 1e6:.2f}M MACs, {base.params / 1e3:.1f}K params. Pruned: "
        + "; ".join(
            f"round_to={m}: {flops[f'round_to={m}'].macs / 1e6:.2f}M MACs, "
            f"{flops[f'round_to={m}'].params / 1e3:.1f}K params, surgery {surgery_s[m] * 1e3:.0f} ms"
            for m in args.round_to
        ),
        "",
        "| runtime | batch | round_to | unpruned ms | pruned ms | speedup | MACs ratio | speedup / MACs ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['runtime']} | {r['batch']} | {r['round_to']} | {r['unpruned_ms']:.2f} | {r['pruned_ms']:.2f} | "
        f"{r['speedup']:.2f}x | {r['macs_ratio']:.2f}x | {r['speedup_over_macs_ratio']:.2f} |"
        for r in rows
    ]
    result = {
        "source": source,
        "input_size": list(size),
        "surgery_s": {str(m): s for m, s in surgery_s.items()},
        "macs": {name: f.macs for name, f in flops.items()},
        "params": {name: f.params for name, f in flops.items()},
        "rows": rows,
    }
    write_report(args.out, "\n".join(lines), result)
    return rows


if __name__ == "__main__":
    main()
