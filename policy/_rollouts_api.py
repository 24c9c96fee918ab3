"""Admin REST routes of canary rollouts (bastion.policy._rollouts), added to the app of
bastion.policy._api with its auth dependencies, body cap and error body:

    POST /v1/rollouts                     start: {policy, version, percent, stickiness?, rollback_on?} → 201
    GET  /v1/rollouts?policy=&after=&limit=
                                          rollouts (of one policy), oldest first, paged like
                                          /v1/keys: `limit` (1-1000, default 100), `next` to
                                          pass as `after`
    GET  /v1/rollouts/{id}                one rollout: state, percent, stickiness, counts per arm, reason
    POST /v1/rollouts/{id}/promote        the candidate becomes the active version; the rollout ends
    POST /v1/rollouts/{id}/rollback       the rollout ends; the stable version stays active

Changes need role admin, or operator in the deployment's own tenant (`default`: a rollout
puts a version in force for every tenant, bastion.policy._api); reads also auditor.
Refusals, and nothing changes:

    403  an operator of another tenant, an auditor or an agent changing (bastion.auth.forbidden)

    404  unknown version (bastion.not_found), unknown rollout (bastion.not_found), an `after`
         naming no rollout (of the policy listed)                  bastion.not_found
    409  the policy has no active version, the version is the active one, a rollout of the
         policy is running, too many rollouts run, the rollout has ended, OPA mode, another
         version of the policy was activated while the rollout was starting
                                                                   bastion.policy.rollout_conflict
    422  not JSON, unknown field, wrong type (a bool is not a percent), percent outside 0-100,
         unknown stickiness, a bad rollback_on, a bad policy name   bastion.invalid_request / .policy.invalid
    422  start or promote of a version whose signed bundle has expired  bastion.policy.signature
    422  a `limit` outside 1-1000 or not an integer, an `after` over 64 characters
                                                                   bastion.invalid_request
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Path, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException

from bastion._identity import Principal
from bastion._json import loads_strict
from bastion._rest import AUTH_RESPONSES, describe_problems, error_doc, error_response

from ._identities_api import Limit
from ._rollouts import Rollout, RolloutManager, RolloutRequest, UnknownRollout
from ._store import RolloutConflict


class ArmCounts(BaseModel):
    decisions: int
    denies: int = Field(description="Decisions with effect deny (errors included).")
    errors: int = Field(description="Denies because the deciding rule's `when` failed to evaluate.")


class RolloutView(BaseModel):
    id: str = Field(description="Server-generated uuid7.")
    policy: str
    version: int = Field(description="The candidate version (CANARY arm).")
    stable_version: int = Field(description="The active version when the rollout started (STABLE arm).")
    percent: float
    stickiness: str = Field(description="'agent' (tenant + agent id) or 'session' (tenant + session id, else agent).")
    rollback_on: dict[str, Any] | None
    state: str = Field(description="running | promoted | rolled_back | auto_rolled_back")
    started_at: datetime
    started_by: str
    ended_at: datetime | None
    ended_by: str | None
    reason: str = Field(description="Why it ended ('' while running).")
    counts: dict[str, ArmCounts] = Field(description="Per arm ('stable', 'canary'), since the rollout started.")


class RolloutList(BaseModel):
    rollouts: list[RolloutView] = Field(description="Oldest first.")
    next: str | None = Field(description="Pass as `after` for the next page; null on the last page.")


RolloutId = Annotated[str, Path(max_length=64, description="The rollout id (uuid7).")]

_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": RolloutRequest.model_json_schema()}}}
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    404: error_doc("No such rollout, or no such policy version."),
    409: error_doc("The rollouts' state refuses this step (the message says why)."),
}


def add_rollout_routes(
    app: FastAPI,
    rollouts: RolloutManager,
    *,
    read: list[Any],
    operator: Any,
    read_body: Any,
    check_name: Any,
    max_body: int,
) -> None:
    """Add the routes above; `operator` is the dependency of the routes that change something,
    `read_body(request, limit)` and `check_name(name)` are the app's own."""
    app.add_exception_handler(RolloutConflict, _conflict)
    app.add_exception_handler(UnknownRollout, _not_found)

    @app.post(
        "/v1/rollouts",
        summary="Start a canary rollout of a stored version (admin, or operator of the default tenant).",
        status_code=201,
        responses={
            **_ERRORS,
            422: error_doc(
                "Not a valid rollout request (the message says which field), or the version's bundle expired."
            ),
        },
        openapi_extra=_BODY,
    )
    async def start(request: Request, principal: Principal = operator) -> RolloutView:
        body = await read_body(request, max_body)
        try:
            parsed = RolloutRequest.model_validate(loads_strict(body))
        except ValidationError as exc:
            raise HTTPException(422, describe_problems(exc.errors())) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPException(422, f"the body is not valid JSON: {exc}") from exc
        check_name(parsed.policy)
        return _view(await rollouts.start(parsed, by=principal.subject))

    @app.get(
        "/v1/rollouts",
        summary="Rollouts, oldest first, paged (operator, admin or auditor).",
        dependencies=read,
        responses={**AUTH_RESPONSES, 404: error_doc("`after` names no rollout (of the policy listed).")},
    )
    async def list_rollouts(
        policy: Annotated[str | None, Query(max_length=63, description="Only this policy's.")] = None,
        after: Annotated[str | None, Query(max_length=64, description="The `next` of the previous page.")] = None,
        limit: Limit = 100,
    ) -> RolloutList:
        found, following = await rollouts.page(policy, after=after, limit=limit)
        return RolloutList(rollouts=[_view(item) for item in found], next=following)

    @app.get(
        "/v1/rollouts/{id}",
        summary="One rollout: state, counts per arm, reason (operator, admin or auditor).",
        dependencies=read,
        responses=_ERRORS,
    )
    async def get_rollout(id: RolloutId) -> RolloutView:
        return _view(await rollouts.get(id))

    @app.post(
        "/v1/rollouts/{id}/promote",
        summary="Make the candidate the active version and end the rollout (admin, or operator of the default tenant).",
        responses={**_ERRORS, 422: error_doc("The candidate's signed bundle has expired: sign a new version.")},
    )
    async def promote(id: RolloutId, principal: Principal = operator) -> RolloutView:
        return _view(await rollouts.promote(id, by=principal.subject))

    @app.post(
        "/v1/rollouts/{id}/rollback",
        summary="End the rollout; the stable version stays active (admin, or operator of the default tenant).",
        responses=_ERRORS,
    )
    async def rollback(id: RolloutId, principal: Principal = operator) -> RolloutView:
        return _view(await rollouts.rollback(id, by=principal.subject))


def _view(rollout: Rollout) -> RolloutView:
    return RolloutView(
        id=rollout.id,
        policy=rollout.policy,
        version=rollout.version,
        stable_version=rollout.stable_version,
        percent=rollout.percent,
        stickiness=rollout.stickiness,
        rollback_on=rollout.rollback_on,
        state=rollout.state,
        started_at=_time(rollout.started_at),
        started_by=rollout.started_by,
        ended_at=_time(rollout.ended_at) if rollout.ended_at is not None else None,
        ended_by=rollout.ended_by,
        reason=rollout.reason,
        counts={arm: ArmCounts(**counts) for arm, counts in rollout.counts.items()},
    )


def _time(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


async def _conflict(request: Request, exc: Exception) -> Response:
    return error_response(409, "bastion.policy.rollout_conflict", str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "bastion.not_found", str(exc.args[0]) if exc.args else "not found")
