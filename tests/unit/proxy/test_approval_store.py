"""The approval store on its own: what an approval is bound to, its expiry, one use."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion._errors import Conflict, NotFound
from bastion.proxy._approvals import MAX_PENDING_PER_AGENT, ApprovalStore, Request, action_digest
from bastion.v1 import policy_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[ApprovalStore]:
    opened = ApprovalStore(tmp_path / "approvals.sqlite3", ttl=60, clock=clock)
    yield opened
    opened.close()


def _action(**arguments: Any) -> policy_pb2.Action:
    action = policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="bank", tool="transfer", method="tools/call")
    action.arguments.update(arguments)
    return action


def _request(version: int = 1, agent: str = "agent-1", **arguments: Any) -> Request:
    return Request("default", agent, action_digest(_action(**arguments)), "payments", version)


def _open(store: ApprovalStore, request: Request) -> str:
    approval = store.open_request(request, rule_id="r", reason="why", workflow_id="wf", node_id="n", action={})
    return approval.approval_id


def _approved(store: ApprovalStore, request: Request) -> str:
    approval_id = _open(store, request)
    store.decide(approval_id, approve=True, by="ops", reason="", node_id="d", tenant="default")
    return approval_id


def test_the_digest_is_canonical_and_covers_every_argument() -> None:
    assert action_digest(_action(a=1, b=[1, 2])) == action_digest(_action(b=[1, 2], a=1))
    assert action_digest(_action(a=1)) != action_digest(_action(a=2))
    assert action_digest(_action(a=1)) != action_digest(_action(a=1, b=None))


def test_an_approval_is_used_once_and_only_for_its_exact_call(store: ApprovalStore) -> None:
    request = _request(iban="DE89370400440532013000", amount=100)
    _approved(store, request)

    assert store.take(_request(iban="DE89370400440532013000", amount=101), "n2") is None
    assert store.take(_request(agent="agent-2", iban="DE89370400440532013000", amount=100), "n2") is None
    assert store.take(_request(version=2, iban="DE89370400440532013000", amount=100), "n2") is None
    taken = store.take(request, "n2")
    assert taken is not None
    assert (taken.state, taken.used_node_id) == ("used", "n2")
    assert store.take(request, "n3") is None


def test_concurrent_takes_from_two_connections_use_it_once(tmp_path: Path, clock: Clock) -> None:
    stores = [ApprovalStore(tmp_path / "shared.sqlite3", ttl=60, clock=clock) for _ in range(2)]
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
    for opened in stores:
        opened.close()

    assert len(taken) == 1


def test_an_expired_approval_is_not_used_and_reads_as_expired(store: ApprovalStore, clock: Clock) -> None:
    request = _request(x=1)
    approval_id = _approved(store, request)
    clock.now += 61

    assert store.take(request, "n") is None
    approval = store.get(approval_id)
    assert approval is not None
    assert approval.state == "expired"
    with pytest.raises(Conflict):
        store.decide(approval_id, approve=False, by="ops", reason="", node_id="d", tenant=None)
    # A new request for the same call is a new id.
    assert _open(store, request) != approval_id


def test_a_pending_request_is_reused_and_a_given_back_approval_can_be_used_again(store: ApprovalStore) -> None:
    request = _request(x=1)
    first = _open(store, request)
    assert _open(store, request) == first
    store.decide(first, approve=True, by="ops", reason="", node_id="d", tenant="default")
    assert store.take(request, "n1") is not None
    store.give_back(first, "n1")
    taken = store.take(request, "n2")
    assert taken is not None
    assert taken.approval_id == first


def test_deciding_checks_tenant_and_state(store: ApprovalStore) -> None:
    approval_id = _open(store, _request(x=1))
    with pytest.raises(NotFound):
        store.decide(approval_id, approve=True, by="ops", reason="", node_id="d", tenant="globex")
    with pytest.raises(NotFound):
        store.decide("apr_" + "0" * 32, approve=True, by="ops", reason="", node_id="d", tenant=None)
    store.decide(approval_id, approve=False, by="ops", reason="no", node_id="d", tenant=None)
    with pytest.raises(Conflict):
        store.decide(approval_id, approve=True, by="ops", reason="", node_id="d", tenant=None)


def test_an_agent_cannot_flood_the_queue(store: ApprovalStore) -> None:
    for index in range(MAX_PENDING_PER_AGENT):
        _open(store, _request(x=index))
    with pytest.raises(Conflict, match="approval requests open"):
        _open(store, _request(x=-1))
    # Others are not affected.
    assert _open(store, _request(agent="agent-2", x=-1))


def test_approvals_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "approvals.sqlite3"
    first = ApprovalStore(path, ttl=60, clock=clock)
    approval_id = _approved(first, _request(x=1))
    first.close()
    second = ApprovalStore(path, ttl=60, clock=clock)
    taken = second.take(_request(x=1), "n")
    second.close()

    assert taken is not None
    assert taken.approval_id == approval_id
