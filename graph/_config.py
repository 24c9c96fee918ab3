"""Settings of the graph service, read once from `BASTION_*` env vars and frozen."""

from __future__ import annotations

from pydantic import Field, field_validator

from bastion._hosts import web_origin
from bastion._settings import CommonSettings

from ._walks import DEFAULT_DEADLINE_S


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
    audit_walk_deadline_s: float = Field(
        default=DEFAULT_DEADLINE_S,
        gt=0,
        le=3600,
        description="How long one GET /audit/verify or /audit/export may walk the audit chain (seconds); one such "
        "walk runs at a time (another meanwhile: 429 with Retry-After). Verify then answers the range it checked "
        "and how to continue (next.after, next.anchor); an export ends with stopped: deadline and fails verification "
        "as incomplete.",
    )
    dashboard_proxy_url: str | None = Field(
        default=None,
        description="The proxy's URL as the operator's browser reaches it (scheme://host:port, e.g. "
        "http://127.0.0.1:7070): the dashboard (/ui) then shows its approval requests and queue, to decide on "
        "there. The proxy must name the graph's origin in BASTION_DASHBOARD_ORIGIN. Unset: the dashboard reads "
        "the graph only.",
    )

    @field_validator("dashboard_proxy_url")
    @classmethod
    def _proxy_origin(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else web_origin(value)
