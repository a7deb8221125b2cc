"""Which continuous-aggregate buckets the recorder refreshes for late ticks (TimescaleDB mode),
against a per-tick reference; and the retention floor those refreshes and the policies need."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.core.rollups import (
    MIN_RETENTION_DAYS_WITH_POLICIES,
    NS_PER_DAY,
    POLICY_START_NS,
    ROLLUPS,
    late_windows,
    merge_windows,
)
from recorder.runtime.settings import TopicKind, load_settings
from recorder.sinks.timescale.config import TimescaleConfig
from recorder.sinks.timescale.migrate import DbMode
from recorder.sinks.timescale.upkeep import Upkeep

NOW = 1_796_587_197_071_827_963


def reference(times: list[int], now: int, retention_days: int) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for view, width in ROLLUPS.items():
        buckets = []
        for t in times:
            bucket = t - t % width
            if t >= now - POLICY_START_NS[view]:
                continue  # the policy refreshes it
            if retention_days and bucket < now - retention_days * NS_PER_DAY:
                continue  # a bucket retention may have cut: never rebuilt from what is left
            buckets.append(bucket)
        if buckets:
            out[view] = (min(buckets), max(buckets) + width)
    return out


@given(
    st.lists(st.integers(NOW - 40 * NS_PER_DAY, NOW + 60 * 10**9), max_size=50),
    st.sampled_from([0, 8, 10, 30]),
)
def test_late_windows_cover_exactly_the_late_buckets(times: list[int], retention: int) -> None:
    got = late_windows(np.array(times, dtype=np.int64), NOW, retention)
    assert got == reference(times, NOW, retention)


def test_the_bucket_the_retention_floor_falls_in_is_never_refreshed() -> None:
    floor = NOW - 10 * NS_PER_DAY
    hour = ROLLUPS["tick_1hour"]
    inside = floor - floor % hour  # this bucket starts before the floor: retention may cut it
    got = late_windows(np.array([inside + 1, inside + hour], dtype=np.int64), NOW, 10)
    assert got["tick_1hour"] == (inside + hour, inside + 2 * hour)


def test_windows_are_merged_per_aggregate() -> None:
    merged = merge_windows({"tick_1min": (10, 20)}, {"tick_1min": (0, 15), "tick_5min": (5, 6)})
    assert merged == {"tick_1min": (0, 20), "tick_5min": (5, 6)}


@pytest.mark.parametrize("days", [1, MIN_RETENTION_DAYS_WITH_POLICIES - 1])
def test_a_retention_shorter_than_the_refresh_windows_is_refused(days: int) -> None:
    settings = load_settings(KAFKA_TOPICS="t.tick", DB_RETENTION_DAYS=days)
    upkeep = Upkeep(TimescaleConfig.of(settings), {"t.tick": TopicKind.TICK})
    upkeep.mode = DbMode.TIMESCALEDB
    with pytest.raises(ValueError, match=f"DB_RETENTION_DAYS={days}"):
        upkeep.check_retention()
    upkeep.mode = DbMode.POSTGRES  # no policies there: any retention
    upkeep.check_retention()
    ok = load_settings(KAFKA_TOPICS="t.tick", DB_RETENTION_DAYS=MIN_RETENTION_DAYS_WITH_POLICIES)
    fine = Upkeep(TimescaleConfig.of(ok), {"t.tick": TopicKind.TICK})
    fine.mode = DbMode.TIMESCALEDB
    fine.check_retention()
