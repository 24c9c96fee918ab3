"""The phases of `bastion bench graph` that ship events to a running graph service, as the
proxy does: `GraphService.Ingest` called directly, and the proxy's own `Journal` and
`Shipper` under a steady stream of appends (journal lag).

The graph service is `bastion graph serve` in its own process (as `bastion up` starts it)
on free ports, over the store the earlier phases filled; this process plays the proxy.
The service's CPU time per event comes from /proc (eval/bench/_procs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bastion._identity import ensure_service_token
from bastion._rpc import auth_metadata, open_channel
from bastion.eval.bench._graph_events import EventStream
from bastion.eval.bench._graph_store_phases import Tick, latency_ms
from bastion.eval.bench._procs import Processes, processes
from bastion.proxy._journal import Journal
from bastion.proxy._shipper import Shipper
from bastion.v1 import graph_pb2, graph_pb2_grpc

if TYPE_CHECKING:
    from bastion.v1.graph_pb2_grpc import GraphServiceAsyncStub

_ANY = "127.0.0.1:0"
#: Nothing listens there: the graph's identity watch retries quietly instead of finding
#: some policy service that happens to run on this machine.
_NO_POLICY = "127.0.0.1:9"
_RPC_TIMEOUT_S = 120.0
_WATCH_S = 0.001
_GAUGE_EVERY_S = 0.01
_WARM_EVENTS = 64
#: After the last append, how long the shipper may take to catch up before the rest is
#: reported as `unshipped`.
_DRAIN_MIN_S = 30.0


class GraphService:
    """`bastion graph serve` on free ports, and a channel to its gRPC side."""

    def __init__(self, procs: Processes, address: str, token: str) -> None:
        self.procs = procs
        self.address = address
        self.metadata = auth_metadata(token)
        self.channel = open_channel(address)
        self.stub = graph_pb2_grpc.GraphServiceStub(self.channel)

    def cpu_seconds(self) -> float:
        return self.procs.cpu()["graph"]


class _TimedIngest:
    """The service's stub as the shipper sees it: each Ingest call timed, with its size."""

    def __init__(self, stub: GraphServiceAsyncStub) -> None:
        self._stub = stub
        #: (events, seconds) of every call.
        self.calls: list[tuple[int, float]] = []

    async def Ingest(self, events: Iterator[graph_pb2.Event], **options: Any) -> graph_pb2.IngestAck:
        batch = list(events)
        started = time.perf_counter()
        ack: graph_pb2.IngestAck = await self._stub.Ingest(iter(batch), **options)
        self.calls.append((len(batch), time.perf_counter() - started))
        return ack

    def figures(self) -> dict[str, Any]:
        events = sum(size for size, _ in self.calls)
        return {"events_per_call": round(events / max(1, len(self.calls)), 1), **latency_ms([s for _, s in self.calls])}


@contextlib.asynccontextmanager
async def graph_service(workdir: Path, graph_url: str) -> AsyncIterator[GraphService]:
    """The service over `graph_url` (a BASTION_GRAPH_URL), under its own BASTION_HOME."""
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    token = ensure_service_token(home, None)  # created before the service, as `bastion up` does
    config = workdir / "bastion.yaml"
    config.write_text("# bastion bench graph: the graph service with the defaults\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "OTEL_"))}
    env["BASTION_HOME"] = str(home)
    extra = {
        "BASTION_GRAPH_URL": graph_url,
        "BASTION_GRAPH_GRPC_ADDR": _ANY,
        "BASTION_GRAPH_ADDR": _ANY,
        "BASTION_POLICY_GRPC_ADDR": _NO_POLICY,
    }
    with processes(workdir, env, stop_first=("graph",)) as procs:
        procs.spawn_service("graph", config, extra)
        addresses = await asyncio.to_thread(procs.wait_service, "graph", home)
        service = GraphService(procs, addresses["grpc"], token)
        try:
            yield service
        finally:
            await service.channel.close()


async def measure_grpc_ingest(
    service: GraphService, stream: EventStream, events: int, batch: int, tick: Tick
) -> dict[str, Any]:
    """`events` of the proxy's mix through `GraphService.Ingest`, one client-streaming call
    per `batch`, each awaited before the next: the shipper's pattern, without the journal."""
    await service.stub.Ingest(iter(stream.batch(_WARM_EVENTS)), metadata=service.metadata, timeout=_RPC_TIMEOUT_S)
    batches = [stream.batch(min(batch, events - done)) for done in range(0, events, batch)]
    samples: list[float] = []
    accepted = 0
    cpu_before = service.cpu_seconds()
    for chunk in batches:
        started = time.perf_counter()
        ack = await service.stub.Ingest(iter(chunk), metadata=service.metadata, timeout=_RPC_TIMEOUT_S)
        samples.append(time.perf_counter() - started)
        accepted += ack.accepted
        tick("gRPC Ingest", sum(map(len, batches[: len(samples)])), events)
    graph_cpu = service.cpu_seconds() - cpu_before
    seconds = sum(samples)
    return {
        "events": events,
        "batch_size": batch,
        "accepted": accepted,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds, 1),
        "call": latency_ms(samples),
        "graph_cpu_us_per_event": round(graph_cpu / events * 1e6, 1),
    }


