"""The audit routes of the graph REST API: `/audit/verify`, `/audit/export`, `/audit/slo`.

Mounted by `_api.create_app` behind the same reader guard as every data route
(operator, admin or auditor). Query mistakes answer 400 (a range that ends before it
starts, a window that is not a duration, `after` without `anchor`) or 422 (an unknown
format or schema, a time that is not RFC 3339 or not within years 1-9999 in UTC) in the
one error body of bastion._rest. Verify and export walk the chain: one at a time, each
under a deadline (bastion.graph._walks); another meanwhile is 429 `bastion.graph.audit_busy`.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BeforeValidator

from bastion._errors import InvalidInput, InvalidQuery
from bastion._rest import error_doc, error_response

from ._audit import GENESIS
from ._export import ExportRange, entries_of, export_csv, export_json, verify_walk
from ._store import GraphStore
from ._views import AuditVerifyView, RuleStatsView, SloView, verify_view
from ._walks import BUSY_CODE, DEADLINE_CODE, AuditWalks, Walk, ended_after

#: /audit/slo percentiles, as reported (p50 ... p999).
PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}
MAX_WINDOW_S = 31 * 86_400
_WINDOW = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
_BAD_QUERY: dict[int | str, dict[str, Any]] = {400: error_doc("A query value is out of range.")}
_BUSY: dict[int | str, dict[str, Any]] = {
    429: error_doc(
        "Another walk of the audit chain (verify or export) is running in this service; retry after Retry-After."
    )
}
_HASH = r"^[0-9a-f]{64}$"

router = APIRouter(tags=["audit"])


def _store(request: Request) -> GraphStore:
    store: GraphStore = request.app.state.store
    return store


@router.get("/audit/verify", response_model=AuditVerifyView, responses=_BAD_QUERY | _BUSY)
async def verify_audit(
    request: Request,
    after: Annotated[
        int | None,
        Query(ge=1, description="Continue a walk that stopped at its deadline: its `next.after`. Needs `anchor`."),
    ] = None,
    anchor: Annotated[
        str | None, Query(pattern=_HASH, description="The `next.anchor` given with `after` (that record's hash).")
    ] = None,
) -> Response | AuditVerifyView:
    """Recompute the audit chain from its first record and name the first altered, removed or
    inserted record, then hold it to its signed checkpoints, which name a chain cut short or
    rewritten with recomputed hashes up to the last checkpoint. Records cut after the last
    checkpoint are not visible here: compare `head` with one kept elsewhere (an earlier verify,
    an export's chain head). A walk stops at BASTION_AUDIT_WALK_DEADLINE_S (`stopped`,
    `ok` false); `next` continues it from the record it reached. The outcome of a walk from
    the first record that reaches the head, or a problem, is exported as
    `bastion_audit_chain_ok` for the audit-chain alert."""
    if (after is None) != (anchor is None):
        raise InvalidQuery("give `after` and `anchor` together (a stopped walk's `next`), or neither")
    walk = _walk(request)
    if isinstance(walk, Response):
        return walk
    try:
        report = await verify_walk(
            _store(request),
            keys=request.app.state.checkpoint_keys,
            deadline=walk.deadline,
            after=after or 0,
            anchor=anchor or GENESIS,
        )
    finally:
        walk.end()
    # Only a walk from the first record speaks for the whole chain; a continuation's anchor is
    # the caller's to give (a wrong one is its own `altered`), so it never moves the alert.
    if after is None and (report.stopped is None or not report.chain.ok):
        request.app.state.metrics.chain_verified(report.ok)
    return verify_view(report)


#: DESIGN §7 writes the route `…&from=&to=`: an empty bound is no bound, as if left out
#: (anything else that is not an RFC 3339 time stays a 422).
_UNBOUNDED_WHEN_EMPTY = BeforeValidator(lambda value: None if value == "" else value)


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses=_BAD_QUERY | _BUSY | {200: {"content": {"text/csv": {}, "application/json": {}}}},
)
async def export_audit(
    request: Request,
    file_format: Annotated[Literal["csv", "json"], Query(alias="format", description="csv or json.")] = "csv",
    schema: Annotated[
        Literal["soc2_v1", "iso42001_v1"], Query(description="soc2_v1 (CC6.6, CC7.2) or iso42001_v1 (A.8, A.10).")
    ] = "soc2_v1",
    since: Annotated[
        datetime | None,
        _UNBOUNDED_WHEN_EMPTY,
        Query(
            alias="from",
            description="RFC 3339; records that entered the chain at or after it (UTC if no zone). "
            "Empty or absent: from the first record.",
        ),
    ] = None,
    until: Annotated[
        datetime | None,
        _UNBOUNDED_WHEN_EMPTY,
        Query(alias="to", description="RFC 3339; records that entered the chain before it. Empty or absent: to now."),
    ] = None,
) -> Response:
    """A contiguous piece of the audit chain, streamed, with the chain head it reaches so the file
    verifies offline (`bastion audit verify --export FILE`). Columns and shape: bastion.graph._export.
    Written for at most BASTION_AUDIT_WALK_DEADLINE_S: a file cut there ends with
    `"stopped": "deadline"` and its last record as chain head, and fails verification as
    `incomplete`; export the rest from that record's time."""
    span = ExportRange(schema=schema, since=_utc("from", since), until=_utc("to", until))
    if span.since_ns is not None and span.until_ns is not None and span.since_ns >= span.until_ns:
        raise HTTPException(status_code=400, detail=f"from ({since}) must be before to ({until})")
    walk = _walk(request)
    if isinstance(walk, Response):
        return walk
    entries = entries_of(_store(request), span, deadline=walk.deadline)
    # The file ends with the service's signature over what it holds (verifiable with --key).
    key = request.app.state.signing_key
    body = export_csv(entries, span, key) if file_format == "csv" else export_json(entries, span, key)
    filename = f"bastion-audit-{schema}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{file_format}"
    return StreamingResponse(
        ended_after(walk, body),
        media_type=_MEDIA[file_format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/audit/slo", response_model=SloView, responses=_BAD_QUERY)
async def audit_slo(
    request: Request,
    window: Annotated[str, Query(description="How far back: a number and s, m, h or d, at most 31d.")] = "1h",
) -> SloView | Response:
    """Decision latency percentiles, verifier fallbacks and block rate by rule over the window.

    Reads every decision of the window, so it takes the audit walks' one turn: four at once
    over 240,000 decisions held every reader for 2 s (an attacker's probe)."""
    window_s = _window_s(window)
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    since_ns = int(since.timestamp()) * 10**9 + since.microsecond * 1000
    walk = _walk(request)
    if isinstance(walk, Response):
        return walk
    # The query cannot be stopped part way: the answer gives up at the walk's deadline, and
    # the turn is held until the query has finished, so no other walk runs beside it.
    query = asyncio.ensure_future(_store(request).decision_stats(since_ns, tuple(PERCENTILES.values())))
    query.add_done_callback(functools.partial(_finished, walk))
    try:
        stats = await asyncio.wait_for(asyncio.shield(query), timeout=walk.left_s())
    except TimeoutError:
        return error_response(
            503,
            DEADLINE_CODE,
            f"the SLO report over {window} did not finish within BASTION_AUDIT_WALK_DEADLINE_S "
            f"({request.app.state.audit_walks.deadline_s:g} s); ask for a shorter window",
        )
    rules = sorted(stats.by_rule.items(), key=lambda item: (-item[1][0], item[0]))
    return SloView(
        window_s=window_s,
        since=since,
        decisions=stats.decisions,
        blocked=stats.blocked,
        block_rate=_rate(stats.blocked, stats.decisions),
        verifier_fallbacks=stats.fallbacks,
        latency_ms={
            name: round(stats.latency_ns[p] / 1e6, 3) for name, p in PERCENTILES.items() if p in stats.latency_ns
        },
        rules=[
            RuleStatsView(rule_id=rule, decisions=count, blocked=blocked, block_rate=_rate(blocked, count))
            for rule, (count, blocked) in rules
        ],
    )


def _finished(walk: Walk, query: asyncio.Future[Any]) -> None:
    """End `walk` once its query is done; an answer given up on is read here, not lost unread."""
    walk.end()
    if not query.cancelled():
        query.exception()


def _walk(request: Request) -> Walk | Response:
    """This request's turn to walk the chain, or the 429 that says another walk has it."""
    walks: AuditWalks = request.app.state.audit_walks
    walk = walks.begin()
    if walk is not None:
        return walk
    return error_response(
        429,
        BUSY_CODE,
        "another walk of the audit chain (a verify, an export or an SLO report) is running in this service, "
        f"for at most {walks.deadline_s:g} s (BASTION_AUDIT_WALK_DEADLINE_S); retry when it has answered",
        {"Retry-After": str(walks.retry_after_s())},
    )


def _utc(name: str, moment: datetime | None) -> datetime | None:
    """`moment` in UTC (UTC already when it has no zone). Checked here, before the answer
    starts: an offset can carry a valid time past year 9999 or before year 1 in UTC, which
    failed as the file's framing was written, after the 200 (an attacker's probe)."""
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    try:
        return aware.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(
            f"query.{name}: {moment.isoformat()} is not a time between years 1 and 9999 in UTC"
        ) from None


def _window_s(window: str) -> int:
    match = _WINDOW.fullmatch(window.strip())
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_WINDOW_S:
        raise HTTPException(
            status_code=400, detail=f"window={window!r}: give a duration such as 15m, 1h or 7d, at most 31d"
        )
    return seconds


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0
