"""Who may do what on a REST route, without a web framework (DESIGN §8).

`bastion._auth` wraps these as FastAPI dependencies for the services' admin apps; the
proxy's few operator routes (`/v1/tools`, `/v1/approvals`) call them directly, so the
proxy process loads no web framework. Either way one rule decides:

    operator, admin   read and change
    auditor           read only
    anything else     nothing: an agent's token or API key (no role) is refused everywhere
"""

from __future__ import annotations

from ._errors import AuthError, ForbiddenError
from ._identity import OPERATOR_ROLES, Principal, TokenVerifier

AUDITOR_ROLE = "auditor"
READER_ROLES = OPERATOR_ROLES | {AUDITOR_ROLE}
READ = (READER_ROLES, "read this", "'operator', 'admin' or 'auditor'")
CHANGE = (OPERATOR_ROLES, "change this", "'operator' or 'admin'")


def authorize(verifier: TokenVerifier, headers: list[str], need: tuple[frozenset[str], str, str]) -> Principal:
    """The caller of a request with these `Authorization` header values, if it has the role.

    Raises AuthError (401: none, several, malformed, bad or revoked token) or
    ForbiddenError (403: a valid token without the role)."""
    if len(headers) > 1:
        raise AuthError("send one Authorization header")
    principal = verifier.verify_header(headers[0] if headers else None)
    roles, action, wanted = need
    if roles.isdisjoint(principal.roles):
        raise ForbiddenError(f"{principal.subject!r} may not {action}: role {wanted} required")
    return principal
