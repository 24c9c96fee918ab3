"""Approvals in Redis, shared by proxy replicas on separate disks (BASTION_REDIS_URL).

The same contract as the SQLite `ApprovalStore` (`_approvals.py`: the binding, the
states, one use), for replicas that share no file: an operator approves on replica A and
the agent's retry, landing on replica B, is forwarded exactly once across all of them.

Each transition (take, give back, open, decide) is one EVALSHA: Redis runs a script to
completion before any other command, so two replicas can never both take one approval,
nor both open a request past the agent's cap. Reads (`get`, `list`) are plain commands.
Times are the proxy's clock (as with SQLite), passed into the scripts; Redis's own clock
only runs the key expiries.

Keys, all under one hash tag so the scripts' keys share a cluster slot (approvals are
few and off the limits' hot path, so one slot is plenty):

    bastion:approvals:{a}:approval:<apr_…>       hash, one request (below)
    bastion:approvals:{a}:binding:<binding>      zset id → created_at, unexpired requests of one exact call
    bastion:approvals:{a}:pending:<n>:<tenant>|<agent>
                                                 zset id → expires_at, the agent's open requests (the cap)
    bastion:approvals:{a}:tenant:<tenant>        zset id → created_at, for listing one tenant
    bastion:approvals:{a}:all                    zset id → created_at, for listing every tenant

A request's hash holds the immutable record (policy, rule, workflow, the action view…)
as one JSON string, `record`, which the scripts never decode (cjson would turn an empty
array into an object); they read and write only the scalar fields: tenant, agent_id,
state, created_at, expires_at, pending_index (its agent's pending key), decided_by,
decided_at, decision_reason, decision_node_id, used_at, used_node_id. Times are Python's
repr of the float, stored as given, so they read back exactly.

Nothing grows forever: a request's hash expires `ttl` after its own expiry while nobody
decides it, `retention_s` after it once an operator has (the listing keeps decided
requests that long; what an agent alone can fill is bounded by its cap, as in the SQLite
store); the binding and pending indexes drop expired entries when scanned and expire with
their last entry; the listing indexes are trimmed past the retention horizon on every new
request (an id whose hash has gone is skipped).

Every command is bounded by BASTION_REDIS_TIMEOUT_MS and never retried (a retried take
could use an approval without forwarding); an error, a timeout or a reply that is not
what the scripts return raises StoreError, on which the approval stage blocks the call
and the API answers 503 (fail closed).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry

from bastion._errors import ConfigError, StoreError

from ._approvals import (
    APPROVAL,
    MAX_PENDING_PER_AGENT,
    RETENTION_S,
    Approval,
    Request,
    effective_state,
    id_prefix,
    new_id,
    not_found,
    not_pending,
    too_many_pending,
)

#: Connections per replica; more callers (threads) wait for one, within the same deadline.
_MAX_CONNECTIONS = 16
#: Ids fetched per round trip when listing (the filters are applied here, not in Redis).
_LIST_BATCH = 200

# KEYS[1] the binding's index. ARGV: now, node id, approval key prefix.
# Oldest approved, unexpired request first; expired entries leave the index on the way.
_TAKE = """
local now = tonumber(ARGV[1])
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[3] .. id
  local found = redis.call('HMGET', key, 'state', 'expires_at')
  if not found[1] or tonumber(found[2]) <= now then
    redis.call('ZREM', KEYS[1], id)
  elseif found[1] == 'approved' then
    redis.call('HSET', key, 'state', 'used', 'used_at', ARGV[1], 'used_node_id', ARGV[2])
    return {id, redis.call('HGETALL', key)}
  end
end
return false
"""

# KEYS[1] the approval. ARGV: node id that took it.
_GIVE_BACK = """
local found = redis.call('HMGET', KEYS[1], 'state', 'used_node_id')
if found[1] == 'used' and found[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'approved')
  redis.call('HDEL', KEYS[1], 'used_at', 'used_node_id')
  return 1
