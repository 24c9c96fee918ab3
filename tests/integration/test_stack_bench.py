"""`bastion bench stack --quick` starts every process, measures every path and writes every
documented figure (docs/benchmarks.md).

Its figures are not checked here (DESIGN §13: timing targets live in eval/bench, never in tests).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

PATHS = {"direct", "hop", "bastion", "bastion_limits", "grpc", "bastion_policy", "bastion_passthrough"}
LOAD_PATHS = {"direct", "hop", "bastion", "bastion_policy", "bastion_passthrough"}
PROCESSES = {"upstream", "hop", "policy", "verifier", "graph", "proxy", "passthrough", "client"}
LATENCY = {"n", "p50_us", "p95_us", "p99_us", "mean_us"}
LOAD = {"calls", "errors", "first_error", "seconds", "calls_per_s", "p50_us", "p95_us", "p99_us", "mean_us"}


@pytest.mark.timeout(180)
def test_bench_stack_quick_writes_figures_for_every_path_and_process(tmp_path: Path) -> None:
    out = tmp_path / "stack.json"
    done = subprocess.run(
        # `bastion bench` without a suite is the stack suite (DESIGN §13, issue #24: `bastion bench --quick`).
        [sys.executable, "-m", "bastion", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "under load" in done.stdout
    assert "issue #24 target" in done.stdout

    result = orjson.loads(out.read_bytes())
    assert result["suite"] == "stack"
    assert {"cpus", "python", "platform", "load_1m"} <= set(result["machine"])
    params = result["params"]
    assert params["quick"] is True
    assert set(result["seconds"]) == {"startup", "measure", "stop"}
    assert set(result["settle"]) == {"seconds", "not_quiet"}
    assert set(result["processes"]) == PROCESSES
    for process in result["processes"].values():
        assert set(process["rss_mb"]) == {"idle", "end", "peak"}

    assert set(result["paths"]) == PATHS
    for name, path in result["paths"].items():
        assert set(path["c1"]) == LATENCY
        assert path["c1"]["n"] == params["calls"]
        phases = {"c1", *(str(n) for n in params["clients"])} if name in LOAD_PATHS else {"c1"}
        assert set(path["cpu_us_per_call"]) == phases
        for cpu in path["cpu_us_per_call"].values():
            assert set(cpu) == PROCESSES | {"bastion_total"}
        if name in LOAD_PATHS:
            assert set(path["load"]) == {str(n) for n in params["clients"]}
            for load in path["load"].values():
                assert set(load) == LOAD
                assert load["calls"] + load["errors"] > 0
        else:
            assert "load" not in path
    # Waiving the verifier is a policy setting the proxy honours: the policy-only path is
    # answered, not refused (a refusal would be counted as an error).
    for load in result["paths"]["bastion_policy"]["load"].values():
        assert load["errors"] == 0, load["first_error"]
    assert {"verifier_stage_p50_us", "bastion_policy_vs_direct_p50_us"} <= set(result["added"])
    assert set(result["ratios"]["throughput_policy_only_over_hop"]) == {str(n) for n in params["clients"]}
    # The pass-through proxy (bench-only: the pipeline without the decisions) answers every
    # call through the real proxy code, its journal and its upstream.
    for load in result["paths"]["bastion_passthrough"]["load"].values():
        assert load["errors"] == 0, load["first_error"]
    assert {"bastion_passthrough_vs_direct_p50_us", "passthrough_vs_hop_p50_us", "decisions_stage_p50_us"} <= set(
        result["added"]
    )
    assert set(result["ratios"]["throughput_passthrough_over_hop"]) == {str(n) for n in params["clients"]}
    assert "pass-through (no decision)" in done.stdout

    # The hostile slice: the ordinary callers all succeed beside a client sending wide and
    # deep arguments, and every hostile call is refused with a JSON-RPC error, none forwarded.
    hostile = result["paths"]["bastion"]["hostile"]
    assert hostile["clients"] == params["clients"][0]
    assert set(hostile["ordinary"]) == LOAD
    assert hostile["ordinary"]["errors"] == 0, hostile["ordinary"]["first_error"]
    assert hostile["ordinary"]["calls"] > 0
    assert set(hostile["cpu_us_per_call"]) == PROCESSES | {"bastion_total"}
    assert set(hostile["attacker"]) == {"wide", "deep"}
    assert hostile["attacker"]["wide"]["sent"] > 0
    assert hostile["attacker"]["deep"]["sent"] > 0  # each body at least once, however slow the first
    for seen in hostile["attacker"].values():
        assert set(seen) == {"sent", "answers", "p50_us", "max_us"}
        assert set(seen["answers"]) <= {"HTTP 400 -32602", "HTTP 400 -32700"}, seen["answers"]
        assert sum(seen["answers"].values()) == seen["sent"]
    assert "with a hostile client beside" in done.stdout

    assert {
        "hop_vs_direct_p50_us",
        "bastion_vs_direct_p50_us",
        "bastion_vs_hop_p50_us",
        "limits_stage_p50_us",
        "floor_p50_us",
    } <= set(result["added"])
    assert set(result["ratios"]["throughput_bastion_over_hop"]) == {str(n) for n in params["clients"]}
    assert len(result["targets"]) == 6
    for target in result["targets"]:
        assert set(target) == {"what", "target", "measured", "met"}

    if importlib.util.find_spec("matplotlib") is None:
        assert result["chart"] is None
    else:
        assert Path(result["chart"]) == out.with_suffix(".png")
        assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
