"""The periodic tasks' schedules fire at the intervals the settings say, every minute."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from croniter import croniter  # type: ignore[import-untyped]

from mixhouse.errors import ConfigError
from mixhouse.jobs import every_seconds


@pytest.mark.parametrize("seconds", [1, 2, 5, 10, 30, 59, 60, 120, 300])
def test_every_seconds_fires_at_that_interval_all_hour(seconds: int) -> None:
    ticks = croniter(every_seconds(seconds), datetime(2026, 12, 1, 20, 18, 57, tzinfo=UTC))
    times = [ticks.get_next(datetime) for _ in range(200)]
    gaps = {int((b - a).total_seconds()) for a, b in itertools.pairwise(times)}
    # Evenly spaced when the interval divides a minute (or an hour); never a gap of minutes.
    assert max(gaps) <= seconds if 60 % seconds == 0 or seconds % 60 == 0 else max(gaps) < 60
    assert min(gaps) >= 1


def test_the_old_form_was_wrong() -> None:
    # What the tasks used before: every second of every second minute, then nothing for a minute.
    ticks = croniter("*/2 * * * * *", datetime(2026, 12, 1, 20, 18, 57, tzinfo=UTC))
    times = [ticks.get_next(datetime) for _ in range(4)]
    assert int((times[2] - times[1]).total_seconds()) == 61


@pytest.mark.parametrize("seconds", [0, 61, 90, 3600 * 2])
def test_unschedulable_intervals_are_refused(seconds: int) -> None:
    with pytest.raises(ConfigError):
        every_seconds(seconds)
