"""Benchmark scripts run end to end on tiny settings (their numbers are not asserted: timings vary)."""

import json

from benchmarks import latency


def test_latency_script_writes_table_and_json(tmp_path):
    rows = latency.main(
        [
            "--arch",
            "resnet20",
            "--input_size",
            "[3, 8, 8]",
            "--batch_sizes",
            "[1, 2]",
            "--min_run_time",
            "0.01",
            "--out",
            str(tmp_path / "lat"),
        ]
    )
    assert [r["batch"] for r in rows] == [1, 2]
    result = json.loads((tmp_path / "lat.json").read_text())
    assert result["macs_after"] < result["macs_before"]
    assert "| batch | gated ms |" in (tmp_path / "lat.md").read_text()
