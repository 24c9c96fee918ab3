"""Walks of the whole audit chain are bounded in time, not only in memory: GET /audit/verify
stops at its deadline and says which records it checked and how to continue; an export cut
at the deadline says so and fails verification as incomplete; and one walk runs at a time,
the next one meanwhile answered 429 with Retry-After at once, while the service's other
routes keep answering (an attacker's probe held a worker for as long as a long chain took)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fixtures.graphapi import auditor_token, bearer
from prometheus_client.parser import text_string_to_metric_families

from bastion._appconfig import AuthConfig
from bastion._cli import main as cli_main
from bastion._hosts import HostCheck
from bastion._identity import TokenVerifier, ensure_dev_key, load_public_keys
from bastion._web import start_web_server
from bastion.graph import SqliteGraphStore, create_app
from bastion.graph._audit import AuditEntry
from bastion.graph._export import verify_export
from bastion.graph._store import DecisionStats
from bastion.graph._walks import GRACE_S, AuditWalks
from bastion.v1 import graph_pb2, policy_pb2

RECORDS = 2500  # pages of 1000: a walk of three pages


class _PacedStore(SqliteGraphStore):
    """The real store, each page of the chain read `pace_s` late, or held until `gate` is set."""

    def __init__(self, path: Path, *, pace_s: float = 0.0, gate: asyncio.Event | None = None) -> None:
        super().__init__(path)
        self.pace_s = pace_s
        self.gate = gate
        self.reading = asyncio.Event()

    async def audit_entries(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        through: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> Sequence[AuditEntry]:
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.pace_s)
        return await super().audit_entries(
            after=after, limit=limit, through=through, since_ns=since_ns, until_ns=until_ns
        )


class _SlowStats(SqliteGraphStore):
    """The real store, its SLO query held until `gate` is set."""

    def __init__(self, path: Path, gate: asyncio.Event) -> None:
        super().__init__(path)
        self.gate = gate
        self.asked = asyncio.Event()

    async def decision_stats(self, since_ns: int, percentiles: Sequence[float]) -> DecisionStats:
        self.asked.set()
        await self.gate.wait()
        return await super().decision_stats(since_ns, percentiles)


def _event(n: int) -> graph_pb2.Event:
    return graph_pb2.Event(
        event_id=f"e{n}",
        workflow_id="wf-1",
        node_id=f"node-{n}",
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="mail", tool="send", method="tools/call"),
        decision=policy_pb2.Decision(effect=policy_pb2.DENY, rule_id="r1"),
        outcome=graph_pb2.BLOCKED,
    )


async def _filled(path: Path) -> None:
    store = await SqliteGraphStore.open(path)
    for start in range(0, RECORDS, 1000):
        await store.ingest([_event(n) for n in range(start, min(start + 1000, RECORDS))])
    await store.close()


@pytest.fixture
async def chain(tmp_path: Path) -> Path:
    path = tmp_path / "graph.db"
    await _filled(path)
    return path


def _client(store: SqliteGraphStore, home: Path, deadline_s: float) -> httpx.AsyncClient:
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), home))
    app = create_app(
        store,
        verifier=verifier,
        hosts=HostCheck(("graph",), "127.0.0.1"),
        signing_key=ensure_dev_key(home),
        audit_deadline_s=deadline_s,
    )
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://graph", headers=bearer(auditor_token(home))
    )


async def _chain_ok(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bastion_audit_chain_ok":
                return sample.value
    raise AssertionError("no bastion_audit_chain_ok")


async def test_verify_stops_at_its_deadline_with_the_range_it_checked_and_continues_from_there(
    chain: Path, tmp_path: Path
) -> None:
    # Each page takes 0.1 s, the deadline is 0.05 s: every walk stops after one page.
    store = await asyncio.to_thread(_PacedStore, chain, pace_s=0.1)
    head = await store.audit_head()
    assert head is not None
    assert head.sequence == RECORDS
    answers: list[dict[str, Any]] = []
    try:
        async with _client(store, tmp_path, 0.05) as client:
            answers.append((await client.get("/audit/verify")).json())
            unknown = await _chain_ok(client)
            while (resume := answers[-1]["next"]) is not None:
                answers.append((await client.get("/audit/verify", params=resume)).json())
            mislinked = (await client.get("/audit/verify", params={"after": 1000, "anchor": "0" * 64})).json()
            half = await client.get("/audit/verify", params={"after": 1000})
    finally:
        await store.close()

    assert [(a["first"], a["records"], a["head"]["sequence"], a["stopped"], a["ok"]) for a in answers] == [
        (1, 1000, 1000, "deadline", False),
        (1001, 1000, 2000, "deadline", False),
        (2001, 500, RECORDS, None, True),
    ]
    assert answers[0]["problem"] is None
    assert answers[0]["next"] == {"after": 1000, "anchor": answers[0]["head"]["hash"]}
    assert answers[-1]["head"]["hash"] == head.hash
    assert math.isnan(unknown)  # a walk that stopped says nothing of the whole chain
    # A continuation is linked to what came before: an anchor that is not record #1000's hash fails.
    assert (mislinked["ok"], mislinked["problem"]["kind"], mislinked["problem"]["sequence"]) == (False, "altered", 1000)
    assert (half.status_code, half.json()["error"]["code"]) == (400, "bastion.invalid_request")


@pytest.mark.parametrize("file_format", ["csv", "json"])
async def test_an_export_cut_at_its_deadline_says_so_and_fails_verification_as_incomplete(
    chain: Path, tmp_path: Path, file_format: str
) -> None:
    store = await asyncio.to_thread(_PacedStore, chain, pace_s=0.1)
    try:
        async with _client(store, tmp_path, 0.05) as client:
            response = await client.get("/audit/export", params={"format": file_format})
    finally:
        await store.close()
    assert response.status_code == 200
    path = tmp_path / f"export.{file_format}"
    path.write_bytes(response.content)
    key = ensure_dev_key(tmp_path).public_key()

    keys: list[Ed25519PublicKey]
    for keys in ([], [key]):
        report = verify_export(path, keys=keys)
        assert not report.ok
        assert report.chain.problem is not None
        assert (report.chain.problem.kind, report.chain.problem.sequence) == ("incomplete", 1001)
        assert "the export stopped ('deadline'" in report.chain.problem.detail
        assert report.stated_head is not None
        assert report.stated_head.sequence == 1000
    # The word cannot be taken out of a signed file: the signature covers it.
    text = response.content.decode()
    stripped = text.replace('"stopped":"deadline",', "").replace('""stopped"":""deadline"",', "")
    assert stripped != text
    path.write_text(stripped)
    assert verify_export(path).ok  # unsigned, the file alone says no more than its records
    forged = verify_export(path, keys=[key])
    assert forged.chain.problem is not None
    assert "signed stopped 'deadline'" in forged.chain.problem.detail


async def test_one_walk_at_a_time_and_the_service_answers_the_rest_meanwhile(chain: Path, tmp_path: Path) -> None:
    gate = asyncio.Event()
    store = await asyncio.to_thread(_PacedStore, chain, gate=gate)
    try:
        async with _client(store, tmp_path, 30.0) as client:
            walking = asyncio.ensure_future(client.get("/audit/verify"))
            await asyncio.wait_for(store.reading.wait(), 5)  # the walk holds its turn, reading a page
            busy = await asyncio.wait_for(client.get("/audit/verify"), 5)
            export = await asyncio.wait_for(client.get("/audit/export"), 5)
            slo = await asyncio.wait_for(client.get("/audit/slo", params={"window": "31d"}), 5)
            graphs = await asyncio.wait_for(client.get("/graphs"), 5)
            nodes = await asyncio.wait_for(client.get("/graphs/wf-1/nodes", params={"limit": 10}), 5)
            assert not walking.done()
            gate.set()
            walked = await asyncio.wait_for(walking, 30)
            again = await asyncio.wait_for(client.get("/audit/verify"), 30)
    finally:
        gate.set()
        await store.close()

    for refused in (busy, export, slo):
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "bastion.graph.audit_busy"
        assert 1 <= int(refused.headers["retry-after"]) <= 30 + GRACE_S
    assert (graphs.status_code, nodes.status_code) == (200, 200)
    assert len(nodes.json()["items"]) == 10
    assert (walked.status_code, walked.json()["ok"], walked.json()["records"]) == (200, True, RECORDS)
    assert (again.status_code, again.json()["ok"]) == (200, True)  # the turn was given back


def test_a_walk_never_ended_gives_up_its_turn_after_its_deadline_and_grace() -> None:
    now = [100.0]
    walks = AuditWalks(30.0, clock=lambda: now[0])
    lost = walks.begin()
    assert lost is not None
    assert lost.deadline == 130.0
    assert walks.begin() is None
    assert walks.retry_after_s() == math.ceil(30.0 + GRACE_S)
    now[0] = 130.0 + GRACE_S
    taken = walks.begin()
    assert taken is not None
    lost.end()  # late: it must not free the turn its successor holds
    assert walks.begin() is None
    taken.end()
    assert walks.begin() is not None


class _HeldAfterFirstPage(_PacedStore):
    """Answers the first page of the chain, then holds every later one until `gate` is set."""

    async def audit_entries(
        self,
        *,
        after: int = 0,
        limit: int = 1000,
        through: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> Sequence[AuditEntry]:
        if after > 0 and self.gate is not None:
            self.reading.set()
            await self.gate.wait()
        return await SqliteGraphStore.audit_entries(
            self, after=after, limit=limit, through=through, since_ns=since_ns, until_ns=until_ns
        )


async def test_an_export_whose_reader_leaves_gives_its_turn_back_at_once(chain: Path, tmp_path: Path) -> None:
    gate = asyncio.Event()
    store = await asyncio.to_thread(_HeldAfterFirstPage, chain, gate=gate)
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path))
    app = create_app(store, verifier=verifier, hosts=HostCheck((), "127.0.0.1"), audit_deadline_s=30.0)
    server = await start_web_server(app, "127.0.0.1:0")
    walks: AuditWalks = app.state.audit_walks
    try:
        http = httpx.AsyncClient(base_url=f"http://{server.address}", headers=bearer(auditor_token(tmp_path)))
        async with http, http.stream("GET", "/audit/export", params={"format": "json"}) as response:
            assert response.status_code == 200
            await asyncio.wait_for(store.reading.wait(), 5)  # a page sent, the next one held
            assert walks.begin() is None
        # The client has gone: the server closes the body, which ends the walk, long before
        # the 35 s its lease would take.
        for _ in range(100):
            if (walk := walks.begin()) is not None:
                walk.end()
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the export's turn was not given back when its reader left")
    finally:
        gate.set()
        await server.stop()
        await store.close()


async def test_the_cli_follows_a_stopped_verify_to_the_head(chain: Path, tmp_path: Path) -> None:
    # `bastion audit verify` walks on from each answer's `next`: one verdict for the whole
    # chain, not "ok" for the first part (it printed "ok: 1000 records" and exited 1).
    store = await asyncio.to_thread(_PacedStore, chain, pace_s=0.1)
    verifier = TokenVerifier(AuthConfig(), load_public_keys(AuthConfig(), tmp_path))
    app = create_app(
        store, verifier=verifier, hosts=HostCheck((), "127.0.0.1"), signing_key=ensure_dev_key(tmp_path),
        audit_deadline_s=0.05,
    )  # fmt: skip
    server = await start_web_server(app, "127.0.0.1:0")
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("BASTION_HOME", str(tmp_path))
            patch.setenv("BASTION_GRAPH_ADDR", server.address)
            patch.delenv("BASTION_TOKEN", raising=False)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = await asyncio.to_thread(cli_main, ["audit", "verify"])
    finally:
        await server.stop()
        await store.close()

    assert code == 0, err.getvalue()
    assert out.getvalue().startswith(f"ok: {RECORDS} records verified (head #{RECORDS} ")


async def test_an_slo_report_past_its_deadline_answers_503_and_holds_the_turn_until_its_query_ends(
    tmp_path: Path,
) -> None:
    # A reviewer's probe: the report took the walks' one turn without a deadline, so a month
    # of decisions held verify and export out for as long as its query ran.
    gate = asyncio.Event()
    store = await asyncio.to_thread(_SlowStats, tmp_path / "graph.db", gate)
    try:
        async with _client(store, tmp_path, 0.2) as client:
            late = await asyncio.wait_for(client.get("/audit/slo", params={"window": "31d"}), 10)
            busy = await asyncio.wait_for(client.get("/audit/verify"), 10)  # the query still runs
            gate.set()
            for _ in range(100):
                again = await client.get("/audit/slo")
                if again.status_code == 200:
                    break
                await asyncio.sleep(0.05)
    finally:
        gate.set()
        await store.close()

    assert late.status_code == 503
    assert late.json()["error"]["code"] == "bastion.graph.audit_deadline"
    assert "did not finish within BASTION_AUDIT_WALK_DEADLINE_S (0.2 s)" in late.json()["error"]["message"]
    assert busy.status_code == 429
    assert (again.status_code, again.json()["decisions"]) == (200, 0)
