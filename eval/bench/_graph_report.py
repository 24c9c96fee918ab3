"""`bastion bench graph`'s figures against issue #22's targets: the verdicts, a table for
stdout and a PNG chart (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Issue #22: durable ingest on SQLite, events/s.
INGEST_TARGET = 20_000.0
#: Issue #22: journal lag under load, p99 in ms.
LAG_P99_TARGET_MS = 100.0
#: Issue #22: drift path at depth 20, p99 in ms, on a graph of TARGET_NODES nodes.
DRIFT_P99_TARGET_MS = {"sqlite": 5.0, "neo4j": 20.0}
TARGET_NODES = 1_000_000


def _target(what: str, measured: float | None, target: float, *, at_least: bool = False) -> dict[str, Any]:
    met = None if measured is None else (measured >= target if at_least else measured <= target)
    return {"what": what, "target": target, "measured": measured, "met": met}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target of the issue the run measured (a lag target per rate)."""
    backend, ingest, drift = result["store"]["backend"], result["ingest"], result["drift"]
    nodes = result["build"]["nodes"]
    found = [
        _target(
            f"durable ingest ({backend}), {ingest['batch_size']}-event batches, events/s",
            ingest["events_per_s"],
            INGEST_TARGET,
            at_least=True,
        )
    ]
    found += [
        _target(f"journal lag p99 at {lag['rate']:,} events/s, ms", lag["p99_ms"], LAG_P99_TARGET_MS)
        for lag in result["lag"]
    ]
    scale = "" if nodes >= TARGET_NODES else f" (target is for {TARGET_NODES:,})"
    found.append(
        _target(
            f"drift path p99, depth {drift['depth']}, {nodes:,} nodes{scale}, ms",
            drift["p99_ms"],
            DRIFT_P99_TARGET_MS[backend],
        )
    )
    return found


