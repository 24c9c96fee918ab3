"""The audit and drift-path routes of the graph REST app in process: /audit/verify, the
streamed exports and their offline verification, /audit/slo, and
/graphs/{workflow_id}/drift-path/{node_id}. Requests carry an auditor token."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fixtures.graphapi import auditor_token, bearer

from bastion._appconfig import AuthConfig
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_dev_key, load_public_keys
from bastion.graph import SqliteGraphStore, create_app
from bastion.graph._audit import canonical, chain_hash
from bastion.graph._checkpoints import sign
from bastion.graph._export import EXPORT_COLUMNS, verify_export
from bastion.v1 import graph_pb2, policy_pb2, verifier_pb2

_T0_NS = 1_767_225_600 * 10**9


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteGraphStore]:
    opened = await SqliteGraphStore.open(tmp_path / "graph.db")
    yield opened
    await opened.close()


def _client(store: SqliteGraphStore, home: Path) -> httpx.AsyncClient:
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), home))
    app = create_app(store, verifier=verifier, hosts=HostCheck(("graph",), "127.0.0.1"))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://graph", headers=bearer(auditor_token(home))
    )


def _event(
    event_id: str,
    *,
    tool: str = "send",
    server: str = "mail",
    outcome: graph_pb2.Outcome.ValueType = graph_pb2.FORWARDED,
    rule: str = "r1",
    latency_ms: int = 2,
    parents: Sequence[str] = (),
    informed_by: Sequence[tuple[str, str]] = (),
    fallback: bool = False,
    started_ns: int | None = None,
) -> graph_pb2.Event:
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id="wf-1",
        node_id=f"node-{event_id}",
        parent_ids=parents,
        edges=[
            graph_pb2.EdgeHint(target_node_id=target, type=graph_pb2.INFORMED_BY, reason=reason)
            for target, reason in informed_by
        ],
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server=server, tool=tool, method="tools/call"),
        decision=policy_pb2.Decision(effect=policy_pb2.ALLOW, rule_id=rule, policy_name="mail", policy_version=7),
        verifier=verifier_pb2.ScoreResponse(deviation_score=0.125, threshold=0.8),
        verifier_fallback=fallback,
        outcome=outcome,
    )
    if outcome == graph_pb2.BLOCKED:
        event.violation_id = f"v-{event_id}"
        event.block_code = rule
        event.decision.effect = policy_pb2.DENY
    start = started_ns if started_ns is not None else _T0_NS
    event.started_at.FromNanoseconds(start)
    event.decided_at.FromNanoseconds(start + latency_ms * 1_000_000)
    return event


# --- verify and export --------------------------------------------------------------------


async def test_verify_reports_the_head_of_an_intact_chain(store: SqliteGraphStore, tmp_path: Path) -> None:
    await store.ingest([_event("e1"), _event("e2", outcome=graph_pb2.BLOCKED)])
    head = await store.audit_head()
    async with _client(store, tmp_path) as client:
        answer = (await client.get("/audit/verify")).json()
    assert head is not None
    assert answer == {
        "ok": True,
        "records": 2,
        "first": 1,
        "head": {"sequence": 2, "hash": head.hash},
        "problem": None,
        "checkpoints": 0,
        "stopped": None,
        "next": None,
    }


@pytest.mark.parametrize("file_format", ["csv", "json"])
async def test_an_export_round_trips_and_verifies_offline_against_its_chain_head(
    store: SqliteGraphStore, tmp_path: Path, file_format: str
) -> None:
    await store.ingest([_event(f"e{n}", outcome=graph_pb2.BLOCKED if n % 2 else graph_pb2.FORWARDED) for n in range(7)])
    head = await store.audit_head()
    assert head is not None
    async with _client(store, tmp_path) as client:
        response = await client.get("/audit/export", params={"format": file_format, "schema": "soc2_v1"})
    assert response.status_code == 200
    assert response.headers["content-disposition"].endswith(f'.{file_format}"')
    path = tmp_path / f"export.{file_format}"
    path.write_bytes(response.content)

    report = verify_export(path, head=head.hash)
    assert report.ok, report.chain.problem
    assert report.schema_version == "soc2.audit.v1"
    assert report.stated_head is not None
    assert (report.stated_head.sequence, report.stated_head.hash) == (7, head.hash)
    rows = _rows(response.content, file_format)
    assert [row["decision"] for row in rows] == ["ALLOW", "DENY"] * 3 + ["ALLOW"]
    assert rows[1]["violation_id"] == "v-e1"
    assert str(rows[1]["policy_version"]) == "7"
    assert str(rows[1]["deviation_score"]) == "0.125"
    assert rows[-1]["chain_hash"] == head.hash


def _rows(content: bytes, file_format: str) -> list[dict[str, Any]]:
    if file_format == "json":
        document = orjson.loads(content)
        assert document["controls"] == ["CC6.6", "CC7.2"]
        assert document["chain_head"]["records"] == len(document["records"])
        rows: list[dict[str, Any]] = document["records"]
        return rows
    reader = csv.DictReader(io.StringIO(content.decode()))
    assert tuple(reader.fieldnames or ()) == EXPORT_COLUMNS
    parsed = list(reader)
    assert parsed[-1]["kind"] == "chain_head"
    return parsed[:-1]


async def test_an_iso42001_export_of_a_time_range_is_a_contiguous_piece_that_verifies(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    await store.ingest([_event("e1")])
    await store.ingest([_event("e2")])
    await store.ingest([_event("e3")])
    entries = await store.audit_entries()
    recorded = [orjson.loads(entry.record)["recorded_at"] for entry in entries]
    async with _client(store, tmp_path) as client:
        response = await client.get(
            "/audit/export", params={"format": "json", "schema": "iso42001_v1", "from": recorded[1]}
        )
    path = tmp_path / "range.json"
    path.write_bytes(response.content)
    document = orjson.loads(response.content)

    assert document["schema_version"] == "iso42001.audit.v1"
    assert document["controls"] == ["A.8", "A.10"]
    assert [record["sequence"] for record in document["records"]] == [2, 3]
    assert document["anchor"] == {"sequence": 1, "hash": entries[0].hash}
    assert verify_export(path).ok


@pytest.mark.parametrize(
    ("edit", "kind"),
    [
        (lambda text: text.replace('""decision"":""DENY""', '""decision"":""ALLOW""', 1), "altered"),  # the record
        (lambda text: text.replace(",DENY,", ",ALLOW,", 1), "altered"),  # only the column
        (lambda text: "\r\n".join(line for i, line in enumerate(text.split("\r\n")) if i != 3), "removed"),
        (lambda text: "\r\n".join(text.split("\r\n")[:-2]) + "\r\n", "removed"),  # cut short
    ],
    ids=["record", "column", "row-deleted", "cut-short"],
)
async def test_an_edited_csv_export_fails_offline_verification(
    store: SqliteGraphStore, tmp_path: Path, edit: Any, kind: str
) -> None:
    await store.ingest([_event(f"e{n}", outcome=graph_pb2.BLOCKED if n % 2 else graph_pb2.FORWARDED) for n in range(5)])
    async with _client(store, tmp_path) as client:
        text = (await client.get("/audit/export")).text
    path = tmp_path / "export.csv"
    path.write_text(edit(text), newline="")

    report = verify_export(path)
    assert report.chain.problem is not None, text
    assert report.chain.problem.kind == kind


async def test_an_export_of_an_empty_range_is_well_formed(store: SqliteGraphStore, tmp_path: Path) -> None:
    async with _client(store, tmp_path) as client:
        csv_text = (await client.get("/audit/export")).content
        json_text = (await client.get("/audit/export", params={"format": "json"})).content
    assert orjson.loads(json_text)["records"] == []
    for name, content in (("e.csv", csv_text), ("e.json", json_text)):
        (tmp_path / name).write_bytes(content)
        assert verify_export(tmp_path / name).ok


async def test_a_csv_export_keeps_formulas_inert_and_still_verifies(store: SqliteGraphStore, tmp_path: Path) -> None:
    # An agent id is an IdP's `sub` or an API key's agent name, a rule id an operator's: a
    # spreadsheet must not run one as a formula when an auditor opens the export.
    values = [
        '=HYPERLINK("http://evil.example/","open")',
        "+1+1",
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "-2",
        "'quoted",
        "\tx",
    ]
    events = []
    for n, value in enumerate(values):
        event = _event(f"e{n}", outcome=graph_pb2.BLOCKED, rule=value)
        event.agent_id = value
        events.append(event)
    await store.ingest(events)
    async with _client(store, tmp_path) as client:
        content = (await client.get("/audit/export")).content
    rows = list(csv.DictReader(io.StringIO(content.decode())))[:-1]
    for row, value in zip(rows, values, strict=True):
        assert row["agent_id"] == "'" + value
        assert row["rule_id"] == "'" + value
        assert orjson.loads(row["record"])["agent_id"] == value  # the record itself is untouched
    path = tmp_path / "inert.csv"
    path.write_bytes(content)
    assert verify_export(path).ok
    # The quote is read back exactly: a cell whose quote is removed no longer matches its record.
    path.write_bytes(content.replace(b"'+1+1", b"+1+1", 1))
    report = verify_export(path)
    assert report.chain.problem is not None
    assert report.chain.problem.kind == "altered"


@pytest.mark.parametrize(
    "bounds",
    [
        {"to": "9999-12-31T23:59:59Z"},
        {"from": "0001-01-01T00:00:00Z"},
        {"from": "0001-01-01T00:00:00Z", "to": "9999-12-31T23:59:59Z"},
        {"from": "2262-04-12T00:00:00Z"},  # past the last nanosecond a 64-bit store holds
    ],
)
@pytest.mark.parametrize("file_format", ["csv", "json"])
async def test_an_export_bounded_beyond_the_years_the_store_holds_is_whole_and_verifies(
    store: SqliteGraphStore, tmp_path: Path, bounds: dict[str, str], file_format: str
) -> None:
    # "Everything up to 9999" is an auditor's natural query: it overflowed the store's
    # 64-bit query after the 200 was sent, and the client got a cut connection.
    await store.ingest([_event(f"e{n}") for n in range(3)])
    async with _client(store, tmp_path) as client:
        response = await client.get("/audit/export", params={"format": file_format, **bounds})
        assert (await client.get("/healthz")).status_code == 200
    assert response.status_code == 200
    path = tmp_path / f"far.{file_format}"
    path.write_bytes(response.content)
    assert verify_export(path).ok
    if bounds.get("from", "").startswith("2262"):
        assert file_format == "csv" or orjson.loads(response.content)["records"] == []
    else:
        assert len(_rows(response.content, file_format)) == 3


async def test_empty_bounds_as_design_writes_the_route_export_the_whole_chain(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    # DESIGN §7: `GET /audit/export?format=csv|json&schema=…&from=&to=`.
    await store.ingest([_event("e1")])
    await store.ingest([_event("e2")])
    async with _client(store, tmp_path) as client:
        empty = await client.get("/audit/export?format=json&schema=soc2_v1&from=&to=")
        absent = await client.get("/audit/export?format=json&schema=soc2_v1")
    assert empty.status_code == 200, empty.text
    document = orjson.loads(empty.content)
    assert [record["sequence"] for record in document["records"]] == [1, 2]
    assert document["records"] == orjson.loads(absent.content)["records"]
    assert document["anchor"] == orjson.loads(absent.content)["anchor"]


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"format": "xml"}, 422, "format"),
        ({"schema": "soc3"}, 422, "schema"),
        ({"from": "yesterday"}, 422, "from"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 400, "must be before to"),
        # Valid RFC 3339 whose UTC time is past year 9999 or before year 1: an attacker's probe
        # got a 200 and a cut connection (the file's framing failed to write it as UTC).
        ({"from": "9999-12-31T23:59:59-23:59"}, 422, "query.from: "),
        ({"to": "0001-01-01T00:00:00+23:59", "format": "json"}, 422, "query.to: "),
        ({"from": " "}, 422, "from"),  # only the empty value means no bound
    ],
)
async def test_bad_export_queries_are_client_errors_that_say_which_value(
    store: SqliteGraphStore, tmp_path: Path, params: dict[str, str], status: int, message: str
) -> None:
    await store.ingest([_event("e1")])
    async with _client(store, tmp_path) as client:
        response = await client.get("/audit/export", params=params)
    assert response.status_code == status
    assert response.json()["error"]["code"] == "bastion.invalid_request"
    assert message in response.json()["error"]["message"]


# --- SLO --------------------------------------------------------------------------------------


async def test_slo_reports_latency_percentiles_fallbacks_and_block_rate_by_rule(
    store: SqliteGraphStore, tmp_path: Path
) -> None:
    import time

    now = time.time_ns()
    events = [_event(f"a{n}", rule="small", latency_ms=n + 1, started_ns=now) for n in range(10)]
    events += [_event("b1", rule="big", outcome=graph_pb2.BLOCKED, fallback=True, started_ns=now)]
    events += [_event("old", rule="small", started_ns=now - 3 * 3600 * 10**9)]
    # Refusals before any decision (an attacker's probe: a flood of anonymous ones pulled the
    # percentiles down): counted and blocked, but they took no decision time.
    for n in range(20):
        refused = _event(f"r{n}", latency_ms=0, started_ns=now)
        refused.outcome, refused.block_code, refused.violation_id = graph_pb2.REJECTED, "bastion.auth", f"v-r{n}"
        refused.ClearField("decision")
        events.append(refused)
    await store.ingest(events)
    async with _client(store, tmp_path) as client:
        answer = (await client.get("/audit/slo", params={"window": "1h"})).json()
        bad = await client.get("/audit/slo", params={"window": "forever"})

    assert (answer["window_s"], answer["decisions"], answer["blocked"]) == (3600, 31, 21)
    assert answer["verifier_fallbacks"] == 1
    assert answer["latency_ms"] == {"p50": 5.0, "p90": 9.0, "p99": 10.0, "p999": 10.0}
    assert answer["rules"] == [
        {"rule_id": "bastion.auth", "decisions": 20, "blocked": 20, "block_rate": 1.0},
        {"rule_id": "small", "decisions": 10, "blocked": 0, "block_rate": 0.0},
        {"rule_id": "big", "decisions": 1, "blocked": 1, "block_rate": 1.0},
    ]
    assert bad.status_code == 400
    assert "window='forever'" in bad.json()["error"]["message"]


# --- drift path -------------------------------------------------------------------------------


async def test_a_three_hop_drift_path_comes_back_in_order_with_reasons(store: SqliteGraphStore, tmp_path: Path) -> None:
    task = _event("task", tool="", server="")
    fetch = _event("fetch", server="web", tool="fetch", parents=["node-task"])
    summary = _event(
        "summary",
        server="docs",
        tool="summarize",
        parents=["node-fetch"],
        informed_by=[("node-fetch", "text of fetch")],
    )
    send = _event(
        "send",
        tool="send",
        outcome=graph_pb2.BLOCKED,
        parents=["node-summary"],
        informed_by=[("node-summary", "recipient from summarize's result")],
    )
    summary.taint.extend(["untrusted", "source:web__fetch"])
    send.taint.extend(["untrusted", "source:docs__summarize", "sink", "arg:to:untrusted:docs__summarize:$:text:1.00"])
    await store.ingest([send, summary, fetch, task])  # arrival order does not matter
    async with _client(store, tmp_path) as client:
        path = (await client.get("/graphs/wf-1/drift-path/node-send")).json()
        plain = (await client.get("/graphs/wf-1/drift-path/node-fetch")).json()

    assert path["origin"] == "untrusted_data"
    assert [(h["node_id"], h["tool"], h["via"], h["reason"]) for h in path["hops"]] == [
        ("node-send", "send", "INFORMED_BY", "recipient from summarize's result"),
        ("node-summary", "summarize", "INFORMED_BY", "text of fetch"),
        ("node-fetch", "fetch", None, ""),
    ]
    assert path["hops"][0]["outcome"] == "BLOCKED"
    assert path["hops"][2]["server"] == "web"
    assert [h["taint"] for h in path["hops"]] == [list(send.taint), list(summary.taint), []]
    # A node informed by nothing is walked back along CAUSED_BY to the workflow's root.
    assert plain["origin"] == "workflow_root"
    assert [(h["node_id"], h["via"]) for h in plain["hops"]] == [("node-fetch", "CAUSED_BY"), ("node-task", None)]


async def test_a_drift_path_is_bounded_and_follows_delegation(store: SqliteGraphStore, tmp_path: Path) -> None:
    chain = [_event("n0")] + [_event(f"n{i}", parents=[f"node-n{i - 1}"]) for i in range(1, 6)]
    delegated = _event("callee", parents=["node-n5"])
    delegated.edges.append(graph_pb2.EdgeHint(target_node_id="node-n2", type=graph_pb2.DELEGATED_TO, reason="A2A"))
    await store.ingest([*chain, delegated])
    async with _client(store, tmp_path) as client:
        bounded = (await client.get("/graphs/wf-1/drift-path/node-n5", params={"max_depth": 2})).json()
        via = (await client.get("/graphs/wf-1/drift-path/node-callee")).json()

    assert bounded["origin"] == "depth_limit"
    assert [h["node_id"] for h in bounded["hops"]] == ["node-n5", "node-n4", "node-n3"]
    assert [(h["node_id"], h["via"]) for h in via["hops"][:2]] == [
        ("node-callee", "DELEGATED_TO"),
        ("node-n2", "CAUSED_BY"),
    ]
    assert via["origin"] == "workflow_root"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/graphs/nope/drift-path/node-e1", "workflow 'nope' not found"),
        ("/graphs/wf-1/drift-path/node-nope", "node 'node-nope' not found in workflow 'wf-1'"),
        ("/graphs/wf-2/drift-path/node-e1", "node 'node-e1' not found in workflow 'wf-2'"),
    ],
)
async def test_an_unknown_workflow_or_node_has_no_drift_path(
    store: SqliteGraphStore, tmp_path: Path, path: str, message: str
) -> None:
    other = _event("x1")
    other.workflow_id, other.node_id = "wf-2", "node-x1"
    await store.ingest([_event("e1"), other])
    async with _client(store, tmp_path) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["message"] == message


# --- the service's signature on exports --------------------------------------------------------


async def _signed_export(store: SqliteGraphStore, home: Path, file_format: str, **params: str) -> tuple[Path, Any]:
    """Seven records exported by a graph that signs its exports with the stack's key."""
    await store.ingest([_event(f"e{n}") for n in range(7)])
    key = ensure_dev_key(home)
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), home))
    app = create_app(store, verifier=verifier, hosts=HostCheck(("graph",), "127.0.0.1"), signing_key=key)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://graph", headers=bearer(auditor_token(home))
    ) as c:
        response = await c.get("/audit/export", params={"format": file_format, **params})
    path = home / f"signed.{file_format}"
    path.write_bytes(response.content)
    return path, key


