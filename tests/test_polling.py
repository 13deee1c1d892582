"""How often a wait looks at its batches: an ended batch is seen soon after it ends, whether it
took seconds or hours, without looking more often than a day's wait needs."""

from __future__ import annotations

import pytest

from tasks.batches import poll_interval


def first_look_after(end: float, initial: float = 2.0, maximum: float = 60.0) -> tuple[float, int]:
    """When a wait that began at 0 first sees a batch that ended at `end`, and how many looks."""
    now, looks = 0.0, 1
    while now < end:
        now += poll_interval(now, initial, maximum)
        looks += 1
    return now, looks


@pytest.mark.parametrize("end", [0.5, 3.0, 13.4, 19.0, 27.0, 95.0, 600.0, 3_600.0, 20_000.0, 86_000.0])
def test_an_ended_batch_is_seen_within_a_tenth_of_the_wait_or_the_first_interval(end):
    seen, _ = first_look_after(end)
    assert seen >= end
    assert seen - end <= max(2.0, 0.1 * end) + 1e-9


def test_the_interval_starts_at_the_initial_one_and_never_passes_the_maximum():
    assert poll_interval(0.0, 2.0, 60.0) == 2.0
    assert poll_interval(15.0, 2.0, 60.0) == 2.0
    assert poll_interval(100.0, 2.0, 60.0) == pytest.approx(10.0)
    assert poll_interval(10_000.0, 2.0, 60.0) == 60.0
    assert poll_interval(5.0, 0.1, 0.5) == 0.5  # the tests' fast polling stays fast
    assert poll_interval(0.0, 5.0, 1.0) == 1.0  # a maximum set below the initial interval wins


def test_a_day_long_wait_looks_about_once_a_minute_not_more():
    _, looks = first_look_after(86_400.0)
    # 60 s steps for most of the day (1,440) plus the short ones before them.
    assert 1_440 <= looks <= 1_520
