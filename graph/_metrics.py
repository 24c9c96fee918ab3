"""The graph service's Prometheus metrics.

They live on a registry of their own, created by `_server.py` and handed to both the
gRPC servicer and the REST app: two services in one process (tests, `bastion up`
in-process) then never collide on metric names, and /metrics shows exactly this service.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GraphMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "bastion_graph_ingest_events",
            "Events received by GraphService.Ingest, by result (accepted or duplicate).",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "bastion_graph_grpc_errors",
            "GraphService calls answered with an error status, by gRPC status code.",
            ["code"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "bastion_graph_ingest_seconds",
            "Time to commit the events of one Ingest call to the store.",
            registry=self.registry,
        )
        self._chain_ok = Gauge(
            "bastion_audit_chain_ok",
            "1 when the last GET /audit/verify found the audit chain intact, 0 when it found a problem; "
            "NaN until the first verify.",
            registry=self.registry,
        )
        self._chain_ok.set(math.nan)  # unknown is not broken: `== 0` must not fire before any verify
        self._chain_verified = Gauge(
            "bastion_audit_chain_verified_timestamp_seconds",
            "When GET /audit/verify last recomputed the audit chain (unix seconds); 0 until the first verify.",
            registry=self.registry,
        )

    def chain_verified(self, ok: bool) -> None:
        """Record the outcome of a whole-chain verification."""
        self._chain_ok.set(1 if ok else 0)
        self._chain_verified.set_to_current_time()
