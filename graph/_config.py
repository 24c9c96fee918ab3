"""Settings of the graph service, read once from `BASTION_*` env vars and frozen."""

from __future__ import annotations

from pydantic import Field

from bastion._settings import CommonSettings


class GraphSettings(CommonSettings):
    graph_addr: str = Field(
        default="127.0.0.1:8080",
        description="Graph REST API address (host:port): /graphs, /audit/violations, /docs, /metrics.",
    )
    graph_grpc_addr: str = Field(
        default="127.0.0.1:50053",
        description="Graph gRPC address (host:port) where the proxy's journal ingests events.",
    )
    graph_url: str = Field(
        default="",
        description=(
            "Graph store: empty for SQLite at $BASTION_HOME/graph.db, or sqlite:///relative/path, "
            "sqlite:////absolute/path, or neo4j://[user:password@]host:7687[/database] "
            "(also neo4j+s, bolt, bolt+s) for Neo4j 5."
        ),
    )
    policy_grpc_addr: str = Field(
        default="127.0.0.1:50051",
        description="Policy service gRPC address: the graph learns API keys and revocations from it "
        "(WatchIdentity), so a revoked operator or auditor credential is refused on the graph REST too.",
    )
    audit_checkpoint_every: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Sign a checkpoint of the audit chain (its head's sequence and hash, with the stack's key "
        "$BASTION_HOME/keys/dev-ed25519.pem) every this many records; /audit/verify holds the chain to them.",
    )
    payload_retention_days: int = Field(
        default=0,
        ge=0,
        le=36_500,
        description="Remove the payloads (arguments, redacted results) of nodes older than this many days, "
        "hourly; ids, digests, decisions and the audit chain are kept forever. 0 keeps payloads forever.",
    )
