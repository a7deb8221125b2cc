"""Consumer-group lag with KEDA's Kafka-scaler semantics, and the replicas it asks for.

Owns `PartitionOffsets`, `LagReport`, `compute_lag`, `persistent_partitions` and
`desired_replicas`; pure functions.

Lag of a partition = log-end offset minus the group's committed offset (the recorder commits
its hot-path progress, so this is "records not yet durable in TimescaleDB"). A partition
without a committed offset counts its whole retained log with `earliest` (what the recorder
will read) and nothing with `latest`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Literal

OffsetResetPolicy = Literal["earliest", "latest"]


@dataclasses.dataclass(frozen=True)
class PartitionOffsets:
    topic: str
    partition: int
    end: int  # log-end offset (the next offset to be written)
    committed: int | None  # the group's committed offset; None when it has none
    beginning: int = 0  # log-start offset (after retention)


@dataclasses.dataclass(frozen=True)
class LagReport:
    total: int
    partitions: int
    partitions_with_lag: int
    per_partition: dict[tuple[str, int], int]


def partition_lag(offsets: PartitionOffsets, policy: OffsetResetPolicy = "earliest") -> int:
    """Records of one partition the group has not committed yet (never negative)."""
    if offsets.committed is None or offsets.committed < 0:
        start = offsets.beginning if policy == "earliest" else offsets.end
    else:
        # A committed offset below the log start (retention deleted records) can only resume
        # from the log start; counting deleted records would ask for replicas nobody can use.
        start = max(offsets.committed, offsets.beginning)
    return max(0, offsets.end - start)


def compute_lag(
    offsets: Iterable[PartitionOffsets], policy: OffsetResetPolicy = "earliest"
) -> LagReport:
    per_partition = {(o.topic, o.partition): partition_lag(o, policy) for o in offsets}
    return LagReport(
        total=sum(per_partition.values()),
        partitions=len(per_partition),
        partitions_with_lag=sum(1 for lag in per_partition.values() if lag > 0),
        per_partition=per_partition,
    )


Committed = dict[tuple[str, int], int | None]  # the group's committed offset by partition


def committed_offsets(offsets: Iterable[PartitionOffsets]) -> Committed:
    return {(o.topic, o.partition): o.committed for o in offsets}


def persistent_partitions(
    report: LagReport, now: Committed, before: Committed | None
) -> set[tuple[str, int]]:
    """KEDA's `excludePersistentLag`: partitions with lag whose committed offset has not moved
    since the previous poll (a record the consumer cannot get past, or no consumer at all).
    More replicas would not help them, so their lag is left out of the scaling lag. The first
    poll has nothing to compare with and excludes nothing; a partition without a committed
    offset is never persistent (KEDA counts it by the reset policy before this check)."""
    if before is None:
        return set()
    return {
        key
        for key, lag in report.per_partition.items()
        if lag > 0 and now.get(key) is not None and key in before and before[key] == now[key]
    }


def excluding(report: LagReport, partitions: set[tuple[str, int]]) -> LagReport:
    """`report` with the lag of `partitions` counted as 0 (they still count as partitions)."""
    if not partitions:
        return report
    per = {key: (0 if key in partitions else lag) for key, lag in report.per_partition.items()}
    return LagReport(
        total=sum(per.values()),
        partitions=report.partitions,
        partitions_with_lag=sum(1 for lag in per.values() if lag > 0),
        per_partition=per,
    )


def desired_replicas(
    report: LagReport,
    *,
    target_lag_per_replica: int,
    min_replicas: int,
    max_replicas: int,
    limit_to_partitions_with_lag: bool = False,
) -> int:
    """ceil(total lag / target), capped at the partitions, then clamped to [min, max].

    More consumers than partitions would sit idle (KEDA caps the same way), so the partition
    cap wins even over `min_replicas`: replicas never exceed the partition count.
    """
    if target_lag_per_replica < 1:
        raise ValueError("target_lag_per_replica must be >= 1")
    wanted = math.ceil(report.total / target_lag_per_replica)
    cap = report.partitions_with_lag if limit_to_partitions_with_lag else report.partitions
    wanted = min(wanted, cap)
    upper = max_replicas if report.partitions == 0 else min(max_replicas, report.partitions)
    lower = min(min_replicas, upper)
    return max(lower, min(upper, wanted))


def with_activation(
    wanted: int, report: LagReport, *, activation_lag: int, idle_replicas: int | None
) -> int:
    """KEDA's activation: with `idle_replicas` set, run that many (0: none) while the total lag
    is at most `activation_lag`; above it, `wanted` as computed."""
    if idle_replicas is not None and report.total <= activation_lag:
        return idle_replicas
    return wanted
