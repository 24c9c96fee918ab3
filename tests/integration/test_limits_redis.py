"""Limits shared by proxy replicas through a real Redis (scripts/redis-up): one budget, one
rate, one loop history for every replica, and fail closed when Redis is gone or slow."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from fixtures.mcpcalls import call_digest
from fixtures.ports import dead_port
from fixtures.redis import RedisServer, running_redis
from redis.crc import key_slot

from bastion._errors import ConfigError, LimitsUnavailable
from bastion.proxy._limits import (
    BUDGET_EXCEEDED,
    LOOP_DETECTED,
    RATE_LIMITED,
    UNLIMITED,
    Admission,
    LimitScope,
    Reservation,
)
from bastion.proxy._limits_redis import RedisLimiter
from bastion.v1 import policy_pb2

#: Generous for a loaded CI machine; the outage tests set their own, short, deadlines.
TIMEOUT_MS = 2000
DIGEST = call_digest("stripe", "refund", {"amount": 5})


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def scope() -> LimitScope:
    """A scope no other test uses, so tests share the server and never each other's counts."""
    return LimitScope(tenant=f"t-{uuid.uuid4().hex[:8]}", agent_id="billing-1", policy="payments")


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[tuple[RedisLimiter, RedisLimiter]]:
    """Two limiters with their own connection pools: two proxy replicas."""
    first = RedisLimiter(redis_server.url, timeout_ms=TIMEOUT_MS)
    second = RedisLimiter(redis_server.url, timeout_ms=TIMEOUT_MS)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def _admit(
    limiter: RedisLimiter, scope: LimitScope, limits: policy_pb2.Limits, *, cost: float = 1.0, digest: str = DIGEST
) -> Admission:
    return await limiter.admit(scope, limits, cost=cost, call_digest=digest)


# --- one budget for every replica -------------------------------------------------------------


