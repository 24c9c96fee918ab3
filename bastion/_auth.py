"""The one auth dependency of every service's REST app (DESIGN §8).

Callers send `Authorization: Bearer <jwt>`, verified by bastion._identity.TokenVerifier
(the same keys and cache as the proxy's agent tokens). What a role may do:

    operator, admin   read and change
    auditor           read only
    anything else     nothing: an agent token (no role) is refused on every route

    require_reader(verifier)     FastAPI dependency for routes that only read
    require_operator(verifier)   FastAPI dependency for routes that change something

Both return the caller's `Principal`. A missing, malformed, expired or wrongly signed
token raises AuthError (401; bastion._rest adds `WWW-Authenticate: Bearer`); a valid
token without the role raises ForbiddenError (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ._errors import ForbiddenError
from ._identity import OPERATOR_ROLES, Principal, TokenVerifier

AUDITOR_ROLE = "auditor"
READER_ROLES = OPERATOR_ROLES | {AUDITOR_ROLE}

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
    return _require(verifier, READER_ROLES, "read this", "'operator', 'admin' or 'auditor'")


def require_operator(verifier: TokenVerifier) -> Guard:
    """Operators and admins pass; auditors and agents are refused."""
    return _require(verifier, OPERATOR_ROLES, "change this", "'operator' or 'admin'")


def _require(verifier: TokenVerifier, roles: frozenset[str], action: str, wanted: str) -> Guard:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, and the
    # verifier's token cache is not safe to share across threads.
    async def authorize(
        request: Request, _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
    ) -> Principal:
        principal = verifier.verify_header(request.headers.get("authorization"))
        if roles.isdisjoint(principal.roles):
            raise ForbiddenError(f"{principal.subject!r} may not {action}: role {wanted} required")
        return principal

    return authorize
