"""What one ingest transaction of the SQLite store writes once for the whole batch.

Why: the writer used to run eight statements per action, one row at a time, and the
statements were a third of the graph's CPU per governed call. Three of them need not
run per event:

* the workflow's summary (first and last seen, nodes, violations) is a sum: added up
  over the batch and written once per workflow when the batch ends;
* a workflow's agents are a set: each (workflow, agent) pair is inserted once per batch;
* a parked result (one that came before its node, `pending_results`) is rare: the table
  is looked at once per batch, and a node looks for its parked result only while some
  may exist.

All of it is inside the batch's transaction, so a batch that rolls back leaves nothing,
as before.
"""

from __future__ import annotations

import sqlite3

_UPSERT_WORKFLOW = """
INSERT INTO workflows (workflow_id, first_seen_ns, last_seen_ns, node_count, violation_count)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (workflow_id) DO UPDATE SET
    first_seen_ns = min(first_seen_ns, excluded.first_seen_ns),
    last_seen_ns = max(last_seen_ns, excluded.last_seen_ns),
    node_count = node_count + excluded.node_count,
    violation_count = violation_count + excluded.violation_count
"""
_INSERT_AGENT = "INSERT INTO workflow_agents (workflow_id, agent_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
_ANY_PENDING = "SELECT EXISTS (SELECT 1 FROM pending_results)"


class BatchWrites:
    """One transaction's summaries and agents, and whether parked results may exist."""

    __slots__ = ("_agents", "_workflows", "pending")

    def __init__(self, connection: sqlite3.Connection) -> None:
        #: Whether a parked result may be waiting for a node (checked once, set on parking).
        self.pending = bool(connection.execute(_ANY_PENDING).fetchone()[0])
        #: workflow_id -> [first_seen_ns, last_seen_ns, node_count, violation_count]
        self._workflows: dict[str, list[int]] = {}
        self._agents: set[tuple[str, str]] = set()

    def node_added(self, workflow_id: str, agent_id: str, at_ns: int, nodes: int, violation: bool) -> None:
        summary = self._workflows.get(workflow_id)
        if summary is None:
            self._workflows[workflow_id] = [at_ns, at_ns, nodes, int(violation)]
        else:
            summary[0] = min(summary[0], at_ns)
            summary[1] = max(summary[1], at_ns)
            summary[2] += nodes
            summary[3] += int(violation)
        if agent_id:
            self._agents.add((workflow_id, agent_id))

    def flush(self, connection: sqlite3.Connection) -> None:
        """Write the batch's summaries and agents (before its COMMIT)."""
        if self._workflows:
            connection.executemany(_UPSERT_WORKFLOW, [(key, *summary) for key, summary in self._workflows.items()])
        if self._agents:
            connection.executemany(_INSERT_AGENT, sorted(self._agents))
        self._workflows.clear()
        self._agents.clear()
