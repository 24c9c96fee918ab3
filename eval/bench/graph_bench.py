"""What the graph costs: durable ingest, journal lag, drift paths on a large graph, exports
(issue #22's benchmark).

    bastion bench graph [--store sqlite|neo4j] [--neo4j-url URL] [--nodes N] [--quick]
                        [--json] [--out eval/results/graph-<UTC time>.json] [--no-chart]

One run, in this order, on one store (a new SQLite file in a temporary directory, or the
Neo4j database at --neo4j-url or $BASTION_GRAPH_URL, else one started with scripts/neo4j-up;
docs/benchmarks.md has the sizes each store defaults to and what the figures mean):

1. durable ingest: `--ingest-events` events as the proxy journals them (decisions with
   the policy's decision and the verifier's score, CAUSED_BY parents, INFORMED_BY hints,
   and the result event of every forwarded call; eval/bench/_graph_events.py) through
   `GraphStore.ingest` in batches of the shipper's size, one awaited after the other;
2. the graph is then built on to `--nodes` nodes through the same `ingest`;
3. drift path: `--queries` `GraphStore.drift_path` calls on random nodes that are 20
   INFORMED_BY edges from their origin, one at a time, then the same nodes again;
4. export: the soc2_v1 CSV export of the whole audit chain, as `GET /audit/export` streams it;
5. the store is closed and `bastion graph serve` started over it in its own process:
   `GraphService.Ingest` called directly with the same batches (`--grpc-events`), then, for
   each of `--lag-rates`, the proxy's `Journal` and `Shipper` (their defaults) shipping a
   steady stream of appends for `--lag-s` seconds: the lag of every event from its append
   to the graph's commit and the saved cursor.

Prints a table with each figure beside its target, writes the figures as JSON (`--json`
prints that JSON instead of the table) and, when matplotlib is installed, a PNG chart
beside it. The store is a scratch one: a Neo4j database given with --neo4j-url keeps
the nodes the run adds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import inspect
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bastion.eval.bench._graph_events import EventStream, Shape
from bastion.eval.bench._graph_report import chart, table, targets
from bastion.eval.bench._graph_shipping import graph_service, measure_grpc_ingest, measure_lag
from bastion.eval.bench._graph_store_phases import build_graph, measure_drift, measure_export, measure_ingest
from bastion.graph import open_store
from bastion.proxy._shipper import Shipper

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "eval" / "results"
#: What the proxy's shipper sends per Ingest call (it is built with the default).
SHIPPER_BATCH: int = inspect.signature(Shipper.__init__).parameters["batch_max"].default
STORES = ("sqlite", "neo4j")
_NEO4J_UP = ROOT / "scripts" / "neo4j-up"
_NEO4J_START_S = 600.0


@dataclass(frozen=True, slots=True)
class Params:
    store: str = "sqlite"
    nodes: int = 1_000_000
    ingest_events: int = 100_000
    grpc_events: int = 20_480
    queries: int = 2_000
    #: Events appended per second, one lag measurement each: a quiet proxy, and about
    #: what the proxy's ceiling of ≈ 1,000 governed calls/s journals (a decision and a
    #: result each; DESIGN §14).
    lag_rates: tuple[int, ...] = (500, 2_000)
    lag_s: float = 10.0
    #: Export at most this many rows (0: the whole chain).
    export_rows: int = 0
    batch: int = SHIPPER_BATCH
    depth: int = 20
    quick: bool = False


#: Neo4j ingests ≈ 0.5-2k events/s here and a drift path takes ≈ 100 ms, so a million
#: nodes would take hours: a smaller graph and fewer events and queries, ≈ 9 min in all.
NEO4J = Params(store="neo4j", nodes=100_000, ingest_events=20_000, queries=500)
QUICK = Params(
    nodes=3_000, ingest_events=2_048, grpc_events=1_024, queries=100, lag_rates=(500,), lag_s=1.0, quick=True
)


class Progress:
    """A bar per phase on stderr when it is a terminal, else one line as each phase ends."""

    def __init__(self, phases: int) -> None:
        self._phases, self._phase, self._label = phases, 0, ""
        self._started = time.monotonic()
        self._shown = 0.0
        self._tty = sys.stderr.isatty()

    def __call__(self, label: str, done: int, total: int) -> None:
        if label != self._label:
            self._end_phase()
            self._phase, self._label, self._started = self._phase + 1, label, time.monotonic()
        now = time.monotonic()
        if self._tty and (now - self._shown >= 0.1 or done >= total):
            self._shown = now
            filled = 30 * done // max(1, total)
            bar = "#" * filled + "." * (30 - filled)
            line = f"graph bench {self._phase}/{self._phases} [{bar}] {label} {done:,}/{total:,}"
            print(f"\r{line:100}", file=sys.stderr, end="", flush=True)

    def finish(self) -> None:
        self._end_phase()

    def _end_phase(self) -> None:
        if not self._label:
            return
        elapsed = time.monotonic() - self._started
        if self._tty:
            print(file=sys.stderr)
        else:
            print(f"graph bench: {self._label} done in {elapsed:.1f} s", file=sys.stderr, flush=True)
        self._label = ""


async def bench(params: Params, workdir: Path, graph_url: str) -> dict[str, Any]:
    """Run every phase on the store `graph_url` names (empty: a new SQLite file under `workdir`)."""
    load_before = os.getloadavg()[0]
    url = graph_url or f"sqlite:///{workdir / 'graph.db'}"
    stream = EventStream(Shape(depth=params.depth))
    progress = Progress(6 + len(params.lag_rates))
    seconds: dict[str, float] = {}
    result: dict[str, Any] = {}
    try:
        store = await open_store(url, workdir)
        try:
            ingest = measure_ingest(store, stream, params.ingest_events, params.batch, progress)
            result["ingest"] = await _timed(seconds, "ingest", ingest)
            build = build_graph(store, stream, params.nodes, params.batch, progress)
            result["build"] = await _timed(seconds, "build", build)
            drift = measure_drift(store, stream.deep, params.depth, params.queries, progress)
            result["drift"] = await _timed(seconds, "drift", drift)
            result["export"] = await _timed(seconds, "export", measure_export(store, params.export_rows, progress))
        finally:
            await store.close()
        started = time.perf_counter()
        progress("start the graph service", 0, 1)
        async with graph_service(workdir, url) as service:
            seconds["service_start"] = round(time.perf_counter() - started, 2)
            progress("start the graph service", 1, 1)
            result["grpc_ingest"] = await measure_grpc_ingest(
                service, stream, params.grpc_events, params.batch, progress
            )
            result["lag"] = [
                await measure_lag(service, stream, workdir, rate, params.lag_s, progress) for rate in params.lag_rates
            ]
        seconds["shipping"] = round(time.perf_counter() - started, 2)
    finally:
        progress.finish()
    database = workdir / "graph.db"
    result = {
        "suite": "graph",
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_1m": {"before": load_before, "after": os.getloadavg()[0]},
        },
        "store": {
            "backend": params.store,
            "url": _shown(url),
            "size_mb": round(_size(database) / 1e6, 1) if not graph_url else None,
        },
        "params": {**asdict(params), "lag_rates": list(params.lag_rates)},
        "seconds": seconds,
        **result,
    }
    result["targets"] = targets(result)
    return result


async def _timed(seconds: dict[str, float], name: str, phase: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    figures = await phase
    seconds[name] = round(time.perf_counter() - started, 2)
    return figures


def _size(database: Path) -> int:
    """The SQLite database with its WAL."""
    return sum(p.stat().st_size for p in database.parent.glob(database.name + "*") if p.is_file())


def _shown(url: str) -> str:
    # Never write a password into the results.
    return re.sub(r"//[^@/]*@", "//", url)


@contextlib.contextmanager
def _neo4j(url: str | None) -> Iterator[str]:
    """`url`, else $BASTION_GRAPH_URL when it names Neo4j, else a server from scripts/neo4j-up
    (stopped, and its directory removed, on exit)."""
    given = url or os.environ.get("BASTION_GRAPH_URL", "")
    if given.startswith(("neo4j", "bolt")):
        yield given
        return
    print("graph bench: starting Neo4j with scripts/neo4j-up", file=sys.stderr, flush=True)
    done = subprocess.run([str(_NEO4J_UP)], capture_output=True, text=True, timeout=_NEO4J_START_S, check=False)
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if done.returncode != 0 or "NEO4J_URL" not in found:
        raise SystemExit(f"scripts/neo4j-up failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    pid = int(found["NEO4J_PID"])
    try:
        yield found["NEO4J_URL"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if "NEO4J_LOG" in found:
            shutil.rmtree(Path(found["NEO4J_LOG"]).parent, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _parse(argv: Sequence[str] | None) -> tuple[Params, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bastion bench graph", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = Params()
    parser.add_argument("--store", choices=STORES, default="sqlite", help="the backend to measure (sqlite)")
    parser.add_argument("--neo4j-url", help="Neo4j to use (default $BASTION_GRAPH_URL, else one from scripts/neo4j-up)")
    parser.add_argument(
        "--nodes",
        type=int,
        help=f"nodes of the graph the drift paths walk ({defaults.nodes:,} on SQLite, {NEO4J.nodes:,} on Neo4j)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, ≈ 15 s on SQLite")
    parser.add_argument(
        "--ingest-events",
        type=int,
        help=f"events of the ingest phase ({defaults.ingest_events:,}; {NEO4J.ingest_events:,} on Neo4j)",
    )
    parser.add_argument(
        "--grpc-events", type=int, help=f"events sent through GraphService.Ingest ({defaults.grpc_events:,})"
    )
    parser.add_argument(
        "--queries", type=int, help=f"drift-path queries ({defaults.queries:,}; {NEO4J.queries:,} on Neo4j)"
    )
    parser.add_argument("--lag-rates", help="events/s appended to the journal, comma-separated (500,2000)")
    parser.add_argument("--lag-s", type=float, help=f"seconds of appends per rate ({defaults.lag_s:g})")
    parser.add_argument("--export-rows", type=int, help="export at most this many rows (default: the whole chain)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    parser.add_argument("--out", type=Path, help="JSON file (default eval/results/graph-<UTC time>.json)")
    parser.add_argument("--no-chart", action="store_true", help="do not write the PNG chart")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else NEO4J if args.store == "neo4j" else defaults
    params = replace(params, store=args.store)
    sizes = {
        "nodes": args.nodes,
        "ingest_events": args.ingest_events,
        "grpc_events": args.grpc_events,
        "queries": args.queries,
        "lag_s": args.lag_s,
        "export_rows": args.export_rows,
    }
    params = replace(params, **{name: value for name, value in sizes.items() if value is not None})
    if args.lag_rates:
        params = replace(params, lag_rates=tuple(int(rate) for rate in args.lag_rates.split(",")))
    if min(params.nodes, params.ingest_events, params.grpc_events, params.queries, *params.lag_rates) <= 0:
        parser.error("sizes and rates must be positive")
    return params, args


def main(argv: Sequence[str] | None = None) -> None:
    params, args = _parse(argv)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or RESULTS / f"graph-{stamp}.json"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bastion-graph-bench-")))
        url = stack.enter_context(_neo4j(args.neo4j_url)) if params.store == "neo4j" else ""
        result = uvloop.run(bench(params, tmp, url))
    result["chart"] = None
    if not args.no_chart:
        png, reason = chart(result, out.with_suffix(".png"))
        result["chart"] = str(png) if png else None
        if reason:
            print(f"graph bench: no chart: {reason}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n"
    out.write_bytes(document)
    if args.json:
        sys.stdout.write(document.decode())
    else:
        print(table(result))
    print(
        f"wrote {out}" + (f" and {result['chart']}" if result["chart"] else ""),
        file=sys.stderr if args.json else sys.stdout,
    )


if __name__ == "__main__":
    main()
