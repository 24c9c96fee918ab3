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

from ._authz import AUDITOR_ROLE, CHANGE, READ, READER_ROLES, authorize
from ._identity import Principal, TokenVerifier

__all__ = ["AUDITOR_ROLE", "READER_ROLES", "Guard", "require_operator", "require_reader"]

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


def _require(verifier: TokenVerifier, need: tuple[frozenset[str], str, str]) -> Guard:
    # async on purpose: FastAPI runs plain `def` dependencies in a thread pool, and the
    # verifier's token cache is not safe to share across threads.
    async def guard(
        request: Request, _scheme: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
    ) -> Principal:
        return authorize(verifier, request.headers.getlist("authorization"), need)

    return guard
