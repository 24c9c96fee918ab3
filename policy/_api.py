"""The policy service's admin REST app: probes, metrics, policy versions and their activation.

Auth (bastion._auth), the Host check and the error body `{"error": {"code", "message"}}`
(bastion._rest) are the ones every service shares: reads need role operator, admin or
auditor; everything that is a POST or PUT needs operator or admin (validate too: it
changes nothing, but it is an operator's tool and answers with the document's problems).
Policies have no tenant: every active version governs the agents of every tenant. So what
changes them — creating a version, activating one, starting, promoting or rolling back a
rollout — is for admins and the deployment's own (`default`) tenant's operators only; an
operator of another tenant is refused (403), as it is refused another tenant's keys.

    GET  /v1/policies                                  the active set, in evaluation order
    POST /v1/policies                                  create a version: 201 new, 200 same content again
    PUT  /v1/policies/{name}/versions/{v}              the same, at an address the body must agree with
    POST /v1/policies/validate                         validate (signature too), store nothing
    GET  /v1/policies/{name}/versions                  every version of a policy
    GET  /v1/policies/{name}/versions/{v}              one version: text, digest, author, time, kid, diff
    POST /v1/policies/{name}/versions/{v}/activate     make it the active version of its policy
    POST /v1/simulate                                  replay recorded actions against a candidate (policy/_simulate.py)
    POST /v1/rollouts, GET /v1/rollouts[/{id}],        canary rollouts (policy/_rollouts_api.py)
    POST /v1/rollouts/{id}/promote|rollback
    POST /v1/keys, GET /v1/keys,                       API keys and revocations (policy/_identities_api.py)
    POST /v1/keys/{id}/revoke, POST|GET /v1/revocations

Validate also checks the document's rules against the proxy's live tool lists when the
proxy answers (policy/_live_tools.py): a tool or argument no upstream has is a problem, a
glob matching no live tool a warning, and `live_tools` says what was checked, or
"live tools not checked: <why>" (which never fails a validation by itself).

Create takes `{"bundle": "<JWS>"}` (bastion.policy._bundles) or, only when
BASTION_POLICY_REQUIRE_SIGNED=false, `{"document": "<YAML or JSON text>"}`; with the
default (true) a plain document is refused as an unsigned bundle (422, counted), so
every version stored through the API carries a signature the service checked. Validate
takes either always (it stores nothing), and reports a bundle's refusal as a problem. Bodies
are read with a cap (BASTION_POLICY_MAX_BODY, 413 beyond), parsed as strict JSON (a
repeated key is refused) and validated with unknown fields refused, all before anything
is stored. Errors, each in the shared body, and nothing changes:

    401 / 403            no or bad token / wrong role or tenant           bastion.auth.*
    404                  unknown policy or version                        bastion.not_found
    409                  (name, version) stored with other content        bastion.policy.version_exists
    413                  body over the cap                                bastion.protocol.too_large
    422                  body not JSON or not {bundle}|{document}         bastion.invalid_request
    422                  document invalid, or URL and body disagree        bastion.policy.invalid
    422                  bundle refused (reason in the message); also      bastion.policy.signature
                         activating a version whose bundle has expired
    503                  the version store failed                         bastion.store
    502 / 503            (simulate) the graph answered badly / not at all  bastion.policy.graph_*
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from bastion._auth import require_home_operator, require_operator, require_reader
from bastion._errors import PayloadTooLarge, PolicyError, PolicyValidationError
from bastion._hosts import HostCheck
from bastion._identity import Principal, TokenVerifier
from bastion._json import loads_strict
from bastion._rest import AUTH_RESPONSES, describe_problems, error_doc, error_response, rest_app

from ._bundles import BundleVerifier
from ._document import PolicyDocument
from ._identities import IdentityStore
from ._identities_api import Limit, add_identity_routes
from ._live_tools import check_live_tools, fetch_live_tools
from ._registry import Compiled, PolicyRegistry, compile_version
from ._rollouts import RolloutManager
from ._rollouts_api import add_rollout_routes
from ._simulate import (
    SIMULATE_BODY,
    SimulationInputError,
    SimulationNotFound,
    SimulationRefused,
    SimulationReport,
    Simulator,
    parse_request,
)
from ._store import MAX_VERSION, Signature, UnknownVersion, VersionExists, VersionRecord

_POLICY_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class Status(BaseModel):
    status: str = Field(description="'ok' / 'ready', or why the service is not ready.")


class PolicySummary(BaseModel):
    name: str
    version: int
    digest: str = Field(description="sha256 of the version's submitted document in canonical form.")
    rule_count: int
    activated_at: datetime
    activated_by: str = Field(description="Subject of the operator token, or 'bastion.yaml'.")


class PolicyList(BaseModel):
    bundle_digest: str = Field(description="sha256 of the whole active set: the digest every decision carries.")
    policies: list[PolicySummary] = Field(description="Active policies in evaluation order.")


class Submission(BaseModel):
    """A policy version to create or validate: exactly one of `bundle` or `document`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    bundle: str | None = Field(default=None, description="A signed bundle: JWS compact, payload = the document.")
    document: str | None = Field(
        default=None, description="The document text (YAML or JSON); only when BASTION_POLICY_REQUIRE_SIGNED=false."
    )


