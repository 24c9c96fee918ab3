"""The verifier's circuit breaker as a state machine, on a clock the test moves."""

from __future__ import annotations

import pytest

from bastion.proxy._breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _failing(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.check()
        breaker.record(False)


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count() -> None:
    breaker = CircuitBreaker(failures=3, cooldown_s=5, clock=_Clock())
    _failing(breaker, 2)
    breaker.check()
    breaker.record(True)
    _failing(breaker, 2)
    assert breaker.state == CLOSED
    _failing(breaker, 1)
    assert breaker.state == OPEN
    with pytest.raises(CircuitOpen, match=r"after 3 consecutive failures; the verifier is tried again in 5\.0 s"):
        breaker.check()


def test_after_the_cooldown_one_trial_goes_through_and_its_outcome_decides() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    _failing(breaker, 1)
    clock.now += 5
    assert breaker.state == HALF_OPEN
    breaker.check()  # the trial
    with pytest.raises(CircuitOpen, match="trial call to the verifier is in flight"):
        breaker.check()  # everyone else keeps the fallback meanwhile
    breaker.record(False)
    assert breaker.state == OPEN  # a failed trial: another full cool-down
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        breaker.check()
    clock.now += 0.1
    breaker.check()
    breaker.record(True)
    assert breaker.state == CLOSED
    breaker.check()


@pytest.mark.parametrize(("failures", "cooldown"), [(0, 1.0), (1, 0.0), (-1, -1.0)])
def test_a_breaker_that_could_never_open_or_close_is_refused(failures: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="failures >= 1 and cooldown > 0"):
        CircuitBreaker(failures, cooldown)
