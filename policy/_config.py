"""Settings of the policy service, read once from `BASTION_*` env vars and frozen."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bastion._settings import CommonSettings


class PolicySettings(CommonSettings):
    """Where the policy service listens and what its admin REST accepts; policies come from
    bastion.yaml at start and from the admin REST after that (stored under $BASTION_HOME/policy/)."""

    policy_grpc_addr: str = Field(
        default="127.0.0.1:50051",
        description="Policy gRPC listen address (host:port): Decide, DecideBatch, Watch; port 0 picks a free port.",
    )
    policy_addr: str = Field(
        default="127.0.0.1:8081",
        description="Policy admin REST listen address (host:port): /healthz, /readyz, /metrics, /v1/policies.",
    )
    policy_require_signed: bool = Field(
        default=True,
        description="POST /v1/policies takes only signed bundles ('bundle': JWS); false also takes 'document' (YAML).",
    )
    policy_max_body: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        description="Largest admin REST request body in bytes (a policy document is at most 1 MiB).",
    )
    policy_engine: Literal["native", "opa"] = Field(
        default="native",
        description="Who decides: the native engine, or a real OPA server (opa: needs BASTION_OPA_URL).",
    )
    opa_url: str | None = Field(
        default=None, description="OPA server base URL for BASTION_POLICY_ENGINE=opa, e.g. http://127.0.0.1:8181."
    )
    proxy_addr: str = Field(
        default="127.0.0.1:7070",
        description="The proxy (host:port) whose GET /v1/tools validation checks rules against, when it answers.",
    )
    graph_addr: str = Field(
        default="127.0.0.1:8080",
        description="The graph REST API (host:port) that POST /v1/simulate reads recorded workflows from.",
    )
    graph_grpc_addr: str = Field(
        default="127.0.0.1:50053",
        description="Graph service gRPC address: where the policy service sends its audit records (rollout steps).",
    )
    opa_deadline_ms: int = Field(
        default=500, ge=1, description="Deadline of one OPA query; past it the action is denied (fail closed)."
    )
