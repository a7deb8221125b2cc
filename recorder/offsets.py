"""Offset arithmetic of exactly-once delivery (pure): where to seek, what is fenced, what lags.

A sink's *progress* for a partition is the next offset it has not yet made durable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import NamedTuple


class TP(NamedTuple):
    """A Kafka topic-partition (hashable, ordered)."""

    topic: str
    partition: int


class CasOutcome(Enum):
    APPLIED = "applied"  # stored progress was the batch start: our write is the one recorded
    ALREADY_DONE = "already_done"  # stored progress is the batch end: an earlier try committed it
    FENCED = "fenced"  # someone else moved progress: we are a zombie, drop the batch


def cas_outcome(stored: int | None, batch_start: int | None, batch_end: int) -> CasOutcome:
    """Compare-and-set decision for recording progress `batch_start -> batch_end`."""
    if stored == batch_start:
        return CasOutcome.APPLIED
    if stored == batch_end and batch_end != batch_start:
        return CasOutcome.ALREADY_DONE
    return CasOutcome.FENCED


def seek_position(progress: Iterable[int | None]) -> int | None:
    """Where a newly assigned partition must resume: the smallest progress of the enabled sinks.

    None means some sink has never written this partition, so it starts at the reset policy.
    """
    values = list(progress)
    if not values or any(v is None for v in values):
        return None
    return min(v for v in values if v is not None)


def partition_lag(high_watermark: int | None, progress: int | None, log_start: int = 0) -> int:
    """Records of a partition not yet durable in a sink (never negative)."""
    if high_watermark is None:
        return 0
    base = log_start if progress is None else max(progress, log_start)
    return max(0, high_watermark - base)


def total_lag(lags: Mapping[TP, int]) -> int:
    return sum(lags.values())
