"""The audit routes of the graph REST API: `/audit/verify`, `/audit/export`, `/audit/slo`.

Mounted by `_api.create_app` behind the same reader guard as every data route
(operator, admin or auditor). Query mistakes answer 400 (a range that ends before it
starts, a window that is not a duration) or 422 (an unknown format or schema, a time
that is not RFC 3339 or not within years 1-9999 in UTC) in the one error body of bastion._rest.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from bastion._errors import InvalidInput
from bastion._rest import error_doc

from ._export import ExportRange, entries_of, export_csv, export_json, verify_store
from ._store import GraphStore
from ._views import AuditVerifyView, RuleStatsView, SloView, verify_view

#: /audit/slo percentiles, as reported (p50 ... p999).
PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}
MAX_WINDOW_S = 31 * 86_400
_WINDOW = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
_BAD_QUERY: dict[int | str, dict[str, Any]] = {400: error_doc("A query value is out of range.")}

router = APIRouter(tags=["audit"])


def _store(request: Request) -> GraphStore:
    store: GraphStore = request.app.state.store
    return store


@router.get("/audit/verify", response_model=AuditVerifyView)
async def verify_audit(request: Request) -> AuditVerifyView:
    """Recompute the audit chain from its first record and name the first altered, removed or
    inserted record, then hold it to its signed checkpoints, which name a chain cut short or
    rewritten with recomputed hashes up to the last checkpoint. Records cut after the last
    checkpoint are not visible here: compare `head` with one kept elsewhere (an earlier verify,
    an export's chain head). The outcome is exported as
    `bastion_audit_chain_ok` for the audit-chain alert."""
    report = await verify_store(_store(request), keys=request.app.state.checkpoint_keys)
    request.app.state.metrics.chain_verified(report.ok)
    return verify_view(report)


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses=_BAD_QUERY | {200: {"content": {"text/csv": {}, "application/json": {}}}},
)
async def export_audit(
    request: Request,
    file_format: Annotated[Literal["csv", "json"], Query(alias="format", description="csv or json.")] = "csv",
    schema: Annotated[
        Literal["soc2_v1", "iso42001_v1"], Query(description="soc2_v1 (CC6.6, CC7.2) or iso42001_v1 (A.8, A.10).")
    ] = "soc2_v1",
    since: Annotated[
        datetime | None,
        Query(alias="from", description="RFC 3339; records that entered the chain at or after it (UTC if no zone)."),
    ] = None,
    until: Annotated[
        datetime | None, Query(alias="to", description="RFC 3339; records that entered the chain before it.")
    ] = None,
) -> StreamingResponse:
    """A contiguous piece of the audit chain, streamed, with the chain head it reaches so the file
    verifies offline (`bastion audit verify --export FILE`). Columns and shape: bastion.graph._export."""
    span = ExportRange(schema=schema, since=_utc("from", since), until=_utc("to", until))
    if span.since_ns is not None and span.until_ns is not None and span.since_ns >= span.until_ns:
        raise HTTPException(status_code=400, detail=f"from ({since}) must be before to ({until})")
    entries = entries_of(_store(request), span)
    # The file ends with the service's signature over what it holds (verifiable with --key).
    key = request.app.state.signing_key
    body = export_csv(entries, span, key) if file_format == "csv" else export_json(entries, span, key)
    filename = f"bastion-audit-{schema}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{file_format}"
    return StreamingResponse(
        body, media_type=_MEDIA[file_format], headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


@router.get("/audit/slo", response_model=SloView, responses=_BAD_QUERY)
async def audit_slo(
    request: Request,
    window: Annotated[str, Query(description="How far back: a number and s, m, h or d, at most 31d.")] = "1h",
) -> SloView:
    """Decision latency percentiles, verifier fallbacks and block rate by rule over the window."""
    window_s = _window_s(window)
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    since_ns = int(since.timestamp()) * 10**9 + since.microsecond * 1000
    stats = await _store(request).decision_stats(since_ns, tuple(PERCENTILES.values()))
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