end
return 0
"""

# KEYS: binding index, agent's pending index, tenant index, all index, the new approval.
# ARGV: now, expires_at, approval key prefix, max pending, new id, tenant, agent id,
# record JSON, keep ms (ttl + retention), ttl ms, retention horizon (created_at below it goes),
# undecided keep ms (2 ttl).
# Replies {0, id, hash} reused, {1, count} over the cap, {2, id, hash} created.
_OPEN = """
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = #ids, 1, -1 do
  local key = ARGV[3] .. ids[i]
  local found = redis.call('HMGET', key, 'state', 'expires_at')
  if not found[1] or tonumber(found[2]) <= now then
    redis.call('ZREM', KEYS[1], ids[i])
  elseif found[1] == 'pending' or found[1] == 'denied' then
    return {0, ids[i], redis.call('HGETALL', key)}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local pending = redis.call('ZCARD', KEYS[2])
if pending >= tonumber(ARGV[4]) then
  return {1, pending}
end
local id = ARGV[5]
redis.call('HSET', KEYS[5], 'tenant', ARGV[6], 'agent_id', ARGV[7], 'record', ARGV[8], 'state', 'pending',
  'created_at', ARGV[1], 'expires_at', ARGV[2], 'pending_index', KEYS[2])
redis.call('PEXPIRE', KEYS[5], ARGV[12])
redis.call('ZADD', KEYS[1], ARGV[1], id)
redis.call('PEXPIRE', KEYS[1], ARGV[10])
redis.call('ZADD', KEYS[2], ARGV[2], id)
redis.call('PEXPIRE', KEYS[2], ARGV[10])
for k = 3, 4 do
  redis.call('ZADD', KEYS[k], ARGV[1], id)
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[11])
  redis.call('PEXPIRE', KEYS[k], ARGV[9])
end
return {2, id, redis.call('HGETALL', KEYS[5])}
"""

# KEYS[1] the approval. ARGV: now, id, '1' to check the tenant, tenant, new state, by,
# reason, node id, retention ms (kept that long past its expiry, now that it is decided).
# Replies {0, hash} decided, {1} not found, {2, state} not pending.
# The expiry rule is effective_state()'s.
_DECIDE = """
local found = redis.call('HMGET', KEYS[1], 'tenant', 'state', 'expires_at', 'pending_index')
if not found[1] or (ARGV[3] == '1' and found[1] ~= ARGV[4]) then
  return {1}
end
local state = found[2]
if (state == 'pending' or state == 'approved') and tonumber(found[3]) <= tonumber(ARGV[1]) then
  state = 'expired'
end
if state ~= 'pending' then
  return {2, state}
end
redis.call('HSET', KEYS[1], 'state', ARGV[5], 'decided_by', ARGV[6], 'decided_at', ARGV[1],
  'decision_reason', ARGV[7], 'decision_node_id', ARGV[8])