class Created(BaseModel):
    name: str
    version: int
    digest: str
    created: bool = Field(description="False when this exact content was already stored (nothing changed).")
    warnings: list[str] = Field(
        default_factory=list,
        description="Rules naming tools or arguments no live upstream has (the version is stored all the same: "
        "a tool may be deployed after its policy).",
    )
    live_tools: str | None = Field(
        default=None, description="What the rules were checked against, or 'live tools not checked: <why>'."
    )


class ValidationReport(BaseModel):
    valid: bool
    problems: list[str] = Field(description="What is wrong, each naming the field and the fix; empty when valid.")
    name: str | None = None
    version: int | None = None
    digest: str | None = None
    signature_kid: str | None = None
    warnings: list[str] = Field(default_factory=list, description="Findings that do not make the document invalid.")
    live_tools: str | None = Field(
        default=None, description="What the rules were checked against, or 'live tools not checked: <why>'."
    )


class VersionSummary(BaseModel):
    name: str
    version: int
    digest: str
    author: str = Field(description="Subject of the operator token that created it, or 'bastion.yaml'.")
    created_at: datetime
    signature_kid: str | None = Field(description="kid of the key the bundle verified against; null if unsigned.")
    active: bool


class VersionList(BaseModel):
    name: str
    active_version: int | None
    versions: list[VersionSummary] = Field(description="Lowest version first, above `after`, at most `limit`.")
    next: int | None = Field(description="Pass as `after` for the next page; null on the last page.")


class VersionDetail(VersionSummary):
    document: str = Field(description="The submitted document text.")
    canonical: str = Field(description="The canonical JSON the digest is the sha256 of (defaults not filled in).")
    signature: str | None = Field(description="The JWS the version was submitted in; null if unsigned.")
    diff: str = Field(description="Unified diff of the canonical YAML against the previous version; '' for the first.")


class Activated(BaseModel):
    name: str
    version: int
    digest: str
    previous_version: int | None = Field(description="The version that was active before; null if none.")


_SUBMISSION_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": Submission.model_json_schema()}}}
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    409: error_doc("This (name, version) is stored with other content: versions are immutable."),
    413: error_doc("The body is over BASTION_POLICY_MAX_BODY."),
    422: error_doc("Not a valid submission, an invalid document, or a refused bundle (the message says why)."),
}
_READ_ERRORS: dict[int | str, dict[str, Any]] = {**AUTH_RESPONSES, 404: error_doc("No such policy or version.")}

Name = Annotated[str, Path(max_length=256, description="Policy name (metadata.name).")]
_PLAIN_VERSION = re.compile(r"[1-9][0-9]{0,18}")


