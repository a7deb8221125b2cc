"""KEDA-semantics lag, desired replicas, and the scale-down window on a fake clock."""

from __future__ import annotations

import pytest
from datarecorder_operator.lag import (
    LagReport,
    PartitionOffsets,
    compute_lag,
    desired_replicas,
    partition_lag,
)
from datarecorder_operator.scaler import Stabilizer


def offsets(*rows: tuple[int, int | None]) -> list[PartitionOffsets]:
    return [PartitionOffsets("t", i, end, committed) for i, (end, committed) in enumerate(rows)]


def test_lag_is_end_minus_committed() -> None:
    assert partition_lag(PartitionOffsets("t", 0, end=100, committed=40)) == 60
    assert partition_lag(PartitionOffsets("t", 0, end=100, committed=100)) == 0


def test_uncommitted_partition_counts_by_reset_policy() -> None:
    p = PartitionOffsets("t", 0, end=100, committed=None, beginning=30)
    assert partition_lag(p, "earliest") == 70  # the retained log is what will be read
    assert partition_lag(p, "latest") == 0
    assert partition_lag(PartitionOffsets("t", 0, 100, -1), "earliest") == 100  # -1 = none


def test_commit_below_retention_counts_from_log_start() -> None:
    assert partition_lag(PartitionOffsets("t", 0, end=100, committed=5, beginning=50)) == 50


def test_report_totals() -> None:
    report = compute_lag(offsets((10, 0), (10, 10), (5, None)))
    assert report.total == 15
    assert report.partitions == 3
    assert report.partitions_with_lag == 2
    assert report.per_partition[("t", 0)] == 10


@pytest.mark.parametrize(
    ("total", "partitions", "with_lag", "limit", "expected"),
    [
        (0, 6, 0, False, 1),  # idle: minReplicas
        (25_000, 6, 6, False, 3),  # ceil(25000 / 10000)
        (10_000_000, 6, 6, False, 6),  # capped at the partition count
        (10_000_000, 12, 12, False, 8),  # capped at maxReplicas
        (50_000, 6, 2, True, 2),  # capped at partitions with lag
        (50_000, 6, 2, False, 5),
        (50_000, 0, 0, False, 1),  # no partitions known yet: min
    ],
)
def test_desired_replicas(
    total: int, partitions: int, with_lag: int, limit: bool, expected: int
) -> None:
    report = LagReport(total, partitions, with_lag, {})
    got = desired_replicas(
        report,
        target_lag_per_replica=10_000,
        min_replicas=1,
        max_replicas=8,
        limit_to_partitions_with_lag=limit,
    )
    assert got == expected


def test_partition_cap_wins_over_min_replicas() -> None:
    report = LagReport(0, 2, 0, {})
    kwargs = {"target_lag_per_replica": 10, "min_replicas": 4, "max_replicas": 8}
    assert desired_replicas(report, **kwargs) == 2  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def test_scale_up_is_immediate() -> None:
    clock, stab = FakeClock(), Stabilizer(60)
    assert stab.decide(clock.now, 6, 1).replicas == 6


def test_scale_down_waits_for_the_window() -> None:
    clock, stab = FakeClock(), Stabilizer(60)
    assert stab.decide(clock.now, 6, 1).replicas == 6
    for _ in range(5):  # drained for 50 s: the earlier recommendation of 6 still holds
        assert stab.decide(clock.advance(10), 1, 6).replicas == 6
    assert stab.decide(clock.advance(11), 1, 6).replicas == 1  # 61 s after the last 6


def test_scale_down_goes_to_the_highest_recent_recommendation() -> None:
    clock, stab = FakeClock(), Stabilizer(30)
    stab.decide(clock.now, 6, 6)
    stab.decide(clock.advance(20), 4, 6)
    assert stab.decide(clock.advance(15), 2, 6).replicas == 4  # the 6 left the window


def test_fresh_stabilizer_holds_the_current_replicas_for_a_window() -> None:
    clock, stab = FakeClock(), Stabilizer(60)
    assert stab.decide(clock.now, 1, 5).replicas == 5  # e.g. right after an operator restart
    assert stab.decide(clock.advance(61), 1, 5).replicas == 1


def test_zero_window_scales_down_on_the_next_decision() -> None:
    clock, stab = FakeClock(), Stabilizer(0)
    assert stab.decide(clock.now, 1, 3).replicas == 3
    assert stab.decide(clock.advance(1), 1, 3).replicas == 1