redis.call('ZREM', found[4], ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(found[3]) - tonumber(ARGV[1])) * 1000) + tonumber(ARGV[9]))
return {0, redis.call('HGETALL', KEYS[1])}
"""

_REUSED, _FULL, _CREATED = 0, 1, 2
_DECIDED, _NOT_FOUND, _NOT_PENDING = 0, 1, 2


class RedisApprovalStore:
    """Approval requests and their decisions in Redis (see the module docstring).

    Sync, like `ApprovalStore`: the stage and the API call it through asyncio.to_thread.
    The client and its connection pool are thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float,
        clock: Any = time.time,
        timeout_ms: int = 250,
        retention_s: float = RETENTION_S,
        max_pending: int = MAX_PENDING_PER_AGENT,
        prefix: str = "bastion:approvals",
    ) -> None:
        timeout_s = timeout_ms / 1000
        try:
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=_MAX_CONNECTIONS,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )
        except ValueError as exc:  # the URL's scheme or options; never echo it (it may hold a password)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"BASTION_REDIS_URL is not a usable Redis URL: {first}") from exc
        self._client = redis.Redis(connection_pool=pool)
        self._take = self._client.register_script(_TAKE)
        self._give_back = self._client.register_script(_GIVE_BACK)
        self._open = self._client.register_script(_OPEN)
        self._decide = self._client.register_script(_DECIDE)
        self._ttl = ttl
        self._clock = clock
        self._timeout_ms = timeout_ms
        self._retention_s = retention_s
        self._max_pending = max_pending
        self._base = f"{prefix}:{{a}}"

    def close(self) -> None:
        self._client.close()

    def take(self, request: Request, node_id: str) -> Approval | None:
        """Use an approved, unexpired approval of this exact call, once; None if there is none."""
        now = self._clock()
        reply = self._run("take", self._take, (self._binding(request),), (_t(now), node_id, self._approval_key("")))
        if reply is None:
            return None
        return self._parsed(lambda: _approval(reply[0], _fields(reply[1]), now))

    def give_back(self, approval_id: str, node_id: str) -> None:
        """Undo `take` for a call that was not forwarded after all."""
        self._run("give back", self._give_back, (self._approval_key(approval_id),), (node_id,))

    def open_request(
        self,
        request: Request,
        *,
        rule_id: str,
        reason: str,
        workflow_id: str,
        node_id: str,
        action: dict[str, Any],
    ) -> Approval:
        """The open (pending or denied) request of this exact call, or a new pending one."""
        now = self._clock()
        approval_id = new_id(request.kind)
        record = {
            "policy_name": request.policy_name,
            "policy_version": request.policy_version,
            "rule_id": rule_id,
            "reason": reason,
            "workflow_id": workflow_id,
            "node_id": node_id,
            "action": action,
        }
        keys = (
            self._binding(request),
            self._pending(request.tenant, request.agent_id),
            self._tenant(request.tenant),
            f"{self._base}:all",
            self._approval_key(approval_id),
        )
        keep_s = self._ttl + self._retention_s
        args = (
            _t(now),
            _t(now + self._ttl),
            self._approval_key(""),
            self._max_pending,
            approval_id,
            request.tenant,
            request.agent_id,
            orjson.dumps(record).decode(),
            _ms(keep_s),
            _ms(self._ttl),
            _t(now - keep_s),
            _ms(2 * self._ttl),
        )
        reply = self._run("request", self._open, keys, args)

        def parse() -> Approval:
            if reply[0] == _FULL:
                raise too_many_pending(request.agent_id, int(reply[1]))
            if reply[0] not in (_REUSED, _CREATED):
                raise ValueError(f"outcome {reply[0]!r}")
            return _approval(reply[1], _fields(reply[2]), now)

        return self._parsed(parse)

    def decide(
        self, approval_id: str, *, approve: bool, by: str, reason: str, node_id: str, tenant: str | None
    ) -> Approval:
        """Approve or deny a pending request. `tenant` None: any tenant (role admin).

        Raises NotFound (unknown, or another tenant's) or Conflict (not pending any more)."""
        now = self._clock()
        args = (
            _t(now),
            approval_id,
            "0" if tenant is None else "1",
            tenant or "",
            "approved" if approve else "denied",
            by,
            reason,
            node_id,
            _ms(self._retention_s),
        )
        reply = self._run("decision", self._decide, (self._approval_key(approval_id),), args)

        def parse() -> Approval:
            if reply[0] == _NOT_FOUND:
                raise not_found(approval_id)
            if reply[0] == _NOT_PENDING:
                raise not_pending(approval_id, str(reply[1]))
            if reply[0] != _DECIDED:
                raise ValueError(f"outcome {reply[0]!r}")
            return _approval(approval_id, _fields(reply[1]), now)

        return self._parsed(parse)

    def get(self, approval_id: str) -> Approval | None:
        fields: dict[str, str] = self._redis("read", lambda: self._client.hgetall(self._approval_key(approval_id)))
        if not fields:
            return None
        now = self._clock()
        return self._parsed(lambda: _approval(approval_id, fields, now))

    def list(
        self,
        *,
        tenant: str | None,
        state: str | None,
        agent_id: str | None,
        limit: int,
        before: float | None,
        kind: str = APPROVAL,
    ) -> list[Approval]:
        """Newest first, of one kind; `before` pages on created_at."""
        prefix = id_prefix(kind)
        now = self._clock()
        if before is not None and math.isnan(before):
            return []
        index = self._tenant(tenant) if tenant is not None else f"{self._base}:all"
        top = "+inf" if before is None else f"({before!r}"
        found: list[Approval] = []
        seen: set[str] = set()
        offset = 0
        while len(found) < limit:
            # Offsets stay valid while we page: new requests only enter above (newer) and
            # trimming only removes below; a shifted id shows up twice and is skipped.
            page = functools.partial(self._client.zrevrangebyscore, index, top, "-inf", start=offset, num=_LIST_BATCH)
            ids: list[str] = self._redis("listing", page)
            offset += len(ids)
            for approval_id, fields in zip(ids, self._records(ids), strict=True):
                if not fields or approval_id in seen or not approval_id.startswith(prefix):
                    continue  # expired out of Redis, or seen on the previous page
                seen.add(approval_id)
                approval = self._parsed(lambda: _approval(approval_id, fields, now))  # noqa: B023 (called at once)
                if (agent_id is None or approval.agent_id == agent_id) and (state is None or approval.state == state):
                    found.append(approval)
                    if len(found) == limit:
                        break
            if len(ids) < _LIST_BATCH:
                break
        return found

    def _records(self, ids: Sequence[str]) -> Sequence[dict[str, str]]:
        def fetch() -> Any:
            pipe = self._client.pipeline(transaction=False)
            for approval_id in ids:
                pipe.hgetall(self._approval_key(approval_id))
            return pipe.execute()

        return self._redis("listing", fetch) if ids else []

    def _approval_key(self, approval_id: str) -> str:
        return f"{self._base}:approval:{approval_id}"

    def _binding(self, request: Request) -> str:
        return f"{self._base}:binding:{request.binding}"

    def _pending(self, tenant: str, agent_id: str) -> str:
        # The length keeps the parts apart whatever they hold ('a|b' + 'c' ≠ 'a' + 'b|c').
        return f"{self._base}:pending:{len(tenant)}:{tenant}|{agent_id}"

    def _tenant(self, tenant: str) -> str:
        return f"{self._base}:tenant:{tenant}"

    def _run(self, what: str, script: Callable[..., Any], keys: Sequence[str], args: Sequence[str | int]) -> Any:
        return self._redis(what, lambda: script(keys=keys, args=args))

    def _redis(self, what: str, call: Callable[[], Any]) -> Any:
        # Any: redis-py types replies as bytes | str; with decode_responses they are str.
        try:
            return call()
        except (RedisTimeout, TimeoutError) as exc:
            raise StoreError(
                f"Redis did not answer the approval {what} within {self._timeout_ms} ms "
                "(BASTION_REDIS_TIMEOUT_MS); approvals are unavailable until it does"
            ) from exc
        except (RedisError, OSError) as exc:
            raise StoreError(
                f"Redis for approvals failed during the {what} ({type(exc).__name__}); "
                "approvals are unavailable until it answers"
            ) from exc

    def _parsed(self, parse: Callable[[], Approval]) -> Approval:
        try:
            return parse()
        except (KeyError, IndexError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"Redis answered an approval read with something unexpected ({exc!r:.200})") from exc


