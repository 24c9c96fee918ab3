"""The policy service's admin REST app: probes, metrics, and the active policies.

Auth (bastion._auth), the Host check and the error body `{"error": {"code", "message"}}`
(bastion._rest) are the ones every service shares: reads need role operator, admin or
auditor, changes operator or admin. Versions, rollouts and simulation (DESIGN §5) arrive
with their own issue.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from bastion._auth import require_reader
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier
from bastion._rest import AUTH_RESPONSES, rest_app

from ._engine import PolicySet


class Status(BaseModel):
    status: str = Field(description="'ok' / 'ready', or why the service is not ready.")


class PolicySummary(BaseModel):
    name: str
    version: int
    bundle_digest: str = Field(description="sha256 of this policy alone (a bundle of one document).")
    rule_count: int


class PolicyList(BaseModel):
    bundle_digest: str = Field(description="sha256 of the whole active set: the digest every decision carries.")
    policies: list[PolicySummary] = Field(description="Active policies in evaluation order.")


def create_app(
    *,
    policies: PolicySet,
    verifier: TokenVerifier,
    hosts: HostCheck,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
) -> FastAPI:
    """The admin app; `is_ready` says whether the gRPC side is serving decisions.

    `verifier` checks the bearer JWTs of the /v1 routes; `hosts` is the DNS-rebinding check.
    """
    app = rest_app(title="Bastion policy service", hosts=hosts)
    read = [Depends(require_reader(verifier))]

    @app.get("/healthz", summary="Liveness: the process answers.")
    async def healthz() -> Status:
        return Status(status="ok")

    @app.get(
        "/readyz",
        summary="Readiness: policies are compiled and gRPC serves decisions.",
        response_model=Status,
        responses={503: {"model": Status}},
    )
    async def readyz() -> JSONResponse:
        if is_ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not serving decisions"}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics.", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/policies",
        summary="The active policies (operator, admin or auditor).",
        dependencies=read,
        responses=AUTH_RESPONSES,
    )
    async def list_policies() -> PolicyList:
        return PolicyList(
            bundle_digest=policies.digest,
            policies=[
                PolicySummary(
                    name=policy.name, version=policy.version, bundle_digest=policy.digest, rule_count=len(policy.rules)
                )
                for policy in policies.policies
            ],
        )

    return app