@pytest.mark.parametrize("file_format", ["csv", "json"])
async def test_an_export_is_signed_by_the_service_and_verifies_with_its_public_key_alone(
    store: SqliteGraphStore, tmp_path: Path, file_format: str
) -> None:
    path, key = await _signed_export(store, tmp_path, file_format)
    signed = verify_export(path, keys=[key.public_key()])
    assert signed.ok, signed.chain.problem
    assert signed.signed
    assert verify_export(path).ok  # without a key: the chain alone, as before
    other = verify_export(path, keys=[Ed25519PrivateKey.generate().public_key()])
    assert other.chain.problem is not None
    assert other.chain.problem.kind == "forged"


def _rewrite(document: dict[str, Any], edit: Any) -> None:
    """Apply `edit` to the records, then recompute every hash from the first and the head."""
    edit(document["records"])
    previous = document["anchor"]["hash"] if document["anchor"] else "0" * 64
    for item in document["records"]:
        item["prev_hash"] = previous
        item["chain_hash"] = previous = chain_hash(previous, canonical(item["record"]))
    records = document["records"]
    document["chain_head"] = (
        {"sequence": records[-1]["sequence"], "hash": previous, "records": len(records)} if records else None
    )


def _edit_agent(records: list[dict[str, Any]]) -> None:
    records[2]["record"]["agent_id"] = records[2]["agent_id"] = "someone-else"


