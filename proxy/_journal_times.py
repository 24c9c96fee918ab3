"""When the journal's records were appended: the age of the oldest one not yet shipped.

Why: `bastion_journal_lag_seconds` was the time since the shipper last found the journal
empty. A proxy under steady traffic never finds it empty, so the gauge climbed for as long
as traffic lasted (`bastion bench graph`: p99 10 s at 500 events/s while no event waited
more than 1.1 s), and the JournalLag alert paged for a healthy, busy proxy. The figure an
operator needs is how long the oldest record still unacknowledged by the graph has waited.

The journal notes, for each group commit, where its records end and when the first of
them was appended (one `time.monotonic()` per group, not per record), and the records
appended since the last fsync began. The shipper drops the groups it has delivered as it
commits its cursor (`shipped`), so what is kept is the backlog. The oldest entry past the
cursor dates the oldest unshipped record, at most one group commit early: for records
appended by this process an upper bound, never an under-count. At most `capacity` groups
are kept: past that (a backlog of thousands of group commits, the graph down or slow),
the newest group is merged into the last entry, which keeps its older time.

Records found in the journal when the proxy starts (left by an earlier run) have no append
times on disk: they are dated by the start, then, once the shipper has read the first of
them, by that event's own time (`found_aged`), so a backlog left by an outage shows its age
after the restart instead of counting from it. Single-threaded: the proxy's event loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._journal import Cursor


#: The oldest age `found_aged` believes: a backlog older than a month is a clock problem.
MAX_AGE = 30 * 24 * 3600.0


class AppendTimes:
    def __init__(self, *, capacity: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._clock = clock
        #: (end of a durable group of records, when its first record was appended), oldest first.
        self._groups: deque[tuple[Cursor, float]] = deque()
        #: Where the records found at open end (`found`), while their group is kept.
        self._found: Cursor | None = None
        #: The first append no fsync has started on yet, and the first of the fsync in flight.
        self._unsynced: float | None = None
        self._syncing: float | None = None

    def found(self, end: Cursor) -> None:
        """Records up to `end` were in the journal when it opened: dated now, until
        `found_aged` says how old the oldest of them is."""
        self._found = end
        self._add(end, self._clock())

    def found_aged(self, age: float) -> None:
        """The oldest record found at open was written `age` seconds ago (its event's own
        time, read by the shipper at start): the found records are dated by it, not by the
        restart. Only ever older; a negative or absurd age (a clock stepped back, a record
        from another machine) changes nothing."""
        groups = self._groups
        if self._found is None or not groups or groups[0][0] != self._found or not 0 < age <= MAX_AGE:
            return
        end, at = groups[0]
        groups[0] = (end, min(at, self._clock() - age))

    def appended(self) -> None:
        if self._unsynced is None:
            self._unsynced = self._clock()

    def sync_started(self) -> None:
        """An fsync covers every record appended so far."""
        if self._unsynced is not None:
            if self._syncing is None:
                self._syncing = self._unsynced
            self._unsynced = None

    def synced(self, end: Cursor) -> None:
        """The fsync begun last made the records up to `end` durable."""
        if self._syncing is not None:
            self._add(end, self._syncing)
            self._syncing = None

    def shipped(self, cursor: Cursor) -> None:
        """Forget the groups wholly before `cursor` (delivered: the shipper moves forward only)."""
        groups = self._groups
        while groups and groups[0][0] <= cursor:
            groups.popleft()

    def oldest(self, shipped: Cursor) -> float | None:
        """When the oldest record after `shipped` was appended (at most one group early),
        or None when every record up to the last append has been shipped."""
        self.shipped(shipped)
        groups = self._groups
        times = [t for t in (groups[0][1] if groups else None, self._syncing, self._unsynced) if t is not None]
        return min(times) if times else None

    def _add(self, end: Cursor, appended_at: float) -> None:
        groups = self._groups
        if groups and len(groups) >= self._capacity:
            groups[-1] = (end, groups[-1][1])  # merged: dated by the older group's time
        else:
            groups.append((end, appended_at))
