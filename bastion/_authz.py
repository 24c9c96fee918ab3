"""Who may do what on a REST route, without a web framework (DESIGN §8).

`bastion._auth` wraps these as FastAPI dependencies for the services' admin apps; the
proxy's few operator routes (`/v1/tools`, `/v1/approvals`) call them directly, so the
proxy process loads no web framework. Either way one rule decides:

    operator, admin   read and change
    auditor           read only
    anything else     nothing: an agent's token or API key (no role) is refused everywhere

and one rule confines them to tenants (`acts_in`): a caller acts in its own token's
tenant, an admin in every tenant. What belongs to no one tenant (policies, which govern
every tenant's agents; the audit chain, which spans them) is the deployment's own
tenant's (`default`): only its operators and admins may change it (`check_home_tenant`).

Before the service has received the revocation list, a JWT is refused with
RevocationsUnavailable (503, bastion._identity), logged here.
"""

from __future__ import annotations

import logging

from ._errors import AuthError, ForbiddenError, RevocationsUnavailable
from ._identity import ADMIN_ROLE, DEFAULT_TENANT, OPERATOR_ROLES, Principal, TokenVerifier

log = logging.getLogger("bastion.auth")

AUDITOR_ROLE = "auditor"
READER_ROLES = OPERATOR_ROLES | {AUDITOR_ROLE}
READ = (READER_ROLES, "read this", "'operator', 'admin' or 'auditor'")
CHANGE = (OPERATOR_ROLES, "change this", "'operator' or 'admin'")


Need = tuple[frozenset[str], str, str]


def authorize(verifier: TokenVerifier, headers: list[str], need: Need) -> Principal:
    """The caller of a request with these `Authorization` header values, if it has the role.

    Raises AuthError (401: none, several, malformed, bad or revoked token) or
    ForbiddenError (403: a valid token without the role)."""
    return require(identify(verifier, headers), need)


def identify(verifier: TokenVerifier, headers: list[str]) -> Principal:
    """The caller of a request with these `Authorization` header values, whatever its role
    (for a refusal that must name who was refused); AuthError (401) as `authorize`."""
    if len(headers) > 1:
        raise AuthError("send one Authorization header")
    try:
        return verifier.verify_header(headers[0] if headers else None)
    except RevocationsUnavailable as exc:
        log.warning("refused a token: %s", exc)
        raise


def require(principal: Principal, need: Need) -> Principal:
    """`principal` if it has one of the roles `need` names, else ForbiddenError (403)."""
    roles, action, wanted = need
    if roles.isdisjoint(principal.roles):
        raise ForbiddenError(f"{principal.subject!r} may not {action}: role {wanted} required")
    return principal


def acts_in(principal: Principal, tenant: str) -> bool:
    """Whether `principal` may act on what belongs to `tenant`: its own tenant's; an admin, every tenant's."""
    return ADMIN_ROLE in principal.roles or principal.tenant == tenant


def check_home_tenant(principal: Principal, action: str, why: str) -> Principal:
    """`principal` if it acts in the deployment's own tenant, else ForbiddenError (403) saying
    that it may not `action` ("change policies") because `why` (what makes it every tenant's)."""
    if not acts_in(principal, DEFAULT_TENANT):
        raise ForbiddenError(
            f"{principal.subject!r} of tenant {principal.tenant!r} may not {action}: {why}, "
            f"so only admins and the {DEFAULT_TENANT!r} tenant's operators may"
        )
    return principal
