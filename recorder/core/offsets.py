"""Offset arithmetic of exactly-once delivery (pure): where to seek, what is fenced, what lags,
which dead letters were sent already.

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


class IntentOutcome(Enum):
    """What a lake writer holding the batch [start, end) may do, given the progress object."""

    FREE = "free"  # progress is `start`, no range recorded: record [start, end) and flush it
    RECORDED = "recorded"  # [start, end) is the recorded range: upload it, then commit
    ADOPT = "adopt"  # another range [start, E) is recorded: drop ours, flush exactly that one
    DONE = "done"  # progress already is `end`: someone flushed these records
    FENCED = "fenced"  # progress moved elsewhere: we are a zombie, drop the batch


def intent_outcome(
    stored: int | None, flush_end: int | None, start: int | None, end: int
) -> IntentOutcome:
    """The lake protocol's decision (pure): see recorder.sinks.lake.sink for the argument."""
    if stored == start and stored is not None:
        if flush_end is None:
            return IntentOutcome.FREE
        return IntentOutcome.RECORDED if flush_end == end else IntentOutcome.ADOPT
    if stored is None and start is None:
        return IntentOutcome.FREE
    if stored == end and flush_end is None and end != start:
        return IntentOutcome.DONE
    return IntentOutcome.FENCED


def seek_position(progress: Iterable[int | None]) -> int | None:
    """Where a newly assigned partition must resume: the smallest progress of the enabled sinks.

    None means no sink has written this partition: it starts where the reset policy says.
    """
    values = [v for v in progress if v is not None]
    return min(values) if values else None


def unknown_progress(progress: Mapping[str, Mapping[TP, int | None]], tps: Iterable[TP]) -> set[TP]:
    """Partitions for which at least one sink has no progress yet (they need the reset policy's
    start, which that sink then stores; the other sinks keep their own)."""
    return {tp for tp in tps if any(p.get(tp) is None for p in progress.values())}


def beyond_log_end(progress: Iterable[int | None], log_end: int | None) -> int | None:
    """The largest stored progress if it lies past the partition's log end, else None.

    Progress counts records that were in the log; a log that ends before it was truncated
    (deleted and recreated, unclean leader election). Resuming would skip every new record
    below that progress, so the partition must halt instead."""
    values = [v for v in progress if v is not None]
    if log_end is None or not values:
        return None
    top = max(values)
    return top if top > log_end else None


def partition_lag(high_watermark: int | None, progress: int | None, log_start: int = 0) -> int:
    """Records of a partition not yet durable in a sink (never negative)."""
    if high_watermark is None:
        return 0
    base = log_start if progress is None else max(progress, log_start)
    return max(0, high_watermark - base)


class PositionLost(Exception):
    """Partitions whose fetch position the broker refused (below the log start, past its end)
    or that have none: the coordinator decides where they go on, the consumer never resets
    on its own. `positions` holds the refused fetch offset (None: no position at all)."""

    def __init__(self, positions: Mapping[TP, int | None]) -> None:
        super().__init__(f"fetch positions lost: {dict(positions)}")
        self.positions = dict(positions)


def recreated_topic(
    current: str | None, recorded: Mapping[str, Mapping[TP, str | None]], tp: TP
) -> tuple[str, str] | None:
    """(stored ID, current ID) when a sink's progress of `tp` counts another incarnation of the
    topic than the one the broker has now; None when they agree or either is unknown."""
    if current is None:
        return None
    for ids in recorded.values():
        stored = ids.get(tp)
        if stored is not None and stored != current:
            return stored, current
    return None


def vanished_progress(
    progress: Mapping[str, Mapping[TP, int | None]],
    known: Mapping[str, Mapping[str, set[int]]],
    tp: TP,
) -> str | None:
    """The sink whose progress of `tp` is gone: it has none while another sink has some, and it
    holds progress for other partitions of the topic (so it was recording this topic; a store
    enabled later for an existing deployment has none for any). None when nothing vanished."""
    if all(p.get(tp) is None for p in progress.values()):
        return None  # a new partition, or a new deployment: the reset policy decides
    for name, p in progress.items():
        if p.get(tp) is None and known.get(name, {}).get(tp.topic, set()) - {tp.partition}:
            return name
    return None


def dead_letter_floor(progress: Iterable[int | None], sent: int | None) -> int:
    """The first offset of a partition whose dead letter may still need sending: one below
    every sink's progress was sent before that progress was recorded; one below `sent` (the
    offset after the last letter acknowledged in this process) was sent before a re-read."""
    recorded = max((p for p in progress if p is not None), default=-1)
    return recorded if sent is None else max(recorded, sent)


class SentLetters:
    """Per partition: the offset after the last dead letter Kafka acknowledged from this process.

    Kept across revocations: a partition taken over again (a rebalance, a resync) re-reads
    records whose letters were sent already, and must not send them twice. Forgotten when the
    partition halts (its log may have been replaced)."""

    def __init__(self) -> None:
        self._after: dict[TP, int] = {}

    def floor(self, tp: TP, progress: Iterable[int | None]) -> int:
        """Letters of `tp` at or past this offset are sent; those below it were already."""
        return dead_letter_floor(progress, self._after.get(tp))

    def acknowledged(self, tp: TP, offset: int) -> None:
        """Kafka acknowledged the dead letter of the record at `offset`."""
        self._after[tp] = max(self._after.get(tp, -1), offset + 1)

    def forget(self, tp: TP) -> None:
        self._after.pop(tp, None)
