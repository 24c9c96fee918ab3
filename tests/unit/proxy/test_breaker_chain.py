"""Breakers of a verifier chain checked together (`_pipeline._check`), on a clock the test
moves: any open circuit stops the chain, and a half-open trial another breaker granted
meanwhile is handed back instead of being held by a call that was never made."""

from __future__ import annotations

import pytest

from bastion.proxy._breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen
from bastion.proxy._pipeline import _check


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _opened(breaker: CircuitBreaker) -> CircuitBreaker:
    breaker.check()
    breaker.record(False)
    return breaker


def test_siblings_share_settings_and_name_themselves_in_the_reason() -> None:
    clock = _Clock()
    first = CircuitBreaker(failures=1, cooldown_s=5, clock=clock)
    second = _opened(first.sibling("chained verifier 2"))
    assert (first.state, second.state) == (CLOSED, OPEN)
    with pytest.raises(CircuitOpen, match=r"after 1 consecutive failures; chained verifier 2 is tried again in 5\.0 s"):
        _check((first, second))
    clock.now += 5
    assert second.state == HALF_OPEN


def test_a_trial_granted_before_another_circuit_refuses_is_handed_back() -> None:
    clock = _Clock()
    first = _opened(CircuitBreaker(failures=1, cooldown_s=5, clock=clock))
    clock.now += 5  # the first is due a trial ...
    second = _opened(first.sibling("chained verifier 2"))  # ... the second just opened

    with pytest.raises(CircuitOpen, match="chained verifier 2"):
        _check((first, second))
    # Not held by the call that never went out: the next caller gets the first's trial.
    first.check()
    with pytest.raises(CircuitOpen, match="a trial call to the verifier is in flight"):
        first.check()


def test_every_circuit_closed_lets_the_chain_be_asked() -> None:
    breakers = [CircuitBreaker(failures=2, cooldown_s=5, clock=_Clock()) for _ in range(3)]
    _check(breakers)
    assert [breaker.state for breaker in breakers] == [CLOSED] * 3
