"""The limits engine in-process: loop, rate and budget as one atomic admission, refunds, bounds."""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from typing import Any

import pytest
from fixtures.mcpcalls import call_digest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from bastion._errors import LimitsUnavailable
from bastion.proxy._limits import (
    BUDGET_EXCEEDED,
    LOOP_DETECTED,
    RATE_LIMITED,
    UNLIMITED,
    InProcessLimiter,
    LimitScope,
    open_limiter,
    parse_duration_ms,
    parse_rate,
    plan_of,
)
from bastion.proxy._limits_redis import RedisLimiter
from bastion.v1 import policy_pb2

#: Midnight UTC: every window of a day or less starts here.
T0 = 1_800_057_600.0
SCOPE = LimitScope(tenant="acme", agent_id="billing-1", policy="payments")
REFUND = call_digest("stripe", "refund", {"amount": 5})


class Clock:
    def __init__(self, at: float = T0) -> None:
        self.now = at

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _limits(**fields: Any) -> policy_pb2.Limits:
    return policy_pb2.Limits(**fields)


async def _admit(
    limiter: InProcessLimiter,
    limits: policy_pb2.Limits,
    *,
    scope: LimitScope = SCOPE,
    cost: float = 1.0,
    digest: str = REFUND,
) -> Any:
    return await limiter.admit(scope, limits, cost=cost, call_digest=digest)


async def _admitted(limiter: InProcessLimiter, limits: policy_pb2.Limits, times: int, **kw: Any) -> int:
    return sum([(await _admit(limiter, limits, **kw)).admitted for _ in range(times)])


# --- nothing to count ------------------------------------------------------------------------


async def test_a_call_whose_limits_set_nothing_passes_and_reserves_nothing() -> None:
    limiter = InProcessLimiter(clock=Clock())
    for _ in range(1000):
        assert await _admit(limiter, _limits()) is UNLIMITED
    assert UNLIMITED.admitted
    assert UNLIMITED.reservation is None
    assert len(limiter) == 0  # nothing remembered either


# --- rate ------------------------------------------------------------------------------------


async def test_rate_admits_a_burst_of_n_then_refuses_until_one_token_is_back() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(rate="3/s")
    assert await _admitted(limiter, limits, 3) == 3
    refused = await _admit(limiter, limits)
    assert (refused.admitted, refused.kind, refused.reason) == (False, RATE_LIMITED, "rate limit of 3/s reached")
    assert refused.retry_after_s == 0.334  # a third of a second, rounded up to the millisecond
    assert refused.reservation is None
    clock.advance(0.333)
    assert not (await _admit(limiter, limits)).admitted
    clock.advance(0.001)
    assert (await _admit(limiter, limits)).admitted


async def test_rate_refills_n_per_unit_and_never_beyond_the_capacity() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(rate="60/m")
    assert await _admitted(limiter, limits, 100) == 60
    clock.advance(30)  # half a minute: 30 tokens
    assert await _admitted(limiter, limits, 100) == 30
    clock.advance(3600)  # an idle hour refills to 60, not 3600
    assert await _admitted(limiter, limits, 100) == 60


async def test_a_clock_going_backwards_refills_nothing() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(rate="1/h")
    assert (await _admit(limiter, limits)).admitted
    clock.advance(-600)
    assert not (await _admit(limiter, limits)).admitted


# --- budget ----------------------------------------------------------------------------------


async def test_budget_admits_exactly_its_calls_then_refuses_until_the_window_ends() -> None:
    clock = Clock(T0 + 1000)
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(budget_calls=5, budget_window="1h")
    used = [(await _admit(limiter, limits)).calls_used for _ in range(5)]
    assert used == [1, 2, 3, 4, 5]
    refused = await _admit(limiter, limits)
    assert (refused.admitted, refused.kind) == (False, BUDGET_EXCEEDED)
    assert refused.reason == "budget of 5 calls per 1h used up (5 used)"
    assert refused.retry_after_s == 2600.0  # the hour's window ends at T0 + 3600
    assert (refused.calls_used, refused.calls_limit, refused.window) == (5, 5, "1h")
    clock.advance(2600)
    fresh = await _admit(limiter, limits)
    assert (fresh.admitted, fresh.calls_used) == (True, 1)


