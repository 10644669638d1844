"""CPU latency of a gated model vs its pruned form, next to the MACs ratio, plus surgery wall time.

    python -m benchmarks.latency --ckpt runs/fashion_mnist_quick/checkpoints/last.ckpt
    python -m benchmarks.latency --arch resnet56 --zero_fraction 0.5 --input_size 3 32 32

Timings use torch.utils.benchmark (warm-up, then the median of blocked repeats), gated and pruned
measured side by side in one process. Writes a Markdown table and JSON to --out (.md/.json).
"""

from __future__ import annotations

import platform
import time

import torch
from jsonargparse import ArgumentParser
from torch.utils.benchmark import Timer

from benchmarks.report import write_report
from sss_lightning.flops import count_flops
from sss_lightning.gates import random_gate_pattern
from sss_lightning.models import build_model
from sss_lightning.module import load_sss_checkpoint
from sss_lightning.surgery import prune


def median_ms(model: torch.nn.Module, x: torch.Tensor, min_run_time: float) -> float:
    with torch.no_grad():
        timer = Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def main(argv: list[str] | None = None) -> list[dict]:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    parser.add_argument("--ckpt", type=str | None, default=None, help="training checkpoint of an SSSModule")
    parser.add_argument("--arch", type=str, default="resnet56")
    parser.add_argument("--gates", type=str, default="both")
    parser.add_argument("--zero_fraction", type=float, default=0.5, help="random gate pattern without --ckpt")
    parser.add_argument("--input_size", type=list[int] | None, default=None)
    parser.add_argument("--batch_sizes", type=list[int], default=[1, 64])
    parser.add_argument("--min_run_time", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=str, default="benchmarks/results/latency")
    args = parser.parse_args(argv)

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
    start = time.perf_counter()
    pruned = prune(gated).eval()
    surgery_s = time.perf_counter() - start
    before, after = count_flops(gated, size), count_flops(pruned, size)
    macs_ratio = before.macs / after.macs

    rows = []
    for batch in args.batch_sizes:
        x = torch.randn(batch, *size)
        gated_ms, pruned_ms = median_ms(gated, x, args.min_run_time), median_ms(pruned, x, args.min_run_time)
        rows.append(
            {
                "batch": batch,
                "gated_ms": gated_ms,
                "pruned_ms": pruned_ms,
                "speedup": gated_ms / pruned_ms,
                "macs_ratio": macs_ratio,
                "speedup_over_macs_ratio": gated_ms / pruned_ms / macs_ratio,
            }
        )

    lines = [
        f"Model: {source}; input {tuple(size)}; {torch.get_num_threads()} CPU threads "
        f"({platform.processor() or 'cpu'})",
        f"MACs {before.macs / 1e6:.2f}M -> {after.macs / 1e6:.2f}M ({macs_ratio:.2f}x fewer); params "
        f"{before.params / 1e3:.1f}K -> {after.params / 1e3:.1f}K; surgery {surgery_s * 1e3:.0f} ms",
        "",
        "| batch | gated ms | pruned ms | speedup | MACs ratio | speedup / MACs ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['batch']} | {r['gated_ms']:.2f} | {r['pruned_ms']:.2f} | {r['speedup']:.2f}x | "
        f"{r['macs_ratio']:.2f}x | {r['speedup_over_macs_ratio']:.2f} |"
        for r in rows
    ]
    result = {
        "source": source,
        "input_size": list(size),
        "surgery_s": surgery_s,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "params_before": before.params,
        "params_after": after.params,
        "rows": rows,
    }
    write_report(args.out, "\n".join(lines), result)
    return rows


if __name__ == "__main__":
    main()