async def test_200_concurrent_admissions_over_two_replicas_against_a_budget_of_50_admit_exactly_50(
    replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    limits = policy_pb2.Limits(budget_calls=50, budget_window="1d")
    answers = await asyncio.gather(*(_admit(replicas[n % 2], scope, limits, digest=f"call-{n}") for n in range(200)))
    admitted = [answer for answer in answers if answer.admitted]
    assert len(admitted) == 50
    assert sorted(answer.calls_used for answer in admitted) == list(range(1, 51))  # each took its own call
    refused = [answer for answer in answers if not answer.admitted]
    assert {answer.kind for answer in refused} == {BUDGET_EXCEEDED}
    assert all(answer.reason == "budget of 50 calls per 1d used up (50 used)" for answer in refused)
    assert all(0 < (answer.retry_after_s or 0) <= 86_400 for answer in refused)


async def test_a_refund_on_one_replica_frees_the_call_for_the_other(
    replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    first, second = replicas
    limits = policy_pb2.Limits(budget_calls=2, budget_cost=5, budget_window="1d")
    taken = await _admit(first, scope, limits, cost=2.5)
    assert (await _admit(second, scope, limits, cost=2.5)).admitted
    assert (await _admit(second, scope, limits, cost=0)).kind == BUDGET_EXCEEDED
    assert taken.reservation is not None
    await second.refund(taken.reservation)
    again = await _admit(first, scope, limits, cost=2.5)
    assert (again.admitted, again.calls_used, again.cost_used, again.cost_limit) == (True, 2, 5.0, 5.0)


async def test_refunds_never_take_a_window_below_zero(
    replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    limits = policy_pb2.Limits(budget_calls=5, budget_window="1d")
    taken = await _admit(replicas[0], scope, limits, cost=2)
    assert taken.reservation is not None
    for _ in range(3):
        await replicas[1].refund(taken.reservation)
    fresh = await _admit(replicas[0], scope, limits)
    assert (fresh.calls_used, fresh.cost_used) == (1, 1.0)


async def test_a_refund_for_a_window_that_has_ended_changes_nothing(
    replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    limits = policy_pb2.Limits(budget_calls=5, budget_window="1h")
    taken = await _admit(replicas[0], scope, limits)
    assert taken.reservation is not None
    earlier = taken.reservation.window_start_ms - taken.reservation.window_ms
    await replicas[1].refund(Reservation(scope, taken.reservation.window_ms, earlier, taken.reservation.cost_micros))
    assert (await _admit(replicas[1], scope, limits)).calls_used == 2


async def test_costs_add_up_exactly_in_redis_too(
    replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    limits = policy_pb2.Limits(budget_cost=1, budget_window="1d")
    answers = [await _admit(replicas[n % 2], scope, limits, cost=0.1) for n in range(11)]
    assert [answer.admitted for answer in answers] == [True] * 10 + [False]
    assert answers[-1].reason == "cost budget of 1 per 1d used up (1 used, this call costs 0.1)"
    whole = await _admit(replicas[0], scope, policy_pb2.Limits(budget_cost=5, budget_window="1h"), cost=9)
    assert (whole.kind, whole.retry_after_s) == (BUDGET_EXCEEDED, None)


async def test_budget_windows_roll_over_on_redis_clock(
    replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    limits = policy_pb2.Limits(budget_calls=2, budget_window="200ms")
    refused = None
    for _ in range(20):  # two calls may straddle a window's end; go on until one is refused
        refused = await _admit(replicas[0], scope, limits)
        if not refused.admitted:
            break
    assert refused is not None
    assert refused.kind == BUDGET_EXCEEDED
    assert refused.retry_after_s is not None
    assert 0 < refused.retry_after_s <= 0.2
    await asyncio.sleep(refused.retry_after_s)
    fresh = await _admit(replicas[1], scope, limits)
    assert (fresh.admitted, fresh.calls_used) == (True, 1)


# --- one rate and one loop history for every replica ------------------------------------------


async def test_the_rate_is_shared_across_replicas(
    replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    limits = policy_pb2.Limits(rate="5/m")
    answers = [await _admit(replicas[n % 2], scope, limits, digest=f"c{n}") for n in range(10)]
    assert [answer.admitted for answer in answers] == [True] * 5 + [False] * 5
    assert {answer.kind for answer in answers[5:]} == {RATE_LIMITED}
    assert all(0 < (answer.retry_after_s or 0) <= 12.0 for answer in answers[5:])  # a token per 12 s


async def test_loop_detection_is_shared_across_replicas(
    replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    first, second = replicas
    limits = policy_pb2.Limits(loop_same_call=2, loop_window="60s", budget_calls=10, budget_window="1d")
    assert (await _admit(first, scope, limits)).admitted
    assert (await _admit(second, scope, limits)).admitted
    refused = await _admit(first, scope, limits)
    assert (refused.kind, refused.reason) == (
        LOOP_DETECTED,
        "the same call (tool and arguments) was already made 2 times within 60s",
    )
    assert 59.0 < (refused.retry_after_s or 0) <= 60.0
    other = await _admit(second, scope, limits, digest=call_digest("stripe", "refund", {"amount": 6}))
    assert (other.admitted, other.calls_used) == (True, 3)  # the loop refusal reserved nothing


async def test_a_call_whose_limits_set_nothing_never_reaches_redis(scope: LimitScope) -> None:
    nowhere = RedisLimiter(f"redis://127.0.0.1:{dead_port()}/0", timeout_ms=100)
    try:
        assert await _admit(nowhere, scope, policy_pb2.Limits()) is UNLIMITED
    finally:
        await nowhere.close()


# --- what Redis holds ---------------------------------------------------------------------


async def test_a_scopes_keys_share_one_slot_and_expire_by_themselves(
    redis_server: RedisServer, replicas: tuple[RedisLimiter, RedisLimiter]
) -> None:
    scope = LimitScope(tenant=f"t}}{uuid.uuid4().hex[:6]}", agent_id="a{b}|c", policy="payments")
    limits = policy_pb2.Limits(rate="10/s", budget_calls=5, budget_window="1h", loop_same_call=3, loop_window="30s")
    assert (await _admit(replicas[0], scope, limits)).admitted
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = [key async for key in raw.scan_iter(match=f"bastion:limits:{{*{scope.tenant[2:]}*")]
        assert len(keys) == 3
        assert len({key_slot(key) for key in keys}) == 1
        for key in keys:
            ttl_ms = await raw.pttl(key)
            assert 0 < ttl_ms <= 3_601_000, key
    finally:
        await raw.aclose()


async def test_scripts_flushed_from_redis_are_loaded_again(
    redis_server: RedisServer, replicas: tuple[RedisLimiter, RedisLimiter], scope: LimitScope
) -> None:
    limits = policy_pb2.Limits(budget_calls=3, budget_window="1d")
    assert (await _admit(replicas[0], scope, limits)).admitted
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.script_flush()
    finally:
        await raw.aclose()
    assert (await _admit(replicas[0], scope, limits)).calls_used == 2


# --- fail closed ---------------------------------------------------------------------------


async def test_redis_killed_mid_load_blocks_every_unfinished_and_later_call_within_the_deadline() -> None:
    # A second, not 300 ms: before the kill every call must be admitted, and on a loaded
    # 2-core CI machine a scheduling stall once took one past 300 ms (a timeout, counted as
    # a refusal). The bounds after the kill scale with it.
    timeout_ms = 1000
    limits = policy_pb2.Limits(budget_calls=1_000_000, budget_window="1d")
    scope = LimitScope("acme", "billing-1", "payments")
    with running_redis() as server:
        replicas = [RedisLimiter(server.url, timeout_ms=timeout_ms) for _ in range(2)]
        results: list[tuple[float, float, Admission | LimitsUnavailable]] = []
        killed_at: list[float] = []
        under_load = asyncio.Event()

        async def worker(n: int) -> None:
            limiter = replicas[n % 2]
            while True:
                started = time.monotonic()
                try:
                    answer: Admission | LimitsUnavailable = await _admit(limiter, scope, limits, digest=f"w{n}")
                except LimitsUnavailable as exc:
                    answer = exc
                results.append((started, time.monotonic(), answer))
                if len(results) >= 200:
                    under_load.set()
                if isinstance(answer, LimitsUnavailable):
                    return

        try:
            workers = [asyncio.create_task(worker(n)) for n in range(16)]
            await asyncio.wait_for(under_load.wait(), timeout=10)
            refused = [answer for _, _, answer in results if not (isinstance(answer, Admission) and answer.admitted)]
            assert refused == [], refused[:3]
            server.kill()
            killed_at.append(time.monotonic())
            await asyncio.wait_for(asyncio.gather(*workers), timeout=5)
            # After the outage, new calls fail closed at once: nothing listens any more.
            started = time.monotonic()
            for limiter in replicas:
                with pytest.raises(LimitsUnavailable, match="Redis"):
                    await _admit(limiter, scope, limits)
            later_s = time.monotonic() - started
        finally:
            for limiter in replicas:
                await limiter.close()
    kill = killed_at[0]
    admitted_after = [answer for started, _, answer in results if started > kill and isinstance(answer, Admission)]
    assert admitted_after == []  # nothing admitted once Redis was gone
    failures = [(ended, answer) for _, ended, answer in results if isinstance(answer, LimitsUnavailable)]
    assert len(failures) == 16  # every worker's unfinished or next call was refused
    assert all("Redis" in str(answer) for _, answer in failures)
    # Each within about the deadline of the kill (a call in flight waits at most timeout_ms).
    assert max(ended for ended, _ in failures) - kill < timeout_ms / 1000 + 1.0
    assert later_s < 2 * (timeout_ms / 1000)


async def test_a_stalled_redis_is_a_timeout_and_the_limiter_recovers_when_it_answers(
    redis_server: RedisServer, scope: LimitScope
) -> None:
    # 1 s: the admissions around the stall must succeed, and a loaded CI machine has stalled
    # a Redis answer for more than 300 ms.
    limiter = RedisLimiter(redis_server.url, timeout_ms=1000)
    limits = policy_pb2.Limits(budget_calls=5, budget_window="1d")
    try:
        assert (await _admit(limiter, scope, limits)).admitted
        os.kill(redis_server.pid, signal.SIGSTOP)  # alive, connected, silent
        try:
            started = time.monotonic()
            with pytest.raises(LimitsUnavailable, match=r"Redis did not answer the limit check within 1000 ms"):
                await _admit(limiter, scope, limits)
            assert time.monotonic() - started < 3.0
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        # The timed-out script may have run once Redis woke: over-counting, never under-counting.
        assert (await _admit(limiter, scope, limits)).calls_used in (2, 3)
    finally:
        await limiter.close()


async def test_an_unreachable_redis_fails_closed_fast(scope: LimitScope) -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{dead_port()}/0", timeout_ms=250)
    limits = policy_pb2.Limits(budget_calls=5, budget_window="1d")
    try:
        started = time.monotonic()
        with pytest.raises(LimitsUnavailable) as caught:
            await _admit(limiter, scope, limits)
        assert time.monotonic() - started < 0.5
        assert str(caught.value) == "Redis for limits failed (ConnectionError); the action is blocked until it answers"
        assert "127.0.0.1" not in str(caught.value)
        reservation = Reservation(scope, 86_400_000, 0, 1_000_000)
        with pytest.raises(LimitsUnavailable):
            await limiter.refund(reservation)
        with pytest.raises(LimitsUnavailable):
            await limiter.ping()
    finally:
        await limiter.close()


def test_a_url_that_is_not_redis_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="BASTION_REDIS_URL is not a usable Redis URL"):
        RedisLimiter("http://user:secret@example.com/", timeout_ms=250)
