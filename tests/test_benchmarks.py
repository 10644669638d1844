"""Benchmark scripts run end to end on tiny settings (their numbers are not asserted: timings vary)."""

import json

import pytest

from benchmarks import latency


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


def test_pareto_script_runs_every_method_and_resumes_without_repeating(tmp_path, monkeypatch):
    from benchmarks import pareto

    settings = "--dataset synthetic --epochs 2 --batches_per_epoch 3 --seeds [0] --gammas [0.3] --amounts [0.5]"
    argv = [*settings.split(), "--budgets", "[0.6]", "--widths", "[8]", "--out", str(tmp_path / "p")]
    rows = pareto.main(argv)
    assert {r["method"] for r in rows} == set(pareto.METHODS)
    by = {r["method"]: r for r in rows}
    assert by["unpruned"]["macs_ratio"] == 1.0
    assert by["uniform"]["macs_ratio"] < 0.4  # width 8 of 16: about a quarter
    assert by["slimming"]["macs_ratio"] < 1.0 and by["l1_filter"]["macs_ratio"] < 1.0
    lines = (tmp_path / "p.runs.jsonl").read_text().splitlines()
    assert len(lines) == 6

    monkeypatch.setattr(pareto, "run_one", lambda *a: pytest.fail("a finished run was repeated"))
    pareto.main(argv)  # everything is in the log: only the report is rebuilt
    assert (tmp_path / "p.runs.jsonl").read_text().splitlines() == lines
    assert "| method | setting | MACs / unpruned |" in (tmp_path / "p.md").read_text()
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")
