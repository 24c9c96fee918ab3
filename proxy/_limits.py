"""Limits: rate, loop and budget of a policy's `limits:` stanza — step ③ of DESIGN §1.

Contract
--------
* Limits are counted per `LimitScope` — (tenant, agent id, deciding policy's name) — with
  the deciding version's `limits` (`Decision.limits`); the caller passes both, and the
  deciding rule's `cost` (`Decision.cost`). A call whose limits set nothing passes.
* `admit` is one atomic step: it either admits the call — taking a rate token, recording
  the call for loop detection and reserving one call and its cost in the budget window —
  or refuses it and takes nothing. The checks, first refusal wins:
    1. loop: `loop_same_call` identical calls (the same `call_digest` the caller passes:
       the proxy's `_approvals.action_digest`, arguments key order ignored) already admitted within the last
       `loop_window` (sliding) → LOOP_DETECTED, retry when the oldest of them leaves it;
    2. rate "N/s|m|h|d": a token bucket holding N, refilled N per unit (so a burst of
       N, then N per unit) → RATE_LIMITED, retry when one token is back;
    3. budget: fixed windows aligned to the epoch (start = floor(now / window) * window;
       `1d` runs midnight to midnight UTC). Refused when the calls would exceed
       `budget_calls` (0: no call cap) or the cost would exceed `budget_cost` (0: no cost
       cap) → BUDGET_EXCEEDED, retry when the window ends (none when the call alone
       costs more than the whole budget).
  Costs are counted in millionths, as integers, so sums and refunds are exact.
* `refund` gives back a reservation's call and cost — when the upstream could not be
  reached (no answer at all: any answer is no proof the action did not happen,
  proxy/_enforcer.py) or a later stage blocked it — never below zero; a window that
  has already ended is left alone. Rate tokens and loop history are not given back.
* Fail closed: a store that cannot answer (Redis down or slower than
  BASTION_REDIS_TIMEOUT_MS) or limits that cannot be read raise LimitsUnavailable, and
  the action is blocked. A refusal never consumes; an admission that timed out may have
  consumed on the server, so an outage can over-count, never under-count.

Two stores: `InProcessLimiter` (default; this process's event loop, atomic because it
never awaits between check and consume) and `RedisLimiter` (proxy/_limits_redis.py,
when BASTION_REDIS_URL is set: one Lua script per admission, so every replica shares one
budget and one clock, Redis's). The in-process store is bounded: the least recently used
scopes are forgotten beyond `max_scopes` (their counts start again), and each scope
remembers at most `max_loop_calls` distinct recent calls for loop detection.
"""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from bastion._errors import LimitsUnavailable
from bastion.v1 import policy_pb2

RATE_LIMITED: Final = "RATE_LIMITED"
BUDGET_EXCEEDED: Final = "BUDGET_EXCEEDED"
LOOP_DETECTED: Final = "LOOP_DETECTED"

#: Costs are counted in millionths of a unit, as integers (exact in Redis's Lua up to 2**53).
COST_SCALE: Final = 1_000_000
# policy/_document.py MAX_COST: the largest cost a validated policy can carry.
_MAX_COST = 1e9
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RATE_UNITS = frozenset("smhd")
_MAX_WINDOW_LENGTHS = 4


@dataclass(frozen=True, slots=True)
class LimitScope:
    """Whose calls count together: one agent of one tenant under one policy."""

    tenant: str
    agent_id: str
    policy: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """What an admission reserved in a budget window, to give back with `Limiter.refund`."""

    scope: LimitScope
    window_ms: int
    window_start_ms: int
    cost_micros: int

    @property
    def cost(self) -> float:
        return self.cost_micros / COST_SCALE


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    #: RATE_LIMITED, BUDGET_EXCEEDED or LOOP_DETECTED; "" when admitted.
    kind: str = ""
    #: For people: "budget of 50 calls per 1d used up (50 used)".
    reason: str = ""
    #: Seconds until the same call could pass; None when waiting will not help.
    retry_after_s: float | None = None
    #: What to refund when the action does not happen (None: nothing was reserved).
    reservation: Reservation | None = None
    #: The budget window's state after this admission (before it, when refused).
    calls_used: int = 0
    calls_limit: int = 0
    cost_used: float = 0.0
    cost_limit: float = 0.0
    window: str = ""

    def budget_state(self) -> policy_pb2.BudgetState:
        return policy_pb2.BudgetState(
            calls_used=self.calls_used,
            calls_limit=self.calls_limit,
            cost_used=self.cost_used,
            cost_limit=self.cost_limit,
            window=self.window,
        )


