"""`bastion bench graph --quick --json` runs every phase on SQLite and reports every figure
documented in docs/benchmarks.md, with values that hang together.

Its figures are not checked against issue #22's targets here (DESIGN §13: timing targets
live in eval/bench, never in tests).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

LATENCY = {"n", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"}


def _latency_is_sane(figures: dict[str, float], n: int) -> None:
    assert set(figures) >= LATENCY
    assert figures["n"] == n
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"]


@pytest.mark.timeout(180)
def test_bench_graph_quick_reports_every_figure_of_issue_22(tmp_path: Path) -> None:
    out = tmp_path / "graph.json"
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "bench", "graph", "--quick", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = orjson.loads(done.stdout)
    assert result == orjson.loads(out.read_bytes()), "--json prints what it writes"

    assert result["suite"] == "graph"
    assert result["store"]["backend"] == "sqlite"
    assert result["store"]["size_mb"] > 0
    assert {"cpus", "python", "platform", "load_1m"} <= set(result["machine"])
    params = result["params"]
    assert params["quick"] is True
    assert params["batch"] == 512  # the shipper's batch

    ingest = result["ingest"]
    assert ingest["accepted"] == ingest["events"] == params["ingest_events"]
    assert ingest["duplicates"] == 0
    assert ingest["events_per_s"] > 0
    _latency_is_sane(ingest["batch"], ingest["batches"])

    build = result["build"]
    assert build["nodes"] == params["nodes"]
    assert build["events_per_s"] > 0
    assert all(point["events_per_s"] > 0 for point in build["timeline"])

    drift = result["drift"]
    assert drift["depth"] == 20
    assert drift["unexpected"] == 0, drift["first_unexpected"]
    _latency_is_sane(drift, params["queries"])
    _latency_is_sane(drift["again"], params["queries"])

    export = result["export"]
    # Every action is a decision record and every stored result a result record.
    assert export["rows"] == ingest["accepted"] + build["events"]
    assert export["bytes"] > 0
    assert export["rows_per_s"] > 0

    grpc_ingest = result["grpc_ingest"]
    assert grpc_ingest["accepted"] == grpc_ingest["events"] == params["grpc_events"]
    assert grpc_ingest["events_per_s"] > 0
    assert grpc_ingest["graph_cpu_us_per_event"] > 0
    _latency_is_sane(grpc_ingest["call"], -(-params["grpc_events"] // params["batch"]))

    assert [lag["rate"] for lag in result["lag"]] == params["lag_rates"]
    for lag in result["lag"]:
        assert lag["unshipped"] == 0
        assert lag["shipped_per_s"] > 0
        _latency_is_sane(lag, lag["events"])
        assert lag["ingest_calls"]["events_per_call"] > 0
        _latency_is_sane(lag["ingest_calls"], lag["ingest_calls"]["n"])

    assert len(result["targets"]) == 2 + len(params["lag_rates"])
    for target in result["targets"]:
        assert set(target) == {"what", "target", "measured", "met"}
        assert target["measured"] is not None

    if importlib.util.find_spec("matplotlib") is None:
        assert result["chart"] is None
    else:
        assert Path(result["chart"]) == out.with_suffix(".png")
