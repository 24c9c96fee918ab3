"""Walks over the whole audit chain (`GET /audit/verify`, `GET /audit/export`): one at a time
in a process, each under a deadline.

Why: both read the chain a page at a time, so memory stays bounded, but time did not: one
reader's request walked a chain of millions of records for as long as that took, holding a
reader thread and hashing on the event loop between pages, and a few such requests at once
held every reader of the service (an attacker's probe). Now a walk stops at its deadline
(BASTION_AUDIT_WALK_DEADLINE_S) and says so, and a second walk while one runs is refused,
429 `bastion.graph.audit_busy` with Retry-After, as the policy service refuses a second
simulation. Everything else the service answers (graphs, nodes, violations) is not held.

A walk is a lease: `end()` frees it, and a walk never ended (an export whose client stopped
reading, so that its body was never closed) is taken over once its deadline and a grace
period are past, so a lost release cannot shut walks out for good.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable

#: BASTION_AUDIT_WALK_DEADLINE_S's default.
DEFAULT_DEADLINE_S = 30.0
DEADLINE_CODE = "bastion.graph.audit_deadline"
#: After its deadline, how long a walk that was never ended still holds its turn: an export
#: stops at its next page after the deadline, which a slow client may delay this long.
GRACE_S = 5.0
BUSY_CODE = "bastion.graph.audit_busy"


class Walk:
    """One walk's turn: its `deadline` (on `clock`), and `end()`, which may be called twice."""

    __slots__ = ("_clock", "_walks", "deadline")

    def __init__(self, walks: AuditWalks, deadline: float, clock: Callable[[], float]) -> None:
        self._walks = walks
        self._clock = clock
        self.deadline = deadline

    @property
    def expired(self) -> bool:
        return self._clock() >= self.deadline

    def left_s(self) -> float:
        """Seconds until the deadline (0 once past it)."""
        return max(0.0, self.deadline - self._clock())

    def end(self) -> None:
        self._walks._release(self)


class AuditWalks:
    """Hands out the one turn (see the module docstring)."""

    def __init__(self, deadline_s: float = DEFAULT_DEADLINE_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not deadline_s > 0:
            raise ValueError(f"a walk deadline of {deadline_s} s: give more than 0")
        self.deadline_s = deadline_s
        self._clock = clock
        self._current: Walk | None = None

    def begin(self) -> Walk | None:
        """A new walk's turn, or None while another walk holds it."""
        now = self._clock()
        current = self._current
        if current is not None and now < current.deadline + GRACE_S:
            return None
        walk = Walk(self, now + self.deadline_s, self._clock)
        self._current = walk
        return walk

    def retry_after_s(self) -> int:
        """Whole seconds until the walk holding the turn must have given it up (at least 1)."""
        current = self._current
        left = current.deadline + GRACE_S - self._clock() if current is not None else 0.0
        return max(1, math.ceil(left))

    def _release(self, walk: Walk) -> None:
        if self._current is walk:  # a walk taken over after its lease does not free its successor's turn
            self._current = None


async def ended_after(walk: Walk, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`body`, with `walk` ended when it is done, fails or is closed (the client left)."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        walk.end()