def table(result: dict[str, Any]) -> str:
    params, store = result["params"], result["store"]
    ingest, build, drift, export, grpc = (result[k] for k in ("ingest", "build", "drift", "export", "grpc_ingest"))
    load = result["machine"]["load_1m"]
    lines = [
        f"bastion bench graph --store {store['backend']}{' --quick' if params['quick'] else ''}: "
        f"{build['nodes']:,} nodes" + (f", {store['size_mb']:,.0f} MB on disk" if store.get("size_mb") else ""),
        "",
        f"{'figure':64} {'measured':>22}",
        _row(
            f"durable ingest: store.ingest, {ingest['events']:,} events in {ingest['batch_size']}-event batches",
            f"{ingest['events_per_s']:,.0f} events/s",
        ),
        _row("  per batch p50 / p99", f"{ingest['batch']['p50_ms']:.1f} / {ingest['batch']['p99_ms']:.1f} ms"),
        _row(
            f"graph build to {build['nodes']:,} nodes (actions only, generation overlapped)",
            f"{build['events_per_s'] or 0:,.0f} events/s",
        ),
    ]
    if build["timeline"]:
        rates = " → ".join(
            f"{point['events_per_s']:,.0f}" for point in build["timeline"][:: max(1, len(build["timeline"]) // 5)]
        )
        lines.append(f"  as it grew (events/s): {rates}")
    lines += [
        _row(
            f"GraphService.Ingest (graph service process), {grpc['events']:,} events",
            f"{grpc['events_per_s']:,.0f} events/s",
        ),
        _row(
            "  per call p50 / p99; graph CPU per event",
            f"{grpc['call']['p50_ms']:.1f} / {grpc['call']['p99_ms']:.1f} ms; {grpc['graph_cpu_us_per_event']:,.0f} µs",
        ),
    ]
    for lag in result["lag"]:
        lines.append(
            _row(
                f"journal lag at {lag['rate']:,} events/s for {lag['append_seconds']:.0f} s: p50 / p99 / max",
                _ms(lag, "p50_ms", "p99_ms", "max_ms"),
            )
        )
        unshipped = f", {lag['unshipped']:,} not shipped in time" if lag["unshipped"] else ""
        calls = lag["ingest_calls"]
        lines.append(
            _row(
                f"  shipped {lag['shipped_per_s']:,.0f} events/s{unshipped}; Ingest calls of "
                f"{calls['events_per_call']:,.0f} events: p50 / p99",
                _ms(calls, "p50_ms", "p99_ms"),
            )
        )
        lines.append(
            _row(
                "  bastion_journal_lag_seconds gauge, sampled: p50 / p99",
                f"{lag['gauge']['p50_ms'] or 0:,.0f} / {lag['gauge']['p99_ms'] or 0:,.0f} ms",
            )
        )
    lines += [
        _row(
            f"drift path, depth {drift['depth']}, {drift['queries']:,} random nodes: p50 / p99 / max",
            _ms(drift, "p50_ms", "p99_ms", "max_ms"),
        ),
        _row(
            "  the same nodes again (pages cached): p50 / p99 / max", _ms(drift["again"], "p50_ms", "p99_ms", "max_ms")
        ),
    ]
    if drift["unexpected"]:
        lines.append(f"  {drift['unexpected']} answers were not {drift['depth'] + 1} hops: {drift['first_unexpected']}")
    lines += [
        _row(
            f"{export['schema']} CSV export, {export['rows']:,} rows ({export['bytes'] / 1e6:,.0f} MB)",
            f"{export['rows_per_s'] or 0:,.0f} rows/s",
        ),
        "",
        f"{'issue #22 target':72} {'target':>9} {'measured':>10}",
    ]
    for target in result["targets"]:
        measured = "-" if target["measured"] is None else _number(target["measured"])
        verdict = {True: "met", False: "missed", None: "not measured"}[target["met"]]
        lines.append(f"{target['what']:72} {_number(target['target']):>9} {measured:>10}  {verdict}")
    lines.append(
        f"load average (1 min) before {load['before']:.2f}, after {load['after']:.2f} on "
        f"{result['machine']['cpus']} CPUs: figures are indicative on a shared machine"
    )
    if store["backend"] == "neo4j" and build["nodes"] < TARGET_NODES and not params["quick"]:
        lines.append(
            f"Neo4j ingests ≈ {build['events_per_s'] or 0:,.0f} events/s here, so this graph has {build['nodes']:,} "
            f"nodes, not {TARGET_NODES:,}: a walk costs O(depth) indexed lookups whatever the size"
        )
    return "\n".join(lines)


def _row(label: str, value: str) -> str:
    return f"{label:64} {value:>22}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _ms(figures: dict[str, Any], *keys: str) -> str:
    return " / ".join("-" if figures[key] is None else f"{figures[key]:.2f}" for key in keys) + " ms"


def chart(result: dict[str, Any], png: Path) -> tuple[Path | None, str | None]:
    """Ingest rates, the build's rate as the graph grew, journal lag and drift-path
    latency against their targets, as one PNG; (None, why) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None, "matplotlib is not installed (pip install matplotlib)"
    backend = result["store"]["backend"]
    figure, (rates, growth, lag, drift) = plt.subplots(1, 4, figsize=(20, 5))
    names = ["store.ingest", "gRPC Ingest", "build"]
    values = [result["ingest"]["events_per_s"], result["grpc_ingest"]["events_per_s"], result["build"]["events_per_s"]]
    rates.bar(names, values)
    rates.axhline(INGEST_TARGET, color="red", linestyle="--", label=f"target {INGEST_TARGET:,.0f}")
    rates.set_title(f"ingest ({backend}), events/s")
    rates.legend()
    timeline = result["build"]["timeline"]
    growth.plot([p["nodes"] for p in timeline], [p["events_per_s"] for p in timeline], marker=".")
    growth.set_title("build: events/s as the graph grows")
    growth.set_xlabel("nodes")
    growth.set_ylim(bottom=0)
    labels = [f"{lag['rate']:,}/s" for lag in result["lag"]]
    for offset, key in ((-0.27, "p50_ms"), (0.0, "p99_ms"), (0.27, "max_ms")):
        lag.bar([i + offset for i in range(len(labels))], [x[key] or 0 for x in result["lag"]], 0.27, label=key[:-3])
    lag.axhline(LAG_P99_TARGET_MS, color="red", linestyle="--", label="p99 target")
    lag.set_xticks(range(len(labels)), labels)
    lag.set_yscale("log")
    lag.set_title("journal lag, ms, log scale (append → graph commit)")
    lag.legend()
    keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
    for offset, label, figures in ((-0.2, "first", result["drift"]), (0.2, "again", result["drift"]["again"])):
        drift.bar([i + offset for i in range(len(keys))], [figures[k] or 0 for k in keys], 0.4, label=label)
    drift.set_xticks(range(len(keys)), [k[:-3] for k in keys])
    drift.axhline(DRIFT_P99_TARGET_MS[backend], color="red", linestyle="--", label="p99 target")
    drift.set_title(f"drift path depth {result['drift']['depth']}, {result['build']['nodes']:,} nodes, ms")
    drift.legend()
    load = result["machine"]["load_1m"]["before"]
    figure.suptitle(f"bastion bench graph --store {backend}, {result['at']} (load avg {load:.1f})")
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return png, None