def _plain_version(value: object) -> object:
    # int() reads "01", "+1", " 1" and "1_0" (as 10): an address must name one version one way,
    # so an audit trail or a log line that quotes it means the same to every reader.
    if isinstance(value, str) and _PLAIN_VERSION.fullmatch(value) is None:
        raise ValueError("must be a version number written plainly (1, 2, …: no sign, leading zero, space or _)")
    return value


Version = Annotated[
    int, BeforeValidator(_plain_version), Path(ge=1, le=MAX_VERSION, description="Policy version (metadata.version).")
]


def create_app(
    *,
    policies: PolicyRegistry,
    bundles: BundleVerifier,
    verifier: TokenVerifier,
    hosts: HostCheck,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    require_signed: bool = True,
    max_body: int = 2 * 1024 * 1024,
    proxy_addr: str | None = None,
    simulator: Simulator | None = None,
    rollouts: RolloutManager | None = None,
    identities: IdentityStore | None = None,
) -> FastAPI:
    """The admin app; `is_ready` says whether the gRPC side is serving decisions.

    `verifier` checks the bearer JWTs of the /v1 routes; `bundles` checks signed policy
    bundles; `hosts` is the DNS-rebinding check. `proxy_addr` is where validation reads the
    live tools (None: not checked); `simulator` runs POST /v1/simulate (None: 503);
    `rollouts` runs /v1/rollouts (None: one of its own over `policies`, for an app alone);
    `identities` serves /v1/keys and /v1/revocations (None: those routes are absent).
    """
    app = rest_app(title="Bastion policy service", hosts=hosts)
    app.add_exception_handler(VersionExists, _conflict)
    app.add_exception_handler(UnknownVersion, _not_found)
    app.add_exception_handler(SimulationNotFound, _not_found)
    app.add_exception_handler(SimulationRefused, _simulation_refused)
    read = [Depends(require_reader(verifier))]
    operator = Depends(require_operator(verifier))
    # Changes to what is in force for every tenant (found by an attacker's probe: an operator
    # of tenant 'globex' put a weaker version back in force for tenant 'acme').
    changes_policy = Depends(
        require_home_operator(verifier, "change policies", "a policy governs the agents of every tenant")
    )

    async def submission(request: Request, *, storing: bool) -> tuple[str, Signature | None]:
        body = await _read_body(request, max_body)
        try:
            parsed = Submission.model_validate(loads_strict(body))
        except ValidationError as exc:
            raise _invalid_request(describe_problems(exc.errors())) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise _invalid_request(f"the body is not valid JSON: {exc}") from exc
        if (parsed.bundle is None) == (parsed.document is None):
            raise _invalid_request("send exactly one of 'bundle' (a signed JWS) or 'document'")
        if parsed.bundle is not None:
            verified = bundles.verify(parsed.bundle)
            return verified.text, Signature(parsed.bundle, verified.kid)
        assert parsed.document is not None
        if storing and require_signed:
            raise bundles.refuse(
                "unsigned",
                "this service accepts only signed bundles: send {'bundle': '<JWS>'} "
                "(`bastion policy apply` signs with the dev key)",
            )
        return parsed.document, None

    async def live_check(request: Request, document: PolicyDocument) -> tuple[list[str], list[str], str]:
        """(problems, warnings, what was checked) against the proxy's live tools, when it answers."""
        if proxy_addr is None:
            return [], [], "live tools not checked: no proxy address configured (BASTION_PROXY_ADDR)"
        live = await fetch_live_tools(proxy_addr, request.headers.get("authorization"))
        problems, warnings = check_live_tools(document, live)
        return problems, warnings, live.summary

    async def create(principal: Principal, request: Request, expect: tuple[str, int] | None) -> JSONResponse:
        text, signature = await submission(request, storing=True)
        record, created = await policies.create(text, author=principal.subject, signature=signature, expect=expect)
        problems, warnings, live_tools = await live_check(request, (await _compile(text)).document)
        body = Created(
            name=record.name,
            version=record.version,
            digest=record.digest,
            created=created,
            warnings=problems + warnings,
            live_tools=live_tools,
        )
        return JSONResponse(body.model_dump(), status_code=201 if created else 200)

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
        snapshot = policies.snapshot
        return PolicyList(
            bundle_digest=snapshot.policies.digest,
            policies=[
                PolicySummary(
                    name=active.name,
                    version=active.version,
                    digest=active.digest,
                    rule_count=active.rule_count,
                    activated_at=_time(active.activated_at),
                    activated_by=active.activated_by,
                )
                for active in snapshot.versions
            ],
        )

    @app.post(
        "/v1/policies",
        summary="Create a policy version (admin, or operator of the default tenant); it is not activated.",
        status_code=201,
        response_model=Created,
        responses={200: {"model": Created, "description": "This exact content was already stored."}, **_WRITE_ERRORS},
        openapi_extra=_SUBMISSION_BODY,
    )
    async def create_version(request: Request, principal: Principal = changes_policy) -> JSONResponse:
        return await create(principal, request, None)

    @app.put(
        "/v1/policies/{name}/versions/{version}",
        summary="Create this policy version (admin, or operator of the default tenant); the document names the same.",
        status_code=201,
        response_model=Created,
        responses={200: {"model": Created, "description": "This exact content was already stored."}, **_WRITE_ERRORS},
        openapi_extra=_SUBMISSION_BODY,
    )
    async def put_version(
        request: Request, name: Name, version: Version, principal: Principal = changes_policy
    ) -> JSONResponse:
        return await create(principal, request, (_check_name(name), version))

    @app.post(
        "/v1/policies/validate",
        summary="Validate a policy document or bundle without storing anything (operator or admin).",
        responses=_WRITE_ERRORS,
        openapi_extra=_SUBMISSION_BODY,
    )
    async def validate(request: Request, principal: Principal = operator) -> ValidationReport:
        try:
            text, signature = await submission(request, storing=False)
        except PolicyError as exc:  # a refused bundle is a finding here, not a failed request
            return ValidationReport(valid=False, problems=[str(exc)])
        try:
            compiled = await _compile(text)
            policies.check_enforceable(compiled.document)  # Rego mode: what bastion.rego cannot evaluate
        except PolicyValidationError as exc:
            return ValidationReport(valid=False, problems=str(exc).splitlines())
        problems, warnings, live_tools = await live_check(request, compiled.document)
        return ValidationReport(
            valid=not problems,
            problems=problems,
            warnings=warnings,
            live_tools=live_tools,
            name=compiled.document.metadata.name,
            version=compiled.document.metadata.version,
            digest=compiled.digest,
            signature_kid=signature.kid if signature else None,
        )

    @app.get(
        "/v1/policies/{name}/versions",
        summary="Every version of a policy (operator, admin or auditor).",
        dependencies=read,
        responses=_READ_ERRORS,
    )
    async def list_versions(
        name: Name,
        after: Annotated[int, Query(ge=0, le=MAX_VERSION, description="The `next` of the previous page.")] = 0,
        limit: Limit = 100,
    ) -> VersionList:
        # Paged like /v1/keys and /v1/rollouts: each version is a stored document of up to
        # the body bound, and a policy may have thousands.
        records = await policies.versions(_check_name(name), after=after, limit=limit + 1, summaries=True)
        if not records and not await policies.versions(name, limit=1, summaries=True):
            raise UnknownVersion(f"no policy named {name!r}")
        page = records[:limit]
        active = _active_version(policies, name)
        return VersionList(
            name=name,
            active_version=active,
            versions=[_summary(record, active) for record in page],
            next=page[-1].version if len(records) > limit else None,
        )

    @app.get(
        "/v1/policies/{name}/versions/{version}",
        summary="One policy version: document, digest, author, time, signature and diff (operator, admin or auditor).",
        dependencies=read,
        responses=_READ_ERRORS,
    )
    async def get_version(name: Name, version: Version) -> VersionDetail:
        record = await policies.get(_check_name(name), version)
        summary = _summary(record, _active_version(policies, name))
        return VersionDetail(
            **summary.model_dump(),
            document=record.document,
            canonical=record.canonical,
            signature=record.signature.jws if record.signature else None,
            diff=record.diff,
        )

    @app.post(
        "/v1/policies/{name}/versions/{version}/activate",
        summary="Make a stored version the active one of its policy (admin, or operator of the default tenant).",
        responses={**_READ_ERRORS, 422: error_doc("The version's signed bundle has expired: sign a new version.")},
    )
    async def activate(name: Name, version: Version, principal: Principal = changes_policy) -> Activated:
        # An expired approval is never put in force (bastion.policy._bundles), here as in rollouts.
        bundles.check_in_force(await policies.get(_check_name(name), version))
        active, previous = await policies.activate(name, version, by=principal.subject)
        return Activated(name=active.name, version=active.version, digest=active.digest, previous_version=previous)

    @app.post(
        "/v1/simulate",
        summary="Replay recorded or posted actions against a candidate version and the active set (operator or admin).",
        response_model=SimulationReport,
        responses={
            **_READ_ERRORS,
            413: error_doc("The body is over BASTION_POLICY_MAX_BODY."),
            422: error_doc("Not a valid simulation request, or an invalid inline document (the message says why)."),
            429: error_doc("Another simulation is running in this service (Retry-After says when to retry)."),
            502: error_doc("The graph answered with an error or an unreadable page."),
            503: error_doc("The graph could not be reached within the deadline, or simulation is not configured."),
        },
        openapi_extra=SIMULATE_BODY,
    )
    async def simulate(request: Request, principal: Principal = operator) -> SimulationReport:
        body = await _read_body(request, max_body)
        try:
            parsed, events = parse_request(body)
        except SimulationInputError as exc:
            raise _invalid_request(str(exc)) from exc
        if simulator is None:
            raise HTTPException(503, "simulation is not configured in this service")
        return await simulator.run(parsed, events, request.headers.get("authorization"))

    add_rollout_routes(
        app,
        rollouts or RolloutManager(policies, registry=registry, bundles=bundles),
        read=read,
        operator=changes_policy,
        read_body=_read_body,
        check_name=_check_name,
        max_body=max_body,
    )
    if identities is not None:
        reader = Depends(require_reader(verifier))
        add_identity_routes(app, identities, reader=reader, operator=operator, read_body=_read_body, max_body=max_body)
    return app


