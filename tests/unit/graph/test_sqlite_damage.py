"""A damaged SQLite file is refused, not written on (graph/_store/_sqlite.py).

An attacker's probe overwrote 4 KiB in the middle of graph.db: the graph came up ready,
went on acknowledging new events (so the proxies deleted their journals) and only its reads
answered 503. Damage cannot be produced here but by writing into the file, which is what
the probe did."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bastion._errors import StoreError
from bastion.graph._store._sqlite import SqliteGraphStore
from bastion.v1 import graph_pb2, policy_pb2


def _event(index: int) -> graph_pb2.Event:
    return graph_pb2.Event(
        event_id=f"e{index:05d}",
        workflow_id=f"wf-{index % 7}",
        node_id=f"node-{index:05d}",
        node_type=graph_pb2.ACTION,
        agent_id="agent-a",
        tenant="default",
        action=policy_pb2.Action(kind=policy_pb2.TOOL_CALL, server="web", tool="search", method="tools/call"),
        outcome=graph_pb2.FORWARDED,
        block_reason="x" * 200,
    )


async def _checked(store: SqliteGraphStore) -> str | None:
    # The check runs in the background, beside ingest: wait for it.
    assert await asyncio.to_thread(store.checked.wait, 30)
    return store.damaged


async def test_a_damaged_file_is_noticed_at_start_and_refuses_ingest_and_readiness(tmp_path: Path) -> None:
    path = tmp_path / "graph.db"
    store = await SqliteGraphStore.open(path)
    await store.ingest([_event(i) for i in range(600)])
    await store.close()
    size = path.stat().st_size
    assert size > 64 * 4096
    with path.open("r+b") as f:
        f.seek((size // 2) // 4096 * 4096)
        f.write(os.urandom(4096))

    store = await SqliteGraphStore.open(path)
    try:
        reason = await _checked(store)
        assert reason is not None
        assert reason.startswith(f"graph store {path} is damaged (")
        assert reason.endswith("); restore it from a backup")
        with pytest.raises(StoreError, match="is damaged"):
            await store.ping()
        with pytest.raises(StoreError, match="is damaged"):
            await store.ingest([_event(1000)])
    finally:
        await store.close()


async def test_a_sound_file_passes_the_check(tmp_path: Path) -> None:
    store = await SqliteGraphStore.open(tmp_path / "graph.db")
    try:
        await store.ingest([_event(i) for i in range(50)])
        assert await _checked(store) is None
        await store.ping()
    finally:
        await store.close()
