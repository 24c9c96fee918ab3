"""A circuit breaker for the verifier: after consecutive failures the proxy stops waiting.

Why: a verifier that hangs costs every governed action its whole deadline
(BASTION_VERIFIER_TIMEOUT_MS) before the fallback applies, and piles up requests on a
service that is already failing. After `failures` consecutive failures (a timeout, an
error, an answer without a verdict) the circuit opens: for `cooldown_s` the fallback
applies at once, with a reason that says so, and the verifier is left alone. Then one
action is let through as a trial (half-open): an answer closes the circuit, a failure
opens it for another cool-down. Policy has no breaker: its failure blocks anyway, and
its deadline is the only thing between an action and its answer.

Chained verifiers (BASTION_VERIFIER_CHAIN) get one breaker each: a failing member
opens its own circuit, and while any member's is open the whole chain takes the
fallback at once (`Governor.decide`), so breaking one link never skips it.

Single-threaded (the proxy's event loop), so no locks. The first verifier's `state` is
exported as `bastion_verifier_circuit_open` (1 while open or half-open), every member's
as `bastion_verifier_chain_circuit_open{verifier}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """Raised instead of calling the verifier while the circuit is open."""


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 5,
        cooldown_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        name: str = "the verifier",
    ) -> None:
        """`name` says which verifier in the reason an open circuit gives."""
        if failures < 1 or cooldown_s <= 0:
            raise ValueError(f"a breaker needs failures >= 1 and cooldown > 0, got {failures}, {cooldown_s}")
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self.name = name
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial call is in flight

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        return HALF_OPEN if self._trial or self._clock() - self._opened_at >= self._cooldown_s else OPEN

    def check(self) -> bool:
        """Return when the verifier may be called now, True when this caller holds the
        half-open trial (it must `record` or `cancel`); raise CircuitOpen otherwise."""
        if self._opened_at is None:
            return False
        waited = self._clock() - self._opened_at
        if waited >= self._cooldown_s and not self._trial:
            self._trial = True  # this caller is the trial; the rest keep the fallback
            return True
        left = max(0.0, self._cooldown_s - waited)
        raise CircuitOpen(
            f"circuit open after {self._threshold} consecutive failures; {self.name} is tried again in {left:.1f} s"
            if not self._trial
            else f"circuit half-open: a trial call to {self.name} is in flight"
        )

    def sibling(self, name: str) -> CircuitBreaker:
        """A new, closed breaker with this one's settings, for another verifier."""
        return CircuitBreaker(self._threshold, self._cooldown_s, clock=self._clock, name=name)

    def cancel(self) -> None:
        """The trial `check` granted will have no outcome (another chained verifier's circuit
        is open, or the call was cancelled): it goes to the next caller instead of hanging."""
        self._trial = False

    def record(self, ok: bool) -> None:
        """The outcome of a call `check` let through."""
        self._trial = False
        if ok:
            self._failures = 0
            self._opened_at = None
            return
        self._failures += 1
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()