async def test_budget_windows_are_aligned_to_the_epoch_not_to_the_first_call() -> None:
    clock = Clock(T0 + 3599.5)
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(budget_calls=2, budget_window="1h")
    assert await _admitted(limiter, limits, 3) == 2
    clock.advance(0.5)  # T0 + 3600: the next window, half a second after the first call
    assert await _admitted(limiter, limits, 3) == 2


async def test_an_admission_reports_its_window_and_reservation() -> None:
    limiter = InProcessLimiter(clock=Clock(T0 + 90))
    admission = await _admit(limiter, _limits(budget_calls=10, budget_cost=4, budget_window="1m"), cost=0.5)
    assert admission.admitted
    assert admission.kind == admission.reason == ""
    assert admission.retry_after_s is None
    assert admission.reservation is not None
    assert (admission.reservation.scope, admission.reservation.window_ms) == (SCOPE, 60_000)
    assert admission.reservation.window_start_ms == int(T0 * 1000) + 60_000
    assert admission.reservation.cost == 0.5
    assert admission.budget_state() == policy_pb2.BudgetState(
        calls_used=1, calls_limit=10, cost_used=0.5, cost_limit=4, window="1m"
    )


async def test_the_cost_budget_counts_each_calls_deciding_rule_cost() -> None:
    limiter = InProcessLimiter(clock=Clock())
    limits = _limits(budget_cost=10, budget_window="1d")
    for _ in range(4):
        assert (await _admit(limiter, limits, cost=2.5)).admitted
    refused = await _admit(limiter, limits, cost=0.5)
    assert (refused.kind, refused.reason) == (
        BUDGET_EXCEEDED,
        "cost budget of 10 per 1d used up (10 used, this call costs 0.5)",
    )
    assert refused.retry_after_s == 86_400.0
    assert (refused.calls_used, refused.calls_limit, refused.cost_used, refused.cost_limit) == (4, 0, 10.0, 10.0)
    free = await _admit(limiter, limits, cost=0)
    assert (free.admitted, free.calls_used, free.cost_used) == (True, 5, 10.0)  # no call cap: free calls pass


async def test_costs_add_up_exactly_where_floats_would_drift() -> None:
    limiter = InProcessLimiter(clock=Clock())
    limits = _limits(budget_cost=1, budget_window="1d")
    assert sum(0.1 for _ in range(10)) != 1.0  # what counting in floats would compare
    assert await _admitted(limiter, limits, 11, cost=0.1) == 10


async def test_a_call_costing_more_than_the_whole_budget_is_refused_without_a_retry_hint() -> None:
    limiter = InProcessLimiter(clock=Clock())
    refused = await _admit(limiter, _limits(budget_cost=5, budget_window="1d"), cost=7.25)
    assert refused.kind == BUDGET_EXCEEDED
    assert refused.reason == "this call costs 7.25, more than the whole cost budget of 5 per 1d"
    assert refused.retry_after_s is None


async def test_calls_and_cost_caps_both_hold() -> None:
    limiter = InProcessLimiter(clock=Clock())
    limits = _limits(budget_calls=3, budget_cost=100, budget_window="1d")
    assert await _admitted(limiter, limits, 5, cost=1) == 3
    other = LimitScope("acme", "billing-2", "payments")
    assert await _admitted(limiter, limits, 5, scope=other, cost=60) == 1


# --- refunds ---------------------------------------------------------------------------------