async def measure_lag(
    service: GraphService, stream: EventStream, workdir: Path, rate: int, seconds: float, tick: Tick
) -> dict[str, Any]:
    """Append `rate` events/s for `seconds` to a fresh `Journal` (the proxy's defaults: 5 ms
    group commit) while a `Shipper` (the proxy's defaults) ships them to the service.

    An event's lag runs from its append to the moment the shipper counts it shipped: the
    graph has committed it and the journal's cursor is saved past it. `shipper.shipped`
    is polled every millisecond, so each lag is late by at most about that much. The
    `bastion_journal_lag_seconds` gauge (`shipper.lag_seconds`) is sampled every 10 ms,
    and the shipper's Ingest calls are timed (`ingest_calls`: what a lag is made of)."""
    directory = workdir / f"journal-{rate}"
    journal = Journal.open(directory)
    await journal.start()
    timed = _TimedIngest(service.stub)
    stub = cast("GraphServiceAsyncStub", timed)
    shipper = Shipper(journal.reader(), directory / "shipper.cursor", stub, service.metadata, wake=journal.has_data)
    shipper.start()
    try:
        for record in stream.records(_WARM_EVENTS):
            journal.append(record)
        await _until(lambda: shipper.shipped >= _WARM_EVENTS, _DRAIN_MIN_S)
        records = stream.records(max(1, round(rate * seconds)))
        timed.calls.clear()
        figures = await _steady(journal, shipper, service, records, rate, seconds, tick)
        return {**figures, "ingest_calls": timed.figures()}
    finally:
        await shipper.stop()
        await journal.close()


async def _steady(
    journal: Journal,
    shipper: Shipper,
    service: GraphService,
    records: list[bytes],
    rate: int,
    seconds: float,
    tick: Tick,
) -> dict[str, Any]:
    base = shipper.shipped
    appended_at: list[float] = []
    lags: list[float] = []
    gauge: list[float] = []
    cpu_before = service.cpu_seconds()

    async def watch() -> None:
        next_gauge = 0.0
        while True:
            now = time.perf_counter()
            acked = min(shipper.shipped - base, len(appended_at))
            lags.extend(now - appended_at[index] for index in range(len(lags), acked))
            if now >= next_gauge:
                gauge.append(shipper.lag_seconds)
                next_gauge = now + _GAUGE_EVERY_S
            await asyncio.sleep(_WATCH_S)

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    try:
        while len(appended_at) < len(records):
            due = min(len(records), int((time.perf_counter() - started) * rate) + 1)
            for record in records[len(appended_at) : due]:
                journal.append(record)
                appended_at.append(time.perf_counter())
            tick(f"journal lag at {rate}/s", len(appended_at), len(records))
            await asyncio.sleep(_WATCH_S)
        appending = time.perf_counter() - started
        drained = await _until(lambda: len(lags) >= len(records), max(_DRAIN_MIN_S, 5 * seconds))
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    total = time.perf_counter() - started
    graph_cpu = service.cpu_seconds() - cpu_before
    return {
        "rate": rate,
        "events": len(records),
        "append_seconds": round(appending, 3),
        "appended_per_s": round(len(records) / appending, 1),
        "shipped_per_s": round(len(lags) / total, 1),
        "unshipped": len(records) - len(lags),
        "drained": drained,
        **latency_ms(lags),
        "gauge": latency_ms(gauge),
        "graph_cpu_us_per_event": round(graph_cpu / max(1, len(lags)) * 1e6, 1),
    }


async def _until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(_WATCH_S)
    return True