#: The admission of a call whose limits set nothing.
UNLIMITED: Final = Admission(admitted=True)


class Limiter(Protocol):
    async def admit(self, scope: LimitScope, limits: policy_pb2.Limits, *, cost: float, call_digest: str) -> Admission:
        """Admit the call (consuming) or refuse it (consuming nothing); LimitsUnavailable
        when the store cannot answer or `limits` cannot be read."""
        ...

    async def refund(self, reservation: Reservation) -> None:
        """Give back one admission's call and cost; call it at most once per reservation."""
        ...

    async def ping(self) -> None:
        """Raise LimitsUnavailable when the store cannot answer (for readiness)."""
        ...

    async def close(self) -> None: ...


def open_limiter(redis_url: str | None, *, timeout_ms: int) -> Limiter:
    """The in-process limiter, or the Redis one shared by replicas when `redis_url` is set."""
    if redis_url is None:
        return InProcessLimiter()
    from ._limits_redis import RedisLimiter  # only deployments with Redis pay for the import

    return RedisLimiter(redis_url, timeout_ms=timeout_ms)


# --- what the limits ask for, parsed once ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """A `Limits` message read once: every duration in milliseconds, costs in millionths."""

    rate: str
    rate_calls: int  # 0: no rate limit
    rate_unit_ms: int
    window: str
    window_ms: int  # 0: no budget
    budget_calls: int  # 0: no call cap
    budget_cost_micros: int  # 0: no cost cap
    loop_calls: int  # 0: no loop detection
    loop_window: str
    loop_window_ms: int


def plan_of(limits: policy_pb2.Limits) -> Plan | None:
    """The plan of `limits` (None: they limit nothing), cached by value: limits arrive
    with every decision and must not be parsed per call."""
    return _parse_plan(
        limits.rate,
        limits.budget_calls,
        limits.budget_window,
        limits.loop_same_call,
        limits.loop_window,
        limits.budget_cost,
    )


# Only policy versions make plans (a handful); the bound is a backstop.
@functools.lru_cache(maxsize=1024)
def _parse_plan(
    rate: str, budget_calls: int, window: str, loop_calls: int, loop_window: str, budget_cost: float
) -> Plan | None:
    rate_calls, rate_unit_ms = parse_rate(rate) if rate else (0, 0)
    if budget_calls < 0 or not 0 <= budget_cost <= _MAX_COST:
        raise LimitsUnavailable(f"limits: invalid budget ({budget_calls} calls, cost {budget_cost})")
    budget = bool(budget_calls or budget_cost)
    if budget and not window:
        raise LimitsUnavailable("limits: a budget without a window")
    if loop_calls < 0 or (loop_calls and not loop_window):
        raise LimitsUnavailable(f"limits: invalid loop detection ({loop_calls} calls within {loop_window!r})")
    plan = Plan(
        rate=rate,
        rate_calls=rate_calls,
        rate_unit_ms=rate_unit_ms,
        window=window if budget else "",
        window_ms=parse_duration_ms(window) if budget else 0,
        budget_calls=budget_calls,
        budget_cost_micros=round(budget_cost * COST_SCALE),
        loop_calls=loop_calls,
        loop_window=loop_window if loop_calls else "",
        loop_window_ms=parse_duration_ms(loop_window) if loop_calls else 0,
    )
    return plan if plan.rate_calls or plan.window_ms or plan.loop_calls else None


def parse_rate(text: str) -> tuple[int, int]:
    """'60/m' → (60, 60000): calls per unit in milliseconds (policy/_document.py _RATE)."""
    calls, _, unit = text.partition("/")
    if not (calls.isascii() and calls.isdigit() and calls[0] != "0" and len(calls) <= 9 and unit in _RATE_UNITS):
        raise LimitsUnavailable(f"limits: unreadable rate {text!r} (expected '<calls>/<s|m|h|d>')")
    return int(calls), _UNIT_MS[unit]


