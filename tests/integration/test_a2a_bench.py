"""`bastion bench a2a` runs end to end with tiny counts and writes every documented field.

Its figures are not checked here (DESIGN §13: timing targets live in eval/bench, never in tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

FIGURES = {"n", "p50_us", "p99_us"}


def test_bench_a2a_writes_send_and_stream_figures_for_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "a2a.json"
    options = ["--calls", "4", "--streams", "2", "--events", "2", "--delay-ms", "1", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "bastion", "bench", "a2a", *options, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stream first event p50" in done.stdout

    result = orjson.loads(out.read_bytes())
    assert result["suite"] == "a2a"
    assert {"cpus", "python", "platform", "load_1m"} <= set(result["machine"])
    assert result["params"] == {"calls": 4, "streams": 2, "events": 2, "delay_ms": 1.0, "rounds": 1}
    for path in ("direct", "bastion"):
        assert set(result["send"][path]) == FIGURES
        assert result["send"][path]["n"] == 4
        stream = result["stream"][path]
        assert set(stream["first_event"]) == set(stream["last_event"]) == FIGURES
        assert stream["first_event"]["n"] == 2
        # The task, `working`, two artifacts and `completed`, through Bastion as directly.
        assert stream["events"] == [5]
    assert {"added_p50_us"} <= set(result["send"])
    assert {"added_first_event_p50_us", "added_last_event_p50_us"} <= set(result["stream"])
