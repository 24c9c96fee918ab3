"""Admin REST routes of API keys and revocations (bastion.policy._identities), added to the app
of bastion.policy._api with its auth dependencies, body cap and error body:

    POST /v1/keys                      {agent, tenant?, name?, ttl_s?} → 201 with the full key, shown only here
    GET  /v1/keys?agent=&tenant=       keys in creation order, paged (`after`, `limit`); no secret, no digest
    POST /v1/keys/{key_id}/revoke      {reason?} → the revoked key
    POST /v1/revocations               {kind: token|agent, value, tenant?, reason?} → 201
    GET  /v1/revocations?kind=&tenant= revocations oldest first, paged (`after`, `limit`)

Changes need role operator or admin; reads also auditor (an agent's token or API key
never changes anything: bastion._auth). Operators and auditors act in their own token's
tenant (a body or query naming another is 403; another tenant's key is 404), admins in
every tenant; `tenant` defaults to the caller's. A token id (`jti`) is not scoped: any
operator who knows one may revoke it. Every change is recorded in the audit trail
(workflow `bastion.identity` in the graph) by the store, in the same transaction.
Proxies learn of each change over `PolicyService.WatchIdentity` within moments (DESIGN
§8 asks for 30 s). Refusals, and nothing changes:

    403  another tenant named by an operator or auditor (bastion.auth.forbidden)
    404  unknown key, or another tenant's (bastion.not_found)
    409  the key or token id is already revoked, or the store is full     bastion.conflict
    413  body over BASTION_POLICY_MAX_BODY                                bastion.protocol.too_large
    422  not JSON, unknown field, wrong type, a bad agent id, tenant,
         name, reason or ttl                                              bastion.invalid_request
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from bastion._authz import acts_in
from bastion._errors import ForbiddenError, NotFound
from bastion._identifiers import MAX_ID_CHARS, InvalidIdentity, check_identifier
from bastion._identity import ADMIN_ROLE, Principal
from bastion._json import loads_strict
from bastion._rest import AUTH_RESPONSES, error_doc, error_response

from ._identities import MAX_REASON_CHARS, MAX_TTL_S, IdentityStore, StoredKey, StoredRevocation

MAX_PAGE = 1000


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    agent: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The agent id the key authenticates as.")
    tenant: str | None = Field(
        default=None, min_length=1, max_length=MAX_ID_CHARS, description="The agent's tenant; default: the caller's."
    )
    name: str = Field(default="", max_length=MAX_ID_CHARS, description="A label for people (e.g. where it is used).")
    ttl_s: int | None = Field(
        default=None, ge=1, le=MAX_TTL_S, description="Lifetime in seconds; absent: never expires."
    )


class RevokeKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reason: str = Field(default="", max_length=MAX_REASON_CHARS)


class RevocationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["token", "agent"] = Field(
        description="'token': one JWT by its `jti`; 'agent': every token issued to the agent until now, and its keys."
    )
    value: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The jti, or the agent id.")
    tenant: str | None = Field(
        default=None, min_length=1, max_length=MAX_ID_CHARS, description="The agent's tenant; default: the caller's."
    )
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)


class KeyView(BaseModel):
    key_id: str = Field(description="The public part of the key (`bk_<key_id>.<secret>`).")
    agent: str
    tenant: str
    name: str
    created_at: datetime
    created_by: str = Field(description="Subject of the operator token that created it.")
    expires_at: datetime | None = Field(description="null: never expires.")
    state: Literal["active", "expired", "revoked"]
    revoked_at: datetime | None
    revoked_by: str | None
    revoked_reason: str | None


class CreatedKey(BaseModel):
    key_id: str
    key: str = Field(description="The whole API key: send it as `Authorization: Bearer <key>`. Shown only once.")
    agent: str
    tenant: str
    name: str
    created_at: datetime
    expires_at: datetime | None


class KeyList(BaseModel):
    keys: list[KeyView] = Field(description="In creation order.")
    next: str | None = Field(description="Pass as `after` for the next page; null on the last page.")


class RevocationView(BaseModel):
    id: int = Field(description="Increasing: the order revocations were made in.")
    kind: Literal["token", "agent"]
    value: str
    tenant: str
    at: datetime
    by: str
    reason: str


class RevocationCreated(RevocationView):
    keys_revoked: list[str] = Field(description="Key ids of the agent's keys this revocation revoked.")


class RevocationList(BaseModel):
    revocations: list[RevocationView] = Field(description="Oldest first.")
    next: int | None = Field(description="Pass as `after` for the next page; null on the last page.")


KeyId = Annotated[str, Path(max_length=64, description="The key id (the part of the key between `bk_` and `.`).")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    409: error_doc("Already revoked, or the store holds as many as it may."),
    413: error_doc("The body is over BASTION_POLICY_MAX_BODY."),
    422: error_doc("Not a valid request (the message says which field)."),
}


def _body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def add_identity_routes(
    app: FastAPI, store: IdentityStore, *, reader: Any, operator: Any, read_body: Any, max_body: int
) -> None:
    """Add the routes above; `reader` and `operator` are the app's auth dependencies (each gives
    the caller's Principal), `read_body(request, limit)` its capped body reader."""
    app.add_exception_handler(InvalidIdentity, _invalid)

    async def parse(request: Request, model: type[BaseModel], *, empty_ok: bool = False) -> Any:
        body = await read_body(request, max_body)
        if empty_ok and not body.strip():
            return model()
        try:
            return model.model_validate(loads_strict(body))
        except ValidationError as exc:  # answered as any other bad parameter (bastion._rest)
            raise RequestValidationError(exc.errors()) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPException(422, f"the body is not valid JSON: {exc}") from exc

    @app.post(
        "/v1/keys",
        summary="Create an API key for an agent; the answer holds the key, shown only this once (operator or admin).",
        status_code=201,
        responses=_ERRORS,
        openapi_extra=_body(KeyRequest),
    )
    async def create_key(request: Request, principal: Principal = operator) -> JSONResponse:
        parsed: KeyRequest = await parse(request, KeyRequest)
        tenant = _tenant(principal, parsed.tenant)
        secret, key = await store.create_key(
            agent=parsed.agent, tenant=tenant, name=parsed.name, ttl_s=parsed.ttl_s, by=principal.subject
        )
        created = CreatedKey(
            key_id=key.key_id,
            key=secret,
            agent=key.agent_id,
            tenant=key.tenant,
            name=key.name,
            created_at=_time(key.created_at),
            expires_at=_time(key.expires_at) if key.expires_at is not None else None,
        )
        # Never cached anywhere on the way: this is the only time the key is shown.
        return JSONResponse(created.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"})

    @app.get(
        "/v1/keys",
        summary="API keys in creation order, without secrets (operator, admin or auditor).",
        responses={**AUTH_RESPONSES, 404: error_doc("`after` names no key of the tenant listed.")},
    )
    async def list_keys(
        principal: Principal = reader,
        agent: Annotated[str | None, Query(max_length=MAX_ID_CHARS, description="Only this agent's.")] = None,
        tenant: Annotated[str | None, Query(max_length=MAX_ID_CHARS, description="Only this tenant's.")] = None,
        after: Annotated[str | None, Query(max_length=64, description="The `next` of the previous page.")] = None,
        limit: Limit = 100,
    ) -> KeyList:
        keys, following = store.keys(agent=agent, tenant=_scope(principal, tenant), after=after, limit=limit)
        return KeyList(keys=[_key_view(key) for key in keys], next=following)

    @app.post(
        "/v1/keys/{key_id}/revoke",
        summary="Revoke an API key on every proxy (operator or admin).",
        responses={**_ERRORS, 404: error_doc("No such key.")},
        openapi_extra=_body(RevokeKeyRequest, required=False),
    )
    async def revoke_key(key_id: KeyId, request: Request, principal: Principal = operator) -> KeyView:
        parsed: RevokeKeyRequest = await parse(request, RevokeKeyRequest, empty_ok=True)
        key = store.key(key_id)
        if key is not None and not acts_in(principal, key.tenant):
            raise NotFound(f"no API key {key_id!r}")  # another tenant's: not even its existence is told
        return _key_view(await store.revoke_key(key_id, by=principal.subject, reason=parsed.reason))

    @app.post(
        "/v1/revocations",
        summary="Revoke a token id (jti) or an agent on every proxy (operator or admin).",
        status_code=201,
        responses=_ERRORS,
        openapi_extra=_body(RevocationRequest),
    )
    async def revoke(request: Request, principal: Principal = operator) -> RevocationCreated:
        parsed: RevocationRequest = await parse(request, RevocationRequest)
        revocation, keys = await store.revoke(
            parsed.kind,
            parsed.value,
            tenant=_tenant(principal, parsed.tenant),
            by=principal.subject,
            reason=parsed.reason,
        )
        return RevocationCreated(**_revocation_view(revocation).model_dump(), keys_revoked=[key.key_id for key in keys])

    @app.get(
        "/v1/revocations",
        summary="Revocations, oldest first (operator, admin or auditor).",
        responses=AUTH_RESPONSES,
    )
    async def list_revocations(
        principal: Principal = reader,
        kind: Annotated[Literal["token", "agent"] | None, Query(description="Only this kind.")] = None,
        tenant: Annotated[str | None, Query(max_length=MAX_ID_CHARS, description="Only this tenant's.")] = None,
        after: Annotated[int, Query(ge=0, description="The `next` of the previous page.")] = 0,
        limit: Limit = 100,
    ) -> RevocationList:
        found, following = store.revocations(kind=kind, tenant=_scope(principal, tenant), after=after, limit=limit)
        return RevocationList(revocations=[_revocation_view(item) for item in found], next=following)


def _tenant(principal: Principal, named: str | None) -> str:
    """The tenant a change acts in: the one named (the caller's own unless an admin), else the caller's."""
    tenant = principal.tenant if named is None else check_identifier("tenant", named)
    if not acts_in(principal, tenant):
        raise ForbiddenError(
            f"{principal.subject!r} acts in tenant {principal.tenant!r} only; role 'admin' acts in every tenant"
        )
    return tenant


def _scope(principal: Principal, named: str | None) -> str | None:
    """The tenant a listing is limited to (None: every tenant, for an admin who names none)."""
    if named is None and ADMIN_ROLE in principal.roles:
        return None
    return _tenant(principal, named)


def _key_view(key: StoredKey) -> KeyView:
    state: Literal["active", "expired", "revoked"] = "active"
    if key.revoked_at is not None:
        state = "revoked"
    elif key.expires_at is not None and key.expires_at <= time.time():
        state = "expired"
    return KeyView(
        key_id=key.key_id,
        agent=key.agent_id,
        tenant=key.tenant,
        name=key.name,
        created_at=_time(key.created_at),
        created_by=key.created_by,
        expires_at=_time(key.expires_at) if key.expires_at is not None else None,
        state=state,
        revoked_at=_time(key.revoked_at) if key.revoked_at is not None else None,
        revoked_by=key.revoked_by,
        revoked_reason=key.revoked_reason,
    )


def _revocation_view(revocation: StoredRevocation) -> RevocationView:
    return RevocationView(
        id=revocation.id,
        kind=revocation.kind,
        value=revocation.value,
        tenant=revocation.tenant,
        at=_time(revocation.at),
        by=revocation.by,
        reason=revocation.reason,
    )


def _time(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


async def _invalid(request: Request, exc: Exception) -> Response:
    return error_response(422, "bastion.invalid_request", str(exc))
