"""JSON-RPC error bodies the proxy answers with (codes in docs/errors.md)."""

from __future__ import annotations

import re
from typing import Any

import orjson

POLICY_VIOLATION = -32003
APPROVAL_REQUIRED = -32004
LIMIT_EXCEEDED = -32005


# ipv4:1.2.3.4:50051, [::1]:7070, policy:50051, 127.0.0.1 — how grpc and sockets name peers.
# A host name may only begin where a run of host characters begins (the look-behind):
# tried from every offset of a long run, the match rescanned the run each time, which is
# quadratic (an attacker's probe: a chained verifier's 200 KB scorer name in a block
# reason froze the proxy's event loop for minutes).
_ADDRESS = re.compile(
    r"(?:ipv[46]:)?(?:\[[0-9A-Fa-f:.]+\]|\d{1,3}(?:\.\d{1,3}){3}|(?<![A-Za-z0-9.-])[.-]*[A-Za-z0-9][A-Za-z0-9.-]*)"
    r"(?::\d{2,5})"
    r"|\d{1,3}(?:\.\d{1,3}){3}"
)


def public_reason(text: str) -> str:
    """`text` without network addresses: reasons go to agents, addresses stay in the log."""
    return _ADDRESS.sub("<internal address>", text)


def jsonrpc_error(msg_id: Any, code: int, message: str, data: dict[str, Any] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, "error": error})


def block_envelope(
    msg_id: Any,
    *,
    violation_id: str,
    rule_id: str,
    reason: str,
    deviation_score: float | None,
    threshold: float | None,
    drift_path_origin: str | None,
    agent_id: str,
    blocked_action: dict[str, Any],
    policy_version: int | None,
    policy_name: str,
    timestamp: str,
    code: int = POLICY_VIOLATION,
    message: str = "POLICY_VIOLATION",
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The DESIGN §4 block envelope: code -32003, message POLICY_VIOLATION, full data
    (-32004 APPROVAL_REQUIRED and -32005 limits carry the same fields and theirs)."""
    return jsonrpc_error(
        msg_id,
        code,
        message,
        (extra or {})
        | {
            "violation_id": violation_id,
            "rule_id": rule_id,
            "reason": reason,
            "deviation_score": deviation_score,
            "threshold": threshold,
            "drift_path_origin": drift_path_origin,
            "agent_id": agent_id,
            "blocked_action": blocked_action,
            "policy_version": policy_version,
            "policy_name": policy_name,
            "timestamp": timestamp,
        },
    )