async def test_a_refund_gives_back_the_call_and_its_cost() -> None:
    limiter = InProcessLimiter(clock=Clock())
    limits = _limits(budget_calls=2, budget_cost=3, budget_window="1d")
    first = await _admit(limiter, limits, cost=1.5)
    await _admit(limiter, limits, cost=1.5)
    assert not (await _admit(limiter, limits, cost=1.5)).admitted
    assert first.reservation is not None
    await limiter.refund(first.reservation)
    again = await _admit(limiter, limits, cost=1.5)
    assert (again.admitted, again.calls_used, again.cost_used) == (True, 2, 3.0)


async def test_refunds_never_take_a_window_below_zero() -> None:
    limiter = InProcessLimiter(clock=Clock())
    limits = _limits(budget_calls=5, budget_window="1d")
    admission = await _admit(limiter, limits, cost=2)
    assert admission.reservation is not None
    for _ in range(3):
        await limiter.refund(admission.reservation)
    assert (await _admit(limiter, limits)).calls_used == 1


async def test_a_refund_for_a_window_that_has_ended_changes_nothing() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(budget_calls=5, budget_window="1m")
    old = await _admit(limiter, limits)
    clock.advance(60)
    assert (await _admit(limiter, limits)).calls_used == 1
    assert old.reservation is not None
    await limiter.refund(old.reservation)
    assert (await _admit(limiter, limits)).calls_used == 2


async def test_a_refund_does_not_give_back_rate_tokens_or_loop_history() -> None:
    limiter = InProcessLimiter(clock=Clock())
    limits = _limits(rate="1/m", budget_calls=5, budget_window="1d", loop_same_call=1, loop_window="1h")
    admission = await _admit(limiter, limits)
    assert admission.reservation is not None
    await limiter.refund(admission.reservation)
    assert (await _admit(limiter, limits)).kind == LOOP_DETECTED
    assert (await _admit(limiter, limits, digest="another call")).kind == RATE_LIMITED


# --- loop ------------------------------------------------------------------------------------


async def test_loop_refuses_the_call_after_n_identical_ones_within_the_window() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(loop_same_call=3, loop_window="60s")
    for _ in range(3):
        assert (await _admit(limiter, limits)).admitted
        clock.advance(10)
    refused = await _admit(limiter, limits)  # 30 s after the first of the three
    assert (refused.admitted, refused.kind) == (False, LOOP_DETECTED)
    assert refused.reason == "the same call (tool and arguments) was already made 3 times within 60s"
    assert refused.retry_after_s == 30.0  # when the first of them leaves the window
    other = call_digest("stripe", "refund", {"amount": 6})
    assert (await _admit(limiter, limits, digest=other)).admitted
    clock.advance(29.999)
    assert not (await _admit(limiter, limits)).admitted
    clock.advance(0.001)
    assert (await _admit(limiter, limits)).admitted


async def test_a_loop_refusal_is_not_counted_as_a_call() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(loop_same_call=1, loop_window="10s")
    assert (await _admit(limiter, limits)).admitted
    for _ in range(5):
        clock.advance(1)
        assert not (await _admit(limiter, limits)).admitted
    clock.advance(5)  # 10 s after the one admitted call; refused ones did not extend it
    assert (await _admit(limiter, limits)).admitted


# --- one atomic step -------------------------------------------------------------------------


async def test_checks_run_loop_then_rate_then_budget_and_a_refusal_consumes_nothing() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock)
    limits = _limits(rate="2/m", budget_calls=3, budget_window="1d", loop_same_call=1, loop_window="1h")
    assert (await _admit(limiter, limits)).calls_used == 1
    assert (await _admit(limiter, limits)).kind == LOOP_DETECTED
    assert (await _admit(limiter, limits, digest="b")).calls_used == 2  # the loop refusal took no token
    assert (await _admit(limiter, limits, digest="c")).kind == RATE_LIMITED
    clock.advance(60)
    assert (await _admit(limiter, limits, digest="c")).calls_used == 3  # nor did the rate refusal reserve
    clock.advance(60)
    refused = await _admit(limiter, limits, digest="d")
    assert refused.kind == BUDGET_EXCEEDED
    clock.advance(86_400)
    assert (await _admit(limiter, limits, digest="d")).admitted  # the budget refusal took no token or history


