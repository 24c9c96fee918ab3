"""The graph service's Prometheus metrics.

They live on a registry of their own, created by `_server.py` and handed to both the
gRPC servicer and the REST app: two services in one process (tests, `bastion up`
in-process) then never collide on metric names, and /metrics shows exactly this service.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


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
