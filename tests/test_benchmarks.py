"""Benchmark scripts run end to end on tiny settings (their numbers are not asserted: timings vary)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import latency
from sss_lightning.io import load_pruned


def test_latency_script_times_unpruned_and_rounded_pruned_models_in_both_runtimes(tmp_path):
    rows = latency.main(
        [
            "--arch",
            "resnet20",
            "--input_size",
            "[3, 8, 8]",
            "--batch_sizes",
            "[1, 2]",
            "--round_to",
            "[1, 8]",
            "--rounds",
            "1",
            "--min_run_time",
            "0.01",
            "--out",
            str(tmp_path / "lat"),
        ]
    )
    assert [(r["runtime"], r["batch"], r["round_to"]) for r in rows] == [
        (runtime, batch, multiple) for runtime in latency.RUNTIMES for batch in (1, 2) for multiple in (1, 8)
    ]
    result = json.loads((tmp_path / "lat.json").read_text())
    macs = result["macs"]
    assert macs["round_to=1"] <= macs["round_to=8"] < macs["unpruned"]
    assert "| runtime | batch | round_to | unpruned ms |" in (tmp_path / "lat.md").read_text()


def test_cost_script_measures_ratios_and_scaling(tmp_path):
    from benchmarks import cost

    result = cost.main(
        [
            "--models",
            "[resnet20]",
            "--depths",
            "[20, 32]",
            "--steps",
            "2",
            "--batch",
            "2",
            "--size",
            "8",
            "--out",
            str(tmp_path / "cost"),
        ]
    )
    (row,) = result["steps"]
    assert row["ratio"] > 0 and row["gated_ms"] > 0
    assert [t["depth"] for t in result["tools"]] == [20, 32]
    assert all(t["pruned_params"] < t["params"] for t in result["tools"])
    assert "| model | gated ms | plain ms | gated / plain |" in (tmp_path / "cost.md").read_text()


def test_optimizer_comparison_script_runs_all_three_and_plots(tmp_path):
    from benchmarks import optimizers

    rows = optimizers.main(
        [
            "--dataset",
            "synthetic",
            "--epochs",
            "1",
            "--batches_per_epoch",
            "4",
            "--gamma",
            "0.5",
            "--out",
            str(tmp_path / "opt"),
        ]
    )
    assert [r["mode"] for r in rows] == ["apg", "ista", "sgd"]
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["sgd"]["zero_frac"] == 0.0  # the subgradient baseline never reaches exact zeros
    assert (tmp_path / "opt.png").read_bytes().startswith(b"\x89PNG")
    assert "| gate optimizer | val acc |" in (tmp_path / "opt.md").read_text()


def test_budget_script_compares_shrink_and_cost_weighting(tmp_path):
    from benchmarks import budget

    args = ["--dataset", "synthetic", "--epochs", "2", "--by_epoch", "1", "--batches_per_epoch", "12"]
    rows = budget.main([*args, "--every_n_steps", "3", "--timing_steps", "2", "--out", str(tmp_path / "budget")])
    assert [(r["cost_weighted"], r["shrink"]) for r in rows] == [(False, False), (False, True), (True, True)]
    assert rows[0]["macs"] == rows[1]["macs"]  # shrinking changes the speed, not the structure
    assert all(r["budget_curve"] for r in rows)
    assert "| run | wall time | time / full width |" in (tmp_path / "budget.md").read_text()
    assert (tmp_path / "budget.png").read_bytes().startswith(b"\x89PNG")


def test_pareto_script_runs_every_method_paired_and_resumes_without_repeating(tmp_path, monkeypatch):
    pytest.importorskip("torch_pruning")
    from benchmarks import pareto

    settings = "--dataset synthetic --epochs 2 --batches_per_epoch 3 --seeds [0,1] --gammas [0.8]"
    settings += " --block_channel_gammas [0.8] --late_gammas [0.8] --ramp_gammas [0.8] --norm_gammas [0.8]"
    settings += " --slow_gate_gammas [0.8] --zeros_train_gammas [0.8]"
    settings += " --budgets [0.6]"
    argv = [*settings.split(), "--match", "[sss_budget:0.6]", "--widths", "[12,8]", "--out", str(tmp_path / "p")]
    rows = pareto.main(argv)
    assert {r["method"] for r in rows} == set(pareto.METHODS)
    by = {(r["method"], r["knob"]): r for r in rows}
    assert by[("unpruned", "None")]["macs_ratio"] == 1.0
    assert by[("uniform", "8")]["macs_ratio"] < 0.4  # width 8 of 16: about a quarter
    runs = [json.loads(line) for line in (tmp_path / "p.runs.jsonl").read_text().splitlines()]
    per_seed = len(pareto.METHODS) + 1  # one knob per method, two uniform widths
    assert len(runs) == 2 * per_seed and {r["steps"] for r in runs} == {6}  # the same step budget for every method
    budgeted = [r for r in runs if r["method"] in pareto.BUDGET_POINTS]
    assert budgeted and all(0 < r["budget_fixed_at_step"] <= 6 for r in budgeted)  # the step the structure was fixed
    for seed in (0, 1):  # the TP baselines prune to the MACs the same seed's SSS point reached
        ours = next(r for r in runs if r["method"] == "sss_budget" and r["seed"] == seed)
        for method in pareto.MATCHED:
            theirs = next(r for r in runs if r["method"] == method and r["seed"] == seed)
            assert theirs["knob"] == "sss_budget:0.6"
            assert abs(theirs["macs_ratio"] / ours["macs_ratio"] - 1) <= 0.03
            # the pruned network is saved with the run's structure, for benchmarks.from_scratch to retrain
            saved = load_pruned(tmp_path / "runs" / f"{method}-sss_budget-0.6-{seed}.pt")
            assert sum(p.numel() for p in saved.parameters()) == theirs["params"]
    assert all("stability_stable_zero_fraction" in r for r in runs if r["method"] in pareto.SSS_METHODS)
    (cmp,) = [c for c in json.loads((tmp_path / "p.json").read_text())["comparisons"] if c["method"] == "sss_budget"]
    assert cmp["vs"]["unpruned"]["n"] == 2 and cmp["vs"]["slimming"]["n"] == 2

    monkeypatch.setattr(pareto, "run_one", lambda *a: pytest.fail("a finished run was repeated"))
    pareto.main(argv)  # everything is in the log: only the report is rebuilt
    assert len((tmp_path / "p.runs.jsonl").read_text().splitlines()) == len(runs)
    text = (tmp_path / "p.md").read_text()
    assert "| SSS point | MACs / unpruned | vs unpruned | vs uniform | vs Network Slimming | vs DepGraph |" in text
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_gpu_script_runs_the_whole_protocol_in_two_waves_and_reports(tmp_path):
    """scripts/gpu_pareto.sh, shrunk through its environment to a CPU smoke run: every method of the protocol
    runs as its own process, the Torch-Pruning baselines after the SSS point they match, and the report is
    written from the log."""
    pytest.importorskip("torch_pruning")
    from benchmarks import pareto

    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # this venv's python
        "ARCH": "resnet20", "DATASET": "synthetic", "EPOCHS": "2", "FINETUNE": "1", "BATCHES": "3",
        "SEEDS": "0", "GAMMAS": "0.8", "BUDGETS": "0.6", "WIDTHS": "12 8",
        "OUT": str(tmp_path / "gpu"), "LOGS": str(tmp_path / "logs"),
    }  # fmt: skip
    done = subprocess.run(["bash", str(repo / "scripts" / "gpu_pareto.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in (tmp_path / "gpu.runs.jsonl").read_text().splitlines()]
    # gamma 0.8 prunes nothing in 6 steps, so its baselines are skipped (and say so); the budget point is cut
    assert sorted((r["method"], str(r["knob"])) for r in runs) == sorted(
        [("unpruned", "None"), ("sss", "0.8"), ("sss_budget_landing", "0.6"), ("uniform", "12"), ("uniform", "8")]
        + [(m, "sss_budget_landing:0.6") for m in pareto.MATCHED]
    )
    assert "that SSS point pruned nothing" in (tmp_path / "logs" / "depgraph-0.8-0.log").read_text()
    assert {r["steps"] for r in runs} == {6}
    ours = next(r for r in runs if r["method"] == "sss_budget_landing")
    for r in runs:
        if r["method"] in pareto.MATCHED:
            assert abs(r["macs_ratio"] / ours["macs_ratio"] - 1) <= 0.03
    assert "| SSS point |" in (tmp_path / "gpu.md").read_text()


def test_recipes_script_runs_candidates_with_their_own_gates(tmp_path):
    from benchmarks import recipes

    argv = "--dataset synthetic --epochs 2 --batches_per_epoch 3 --seeds [0] --gammas [0.5]".split()
    runs = recipes.main([*argv, "--recipes", "[plain,rescale_hold_settle_streams_cost]", "--out", str(tmp_path / "r")])
    assert [r["recipe"] for r in runs] == ["plain", "rescale_hold_settle_streams_cost"]
    streams = next(r for r in runs if "streams" in r["recipe"])
    assert streams["final_zeros"] > 0 and streams["macs_ratio"] < 1  # stream gates were trained and cut
    assert "| recipe | gamma |" in (tmp_path / "r.md").read_text()


def test_from_scratch_script_retrains_a_pruned_structure(tmp_path, tiny_model, set_gates):
    from benchmarks import from_scratch
    from sss_lightning import prune, save_pruned

    model = tiny_model("resnet20", in_channels=1, width=16)
    set_gates(model, "random", torch.Generator().manual_seed(0), p_zero=0.5)
    pruned = prune(model)
    save_pruned(pruned, tmp_path / "p.pt")
    argv = ["--dataset", "synthetic", "--epochs", "1", "--batches_per_epoch", "2", "--files", f"[{tmp_path / 'p.pt'}]"]
    (row,) = from_scratch.main([*argv, "--out", str(tmp_path / "s")])
    assert 0 < row["macs_ratio"] < 1 and row["params"] == sum(p.numel() for p in pruned.parameters())
    assert row["steps"] == 2
    assert (tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):  # a missing file is refused before any training
        from_scratch.main(["--files", f"[{tmp_path / 'missing.pt'}]", "--out", str(tmp_path / "s")])


def test_paired_interval_uses_students_t():
    from benchmarks import pareto

    result = pareto.paired([1.0, 2.0, 3.0])
    assert result["mean"] == 2.0 and result["n"] == 3
    assert result["half_width"] == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert pareto.paired([]) is None


def test_a_run_log_reads_a_key_field_older_rows_lack_as_its_default(tmp_path):
    """A field added to a sweep's key (pareto's --weight_decay) keeps the runs logged before it: they read as
    the value they were run with, and a run at another value is a different run, not skipped."""
    from benchmarks.common import RunLog
    from benchmarks.pareto import BEFORE_LOGGED, KEY

    old = {"arch": "resnet20", "dataset": "fashion_mnist", "epochs": 4, "batches_per_epoch": 469}
    old |= {"method": "sss", "knob": 0.0037, "seed": 0, "val_acc": 0.9}
    (tmp_path / "p.runs.jsonl").write_text(json.dumps(old) + "\n")
    log = RunLog(tmp_path / "p.runs.jsonl", KEY, BEFORE_LOGGED)
    assert log.has(log.key_of({**old, "weight_decay": 1e-4}))
    assert not log.has(log.key_of({**old, "weight_decay": 5e-4}))