def _t(value: float) -> str:
    # repr round-trips a float exactly; Lua and Redis parse it back as the same double.
    return repr(float(value))


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _fields(flat: Sequence[str]) -> dict[str, str]:
    """HGETALL as a script returns it: field, value, field, value…"""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _optional(fields: dict[str, str], name: str) -> float | None:
    value = fields.get(name)
    return None if value is None else float(value)


def _approval(approval_id: str, fields: dict[str, str], now: float) -> Approval:
    record = orjson.loads(fields["record"])
    expires_at = float(fields["expires_at"])
    return Approval(
        approval_id=approval_id,
        tenant=fields["tenant"],
        agent_id=fields["agent_id"],
        policy_name=record["policy_name"],
        policy_version=int(record["policy_version"]),
        rule_id=record["rule_id"],
        reason=record["reason"],
        workflow_id=record["workflow_id"],
        node_id=record["node_id"],
        action=record["action"],
        state=effective_state(fields["state"], expires_at, now),
        created_at=float(fields["created_at"]),
        expires_at=expires_at,
        decided_by=fields.get("decided_by"),
        decided_at=_optional(fields, "decided_at"),
        decision_reason=fields.get("decision_reason"),
        decision_node_id=fields.get("decision_node_id"),
        used_at=_optional(fields, "used_at"),
        used_node_id=fields.get("used_node_id"),
    )
