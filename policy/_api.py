"""The policy service's admin REST app: probes, metrics, and the active policies.

Every Bastion error becomes `{"error": {"code", "message"}}` with the HTTP status its
class declares (bastion._errors), in one exception handler. Operator checks are one
dependency. Versions, rollouts and simulation (DESIGN §5) arrive with their own issue.
"""

# No `from __future__ import annotations` here: FastAPI reads the dependency annotations
# at runtime, and those inside create_app refer to its local `bearer` and `operator`.

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from bastion import __version__
from bastion._errors import AuthError, BastionError, ForbiddenError
from bastion._identity import Principal, TokenVerifier

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
    *, policies: PolicySet, verifier: TokenVerifier, registry: CollectorRegistry, is_ready: Callable[[], bool]
) -> FastAPI:
    """The admin app; `is_ready` says whether the gRPC side is serving decisions."""
    app = FastAPI(title="Bastion policy service", version=__version__)
    app.add_exception_handler(BastionError, _error_response)
    bearer = HTTPBearer(auto_error=False, description="Operator JWT (role 'operator' or 'admin').")

    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, and the
    # verifier's token cache is not meant to be shared across threads.
    async def operator(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> Principal:
        if credentials is None:
            raise AuthError("missing bearer token: send 'Authorization: Bearer <operator jwt>'")
        principal = verifier.verify(credentials.credentials)
        if not principal.is_operator:
            raise ForbiddenError(f"{principal.subject!r} is not an operator (role 'operator' or 'admin' required)")
        return principal

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

    @app.get("/v1/policies", summary="The active policies (operator only).")
    async def list_policies(_: Annotated[Principal, Depends(operator)]) -> PolicyList:
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


async def _error_response(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, BastionError):  # registered for BastionError only
        raise exc
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return JSONResponse(
        {"error": {"code": exc.code, "message": str(exc)}}, status_code=exc.http_status, headers=headers
    )
