"""Limits in Redis, shared by every proxy replica (BASTION_REDIS_URL); semantics in _limits.py.

One admission is one EVALSHA of `_ADMIT`: the script reads Redis's own clock (`TIME`,
so replicas with skewed clocks still share one window and one bucket), checks loop,
rate and budget, and consumes all three or nothing. Redis runs a script to completion
before any other command, so two replicas can never both take the last call of a
budget. `_REFUND` gives a reservation back, by the window it was taken in.

Keys, all of one scope in one cluster slot (the `{…}` hash tag):

    bastion:limits:{<tenant>|<agent>|<policy>}:rate              hash tokens, ts (ms)
    bastion:limits:{…}:budget:<window ms>                        hash start (ms), calls, cost (millionths)
    bastion:limits:{…}:loop:<call digest>                        list of admission times (ms), newest first

Each expires by itself when it no longer matters (a full bucket, an ended window, a
call older than the loop window), so Redis holds only live state.

Every command is bounded by BASTION_REDIS_TIMEOUT_MS and never retried (a retried
admission could count twice); an error or a timeout raises LimitsUnavailable and the
proxy blocks the action (fail closed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from bastion._errors import ConfigError, LimitsUnavailable
from bastion.v1 import policy_pb2

from ._limits import (
    UNLIMITED,
    Admission,
    LimitScope,
    Plan,
    Reservation,
    admission,
    budget_refusal,
    cost_micros,
    loop_refusal,
    plan_of,
    rate_refusal,
)

# Integers go out with %.0f: Lua's default number format (%.14g) would round a
# 16-digit cost in millionths.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate_calls, rate_unit = tonumber(ARGV[1]), tonumber(ARGV[2])
local window, budget_calls, budget_cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cost, loop_calls, loop_window = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local function int(x) return string.format('%.0f', x) end

if loop_calls > 0 then
  local oldest = redis.call('LINDEX', KEYS[3], loop_calls - 1)
  if oldest and tonumber(oldest) > now - loop_window then
    return {3, tonumber(oldest) + loop_window - now, 0, 0, 0}
  end
end

local tokens = 0
if rate_calls > 0 then
  local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  tokens = rate_calls
  if bucket[1] and bucket[2] then
    local elapsed = math.max(now - tonumber(bucket[2]), 0)
    tokens = math.min(rate_calls, tonumber(bucket[1]) + elapsed * rate_calls / rate_unit)
  end
  if tokens < 1 then
    return {2, math.ceil((1 - tokens) * rate_unit / rate_calls), 0, 0, 0}
  end
end

local start, calls, spent = 0, 0, 0
if window > 0 then
  start = now - now % window
  local budget = redis.call('HMGET', KEYS[2], 'start', 'calls', 'cost')
  if budget[1] and tonumber(budget[1]) == start then
    calls, spent = tonumber(budget[2]) or 0, tonumber(budget[3]) or 0
  end
  if (budget_calls > 0 and calls + 1 > budget_calls) or (budget_cost > 0 and spent + cost > budget_cost) then
    return {1, start + window - now, calls, spent, start}
  end
end

if loop_calls > 0 then
  redis.call('LPUSH', KEYS[3], int(now))
  redis.call('LTRIM', KEYS[3], 0, loop_calls - 1)
  redis.call('PEXPIRE', KEYS[3], int(loop_window))
end
if rate_calls > 0 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens - 1), 'ts', int(now))
  redis.call('PEXPIRE', KEYS[1], int(rate_unit))
end
if window > 0 then
  calls, spent = calls + 1, spent + cost
  redis.call('HSET', KEYS[2], 'start', int(start), 'calls', int(calls), 'cost', int(spent))
  redis.call('PEXPIRE', KEYS[2], int(start + window - now + 1000))
end
return {0, 0, calls, spent, start}
"""

_REFUND = """
local budget = redis.call('HMGET', KEYS[1], 'start', 'calls', 'cost')
if not budget[1] or tonumber(budget[1]) ~= tonumber(ARGV[1]) then
  return 0
end
local calls = math.max((tonumber(budget[2]) or 0) - 1, 0)
local spent = math.max((tonumber(budget[3]) or 0) - tonumber(ARGV[2]), 0)
redis.call('HSET', KEYS[1], 'calls', string.format('%.0f', calls), 'cost', string.format('%.0f', spent))
return 1
"""

