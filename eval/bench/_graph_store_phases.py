"""The phases of `bastion bench graph` that drive a `GraphStore` in this process: durable
ingest, building the graph to its node count, drift-path queries and the CSV export.

Every timed call is the store's own public method, awaited as the graph service awaits
it (the store's writer or reader threads do the work); the events are built before the
clock starts, so what is timed is the store alone.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bastion.eval.bench._graph_events import Deep, EventStream
from bastion.eval.bench._timing import percentile_us
from bastion.graph import GraphStore
from bastion.graph._audit import AuditEntry
from bastion.graph._export import ExportRange, entries_of, export_csv
from bastion.v1 import graph_pb2

#: (phase, done, total): how far the current phase is.
Tick = Callable[[str, int, int], None]
#: Points of the build's timeline (ingest rate as the graph grows).
_TIMELINE_POINTS = 20
_DRIFT_WARMUP = 50
_EXPORT_TICK_ROWS = 10_000


def latency_ms(samples: list[float]) -> dict[str, Any]:
    """n, p50/p95/p99/max and mean of `samples` (seconds) in ms: nearest rank, as every bench."""
    if not samples:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    return {
        "n": len(samples),
        **{f"p{round(q * 100)}_ms": round(percentile_us(samples, q) / 1000, 3) for q in (0.5, 0.95, 0.99)},
        "max_ms": round(max(samples) * 1000, 3),
        "mean_ms": round(sum(samples) / len(samples) * 1000, 3),
    }


async def measure_ingest(store: GraphStore, stream: EventStream, events: int, batch: int, tick: Tick) -> dict[str, Any]:
    """`events` of the proxy's mix (actions and results) through `store.ingest`, one batch
    of `batch` at a time, each awaited before the next is sent: as the journal's shipper does."""
    samples: list[float] = []
    accepted = duplicates = 0
    while (done := accepted + duplicates) < events:
        chunk = stream.batch(min(batch, events - done))
        started = time.perf_counter()
        result = await store.ingest(chunk)
        samples.append(time.perf_counter() - started)
        accepted, duplicates = accepted + result.accepted, duplicates + result.duplicates
        tick("durable ingest", accepted + duplicates, events)
    seconds = sum(samples)
    return {
        "events": events,
        "batch_size": batch,
        "batches": len(samples),
        "accepted": accepted,
        "duplicates": duplicates,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds, 1),
        "batch": latency_ms(samples),
    }


async def build_graph(store: GraphStore, stream: EventStream, nodes: int, batch: int, tick: Tick) -> dict[str, Any]:
    """Action events (no results: they add no node) until the graph holds `nodes` nodes.

    Not a figure against a target: the next batch is generated while the store ingests
    the last one, so the two share the CPU. What it shows is how the ingest rate holds up
    as the graph grows (`timeline`)."""
    step = max(batch, (nodes - stream.actions) // _TIMELINE_POINTS)
    timeline: list[dict[str, Any]] = []
    added = 0
    started = mark = time.perf_counter()
    mark_nodes = stream.actions
    pending: asyncio.Task[Any] | None = None
    while stream.actions < nodes:
        chunk = stream.actions_only(min(batch, nodes - stream.actions))
        if pending is not None:
            added += (await pending).accepted
        pending = asyncio.create_task(_ingest(store, chunk))
        await asyncio.sleep(0)  # let it reach the store, then build the next batch meanwhile
        tick("build graph", stream.actions, nodes)
        if stream.actions - mark_nodes >= step:
            now = time.perf_counter()
            timeline.append(
                {"nodes": stream.actions, "events_per_s": round((stream.actions - mark_nodes) / (now - mark), 1)}
            )
            mark, mark_nodes = now, stream.actions
    if pending is not None:
        added += (await pending).accepted
    seconds = time.perf_counter() - started
    return {
        "nodes": stream.actions,
        "events": added,
        "batch_size": batch,
        "seconds": round(seconds, 3),
        "events_per_s": round(added / seconds, 1) if seconds else None,
        "timeline": timeline,
    }


async def _ingest(store: GraphStore, events: list[graph_pb2.Event]) -> Any:
    return await store.ingest(events)


async def measure_drift(
    store: GraphStore, deep: list[Deep], depth: int, queries: int, tick: Tick, *, seed: int = 7
) -> dict[str, Any]:
    """`store.drift_path` of random nodes `depth` INFORMED_BY edges deep, one at a time.

    The top-level figures are the first time each node is asked about: its pages are
    wherever the build left them (a graph larger than the page cache reads some from
    disk). `again` asks about the same nodes a second time, their pages now cached.
    Each answer is checked: `depth + 1` hops ending where the data came in
    (`untrusted_data`); any other answer is counted in `unexpected`."""
    rnd = random.Random(seed)  # noqa: S311 (not for secrets)
    for node in [rnd.choice(deep) for _ in range(_DRIFT_WARMUP)]:
        await store.drift_path(node.workflow_id, node.node_id)
    picks = [rnd.choice(deep) for _ in range(queries)]
    first: list[float] = []
    again: list[float] = []
    unexpected = 0
    first_unexpected: str | None = None
    for samples in (first, again):
        for node in picks:
            started = time.perf_counter()
            path = await store.drift_path(node.workflow_id, node.node_id)
            samples.append(time.perf_counter() - started)
            if path is None or path.origin != "untrusted_data" or len(path.hops) != depth + 1:
                unexpected += 1
                if first_unexpected is None:
                    found = "no path" if path is None else f"{len(path.hops)} hops, origin {path.origin}"
                    first_unexpected = f"{node.node_id}: {found}"
            tick("drift path", len(first) + len(again), 2 * queries)
    return {
        "depth": depth,
        "queries": queries,
        "unexpected": unexpected,
        "first_unexpected": first_unexpected,
        **latency_ms(first),
        "again": latency_ms(again),
    }


async def measure_export(store: GraphStore, max_rows: int, tick: Tick) -> dict[str, Any]:
    """The soc2_v1 CSV export of the whole chain (or its first `max_rows` records), read
    as `GET /audit/export` streams it; rows are audit records (header and chain head not counted)."""
    span = ExportRange("soc2_v1")
    head = await store.audit_head()
    total = head.sequence if head is not None else 0
    if max_rows:
        total = min(total, max_rows)
    rows = [0]

    async def counted(entries: AsyncIterator[AuditEntry]) -> AsyncIterator[AuditEntry]:
        # Stopping early leaves `entries` to the event loop's async-generator finalizer.
        async for entry in entries:
            if rows[0] == total:
                return
            rows[0] += 1
            if rows[0] % _EXPORT_TICK_ROWS == 0:
                tick("export", rows[0], total)
            yield entry

    size = 0
    tick("export", 0, total)
    started = time.perf_counter()
    async for chunk in export_csv(counted(entries_of(store, span)), span):
        size += len(chunk)
    seconds = time.perf_counter() - started
    tick("export", rows[0], total)
    return {
        "schema": span.schema,
        "format": "csv",
        "rows": rows[0],
        "bytes": size,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows[0] / seconds, 1) if seconds else None,
        "mb_per_s": round(size / seconds / 1e6, 2) if seconds else None,
    }
