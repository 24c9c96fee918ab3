"""The one auth dependency of every service's REST app (DESIGN §8).

Callers send `Authorization: Bearer <jwt>`, verified by bastion._identity.TokenVerifier
(the same keys and cache as the proxy's agent tokens). What a role may do:

    operator, admin   read and change
    auditor           read only
    anything else     nothing: an agent token (no role) is refused on every route

    require_reader(verifier)          FastAPI dependency for routes that only read
    require_operator(verifier)        FastAPI dependency for routes that change something
    require_home_operator(verifier, action, why)
                                      … something every tenant shares (policies): an admin,
                                      or an operator of the deployment's own tenant

Each returns the caller's `Principal`. A missing, malformed, expired, wrongly signed or
revoked token raises AuthError (401; bastion._rest adds `WWW-Authenticate: Bearer`); any
JWT while the service has not yet received the revocation list, RevocationsUnavailable
(503); a valid token without the role or the tenant, ForbiddenError (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ._authz import AUDITOR_ROLE, CHANGE, READ, READER_ROLES, authorize, check_home_tenant
from ._identity import Principal, TokenVerifier

__all__ = ["AUDITOR_ROLE", "READER_ROLES", "Guard", "require_home_operator", "require_operator", "require_reader"]

#: A FastAPI dependency that authorizes the request and returns who made it.
Guard = Callable[..., Awaitable[Principal]]

# Declared so that OpenAPI (and /docs' "Authorize" button) shows the bearer scheme; the
# token itself is parsed by TokenVerifier.verify_header, as at the proxy, so every
# service words a bad header the same way.
_BEARER = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="JWT",
    description="A Bastion JWT with role 'operator' or 'admin' (read and change) or 'auditor' (read only).",
    auto_error=False,
)


def require_reader(verifier: TokenVerifier) -> Guard:
    """Operators, admins and auditors pass."""
    return _require(verifier, READ)


def require_operator(verifier: TokenVerifier) -> Guard:
    """Operators and admins pass; auditors and agents are refused."""
    return _require(verifier, CHANGE)


def require_home_operator(verifier: TokenVerifier, action: str, why: str) -> Guard:
    """Admins, and operators of the deployment's own tenant (`default`); an operator confined
    to another tenant is refused (403: it may not `action` because `why`), as on the key
    routes an operator may not act in a tenant other than its own (bastion._authz.acts_in)."""
    operator = _require(verifier, CHANGE)

    async def guard(
        request: Request, scheme: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
    ) -> Principal:
        return check_home_tenant(await operator(request, scheme), action, why)

    return guard


def _require(verifier: TokenVerifier, need: tuple[frozenset[str], str, str]) -> Guard:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, and the
    # verifier's token cache is not safe to share across threads.
    async def guard(
        request: Request, _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
    ) -> Principal:
        return authorize(verifier, request.headers.getlist("authorization"), need)

    return guard