def _drop_last(records: list[dict[str, Any]]) -> None:
    del records[-2:]


def _drop_first(records: list[dict[str, Any]]) -> None:
    del records[:2]


@pytest.mark.parametrize(
    ("edit", "kind"), [(_edit_agent, "altered"), (_drop_last, "altered"), (_drop_first, "altered")]
)
async def test_a_consistently_rewritten_file_verifies_as_a_chain_but_not_against_the_signature(
    store: SqliteGraphStore, tmp_path: Path, edit: Any, kind: str
) -> None:
    path, key = await _signed_export(store, tmp_path, "json")
    document = orjson.loads(path.read_bytes())
    _rewrite(document, edit)
    if edit is _drop_first:  # the first record's own link moves the anchor: say so too
        document["anchor"] = {"sequence": 2, "hash": document["records"][0]["prev_hash"]}
    path.write_bytes(orjson.dumps(document))
    assert verify_export(path).ok  # internally consistent: only the signature can tell
    report = verify_export(path, keys=[key.public_key()])
    assert not report.ok
    assert report.chain.problem is not None
    assert report.chain.problem.kind == kind


@pytest.mark.parametrize(
    "signature",
    [None, "not-a-jws", 7, "a.b.c" * 10_000, "checkpoint"],
    ids=["missing", "garbage", "number", "huge", "a-checkpoint-token"],
)
async def test_a_file_without_a_valid_signature_fails_when_a_key_is_given(
    store: SqliteGraphStore, tmp_path: Path, signature: Any
) -> None:
    path, key = await _signed_export(store, tmp_path, "json")
    document = orjson.loads(path.read_bytes())
    if signature == "checkpoint":  # the right key, over another kind of statement
        signature = sign(key, document["chain_head"]["sequence"], document["chain_head"]["hash"])
    document["signature"] = signature
    path.write_bytes(orjson.dumps(document))
    report = verify_export(path, keys=[key.public_key()])
    assert report.chain.problem is not None
    assert report.chain.problem.kind == "forged"


