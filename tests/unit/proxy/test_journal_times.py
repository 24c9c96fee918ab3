"""The age of the oldest unshipped journal record (`AppendTimes`), on a hand-driven clock."""

from __future__ import annotations

import pytest

from bastion.proxy._journal import Cursor
from bastion.proxy._journal_times import AppendTimes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _group(times: AppendTimes, clock: Clock, at: float, end: Cursor, appends: int = 3) -> None:
    """`appends` records appended from `at` on, then fsynced up to `end`."""
    for i in range(appends):
        clock.now = at + i
        times.appended()
    times.sync_started()
    times.synced(end)


def test_the_oldest_unshipped_group_dates_the_lag_and_shipped_groups_are_forgotten() -> None:
    clock = Clock()
    times = AppendTimes(clock=clock)
    times.found(Cursor(1, 0))  # an empty journal at open
    _group(times, clock, 110.0, Cursor(1, 300))
    _group(times, clock, 120.0, Cursor(1, 600))
    _group(times, clock, 130.0, Cursor(2, 100))

    assert times.oldest(Cursor(1, 0)) == 110.0
    assert times.oldest(Cursor(1, 299)) == 110.0  # a group is shipped only once all of it is
    assert times.oldest(Cursor(1, 300)) == 120.0
    assert times.oldest(Cursor(2, 0)) == 130.0  # past a sealed segment's end
    assert times.oldest(Cursor(2, 100)) is None
    assert times.oldest(Cursor(1, 0)) is None  # forgotten: the shipper never goes back


def test_records_not_yet_durable_count_whether_their_fsync_is_pending_or_in_flight() -> None:
    clock = Clock()
    times = AppendTimes(clock=clock)
    clock.now = 105.0
    times.appended()
    clock.now = 106.0
    times.appended()
    assert times.oldest(Cursor(1, 0)) == 105.0  # no fsync started yet
    times.sync_started()
    clock.now = 107.0
    times.appended()  # after the fsync began: the next group's
    assert times.oldest(Cursor(1, 0)) == 105.0  # a stalled fsync keeps the lag growing
    times.synced(Cursor(1, 200))
    assert times.oldest(Cursor(1, 200)) == 107.0
    times.sync_started()
    times.synced(Cursor(1, 300))
    assert times.oldest(Cursor(1, 300)) is None


def test_records_found_at_open_are_dated_by_the_open() -> None:
    clock = Clock()
    times = AppendTimes(clock=clock)
    times.found(Cursor(3, 4096))
    clock.now = 160.0
    assert times.oldest(Cursor(3, 0)) == 100.0
    assert times.oldest(Cursor(3, 4096)) is None


def test_past_its_capacity_the_newest_group_is_merged_and_the_lag_never_reads_younger() -> None:
    clock = Clock()
    times = AppendTimes(capacity=3, clock=clock)
    for n in range(10):
        _group(times, clock, 200.0 + 10 * n, Cursor(1, 100 * (n + 1)), appends=1)

    assert times.oldest(Cursor(1, 0)) == 200.0
    assert times.oldest(Cursor(1, 100)) == 210.0
    # Groups 3..10 were merged into the third entry: dated by group 3, though group 10 is younger.
    assert times.oldest(Cursor(1, 200)) == 220.0
    assert times.oldest(Cursor(1, 900)) == 220.0
    assert times.oldest(Cursor(1, 1000)) is None


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        AppendTimes(capacity=0)


def test_groups_the_shipper_delivered_are_forgotten_so_sparse_scrapes_read_the_real_lag() -> None:
    # A reviewer's probe: only the gauge dropped delivered groups, once per scrape; a busy
    # journal filled the table between two scrapes a minute apart, the newest groups merged
    # into an entry dated tens of seconds back, and a healthy proxy read as lagging.
    clock = Clock()
    times = AppendTimes(capacity=64, clock=clock)
    for n in range(1, 1000):
        _group(times, clock, 100.0 + 0.005 * n, Cursor(1, 100 * n), appends=1)
        if n > 20:
            times.shipped(Cursor(1, 100 * (n - 20)))  # the shipper 20 groups (0.1 s) behind
    clock.now = 105.0
    oldest = times.oldest(Cursor(1, 100 * 979))
    assert oldest is not None
    assert clock.now - oldest == pytest.approx(0.1, abs=0.01)


def test_found_records_are_dated_by_their_age_when_it_is_told_and_believable() -> None:
    clock = Clock()
    times = AppendTimes(clock=clock)
    times.found(Cursor(3, 4096))
    times.found_aged(-5.0)  # from the future: a clock stepped back
    times.found_aged(40 * 24 * 3600.0)  # older than a month: not believed
    assert times.oldest(Cursor(3, 0)) == 100.0
    times.found_aged(30.0)
    assert times.oldest(Cursor(3, 0)) == 70.0
    times.found_aged(10.0)  # only ever older
    assert times.oldest(Cursor(3, 0)) == 70.0


def test_an_age_told_after_the_found_records_shipped_changes_nothing() -> None:
    clock = Clock()
    times = AppendTimes(clock=clock)
    times.found(Cursor(3, 4096))
    _group(times, clock, 150.0, Cursor(3, 8192))
    assert times.oldest(Cursor(3, 4096)) == 150.0  # the found group is delivered and forgotten
    times.found_aged(100.0)
    assert times.oldest(Cursor(3, 4096)) == 150.0
