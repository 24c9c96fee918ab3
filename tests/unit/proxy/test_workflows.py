"""Workflow identity and ownership: every caller writes only into its own workflows and sessions."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion import InvalidRequest, SessionForeign, SessionUnknown
from bastion._identity import Principal
from bastion.proxy._owners import SessionOwners, WorkflowOwners, scoped_id
from bastion.proxy._workflows import (
    MAX_SESSIONS_PER_WORKFLOW,
    MAX_TASK_CHARS,
    WorkflowTracker,
    _Uuid7,
    new_id,
    session_workflow_id,
)

ALICE = Principal(subject="alice", tenant="t1", roles=(), expires_at=0)
MALLORY = Principal(subject="mallory", tenant="t1", roles=(), expires_at=0)
ALICE_ELSEWHERE = Principal(subject="alice", tenant="t2", roles=(), expires_at=0)


@pytest.fixture
def owners(tmp_path: Path) -> Iterator[WorkflowOwners]:
    store = WorkflowOwners(tmp_path / "owners.sqlite3")
    yield store
    store.close()


async def test_workflow_identity_follows_header_then_meta_then_session_then_rolling(owners: WorkflowOwners) -> None:
    tracker = WorkflowTracker(4, owners)
    assert await tracker.resolve("wf-h", "wf-m", "sess", ALICE) == "wf-h"
    assert await tracker.resolve(None, "wf-m", "sess", ALICE) == "wf-m"
    assert await tracker.resolve(None, None, "sess", ALICE) == "sess"
    rolling = await tracker.resolve(None, None, None, ALICE)
    assert rolling.startswith("wf-")
    assert await tracker.resolve(None, None, None, ALICE) == rolling
    assert await tracker.resolve(None, None, None, MALLORY) != rolling


@pytest.mark.parametrize(
    "bad",
    ["x" * 129, "has space", "tab\there", "caf\u00e9", "nl\n", "a/b", "-x", "x~y", "bastion.rejected", "BASTION.x"],
)
async def test_client_named_workflow_ids_must_be_short_and_safe(owners: WorkflowOwners, bad: str) -> None:
    tracker = WorkflowTracker(4, owners)
    with pytest.raises(InvalidRequest, match="Bastion-Workflow-Id"):
        await tracker.resolve(bad, None, None, ALICE)
    with pytest.raises(InvalidRequest, match="_meta"):
        await tracker.resolve(None, bad, None, ALICE)


async def test_a_workflow_named_by_another_principal_is_their_own_scoped_workflow(owners: WorkflowOwners) -> None:
    tracker = WorkflowTracker(4, owners)
    assert await tracker.resolve("run-1", None, None, ALICE) == "run-1"
    theirs = await tracker.resolve("run-1", None, None, MALLORY)
    elsewhere = await tracker.resolve("run-1", None, None, ALICE_ELSEWHERE)
    assert theirs.startswith("run-1~")
    assert len({theirs, elsewhere, "run-1"}) == 3
    assert await tracker.resolve(None, "run-1", None, MALLORY) == theirs  # deterministic, header or _meta alike
    assert await tracker.resolve("run-1", None, None, ALICE) == "run-1"


async def test_ownership_survives_a_restart(tmp_path: Path) -> None:
    first = WorkflowOwners(tmp_path / "owners.sqlite3")
    assert await first.effective("run-2", ALICE) == "run-2"
    first.close()
    second = WorkflowOwners(tmp_path / "owners.sqlite3")
    try:
        assert await second.effective("run-2", MALLORY) != "run-2"
        assert await second.effective("run-2", ALICE) == "run-2"
    finally:
        second.close()


async def test_a_sessions_workflow_cannot_be_claimed_first_by_naming_it(owners: WorkflowOwners) -> None:
    tracker = WorkflowTracker(4, owners)
    assert await tracker.resolve(None, None, "abc123", ALICE) == "abc123"
    assert await tracker.resolve("abc123", None, None, MALLORY) == scoped_id("abc123", "2:t1/mallory")


def test_session_ids_outside_the_safe_set_get_a_digest_workflow() -> None:
    assert session_workflow_id("abc-123") == "abc-123"
    odd = session_workflow_id("a/b?c")
    assert odd.startswith("mcp-session-")
    assert odd == session_workflow_id("a/b?c")


async def test_state_is_per_principal_so_no_one_seeds_anothers_task(owners: WorkflowOwners) -> None:
    tracker = WorkflowTracker(4, owners)
    tracker.state(MALLORY, "shared").set_task("exfiltrate")
    assert tracker.state(ALICE, "shared").task == ""
    assert tracker.state(ALICE, "shared").set_task("real task") == "real task"
    assert tracker.state(ALICE, "shared").set_task("later") == "real task"


def test_per_workflow_structures_are_bounded(owners: WorkflowOwners) -> None:
    state = WorkflowTracker(4, owners).state(ALICE, "wf")
    assert len(state.set_task("x" * (MAX_TASK_CHARS * 3))) == MAX_TASK_CHARS
    for i in range(MAX_SESSIONS_PER_WORKFLOW + 1):
        state.set_last_node(f"s{i}", f"n{i}")
    assert state.last_node("s0") is None
    assert state.last_node(f"s{MAX_SESSIONS_PER_WORKFLOW}") == f"n{MAX_SESSIONS_PER_WORKFLOW}"


def test_a_session_belongs_to_the_principal_that_initialised_it() -> None:
    sessions = SessionOwners()
    sessions.bind("s-1", ALICE)
    sessions.check("s-1", ALICE)
    with pytest.raises(SessionForeign):
        sessions.check("s-1", MALLORY)
    with pytest.raises(SessionForeign):
        sessions.check("s-1", ALICE_ELSEWHERE)
    with pytest.raises(SessionUnknown):
        sessions.check("s-2", ALICE)
    sessions.forget("s-1")
    with pytest.raises(SessionUnknown):
        sessions.check("s-1", ALICE)


def test_sessions_are_bounded_oldest_first() -> None:
    sessions = SessionOwners(capacity=2)
    for name in ("a", "b", "c"):
        sessions.bind(name, ALICE)
    with pytest.raises(SessionUnknown):
        sessions.check("a", ALICE)
    sessions.check("c", ALICE)


def test_new_ids_are_uuid7_unique_and_ordered_by_creation() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for text in ids[::1000]:
        value = uuid.UUID(text)
        assert (value.version, value.variant, str(value)) == (7, uuid.RFC_4122, text)
        assert abs((value.int >> 80) - time.time_ns() // 1_000_000) < 60_000


def test_a_millisecond_that_runs_out_of_counter_moves_on_to_the_next_and_stays_ordered() -> None:
    make = _Uuid7()
    now_ms = time.time_ns() // 1_000_000 + 10_000  # ahead of the clock: every id shares it
    make._ms, make._seq = now_ms, 0xFFE
    ids = [make() for _ in range(4)]
    assert ids == sorted(ids)
    stamps = [uuid.UUID(text).int >> 80 for text in ids]
    assert stamps == [now_ms, now_ms + 1, now_ms + 1, now_ms + 1]


def test_ids_past_one_read_of_random_bytes_stay_unique_and_ordered() -> None:
    make = _Uuid7()
    ids = [make() for _ in range(3 * 4096 // 8)]  # three pools' worth
    assert ids == sorted(ids)
    assert len({text[19:] for text in ids}) == len(ids)  # the random tails too


def test_a_forked_child_draws_random_bits_of_its_own() -> None:
    make = _Uuid7()
    make()  # the pool is read: without a pool of its own, the child would go on from here
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, make().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    parent = make()
    assert child[24:] != parent[24:]  # the last 48 random bits