async def test_rows_after_the_chain_head_row_of_a_csv_are_refused(store: SqliteGraphStore, tmp_path: Path) -> None:
    path, key = await _signed_export(store, tmp_path, "csv")
    path.write_text(path.read_text() + "1,,,,,,,,,,,,,,\r\n", newline="")
    report = verify_export(path, keys=[key.public_key()])
    assert report.chain.problem is not None
    assert report.chain.problem.kind == "inserted"


@pytest.mark.parametrize("document", [{"records": {}}, {"records": [], "chain_head": []}, [], {"records": [1, 2]}])
async def test_json_of_the_wrong_shape_is_a_broken_file_not_a_crash(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "odd.json"
    path.write_bytes(orjson.dumps(document))
    assert not verify_export(path).ok


async def test_records_cut_from_the_start_of_a_signed_file_are_missed(store: SqliteGraphStore, tmp_path: Path) -> None:
    path, key = await _signed_export(store, tmp_path, "json")
    document = orjson.loads(path.read_bytes())
    del document["records"][:2]  # the rest keep their hashes and still chain to each other
    path.write_bytes(orjson.dumps(document))
    assert verify_export(path).ok
    report = verify_export(path, keys=[key.public_key()])
    assert report.chain.problem is not None
    assert (report.chain.problem.kind, "the file holds 5 records, the service signed 7") == (
        "removed",
        report.chain.problem.detail,
    )


def _dup_records(text: str) -> str:
    """A forged `records` array first, the signed one second (a last-key-wins reader sees the second)."""
    forged = text.replace('"agent_id":"agent-a"', '"agent_id":"mallory"')
    start = forged.index('"records":')
    end = forged.index(',"chain_head"')
    return text[:start] + forged[start:end] + "," + text[start:]


def _dup_field(text: str) -> str:
    return text.replace('"agent_id":"agent-a"', '"agent_id":"mallory","agent_id":"agent-a"', 1)


def _csv_dup_column(text: str) -> str:
    lines = text.split("\r\n")
    lines[0] += ",agent_id"
    return "\r\n".join(line + ",mallory" if line and index else line for index, line in enumerate(lines))


def _edit_head(column: str, value: str) -> Any:
    """An edit of one cell of a CSV file's chain_head row (its last row)."""

    def edit(text: str) -> str:
        rows = list(csv.DictReader(io.StringIO(text)))
        rows[-1][column] = value
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    return edit


@pytest.mark.parametrize(
    ("file_format", "edit"),
    [
        ("json", _dup_records),
        ("json", _dup_field),
        ("json", lambda text: text.replace('"controls":["CC6.6","CC7.2"]', '"controls":["CC6.6","CC7.2","CC8.1"]')),
        ("json", lambda text: text.replace('"chain_head":{', '"override":"DENY","chain_head":{')),
        ("json", lambda text: text.replace('"chain_head":{"sequence":7', '"chain_head":{"sequence":"x"')),
        ("csv", _csv_dup_column),
        ("csv", lambda text: text.replace("\r\n", ",extra\r\n", 2)),
        ("csv", lambda text: text.replace(",chain_head,", ",chain_head,v-forged", 1)),
        # A third probe's: the head row's JSON with a false range before the real one, or a
        # note of its own; its sequence in full-width digits; its prev_hash saying anything.
        (
            "csv",
            lambda text: text.replace('{""anchor""', '{""from"":""2020-01-01T00:00:00Z"",""anchor""'),
        ),
        ("csv", lambda text: text.replace('{""anchor""', '{""auditor_note"":""all clean"",""anchor""')),
        ("csv", _edit_head("sequence", "\uff17")),
        ("csv", _edit_head("sequence", " 7")),
        ("csv", _edit_head("prev_hash", "APPROVED BY AUDITOR - NO ISSUES")),
    ],
    ids=[
        "json-records-twice",
        "json-key-twice",
        "controls",
        "json-unknown-key",
        "json-bad-number",
        "csv-column-twice",
        "csv-extra-cell",
        "csv-head-row-extra",
        "csv-head-key-twice",
        "csv-head-unknown-key",
        "csv-head-fullwidth-sequence",
        "csv-head-spaced-sequence",
        "csv-head-prev-hash",
    ],
)
async def test_what_a_reader_could_see_otherwise_is_refused(
    store: SqliteGraphStore, tmp_path: Path, file_format: str, edit: Any
) -> None:
    path, key = await _signed_export(store, tmp_path, file_format)
    text = path.read_bytes().decode()  # as written: CSV rows end in CRLF
    edited = edit(text)
    assert edited != text
    path.write_bytes(edited.encode())
    report = verify_export(path, keys=[key.public_key()])
    assert not report.ok, report
    assert report.chain.problem is not None
