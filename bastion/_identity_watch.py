"""API keys and revocations as the proxy knows them, learnt from `PolicyService.WatchIdentity`.

DESIGN §8 asks that a revoked key, token or agent be refused everywhere within 30 s. It
is met by push, not by a lookup per call: one long-lived WatchIdentity stream per proxy
delivers a snapshot, then every change as soon as the policy service has committed it
(milliseconds on a healthy stack), and each is applied to the `IdentityState` that
bastion._identity.TokenVerifier consults on every call (set and dict lookups). A broken
stream is reopened with backoff (at most `backoff_max`, 2 s) and starts again from a
fresh snapshot, so a change made while it was down arrives on reconnection.

The snapshot may come in several parts (bastion.policy._identities): they are gathered
until the empty event that closes it and then applied as one event, so a verifier never
sees half a snapshot (a revocation in a later part missing). The first complete snapshot
marks the state `synced`; until then API keys are refused, and JWTs too except on the
proxy's agent routes (bastion._identity), each refusal saying why the state is not synced
(`IdentityState.unsynced_reason`, kept up to date here). An event that cannot be applied
changes nothing and restarts the stream (the watch never stops following).

While the policy service is unreachable the proxy keeps its last state: keys and
revocations it knew stay in force (a revocation is never forgotten by a disconnection).
That is safe because the policy service being down blocks every action anyway, through
the decision. `bastion_proxy_identity_synced` is 0 meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from prometheus_client import CollectorRegistry, Gauge

from bastion._apikeys import IdentityState
from bastion.v1 import policy_pb2, policy_pb2_grpc

log = logging.getLogger("bastion.proxy")


class IdentityWatch:
    def __init__(
        self,
        stub: policy_pb2_grpc.PolicyServiceAsyncStub,
        metadata: tuple[tuple[str, str], ...],
        registry: CollectorRegistry,
        state: IdentityState,
        *,
        backoff_max: float = 2.0,
        service: str = "proxy",
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._backoff_max = backoff_max
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        #: Set once the first snapshot is applied, or the first attempt failed.
        self._first = asyncio.Event()
        self.state = state
        #: Set after every applied event (tests and callers wait on it).
        self.changed = asyncio.Event()
        # What the metrics count: key ids, and (kind, tenant, value) of revocations.
        self._keys: set[str] = set()
        self._revocations: set[tuple[int, str, str]] = set()
        self._key_count = Gauge(
            f"bastion_{service}_identity_keys", "API keys the service knows (revoked ones included).", registry=registry
        )
        self._revocation_count = Gauge(
            f"bastion_{service}_identity_revocations",
            "Token and agent revocations the service knows.",
            registry=registry,
        )
        self._synced = Gauge(
            f"bastion_{service}_identity_synced",
            "1 while the WatchIdentity stream is open and its snapshot applied; 0 while the service "
            "serves its last known keys and revocations.",
            registry=registry,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bastion-identity-watch")

    async def first_attempt(self, timeout: float) -> bool:
        """Wait (at most `timeout`) for the first snapshot or the first failure; whether synced.

        The proxy waits for this before it listens, so a credential revoked before it started
        is refused from its first request; a policy service that is down or slow to answer
        delays the start by no more than one attempt (it blocks governed actions anyway)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), timeout)
        return self.state.synced

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
                self._failures += 1  # the server ended the stream (stopping): reconnect
                why = "its WatchIdentity stream ended before a complete snapshot"
            except grpc.aio.AioRpcError as exc:
                self._failures += 1
                if self._failures == 1 or self._failures % 30 == 0:
                    log.warning("policy WatchIdentity stream failed (%s); reconnecting", exc.code().name)
                # The code, not the details: those name internal addresses (they are in the log).
                why = f"its WatchIdentity stream failed: {exc.code().name}"
            except Exception:
                # An event this proxy cannot apply (it changed nothing: IdentityState.apply parses
                # first). The watch must not die, or no later revocation would arrive: start over.
                self._failures += 1
                log.exception("cannot apply a WatchIdentity event; reconnecting for a fresh snapshot")
                why = "a WatchIdentity event could not be applied (see the service's log)"
            if not self.state.synced:
                self.state.unsynced_reason = why
            self._synced.set(0)
            self._first.set()
            await asyncio.sleep(min(self._backoff_max, 0.05 * 2 ** min(self._failures, 10)))

    async def _follow(self) -> None:
        snapshot: policy_pb2.IdentityEvent | None = None
        async for event in self._stub.WatchIdentity(policy_pb2.WatchIdentityRequest(), metadata=self._metadata):
            if event.snapshot:
                snapshot = event
            elif snapshot is not None:
                if event.keys or event.revocations:
                    snapshot.keys.extend(event.keys)
                    snapshot.revocations.extend(event.revocations)
                    continue
                self._apply(snapshot)  # the empty event closing the snapshot
                snapshot = None
                self._synced.set(1)
                self._failures = 0
                self._first.set()
            else:
                self._apply(event)

    def _apply(self, event: policy_pb2.IdentityEvent) -> None:
        # One apply of one event (a whole snapshot at once): the verifier sees the state
        # before or after it, never between.
        self.state.apply(event)
        if event.snapshot:
            self._keys, self._revocations = set(), set()
        self._keys.update(record.key_id for record in event.keys)
        self._revocations.update((item.kind, item.tenant, item.value) for item in event.revocations)
        self._key_count.set(len(self._keys))
        self._revocation_count.set(len(self._revocations))
        self.changed.set()