async def test_200_concurrent_admissions_against_a_budget_of_50_admit_exactly_50() -> None:
    limiter = InProcessLimiter()
    limits = _limits(budget_calls=50, budget_window="1d")

    async def one(n: int) -> bool:
        await asyncio.sleep(0)
        admission = await limiter.admit(SCOPE, limits, cost=1, call_digest=f"call-{n}")
        return admission.admitted

    results = await asyncio.gather(*(one(n) for n in range(200)))
    assert sum(results) == 50


async def test_scopes_count_apart_by_tenant_agent_and_policy() -> None:
    limiter = InProcessLimiter(clock=Clock())
    limits = _limits(budget_calls=1, budget_window="1d")
    scopes = [SCOPE, LimitScope("other", "billing-1", "payments"), LimitScope("acme", "x", "payments")]
    scopes.append(LimitScope("acme", "billing-1", "other"))
    for scope in scopes:
        assert (await _admit(limiter, limits, scope=scope)).admitted
        assert not (await _admit(limiter, limits, scope=scope)).admitted


# --- bounds ----------------------------------------------------------------------------------


async def test_memory_is_bounded_by_forgetting_the_least_recently_used_scopes() -> None:
    limiter = InProcessLimiter(clock=Clock(), max_scopes=100)
    limits = _limits(budget_calls=1, budget_window="1d")
    assert (await _admit(limiter, limits)).admitted
    for n in range(1000):
        await _admit(limiter, limits, scope=LimitScope("acme", f"agent-{n}", "payments"))
        if n % 50 == 0:
            assert not (await _admit(limiter, limits)).admitted  # SCOPE stays recent, so remembered
    assert len(limiter) == 100
    assert (await _admit(limiter, limits, scope=LimitScope("acme", "agent-0", "payments"))).admitted  # forgotten


async def test_loop_history_per_scope_is_capped_and_sheds_calls_out_of_the_window() -> None:
    clock = Clock()
    limiter = InProcessLimiter(clock=clock, max_loop_calls=8)
    limits = _limits(loop_same_call=1, loop_window="1h")
    assert (await _admit(limiter, limits, digest="first")).admitted
    for n in range(8):
        assert (await _admit(limiter, limits, digest=f"other-{n}")).admitted
    # Nine distinct calls in the window, eight remembered: the least recent is forgotten.
    assert (await _admit(limiter, limits, digest="first")).admitted
    assert not (await _admit(limiter, limits, digest="other-7")).admitted
    state = next(iter(_scopes(limiter).values()))
    assert len(state.loops) <= 8
    clock.advance(3601)
    for n in range(4):
        await _admit(limiter, limits, digest=f"late-{n}")
    assert len(state.loops) <= 8
    assert all(digest.startswith(("late-", "first", "other-")) for digest in state.loops)


def _scopes(limiter: InProcessLimiter) -> OrderedDict[LimitScope, Any]:
    return limiter._scopes


# --- reading limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [
        _limits(rate="60/min"),
        _limits(rate="0/s"),
        _limits(budget_calls=5),
        _limits(budget_calls=5, budget_window="1y"),
        _limits(budget_calls=-1, budget_window="1d"),
        _limits(budget_cost=float("nan"), budget_window="1d"),
        _limits(loop_same_call=2),
    ],
)
async def test_limits_that_cannot_be_read_fail_closed(limits: policy_pb2.Limits) -> None:
    with pytest.raises(LimitsUnavailable, match="limits: "):
        await _admit(InProcessLimiter(), limits)


@pytest.mark.parametrize("cost", [-1.0, float("nan"), float("inf"), 2e9])
async def test_an_impossible_call_cost_fails_closed(cost: float) -> None:
    with pytest.raises(LimitsUnavailable, match="invalid call cost"):
        await _admit(InProcessLimiter(), _limits(budget_calls=5, budget_window="1d"), cost=cost)


