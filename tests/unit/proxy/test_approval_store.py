"""The approval stores on their own: what an approval is bound to, its expiry, one use.

Every contract test runs against both stores, SQLite (`ApprovalStore`) and Redis
(`RedisApprovalStore`, a real server from scripts/redis-up, flushed before each test).
"Two stores on one backing" is two replicas: two connections to one SQLite file, or two
clients of one Redis.
"""

from __future__ import annotations

import dataclasses
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fixtures.ports import dead_port
from fixtures.redis import RedisServer, running_redis

from bastion._errors import ConfigError, Conflict, NotFound, StoreError
from bastion._identity import Principal
from bastion.proxy._approvals import QUEUE, Approvals, ApprovalStore, Request, action_digest
from bastion.proxy._approvals_redis import _LIST_BATCH, RedisApprovalStore
from bastion.proxy._enforcer import Caller, Pending
from bastion.proxy._pipeline import Outcome
from bastion.proxy._recorder import Record
from bastion.proxy._stages import APPROVAL_STORE_UNAVAILABLE, ApprovalStage
from bastion.v1 import policy_pb2

Opener = Callable[..., Approvals]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(params=["sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Opener]:
    """Opens another store on the same backing (another replica, or the same one restarted)."""
    opened: list[Approvals] = []

    def open_store(**options: Any) -> Approvals:
        store: Approvals
        if request.param == "sqlite":
            store = ApprovalStore(tmp_path / "approvals.sqlite3", ttl=60, clock=clock, **options)
        else:
            # 2 s unless a test sets its own: the default 250 ms can pass on a loaded CI machine.
            store = RedisApprovalStore(url, ttl=60, clock=clock, **{"timeout_ms": 2000, **options})
        opened.append(store)
        return store

    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        request.getfixturevalue("redis_db")
    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(opener: Opener) -> Approvals:
    return opener()


def _action(**arguments: Any) -> policy_pb2.Action:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="bank", tool="transfer", method="tools/call")
    action.arguments.update(arguments)
    return action


def _request(version: int = 1, agent: str = "agent-1", tenant: str = "default", **arguments: Any) -> Request:
    return Request(tenant, agent, action_digest(_action(**arguments)), "payments", version)


def _open(store: Approvals, request: Request, action: dict[str, Any] | None = None) -> str:
    approval = store.open_request(
        request, rule_id="r", reason="why", workflow_id="wf", node_id="n", action=action or {}
    )
    return approval.approval_id


def _approved(store: Approvals, request: Request) -> str:
    approval_id = _open(store, request)
    store.decide(approval_id, approve=True, by="ops", reason="", node_id="d", tenant=request.tenant)
    return approval_id


def test_the_digest_is_canonical_and_covers_every_argument() -> None:
    assert action_digest(_action(a=1, b=[1, 2])) == action_digest(_action(b=[1, 2], a=1))
    assert action_digest(_action(a=1)) != action_digest(_action(a=2))
    assert action_digest(_action(a=1)) != action_digest(_action(a=1, b=None))


def test_an_approval_is_used_once_and_only_for_its_exact_call(store: Approvals) -> None:
    request = _request(iban="DE89370400440532013000", amount=100)
    _approved(store, request)

    assert store.take(_request(iban="DE89370400440532013000", amount=101), "n2") is None
    assert store.take(_request(agent="agent-2", iban="DE89370400440532013000", amount=100), "n2") is None
    assert store.take(_request(version=2, iban="DE89370400440532013000", amount=100), "n2") is None
    taken = store.take(request, "n2")
    assert taken is not None
    assert (taken.state, taken.used_node_id, taken.used_at) == ("used", "n2", 1_000_000.0)
    assert store.take(request, "n3") is None


def test_concurrent_takes_from_two_replicas_use_it_once(opener: Opener) -> None:
    stores = [opener(), opener()]
    request = _request(x=1)
    _approved(stores[0], request)
    taken: list[object] = []

    def take(index: int) -> None:
        found = stores[index % 2].take(request, f"n{index}")
        if found is not None:
            taken.append(found)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(taken) == 1


def test_an_expired_approval_is_not_used_and_reads_as_expired(store: Approvals, clock: Clock) -> None:
    request = _request(x=1)
    approval_id = _approved(store, request)
    clock.now += 61

    assert store.take(request, "n") is None
    approval = store.get(approval_id)
    assert approval is not None
    assert approval.state == "expired"
    with pytest.raises(Conflict, match="is expired, not pending"):
        store.decide(approval_id, approve=False, by="ops", reason="", node_id="d", tenant=None)
    # A new request for the same call is a new id.
    assert _open(store, request) != approval_id


def test_a_pending_request_is_reused_and_a_given_back_approval_can_be_used_again(store: Approvals) -> None:
    request = _request(x=1)
    first = _open(store, request)
    assert _open(store, request) == first
    store.decide(first, approve=True, by="ops", reason="", node_id="d", tenant="default")
    assert store.take(request, "n1") is not None
    store.give_back(first, "n2")  # not the taker: no effect
    assert store.take(request, "n2") is None
    store.give_back(first, "n1")
    taken = store.take(request, "n2")
    assert taken is not None
    assert taken.approval_id == first


def test_a_denied_request_is_returned_until_it_expires(store: Approvals, clock: Clock) -> None:
    request = _request(x=1)
    approval_id = _open(store, request)
    store.decide(approval_id, approve=False, by="ops", reason="no", node_id="d", tenant="default")

    again = store.open_request(request, rule_id="r", reason="why", workflow_id="wf", node_id="n2", action={})
    assert (again.approval_id, again.state, again.decided_by, again.decision_reason) == (
        approval_id,
        "denied",
        "ops",
        "no",
    )
    assert store.take(request, "n") is None
    clock.now += 61
    assert _open(store, request) != approval_id


def test_deciding_checks_tenant_and_state(store: Approvals) -> None:
    approval_id = _open(store, _request(x=1))
    with pytest.raises(NotFound):
        store.decide(approval_id, approve=True, by="ops", reason="", node_id="d", tenant="globex")
    with pytest.raises(NotFound):
        store.decide("apr_" + "0" * 32, approve=True, by="ops", reason="", node_id="d", tenant=None)
    denied = store.decide(approval_id, approve=False, by="ops", reason="no", node_id="d", tenant=None)
    assert (denied.state, denied.decided_by, denied.decided_at, denied.decision_node_id) == (
        "denied",
        "ops",
        1_000_000.0,
        "d",
    )
    with pytest.raises(Conflict, match="is denied, not pending"):
        store.decide(approval_id, approve=True, by="ops", reason="", node_id="d", tenant=None)


def test_an_agent_cannot_flood_the_queue(opener: Opener, clock: Clock) -> None:
    # The cap is MAX_PENDING_PER_AGENT in the proxy; a small one keeps SQLite's fsyncs quick.
    store = opener(max_pending=20)
    for index in range(20):
        _open(store, _request(x=index))
    with pytest.raises(Conflict, match="already has 20 approval requests open"):
        _open(store, _request(x=-1))
    # Others are not affected, a reused request is not a new one, a decision frees a place.
    assert _open(store, _request(agent="agent-2", x=-1))
    first = _open(store, _request(x=0))
    store.decide(first, approve=False, by="ops", reason="", node_id="d", tenant=None)
    assert _open(store, _request(x=-1))
    # Expired requests do not count.
    clock.now += 61
    for index in range(20):
        _open(store, _request(x=100 + index))


def test_approvals_survive_a_restart(opener: Opener) -> None:
    first = opener()
    approval_id = _approved(first, _request(x=1))
    first.close()
    taken = opener().take(_request(x=1), "n")

    assert taken is not None
    assert taken.approval_id == approval_id


def test_the_action_view_reads_back_as_written(store: Approvals) -> None:
    action = {"kind": "TOOL_CALL", "arguments": {"empty": [], "nested": {}, "list": [{}, [], 1.5, None, "é"]}}
    approval_id = _open(store, _request(x=1), action)
    approval = store.get(approval_id)
    assert approval is not None
    assert approval.action == action
    assert (approval.rule_id, approval.reason, approval.workflow_id, approval.node_id) == ("r", "why", "wf", "n")
    assert (approval.policy_name, approval.policy_version, approval.expires_at) == ("payments", 1, 1_000_060.0)
    assert store.get("apr_" + "0" * 32) is None


def test_listing_filters_by_tenant_agent_and_state_newest_first(store: Approvals, clock: Clock) -> None:
    ids = []
    for index, (tenant, agent) in enumerate(
        [("default", "a1"), ("default", "a2"), ("globex", "a1"), ("default", "a1")]
    ):
        clock.now += 1
        ids.append(_open(store, _request(tenant=tenant, agent=agent, x=index)))
    store.decide(ids[0], approve=True, by="ops", reason="", node_id="d", tenant=None)
    store.decide(ids[1], approve=False, by="ops", reason="", node_id="d", tenant=None)

    def listed(**query: Any) -> list[str]:
        options: dict[str, Any] = {"tenant": None, "state": None, "agent_id": None, "limit": 100, "before": None}
        return [approval.approval_id for approval in store.list(**{**options, **query})]

    assert listed() == ids[::-1]
    assert listed(tenant="default") == [ids[3], ids[1], ids[0]]
    assert listed(tenant="default", agent_id="a1") == [ids[3], ids[0]]
    assert listed(state="pending") == [ids[3], ids[2]]
    assert listed(state="approved") == [ids[0]]
    assert listed(state="denied", tenant="globex") == []
    assert listed(limit=2) == [ids[3], ids[2]]
    newest = store.get(ids[2])
    assert newest is not None
    assert listed(limit=2, before=newest.created_at) == [ids[1], ids[0]]
    clock.now += 61
    assert listed(state="expired") == [ids[3], ids[2], ids[0]]
    assert listed(state="pending") == []


def test_sqlite_keeps_undecided_requests_ttl_and_decided_ones_retention_past_expiry(
    tmp_path: Path, clock: Clock
) -> None:
    # An attacker's probe: an agent opening its cap of requests every ttl grew the file
    # forever (45 MB for 30,000 requests), and the cap's count scanned the tenant's whole
    # history under the store's one lock: 20 ms per new request, and growing.
    path = tmp_path / "approvals.sqlite3"
    store = ApprovalStore(path, ttl=60, clock=clock, retention_s=100)
    ids = [_open(store, _request(x=index)) for index in range(4)]
    store.decide(ids[0], approve=True, by="ops", reason="", node_id="d", tenant=None)
    store.decide(ids[1], approve=False, by="ops", reason="", node_id="d", tenant=None)

    def kept() -> set[str]:
        return {row[0] for row in sqlite3.connect(path).execute("SELECT approval_id FROM approvals")}

    clock.now += 120
    newer = _open(store, _request(x=-1))
    assert kept() == {*ids, newer}, "undecided requests are listed as expired for ttl past their expiry"
    clock.now += 1
    newest = _open(store, _request(x=-2))
    assert kept() == {ids[0], ids[1], newer, newest}, "nobody decided them: gone ttl past expiry"
    clock.now += 40
    _open(store, _request(x=-3))
    assert ids[0] not in kept()
    assert ids[1] not in kept()
    # The query the cap runs for every new request.
    plan = store._db.execute(
        "EXPLAIN QUERY PLAN SELECT count(*) FROM approvals WHERE tenant = ? AND agent_id = ? "
        "AND state = 'pending' AND expires_at > ?",
        ("default", "agent-1", clock.now),
    ).fetchall()
    store.close()
    assert "approvals_pending" in str(plan), plan


# Redis only: what the SQLite file does by itself (failures) made explicit.


def test_redis_records_expire_and_indexes_are_trimmed(redis_server: RedisServer, redis_db: redis.Redis) -> None:
    clock = Clock()
    store = RedisApprovalStore(redis_server.url, ttl=60, clock=clock, retention_s=100)
    first = _open(store, _request(x=1))
    key = f"bastion:approvals:{{a}}:approval:{first}"
    assert 119_000 < redis_db.pttl(key) <= 120_000, "undecided: kept ttl past its expiry"
    names = redis_db.keys("*")
    assert set(names) == {
        key,
        f"bastion:approvals:{{a}}:binding:{_request(x=1).binding}",
        "bastion:approvals:{a}:pending:7:default|agent-1",
        "bastion:approvals:{a}:tenant:default",
        "bastion:approvals:{a}:all",
    }
    assert all(0 < redis_db.pttl(name) <= 160_000 for name in names)

    clock.now += 161
    second = _open(store, _request(x=1))
    assert second != first
    # The old request left every index though its hash is still there (Redis's clock has not moved).
    assert redis_db.zrange(f"bastion:approvals:{{a}}:binding:{_request(x=1).binding}", 0, -1) == [second]
    assert redis_db.zrange("bastion:approvals:{a}:pending:7:default|agent-1", 0, -1) == [second]
    assert redis_db.zrange("bastion:approvals:{a}:all", 0, -1) == [second]
    assert redis_db.zrange("bastion:approvals:{a}:tenant:default", 0, -1) == [second]
    store.close()


def test_redis_keeps_a_decided_request_retention_past_its_expiry(
    redis_server: RedisServer, redis_db: redis.Redis
) -> None:
    clock = Clock()
    store = RedisApprovalStore(redis_server.url, ttl=60, clock=clock, retention_s=100)
    approval_id = _open(store, _request(x=1))
    clock.now += 10
    store.decide(approval_id, approve=False, by="ops", reason="", node_id="d", tenant=None)
    store.close()

    # 50 s to its expiry (by the proxy's clock), then the retention.
    assert 149_000 < redis_db.pttl(f"bastion:approvals:{{a}}:approval:{approval_id}") <= 150_000


def test_redis_listing_pages_through_more_than_one_batch(redis_server: RedisServer, redis_db: redis.Redis) -> None:
    clock = Clock()
    store = RedisApprovalStore(redis_server.url, ttl=60, clock=clock)
    ids = []
    for index in range(_LIST_BATCH + 30):
        clock.now += 0.001
        ids.append(_open(store, _request(agent=f"a{index % 3}", x=index)))
    listed = store.list(tenant="default", state="pending", agent_id="a0", limit=500, before=None)
    store.close()

    assert [approval.approval_id for approval in listed] == ids[::3][::-1]


def _every_call(store: RedisApprovalStore) -> list[Callable[[], object]]:
    return [
        lambda: store.take(_request(x=1), "n"),
        lambda: store.give_back("apr_" + "0" * 32, "n"),
        lambda: _open(store, _request(x=1)),
        lambda: store.decide("apr_" + "0" * 32, approve=True, by="ops", reason="", node_id="d", tenant=None),
        lambda: store.get("apr_" + "0" * 32),
        lambda: store.list(tenant=None, state=None, agent_id=None, limit=10, before=None),
    ]


def test_redis_unreachable_raises_store_error_naming_redis() -> None:
    store = RedisApprovalStore(f"redis://127.0.0.1:{dead_port()}/0", ttl=60, timeout_ms=200)
    for call in _every_call(store):
        with pytest.raises(StoreError, match="Redis for approvals failed"):
            call()
    store.close()


def test_redis_not_answering_raises_store_error_within_the_deadline() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        store = RedisApprovalStore(f"redis://127.0.0.1:{port}/0", ttl=60, timeout_ms=50)
        with pytest.raises(StoreError, match="Redis did not answer the approval take within 50 ms"):
            store.take(_request(x=1), "n")
        store.close()


def test_a_redis_url_that_is_not_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BASTION_REDIS_URL is not a usable Redis URL"):
        RedisApprovalStore("http://user:secret@host/0", ttl=60)


async def test_the_approval_stage_blocks_when_redis_is_unreachable() -> None:
    store = RedisApprovalStore(f"redis://127.0.0.1:{dead_port()}/0", ttl=60, timeout_ms=200)
    record = Record(
        workflow_id="wf", session_id="s", agent_id="agent-1", tenant="default", action=_action(x=1), started_at=0
    )
    caller = Caller(Principal("agent-1", "default", (), float("inf")), "wf", "s", "bank")
    pending = Pending(caller, record, policy_pb2.Context(), (), 0)
    decision = policy_pb2.Decision(effect=policy_pb2.REQUIRE_APPROVAL, policy_name="payments", policy_version=1)

    outcome = await ApprovalStage(store, redactor=None)(pending, Outcome(False, decision, None))
    store.close()

    assert (outcome.allowed, outcome.block_code) == (False, APPROVAL_STORE_UNAVAILABLE)


_ALL: dict[str, Any] = {"tenant": None, "state": None, "agent_id": None, "limit": 10, "before": None}


def test_queue_entries_and_approvals_of_one_call_are_kept_apart(store: Approvals) -> None:
    approval = _request(amount=5)
    queued = dataclasses.replace(approval, kind=QUEUE)
    approval_id = _approved(store, approval)
    queue_id = _open(store, queued)

    assert (approval_id[:4], queue_id[:4]) == ("apr_", "que_")
    # An approval never releases a parked call, nor a release approve a call.
    assert store.take(queued, "n2") is None
    assert [item.approval_id for item in store.list(**_ALL)] == [approval_id]
    assert [item.approval_id for item in store.list(**_ALL, kind=QUEUE)] == [queue_id]
    store.decide(queue_id, approve=True, by="ops", reason="", node_id="d", tenant=None)
    taken = store.take(queued, "n3")
    assert taken is not None
    assert taken.approval_id == queue_id
    assert store.take(queued, "n4") is None
    used = store.take(approval, "n5")
    assert used is not None
    assert used.approval_id == approval_id


def test_the_digest_binds_exact_integers_and_the_operator_sees_them() -> None:
    # Found by an attacker's probe: the Struct's doubles made 2^53 and 2^53 + 1 one number,
    # so an approval of the first was spent on the second, which the upstream ran.
    from bastion.proxy._approvals import action_digest
    from bastion.proxy._stages import action_view
    from bastion.v1 import policy_pb2

    def call(a: int) -> tuple[policy_pb2.Action, dict[str, Any]]:
        action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="demo", tool="add", method="tools/call")
        action.arguments.update({"a": a, "b": 0})
        return action, {"a": a, "b": 0}

    (first, parsed), (second, parsed_second) = call(2**53), call(2**53 + 1)
    assert action_digest(first) == action_digest(second)  # what the Struct alone can tell
    assert action_digest(first, parsed) != action_digest(second, parsed_second)
    view = action_view(second, None, parsed_second)
    assert view is not None
    assert view["arguments"] == {"a": 2**53 + 1, "b": 0}
