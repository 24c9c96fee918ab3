"""Settings of the policy service, read once from `BASTION_*` env vars and frozen."""

from __future__ import annotations

from pydantic import Field

from bastion._settings import CommonSettings


class PolicySettings(CommonSettings):
    """Where the policy service listens; the policies themselves come from bastion.yaml."""

    policy_grpc_addr: str = Field(
        default="127.0.0.1:50051",
        description="Policy gRPC listen address (host:port): Decide, DecideBatch, Watch; port 0 picks a free port.",
    )
    policy_addr: str = Field(
        default="127.0.0.1:8081",
        description="Policy admin REST listen address (host:port): /healthz, /readyz, /metrics, /v1/policies.",
    )