def test_limits_are_parsed_once_per_distinct_value() -> None:
    first = plan_of(_limits(rate="60/m", budget_calls=5, budget_window="1d", loop_same_call=3, loop_window="90s"))
    again = plan_of(_limits(rate="60/m", budget_calls=5, budget_window="1d", loop_same_call=3, loop_window="90s"))
    assert first is again
    assert first is not None
    assert (first.rate_calls, first.rate_unit_ms, first.window_ms, first.loop_window_ms) == (
        60,
        60_000,
        86_400_000,
        90_000,
    )
    assert plan_of(_limits()) is None


@pytest.mark.parametrize(
    ("text", "ms"),
    [("250ms", 250), ("1s", 1000), ("60s", 60_000), ("5m", 300_000), ("2h", 7_200_000), ("1d", 86_400_000)],
)
def test_durations_read_as_milliseconds(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


# The grammars of policy/_document.py, which validated every string that arrives here.
_RATE = re.compile(r"[1-9][0-9]{0,8}/[smhd]")
_DURATION = re.compile(r"([1-9][0-9]{0,8})(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@given(st.from_regex(_RATE, fullmatch=True) | st.text(max_size=12))
def test_rates_read_exactly_what_the_policy_grammar_accepts(text: str) -> None:
    if _RATE.fullmatch(text):
        calls, unit = text.split("/")
        assert parse_rate(text) == (int(calls), _UNIT_MS[unit])
    else:
        with pytest.raises(LimitsUnavailable, match="unreadable rate"):
            parse_rate(text)


@given(st.from_regex(_DURATION, fullmatch=True) | st.text(max_size=12))
def test_durations_read_exactly_what_the_policy_grammar_accepts(text: str) -> None:
    if match := _DURATION.fullmatch(text):
        assert parse_duration_ms(text) == int(match[1]) * _UNIT_MS[match[2]]
    else:
        with pytest.raises(LimitsUnavailable, match="unreadable duration"):
            parse_duration_ms(text)


# --- the call digest -------------------------------------------------------------------------


def test_the_call_digest_ignores_key_order_and_names_server_tool_and_arguments() -> None:
    base = call_digest("stripe", "refund", {"amount": 5, "meta": {"a": 1, "b": [1, 2]}})
    assert base == call_digest("stripe", "refund", {"meta": {"b": [1, 2], "a": 1}, "amount": 5})
    assert base != call_digest("stripe", "refund", {"amount": 5, "meta": {"a": 1, "b": [2, 1]}})
    assert base != call_digest("stripe", "charge", {"amount": 5, "meta": {"a": 1, "b": [1, 2]}})
    assert base != call_digest("paypal", "refund", {"amount": 5, "meta": {"a": 1, "b": [1, 2]}})
    assert call_digest("a", "b__c", {}) != call_digest("a__b", "c", {})
    assert call_digest("s", "t", None) == call_digest("s", "t", {})
    assert re.fullmatch(r"[0-9a-f]{64}", base)


def test_a_struct_digests_like_the_dict_it_converts_to() -> None:
    struct = struct_pb2.Struct()
    struct.update({"amount": 5.5, "to": "x", "n": None, "l": [True]})
    assert call_digest("s", "t", struct) == call_digest("s", "t", {"to": "x", "amount": 5.5, "n": None, "l": [True]})


# --- choosing the store ----------------------------------------------------------------------


async def test_open_limiter_is_in_process_without_a_redis_url_and_redis_with_one() -> None:
    local = open_limiter(None, timeout_ms=250)
    assert isinstance(local, InProcessLimiter)
    await local.ping()
    await local.close()
    shared = open_limiter("redis://127.0.0.1:1/0", timeout_ms=250)  # connects on first use, not here
    assert isinstance(shared, RedisLimiter)
    await shared.close()