def parse_duration_ms(text: str) -> int:
    """'60s' → 60000 (policy/_document.py _DURATION: <n><ms|s|m|h|d>)."""
    unit = "ms" if text.endswith("ms") else text[-1:]
    number = text[: -len(unit)] if unit else ""
    if not (number.isascii() and number.isdigit() and number[0] != "0" and len(number) <= 9 and unit in _UNIT_MS):
        raise LimitsUnavailable(f"limits: unreadable duration {text!r} (expected '<n><ms|s|m|h|d>')")
    return int(number) * _UNIT_MS[unit]


def cost_micros(cost: float) -> int:
    if not 0 <= cost <= _MAX_COST:  # also NaN
        raise LimitsUnavailable(f"limits: invalid call cost {cost!r}")
    return round(cost * COST_SCALE)


# --- the answers, shared by both stores ------------------------------------------------------


def loop_refusal(plan: Plan, retry_ms: float) -> Admission:
    return Admission(
        admitted=False,
        kind=LOOP_DETECTED,
        reason=f"the same call (tool and arguments) was already made {plan.loop_calls} "
        f"time{'s' if plan.loop_calls != 1 else ''} within {plan.loop_window}",
        retry_after_s=_seconds(retry_ms),
    )


def rate_refusal(plan: Plan, retry_ms: float) -> Admission:
    return Admission(
        admitted=False,
        kind=RATE_LIMITED,
        reason=f"rate limit of {plan.rate} reached",
        retry_after_s=_seconds(retry_ms),
    )


def budget_refusal(plan: Plan, calls_used: int, cost_used_micros: int, call_micros: int, retry_ms: float) -> Admission:
    retry: float | None = _seconds(retry_ms)
    if plan.budget_calls and calls_used + 1 > plan.budget_calls:
        reason = f"budget of {plan.budget_calls} calls per {plan.window} used up ({calls_used} used)"
    elif call_micros > plan.budget_cost_micros:
        reason = (
            f"this call costs {_amount(call_micros)}, more than the whole cost budget of "
            f"{_amount(plan.budget_cost_micros)} per {plan.window}"
        )
        retry = None
    else:
        reason = (
            f"cost budget of {_amount(plan.budget_cost_micros)} per {plan.window} used up "
            f"({_amount(cost_used_micros)} used, this call costs {_amount(call_micros)})"
        )
    return Admission(
        admitted=False,
        kind=BUDGET_EXCEEDED,
        reason=reason,
        retry_after_s=retry,
        calls_used=calls_used,
        calls_limit=plan.budget_calls,
        cost_used=cost_used_micros / COST_SCALE,
        cost_limit=plan.budget_cost_micros / COST_SCALE,
        window=plan.window,
    )


def admission(
    plan: Plan, scope: LimitScope, window_start_ms: int, call_micros: int, calls_used: int, cost_used_micros: int
) -> Admission:
    """An admitted call; `calls_used` and `cost_used_micros` include it."""
    if not plan.window_ms:
        return UNLIMITED
    return Admission(
        admitted=True,
        reservation=Reservation(scope, plan.window_ms, window_start_ms, call_micros),
        calls_used=calls_used,
        calls_limit=plan.budget_calls,
        cost_used=cost_used_micros / COST_SCALE,
        cost_limit=plan.budget_cost_micros / COST_SCALE,
        window=plan.window,
    )


def _seconds(milliseconds: float) -> float:
    return max(math.ceil(milliseconds), 1) / 1000


def _amount(micros: int) -> str:
    return f"{micros / COST_SCALE:.6f}".rstrip("0").rstrip(".")


# --- in-process ----------------------------------------------------------------------------


