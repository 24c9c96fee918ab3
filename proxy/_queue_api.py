"""The proxy's queue routes, for operators draining calls parked by a verifier
`fallback: queue` (`_queue.py`); off the hot path.

    GET  /v1/queue[?state=pending|released|rejected|used|expired&agent=ID&limit=N&before=T]
                                     newest first; `next_before` pages on
    GET  /v1/queue/{id}              one parked call
    POST /v1/queue/{id}/release      {"reason": "..."} optional: the identical retry passes once
    POST /v1/queue/{id}/reject       {"reason": "..."} optional: the retry is refused

The approval routes' handler (`_approvals_api.py`) with the queue's names: the same
roles (reads operator, admin or auditor; decisions operator or admin; an agent 403, no
token 401), tenant scoping (another tenant's id is 404), journaling of each decision
before it takes effect, limits and error bodies (404 unknown id, 409 already decided).
"""

from __future__ import annotations

from typing import Any

from ._approvals import QUEUE, Approval
from ._approvals_api import ApprovalsApi
from ._queue import PUBLIC_STATES

PREFIX = "/v1/queue"
_PUBLIC_TO_STORE = {public: state for state, public in PUBLIC_STATES.items()}


class QueueApi(ApprovalsApi):
    ROUTES = (
        ("GET", PREFIX),
        ("GET", PREFIX + "/{queue_id}"),
        ("POST", PREFIX + "/{queue_id}/release"),
        ("POST", PREFIX + "/{queue_id}/reject"),
    )
    PREFIX = PREFIX
    KIND = QUEUE
    NOUN = "queued call"
    STEPS = {"release": True, "reject": False}
    STATE_NAMES = _PUBLIC_TO_STORE

    def view(self, item: Approval) -> dict[str, Any]:
        return {
            "queue_id": item.approval_id,
            "state": PUBLIC_STATES[item.state],
            "tenant": item.tenant,
            "agent_id": item.agent_id,
            "action": item.action,
            "policy_name": item.policy_name,
            "policy_version": item.policy_version,
            # Who parked it: bastion.verifier_queued (the verifier's fallback) or a rule id.
            "rule_id": item.rule_id,
            "reason": item.reason,
            "workflow_id": item.workflow_id,
            "node_id": item.node_id,
            "created_at": item.created_at,
            "expires_at": item.expires_at,
            "decided_by": item.decided_by,
            "decided_at": item.decided_at,
            "decision_reason": item.decision_reason,
            "used_at": item.used_at,
            "used_node_id": item.used_node_id,
        }
