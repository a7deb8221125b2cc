"""Which day partitions retention drops (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from recorder.sinks.timescale.retention import cutoff_day, partitions_to_drop


def test_only_whole_days_before_the_cutoff_of_our_own_partitions_go() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
    keep_from = cutoff_day(now, 3)  # 2026-11-28 and later stay
    names = [
        "tick_data_p20261127",
        "tick_data_p20261128",
        "tick_data_p20261201",
        "tick_data_p20250101",
        "orderbook_p20261101",  # another parent's
        "tick_data_archive",  # made by hand: never ours to drop
    ]
    assert partitions_to_drop("tick_data", names, keep_from) == [
        "tick_data_p20250101",
        "tick_data_p20261127",
    ]
    assert partitions_to_drop("orderbook", names, keep_from) == ["orderbook_p20261101"]
    assert partitions_to_drop("tick_data", names, cutoff_day(now, 100_000)) == []
