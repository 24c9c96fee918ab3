"""GraphService over gRPC: the proxy's journal ingests events here, and `Lineage`
answers drift-path questions.

The service token is checked by the server interceptor (bastion._rpc), not here.
Errors leave as gRPC status codes: malformed input is INVALID_ARGUMENT naming the
offending event, store failures carry `StoreError.grpc_code` (UNAVAILABLE, so the
journal retries).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Never, TypeVar

import grpc

from bastion._errors import BastionError
from bastion.v1 import graph_pb2, graph_pb2_grpc

from ._events import MAX_ID_LENGTH, enum_value, event_problem
from ._metrics import GraphMetrics
from ._store import DEFAULT_LINEAGE_DEPTH, MAX_LINEAGE_DEPTH, GraphStore

T = TypeVar("T")

SERVICE_NAME = "bastion.v1.GraphService"

#: Events accepted in one Ingest call. Each call is one transaction held in memory,
#: so a bound keeps one sender from stalling the writer; the journal sends smaller batches.
MAX_EVENTS_PER_CALL = 10_000
#: Bytes of events accepted in one Ingest stream, held in memory until it ends: 60 events
#: of 10 MB on one open stream grew the graph by 657 MB (an attacker's probe with the
#: service token). RESOURCE_EXHAUSTED, which the proxy's shipper answers by splitting.
MAX_BYTES_PER_CALL = 64 << 20

_Context = grpc.aio.ServicerContext[Any, Any]
#: Characters of a caller's id echoed in a status: gRPC carries details in a trailer of a
#: few KiB, and a longer one reaches the client as RESOURCE_EXHAUSTED instead of our answer.
_ECHOED_ID = 100


class GraphServicer(graph_pb2_grpc.GraphServiceServicer):
    def __init__(
        self,
        store: GraphStore,
        *,
        metrics: GraphMetrics | None = None,
        max_events_per_call: int = MAX_EVENTS_PER_CALL,
        on_ingest: Callable[[], None] | None = None,
    ) -> None:
        """`on_ingest` is called after each batch stored (the checkpointer's wake-up)."""
        self._store = store
        self._metrics = metrics or GraphMetrics()
        self._max_events = max_events_per_call
        self._on_ingest = on_ingest

    async def Ingest(self, request_iterator: AsyncIterator[graph_pb2.Event], context: _Context) -> graph_pb2.IngestAck:
        return await self._ingest(await self._receive(request_iterator, context), context)

    async def IngestBatch(self, request: graph_pb2.EventBatch, context: _Context) -> graph_pb2.IngestAck:
        # The proxy's shipping: one message per shipment, held to the same bounds and
        # checks as the events of an Ingest stream.
        if len(request.events) > self._max_events:
            await self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"more than {self._max_events} events in one IngestBatch; send smaller batches",
            )
        events = list(request.events)
        for index, event in enumerate(events):
            if (problem := _problem(index, event)) is not None:
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        return await self._ingest(events, context)

    async def _ingest(self, events: list[graph_pb2.Event], context: _Context) -> graph_pb2.IngestAck:
        if not events:
            return graph_pb2.IngestAck()
        with self._metrics.ingest_seconds.time():
            result = await self._call(context, self._store.ingest(events))
        self._metrics.events.labels(result="accepted").inc(result.accepted)
        self._metrics.events.labels(result="duplicate").inc(result.duplicates)
        if result.accepted and self._on_ingest is not None:
            self._on_ingest()
        return graph_pb2.IngestAck(accepted=result.accepted, duplicates=result.duplicates)

    async def Lineage(self, request: graph_pb2.LineageRequest, context: _Context) -> graph_pb2.Path:
        if not request.node_id:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "node_id is required")
        for name, value in (("node_id", request.node_id), ("workflow_id", request.workflow_id)):
            if len(value) > MAX_ID_LENGTH:
                await self._abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{name} is longer than {MAX_ID_LENGTH} characters; no stored id is",
                )
        if not 0 <= request.max_depth <= MAX_LINEAGE_DEPTH:
            await self._abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_depth must be between 0 (server default, {DEFAULT_LINEAGE_DEPTH}) and {MAX_LINEAGE_DEPTH}",
            )
        depth = request.max_depth or DEFAULT_LINEAGE_DEPTH
        hops = await self._call(context, self._store.lineage(request.workflow_id, request.node_id, depth))
        if hops is None:
            where = f" in workflow {_echo(request.workflow_id)}" if request.workflow_id else ""
            await self._abort(context, grpc.StatusCode.NOT_FOUND, f"node {_echo(request.node_id)} not found{where}")
        return graph_pb2.Path(
            hops=[
                graph_pb2.PathHop(
                    node_id=hop.node_id,
                    node_type=graph_pb2.NodeType.ValueType(enum_value(graph_pb2.NodeType.DESCRIPTOR, hop.node_type)),
                    via=graph_pb2.EdgeType.ValueType(enum_value(graph_pb2.EdgeType.DESCRIPTOR, hop.via)),
                    reason=hop.reason,
                    tool=hop.tool,
                )
                for hop in hops
            ]
        )

    async def _receive(
        self, request_iterator: AsyncIterator[graph_pb2.Event], context: _Context
    ) -> list[graph_pb2.Event]:
        events: list[graph_pb2.Event] = []
        held = 0
        async for event in request_iterator:
            if len(events) == self._max_events:
                await self._abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"more than {self._max_events} events in one Ingest call; split the stream into smaller calls",
                )
            held += event.ByteSize()
            if held > MAX_BYTES_PER_CALL:
                await self._abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"more than {MAX_BYTES_PER_CALL >> 20} MiB of events in one Ingest call; "
                    "split the stream into smaller calls",
                )
            if (problem := _problem(len(events), event)) is not None:
                await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
            events.append(event)
        return events

    async def _call(self, context: _Context, operation: Awaitable[T]) -> T:
        """Await a store operation, turning Bastion errors into the status they map to."""
        try:
            return await operation
        except BastionError as exc:
            await self._abort(context, exc.grpc_code, str(exc))

    async def _abort(self, context: _Context, code: grpc.StatusCode, details: str) -> Never:
        self._metrics.errors.labels(code=code.name).inc()
        await context.abort(code, details)


def _echo(value: str) -> str:
    """`value` quoted for a status, cut to _ECHOED_ID characters."""
    return repr(value) if len(value) <= _ECHOED_ID else f"{value[:_ECHOED_ID]!r}... ({len(value)} characters)"


def _problem(index: int, event: graph_pb2.Event) -> str | None:
    """Why the call's event #`index` is refused, naming it; None when it is well-formed."""
    problem = event_problem(event)
    if problem is None:
        return None
    return f"event #{index} (event_id {_echo(event.event_id)}): {problem}; nothing from this call was stored"