async def _compile(text: str) -> Compiled:
    # Parsing and compiling a large document takes a while: not on the event loop.
    return await asyncio.to_thread(compile_version, text)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"request body over {limit} bytes (BASTION_POLICY_MAX_BODY)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes (BASTION_POLICY_MAX_BODY)")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_name(name: str) -> str:
    # Exact, lowercase DNS labels only: 'Demo', a full-width 'demo' or 'demo ' are not another
    # spelling of 'demo', and are refused rather than looked up.
    if not _POLICY_NAME.fullmatch(name):
        raise PolicyValidationError(
            f"{name[:80]!r} is not a policy name: 1-63 lowercase letters, digits and '-' (metadata.name)"
        )
    return name


def _active_version(policies: PolicyRegistry, name: str) -> int | None:
    return next((active.version for active in policies.snapshot.versions if active.name == name), None)


def _summary(record: VersionRecord, active: int | None) -> VersionSummary:
    return VersionSummary(
        name=record.name,
        version=record.version,
        digest=record.digest,
        author=record.author,
        created_at=_time(record.created_at),
        signature_kid=record.signature.kid if record.signature else None,
        active=record.version == active,
    )


def _time(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _invalid_request(message: str) -> Exception:
    return HTTPException(422, message)


async def _conflict(request: Request, exc: Exception) -> Response:
    return error_response(409, "bastion.policy.version_exists", str(exc))


async def _simulation_refused(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, SimulationRefused):  # registered for SimulationRefused only
        raise exc
    return error_response(exc.status, exc.code, str(exc), exc.headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "bastion.not_found", str(exc.args[0]) if exc.args else "not found")
