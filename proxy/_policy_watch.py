"""What the proxy knows of the active policy versions, learnt from `PolicyService.Watch`.

The proxy needs each active version's `verifier:` (threshold, timeout, fallback) and
`limits:` settings before it calls the verifier or counts a limit — not from a Decision,
which arrives only after the verifier was already asked. One long-lived Watch stream
delivers the active versions, then every activation, as they happen; a broken stream is
reopened with backoff, and what was learnt stays in place meanwhile (the policy service
being down blocks every action anyway, through the decision).

The settings are held here and exposed as metrics. The Governor reads each agent's
verifier settings (`verifier_settings(agent_id)`: timeout, threshold, fallback of the
policies governing the agent, `_verifier_settings.py`), from an index rebuilt on every
change so the per-call lookup does no work. Provenance reads the union of the active
versions' `taint:` stanzas (`taint()`): which tools are untrusted sources and which are
sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from prometheus_client import CollectorRegistry, Gauge

from bastion.v1 import policy_pb2, policy_pb2_grpc

from ._provenance import TaintSettings
from ._verifier_settings import PolicyVerifier, VerifierSettings, VerifierSettingsIndex, policy_verifier

log = logging.getLogger("bastion.proxy")

_ACTIVE = frozenset({policy_pb2.BundleEvent.LOADED, policy_pb2.BundleEvent.ACTIVATED})


@dataclass(frozen=True, slots=True)
class ActiveSettings:
    version: int
    digest: str
    verifier: dict[str, Any] | None
    limits: dict[str, Any] | None
    taint: dict[str, Any] | None = None


class PolicyWatch:
    def __init__(
        self,
        stub: policy_pb2_grpc.PolicyServiceAsyncStub,
        metadata: tuple[tuple[str, str], ...],
        registry: CollectorRegistry,
        *,
        backoff_max: float = 2.0,
        verifier_default: VerifierSettings | None = None,
    ) -> None:
        self._stub = stub
        self._metadata = metadata
        self._backoff_max = backoff_max
        self._task: asyncio.Task[None] | None = None
        #: Policy name → the settings of its active version.
        self.active: dict[str, ActiveSettings] = {}
        self.changed = asyncio.Event()
        self._taint = TaintSettings()
        self._verifier_default = verifier_default or VerifierSettings(0.5, "block")
        self._verifier_stanzas: dict[str, PolicyVerifier] = {}
        self._verifier_index = VerifierSettingsIndex(self._verifier_default)
        self._versions = Gauge(
            "bastion_proxy_policy_version",
            "The active version of each policy, as the proxy learnt it from Watch.",
            ["policy"],
            registry=registry,
        )
        self._verifier_timeouts = Gauge(
            "bastion_proxy_policy_verifier_timeout_ms",
            "The verifier timeout each active policy version sets (absent: the proxy's default).",
            ["policy"],
            registry=registry,
        )

    def taint(self) -> TaintSettings:
        """The active versions' `taint:` stanzas together (no stanza anywhere: empty)."""
        return self._taint

    def verifier_settings(self, agent_id: str) -> VerifierSettings:
        """The verifier settings of `agent_id`'s actions (the hot path: no work here)."""
        return self._verifier_index.for_agent(agent_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bastion-policy-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async for event in self._stub.Watch(policy_pb2.WatchRequest(), metadata=self._metadata):
                    failures = 0
                    self._apply(event)
                failures += 1  # the server ended the stream (stopping): reconnect
            except grpc.aio.AioRpcError as exc:
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    log.warning("policy Watch stream failed (%s); reconnecting", exc.code().name)
            await asyncio.sleep(min(self._backoff_max, 0.05 * 2 ** min(failures, 10)))

    def _apply(self, event: policy_pb2.BundleEvent) -> None:
        if event.kind not in _ACTIVE:
            return
        try:
            settings = orjson.loads(event.settings_json) if event.settings_json else {}
        except orjson.JSONDecodeError:
            log.error("policy %r v%d: unreadable settings_json; keeping defaults", event.policy_name, event.version)
            settings = {}
        verifier = settings.get("verifier") if isinstance(settings, dict) else None
        limits = settings.get("limits") if isinstance(settings, dict) else None
        taint = settings.get("taint") if isinstance(settings, dict) else None
        self.active[event.policy_name] = ActiveSettings(
            version=event.version,
            digest=event.bundle_digest,
            verifier=verifier if isinstance(verifier, dict) else None,
            limits=limits if isinstance(limits, dict) else None,
            taint=taint if isinstance(taint, dict) else None,
        )
        self._taint = _union_taint(self.active.values())
        self._verifier_stanzas[event.policy_name] = policy_verifier(
            event.policy_name, event.version, settings if isinstance(settings, dict) else {}
        )
        # A new index, swapped in whole: a call in flight keeps the one it read.
        self._verifier_index = VerifierSettingsIndex(self._verifier_default, self._verifier_stanzas.values())
        self._versions.labels(event.policy_name).set(event.version)
        timeout = verifier.get("timeout_ms") if isinstance(verifier, dict) else None
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            self._verifier_timeouts.labels(event.policy_name).set(timeout)
        else:
            with contextlib.suppress(KeyError):
                self._verifier_timeouts.remove(event.policy_name)
        self.changed.set()


def _union_taint(active: Any) -> TaintSettings:
    untrusted: dict[str, None] = {}
    sinks: dict[str, None] = {}
    for settings in active:
        taint = settings.taint or {}
        for name, into in (("untrusted_sources", untrusted), ("sinks", sinks)):
            patterns = taint.get(name)
            if isinstance(patterns, list):
                into.update((pattern, None) for pattern in patterns if isinstance(pattern, str))
    return TaintSettings(tuple(untrusted), tuple(sinks))
