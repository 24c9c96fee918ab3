"""The audit records the policy service writes into its outbox: one graph `Event` each, in
the transaction of the change it records (a version created or activated, a rollout step,
an API key or revocation), shipped to the graph by `_audit_shipper`.

The graph keeps an event as a policy audit record when its method starts with
`bastion.dev/`, its server is `policy` and its workflow is one of the service's own
(`bastion.policy`, `bastion.identity`; graph/_audit.py `audit_kind`).
"""

from __future__ import annotations

from typing import Any

import uuid6
from google.protobuf import struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from bastion.v1 import graph_pb2, policy_pb2

#: The graph workflow of policy versions and rollouts (API keys have their own).
POLICY_WORKFLOW = "bastion.policy"


def outbox_event(
    workflow: str,
    step: str,
    at: float,
    by: str,
    details: dict[str, Any],
    *,
    node: str | None = None,
    parent: str | None = None,
    tenant: str = "",
) -> bytes:
    """The serialised Event recording `step` (its method `bastion.dev/<step>`) done by `by`
    at `at`, with `details` as its arguments; never a secret. `tenant`: the tenant the change
    belongs to (an API key's), which scopes who may read the record in the graph."""
    event_id = node or str(uuid6.uuid7())
    arguments = struct_pb2.Struct()
    arguments.update(details)
    event = graph_pb2.Event(
        event_id=event_id,
        workflow_id=workflow,
        node_id=event_id,
        parent_ids=[parent] if parent else [],
        node_type=graph_pb2.OBSERVATION,
        agent_id=by,
        tenant=tenant,
        action=policy_pb2.Action(method=f"bastion.dev/{step}", server="policy", arguments=arguments),
        started_at=stamp(at),
    )
    return event.SerializeToString()


def stamp(at: float) -> Timestamp:
    """A protobuf Timestamp of Unix time `at`."""
    value = Timestamp()
    value.FromNanoseconds(int(at * 1e9))
    return value
