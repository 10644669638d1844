"""What SSS costs: training-step time of gated vs plain networks, and surgery / FLOPs-count time vs depth.

    python -m benchmarks.cost                       # ResNet-20/56 steps, depths 20..164
    python -m benchmarks.cost --steps 5 --depths "[20, 56]"

Step times are medians over interleaved repeats (gated, plain, gated, ...) in one process, so machine
load hits both alike; the table reports their ratio, not absolute times. Writes --out (.md and .json).
"""

from __future__ import annotations

import statistics
import time

import torch
from jsonargparse import ArgumentParser

from benchmarks.report import write_report
from sss_lightning.flops import count_flops
from sss_lightning.gates import random_gate_pattern
from sss_lightning.models import build_model
from sss_lightning.module import SSSModule
from sss_lightning.optim import APG
from sss_lightning.surgery import prune


def _step_fn(name: str, gates: str, batch: int, size: int):
    torch.manual_seed(0)
    net = build_model(name, gates=gates)
    if gates == "none":
        optimizer = APG(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    else:  # the optimizer SSS trains with: weights group + gate group
        optimizer = APG(SSSModule(net=net, gamma=0.01).param_groups(), lr=0.1, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def step_times(name: str, steps: int, batch: int, size: int) -> dict[str, float]:
    gated, plain = _step_fn(name, "both", batch, size), _step_fn(name, "none", batch, size)
    for fn in (gated, plain):  # warm-up
        fn()
    g, p = [], []
    for _ in range(steps):
        g.append(gated())
        p.append(plain())
    gm, pm = statistics.median(g), statistics.median(p)
    return {"model": name, "gated_ms": gm * 1e3, "plain_ms": pm * 1e3, "ratio": gm / pm}


def tool_times(depth: int, size: int) -> dict[str, float]:
    model = build_model(f"resnet{depth}", gates="both")
    random_gate_pattern(model, 0.5, seed=0)
    start = time.perf_counter()
    pruned = prune(model)
    surgery = time.perf_counter() - start
    start = time.perf_counter()
    count_flops(model, (3, size, size))
    counting = time.perf_counter() - start
    return {
        "depth": depth,
        "surgery_ms": surgery * 1e3,
        "flops_ms": counting * 1e3,
        "params": sum(p.numel() for p in model.parameters()),
        "pruned_params": sum(p.numel() for p in pruned.parameters()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = ArgumentParser(description=__doc__.splitlines()[0], default_env=False)
    parser.add_argument("--models", type=list[str], default=["resnet20", "resnet56"])
    parser.add_argument("--depths", type=list[int], default=[20, 32, 56, 110, 164])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--out", type=str, default="benchmarks/results/cost")
    args = parser.parse_args(argv)

    steps = [step_times(name, args.steps, args.batch, args.size) for name in args.models]
    tools = [tool_times(depth, args.size) for depth in args.depths]
    lines = [
        f"Training step (batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} CPU threads, "
        f"median of {args.steps} interleaved steps)",
        "",
        "| model | gated ms | plain ms | gated / plain |",
        "|---|---:|---:|---:|",
        *[f"| {r['model']} | {r['gated_ms']:.1f} | {r['plain_ms']:.1f} | {r['ratio']:.3f} |" for r in steps],
        "",
        "Surgery and FLOPs counting vs depth (random 50% zero gates, channel + block gates)",
        "",
        "| depth | params | surgery ms | fvcore count ms |",
        "|---:|---:|---:|---:|",
        *[f"| {r['depth']} | {r['params'] / 1e6:.2f}M | {r['surgery_ms']:.0f} | {r['flops_ms']:.0f} |" for r in tools],
    ]
    result = {"steps": steps, "tools": tools, "batch": args.batch, "size": args.size}
    write_report(args.out, "\n".join(lines), result)
    return result


if __name__ == "__main__":
    main()