_ADMITTED, _BUDGET, _RATE, _LOOP = 0, 1, 2, 3
#: Connections per replica; more callers wait for one (within the same deadline).
_MAX_CONNECTIONS = 64


class RedisLimiter:
    """Limits counted in Redis (see the module docstring); one connection pool per instance."""

    def __init__(
        self, url: str, *, timeout_ms: int, prefix: str = "bastion:limits", max_connections: int = _MAX_CONNECTIONS
    ) -> None:
        self._timeout_s = timeout_ms / 1000
        self._timeout_ms = timeout_ms
        self._prefix = prefix
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=self._timeout_s,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:  # the URL's scheme or options; never echo it (it may hold a password)
            raise ConfigError(f"BASTION_REDIS_URL is not a usable Redis URL: {_first_line(exc)}") from exc
        self._client = aioredis.Redis.from_pool(pool)
        self._admit = self._client.register_script(_ADMIT)
        self._refund = self._client.register_script(_REFUND)

    async def admit(self, scope: LimitScope, limits: policy_pb2.Limits, *, cost: float, call_digest: str) -> Admission:
        plan = plan_of(limits)
        if plan is None:
            return UNLIMITED
        micros = cost_micros(cost)
        base = self._base(scope)
        keys = (f"{base}:rate", f"{base}:budget:{plan.window_ms}", f"{base}:loop:{call_digest}")
        args = (
            plan.rate_calls,
            plan.rate_unit_ms,
            plan.window_ms,
            plan.budget_calls,
            plan.budget_cost_micros,
            micros,
            plan.loop_calls,
            plan.loop_window_ms,
        )
        reply = await self._run(self._admit, keys, args)
        try:
            outcome, retry_ms, calls, spent, start = (int(value) for value in reply)
        except (TypeError, ValueError) as exc:
            raise LimitsUnavailable("Redis answered the limit check with something unexpected") from exc
        return _answer(plan, scope, micros, outcome, retry_ms, calls, spent, start)

    async def refund(self, reservation: Reservation) -> None:
        key = f"{self._base(reservation.scope)}:budget:{reservation.window_ms}"
        await self._run(self._refund, (key,), (reservation.window_start_ms, reservation.cost_micros))

    async def ping(self) -> None:
        await self._bounded(self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()

    def _base(self, scope: LimitScope) -> str:
        # Lengths keep the parts apart whatever characters ids hold ('a|b' + 'c' ≠ 'a' + 'b|c');
        # a '}' inside an id ends the hash tag early, but at the same place for every key of
        # the scope, so they still share a slot.
        tenant, agent = scope.tenant, scope.agent_id
        return f"{self._prefix}:{{{len(tenant)}:{tenant}|{len(agent)}:{agent}|{scope.policy}}}"

    async def _run(self, script: Callable[..., Awaitable[Any]], keys: tuple[str, ...], args: tuple[int, ...]) -> Any:
        return await self._bounded(script(keys=keys, args=args))

    async def _bounded(self, call: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except TimeoutError as exc:
            raise LimitsUnavailable(
                f"Redis did not answer the limit check within {self._timeout_ms} ms (BASTION_REDIS_TIMEOUT_MS); "
                "the action is blocked"
            ) from exc
        except (RedisError, OSError) as exc:
            raise LimitsUnavailable(
                f"Redis for limits failed ({type(exc).__name__}); the action is blocked until it answers"
            ) from exc


def _answer(
    plan: Plan, scope: LimitScope, micros: int, outcome: int, retry_ms: int, calls: int, spent: int, start: int
) -> Admission:
    if outcome == _ADMITTED:
        return admission(plan, scope, start, micros, calls, spent)
    if outcome == _LOOP:
        return loop_refusal(plan, retry_ms)
    if outcome == _RATE:
        return rate_refusal(plan, retry_ms)
    if outcome == _BUDGET:
        return budget_refusal(plan, calls, spent, micros, retry_ms)
    raise LimitsUnavailable(f"Redis answered the limit check with an unknown outcome {outcome}")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
