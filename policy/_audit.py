"""Ships the policy service's audit records (rollout steps) to GraphService.Ingest.

Durability: each record is written to the version store's `audit_outbox` in the same
transaction as the step it records (bastion.policy._store), so a step is never without
its record, whatever the graph's state. This task reads the oldest records, sends them
in one Ingest call with the service token, and deletes them only once the graph has
acknowledged them: at least once, and the graph ingests idempotently by event_id, so a
record sent twice (a crash between the ack and the delete) is stored once. While the
graph is unreachable the records wait on disk and the task retries with backoff
(`RETRY_S` doubling up to `MAX_RETRY_S`), logging once per outage; no REST call ever
waits for the graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from bastion._rpc import auth_metadata, open_channel
from bastion._tls import GrpcTls
from bastion.v1 import graph_pb2, graph_pb2_grpc

from ._store import PolicyStore

log = logging.getLogger("bastion.policy.audit")

BATCH = 100
IDLE_S = 0.2
RETRY_S = 0.5
MAX_RETRY_S = 30.0
RPC_TIMEOUT_S = 10.0


class AuditShipper:
    """Background task: the store's audit outbox → GraphService.Ingest."""

    def __init__(self, store: PolicyStore, graph_addr: str, token: str, tls: GrpcTls | None = None) -> None:
        self._store = store
        self._addr = graph_addr
        self._tls = tls
        self._metadata = auth_metadata(token)
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._channel = open_channel(self._addr, self._tls)
        self._task = asyncio.create_task(self._run(), name="bastion-policy-audit")

    def wake(self) -> None:
        """A record was written: ship it now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()

    async def _run(self) -> None:
        assert self._channel is not None
        stub = graph_pb2_grpc.GraphServiceStub(self._channel)
        delay = RETRY_S
        failing = False
        while True:
            records = await self._store.outbox(BATCH)
            if not records:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_S)
                continue
            events = [graph_pb2.Event.FromString(blob) for _, blob in records]
            try:
                await stub.Ingest(iter(events), timeout=RPC_TIMEOUT_S, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                if not failing:
                    log.warning(
                        "cannot ship %d audit record(s) to the graph at %s (BASTION_GRAPH_GRPC_ADDR): %s; "
                        "they stay in the outbox and are retried",
                        len(events),
                        self._addr,
                        exc.code().name,
                    )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            await self._store.outbox_shipped(records[-1][0])
            if failing:
                log.info("audit records reach the graph at %s again", self._addr)
            failing, delay = False, RETRY_S
