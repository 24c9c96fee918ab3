"""Delegation: an agent that works for another agent's A2A message joins its workflow.

When the proxy forwards an A2A send from workflow W (the sending node N), it gives the
callee a `Bastion-Delegation` header: W, N, the tenant, the agent name and an expiry,
signed with a key derived from the stack's service token (every proxy replica and
`bastion wrap` of the stack can check it; no agent can mint one). The callee — or its
framework — passes the header on with its own calls through Bastion (MCP or A2A), and
each such action is recorded in W with a `DELEGATED_TO` edge to N, so "agent A asked
agent B, and B then called this tool" is one connected causal graph.

Why a signed token rather than just naming W: the owner of a workflow id is whoever
wrote it first (`_owners.py`), and naming another agent's workflow id scopes the caller
into its own copy. A delegation is the owner's proxy vouching that this caller works for
that node: it is accepted only for the same tenant, before its expiry, and, when the
agent's entry in `bastion.yaml` names its `subject`, only from that principal. Bastion
strips any delegation header a client sends before forwarding, so a token reaches only
the agent it was issued for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from bastion._errors import DelegationRefused
from bastion._identity import Principal

HEADER = b"bastion-delegation"
#: A delegation outlives its message by this much: the callee's work may take a while.
DEFAULT_TTL_S = 3600.0
_MAX_TOKEN = 2048


@dataclass(frozen=True, slots=True)
class Delegation:
    workflow_id: str
    node_id: str
    agent: str
    delegator: str


class Delegations:
    def __init__(self, service_token: str, *, subjects: Mapping[str, str] | None = None, ttl: float = DEFAULT_TTL_S):
        # A key of its own, so a delegation can never double as the service token.
        self._key = hashlib.sha256(b"bastion-delegation\x00" + service_token.encode()).digest()
        self._subjects = dict(subjects or {})
        self._ttl = ttl

    def issue(self, *, tenant: str, delegator: str, workflow_id: str, node_id: str, agent: str) -> bytes:
        payload = {
            "t": tenant,
            "w": workflow_id,
            "n": node_id,
            "a": agent,
            "d": delegator,
            "exp": int(time.time() + self._ttl),
        }
        body = base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=")
        return body + b"." + base64.urlsafe_b64encode(self._sign(body)).rstrip(b"=")

    def verify(self, token: bytes, principal: Principal) -> Delegation:
        """The delegation `principal` presents; DelegationRefused when it is not one for it."""
        if len(token) > _MAX_TOKEN:
            raise DelegationRefused(f"Bastion-Delegation is longer than {_MAX_TOKEN} bytes")
        body, _, signature = token.partition(b".")
        try:
            given = base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4))
            payload = orjson.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            raise DelegationRefused("Bastion-Delegation is malformed") from None
        if not hmac.compare_digest(given, self._sign(body)) or not isinstance(payload, dict):
            raise DelegationRefused("Bastion-Delegation is not signed by this stack")
        if not isinstance(payload.get("exp"), int) or payload["exp"] < time.time():
            raise DelegationRefused("Bastion-Delegation has expired")
        if payload.get("t") != principal.tenant:
            raise DelegationRefused("Bastion-Delegation was issued for another tenant")
        agent = str(payload.get("a", ""))
        subject = self._subjects.get(agent)
        if subject is not None and subject != principal.subject:
            raise DelegationRefused(
                f"Bastion-Delegation was issued to agent {agent!r}, which is not {principal.subject!r}"
            )
        return Delegation(str(payload.get("w", "")), str(payload.get("n", "")), agent, str(payload.get("d", "")))

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()