class _Window:
    __slots__ = ("calls", "cost", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.calls = 0
        self.cost = 0


class _ScopeState:
    __slots__ = ("budgets", "loops", "refilled_ms", "tokens")

    def __init__(self) -> None:
        self.tokens = -1.0  # < 0: a bucket not yet used, full
        self.refilled_ms = 0.0
        #: Budget window length in ms → the current window of that length.
        self.budgets: dict[int, _Window] = {}
        #: Call digest → times (ms) of its last admissions, oldest first; least recent digest first.
        self.loops: OrderedDict[str, deque[float]] = OrderedDict()


class InProcessLimiter:
    """Limits counted in this process (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_scopes: int = 100_000,
        max_loop_calls: int = 1024,
    ) -> None:
        self._clock = clock
        self._max_scopes = max_scopes
        self._max_loop_calls = max_loop_calls
        self._scopes: OrderedDict[LimitScope, _ScopeState] = OrderedDict()

    def __len__(self) -> int:
        """How many scopes are remembered."""
        return len(self._scopes)

    async def admit(self, scope: LimitScope, limits: policy_pb2.Limits, *, cost: float, call_digest: str) -> Admission:
        # No await in here: on one event loop, check and consume are one atomic step.
        plan = plan_of(limits)
        if plan is None:
            return UNLIMITED
        micros = cost_micros(cost)
        now = self._clock() * 1000.0
        state = self._state(scope)
        history = None
        if plan.loop_calls:
            history = state.loops.get(call_digest)
            if history is not None and len(history) >= plan.loop_calls:
                oldest = history[-plan.loop_calls]
                if oldest > now - plan.loop_window_ms:
                    return loop_refusal(plan, oldest + plan.loop_window_ms - now)
        tokens = 0.0
        if plan.rate_calls:
            tokens = _refilled(state, plan, now)
            if tokens < 1.0:
                return rate_refusal(plan, (1.0 - tokens) * plan.rate_unit_ms / plan.rate_calls)
        window = None
        if plan.window_ms:
            start = int(now) // plan.window_ms * plan.window_ms
            window = state.budgets.get(plan.window_ms)
            if window is None or window.start != start:
                window = _Window(start)
                if len(state.budgets) >= _MAX_WINDOW_LENGTHS:  # windows of earlier policy versions
                    state.budgets.clear()
            if (plan.budget_calls and window.calls + 1 > plan.budget_calls) or (
                plan.budget_cost_micros and window.cost + micros > plan.budget_cost_micros
            ):
                return budget_refusal(plan, window.calls, window.cost, micros, start + plan.window_ms - now)
        # Admitted: consume all three.
        if plan.loop_calls:
            self._remember(state, plan, call_digest, history, now)
        if plan.rate_calls:
            state.tokens = tokens - 1.0
            state.refilled_ms = now
        if window is None:
            return UNLIMITED
        window.calls += 1
        window.cost += micros
        state.budgets[plan.window_ms] = window
        return admission(plan, scope, window.start, micros, window.calls, window.cost)

    async def refund(self, reservation: Reservation) -> None:
        state = self._scopes.get(reservation.scope)
        window = state.budgets.get(reservation.window_ms) if state is not None else None
        if window is None or window.start != reservation.window_start_ms:
            return  # forgotten or already over: nothing left to give back
        window.calls = max(window.calls - 1, 0)
        window.cost = max(window.cost - reservation.cost_micros, 0)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._scopes.clear()

    def _state(self, scope: LimitScope) -> _ScopeState:
        state = self._scopes.get(scope)
        if state is None:
            state = self._scopes[scope] = _ScopeState()
            if len(self._scopes) > self._max_scopes:
                self._scopes.popitem(last=False)
        else:
            self._scopes.move_to_end(scope)
        return state

    def _remember(self, state: _ScopeState, plan: Plan, digest: str, history: deque[float] | None, now: float) -> None:
        loops = state.loops
        if history is None:
            history = loops[digest] = deque()
            # Forget calls that can no longer count (newest time out of the window) and,
            # past the cap, the least recent one: a few per admission keeps it cheap.
            for _ in range(2):
                oldest_digest, oldest = next(iter(loops.items()))
                if oldest_digest == digest or (
                    oldest[-1] > now - plan.loop_window_ms and len(loops) <= self._max_loop_calls
                ):
                    break
                del loops[oldest_digest]
        else:
            loops.move_to_end(digest)
        history.append(now)
        while len(history) > plan.loop_calls:
            history.popleft()


def _refilled(state: _ScopeState, plan: Plan, now: float) -> float:
    if state.tokens < 0:
        return float(plan.rate_calls)
    elapsed = max(now - state.refilled_ms, 0.0)
    return min(float(plan.rate_calls), state.tokens + elapsed * plan.rate_calls / plan.rate_unit_ms)
