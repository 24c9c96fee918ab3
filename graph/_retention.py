"""Payload retention: nodes older than BASTION_PAYLOAD_RETENTION_DAYS lose their payloads.

What goes: an action's arguments (both copies), its redacted payload and its result's
redacted answer: what an agent sent and received, which may be personal or confidential
data. What stays, forever: ids, digests (payload_digest, result_digest: proof of what was
sent without the content), decisions, scores, outcomes, edges, and the audit chain, which
never holds payloads and is never rewritten. A node so trimmed says `payload_expired`.

One pass at start, then one an hour, each in transactions of DEFAULT_EXPIRY_BATCH nodes
so the ingest writer is never held for long; 0 days (the default) keeps payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from bastion._errors import StoreError

from ._store import DEFAULT_EXPIRY_BATCH, GraphStore

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 3600.0
_DAY_NS = 86_400 * 10**9


class Retention:
    def __init__(self, store: GraphStore, days: int, *, batch: int = DEFAULT_EXPIRY_BATCH) -> None:
        self._store = store
        self._days = days
        self._batch = batch

    async def run_once(self, now_ns: int | None = None) -> int:
        """Trim every node older than the retention period; how many were trimmed."""
        if self._days <= 0:
            return 0
        before = (now_ns if now_ns is not None else time.time_ns()) - self._days * _DAY_NS
        total = 0
        while (trimmed := await self._store.expire_payloads(before, self._batch)) > 0:
            total += trimmed
            if trimmed < self._batch:
                break
        if total:
            log.info("payload retention", extra={"fields": {"nodes": total, "days": self._days}})
        return total

    async def run(self, stop: asyncio.Event, interval_s: float = PASS_INTERVAL_S) -> None:
        """A pass now and every `interval_s` until `stop`; a failed pass is retried at the next."""
        if self._days <= 0:
            return
        while not stop.is_set():
            try:
                await self.run_once()
            except StoreError as exc:
                log.error("payload retention failed", extra={"fields": {"error": str(exc)}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
