"""Per-partition batch buffers and the pure rules of when to flush them.

Owns what a sink holds in memory between fetch and flush: rows with their Kafka offsets, the
progress the batch started from (its compare-and-set expectation) and the next offset after it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")

NS_PER_HOUR = 3600 * 1_000_000_000


@dataclass(slots=True)
class Batch(Generic[R]):
    """Records of one partition in offset order; durable means progress moves start -> end."""

    start: int | None  # stored progress when the batch began (None: never written before)
    end: int  # next offset after the last record offered (valid or not)
    rows: list[R] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    opened_at: float | None = None  # monotonic time the batch got its first offset
    nbytes: int = 0  # estimated decoded bytes of `rows` (recorder.core.backpressure.row_bytes)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def advanced(self) -> bool:
        """True when the batch moves progress (it may hold only skipped, invalid offsets).

        A partition never written before starts with end -1 until its first offset arrives;
        flushing it then would record progress -1, which no consumer can seek to."""
        return self.end >= 0 and self.start != self.end


@dataclass(slots=True)
class PartitionBuffer(Generic[R]):
    """The open batch of one partition of one sink."""

    batch: Batch[R]

    @classmethod
    def starting_at(cls, progress: int | None, first_offset: int) -> PartitionBuffer[R]:
        return cls(Batch(start=progress, end=first_offset if progress is None else progress))

    def offer(
        self,
        offsets: Sequence[int],
        rows: Sequence[R | None],
        end: int,
        now: float,
        row_bytes: int = 0,
    ) -> int:
        """Append the records at or above the batch end; None rows are invalid records that only
        advance the offset. Returns how many rows were taken. Offsets below the end were already
        buffered or made durable (a re-seek or replay) and are skipped. `row_bytes` is the
        estimated size of one taken row (the average over the offered ones)."""
        batch = self.batch
        if end <= batch.end:
            return 0
        taken = 0
        first = 0
        if offsets and offsets[0] < batch.end:
            while first < len(offsets) and offsets[first] < batch.end:
                first += 1
        for i in range(first, len(offsets)):
            row = rows[i]
            if row is not None:
                batch.rows.append(row)
                batch.offsets.append(offsets[i])
                taken += 1
        batch.nbytes += taken * row_bytes
        batch.end = end
        if batch.opened_at is None:
            batch.opened_at = now
        return taken

    def take(self) -> Batch[R]:
        """Detach the open batch for flushing; a new one continues from its end."""
        done = self.batch
        self.batch = Batch(start=done.end, end=done.end)
        return done

    def take_until(self, end: int) -> Batch[R]:
        """Detach the records below `end` (a recorded flush range's end); the rest stays open."""
        b = self.batch
        k = bisect_left(b.offsets, end)
        done = Batch(b.start, end, b.rows[:k], b.offsets[:k], b.opened_at)
        rest_opened = b.opened_at if b.end > end else None
        self.batch = Batch(end, max(end, b.end), b.rows[k:], b.offsets[k:], rest_opened)
        # The estimate splits with the rows (rows of one partition are of one kind).
        done.nbytes = b.nbytes * k // len(b.rows) if b.rows else 0
        self.batch.nbytes = b.nbytes - done.nbytes
        return done

    def restart(self, progress: int | None, end: int) -> None:
        """Forget buffered records (after a fence or a failed flush that is to be replayed)."""
        self.batch = Batch(start=progress, end=end)


def is_due(batch: Batch[R], now: float, max_rows: int, max_age: float) -> bool:
    """A batch is flushed when it is full or its oldest offset has waited long enough."""
    if not batch.advanced:
        return False
    if len(batch.rows) >= max_rows:
        return True
    return batch.opened_at is not None and now - batch.opened_at >= max_age


def next_due_in(batches: Iterable[Batch[R]], now: float, max_age: float) -> float:
    """Seconds until the oldest open batch times out (max_age when none is open)."""
    wait = max_age
    for batch in batches:
        if batch.advanced and batch.opened_at is not None:
            wait = min(wait, max(0.0, batch.opened_at + max_age - now))
    return wait


def split_by_hour(
    time_ns: Sequence[int], offsets: Sequence[int]
) -> dict[int, tuple[int, list[int]]]:
    """Row indexes grouped by UTC event hour: hour start (ns) -> (first offset, indexes).

    The first offset of each hour names the file, so a replay from the same progress writes the
    same keys whatever its flush boundaries are (DESIGN rule 2).
    """
    groups: dict[int, tuple[int, list[int]]] = {}
    for i, t in enumerate(time_ns):
        hour = t - t % NS_PER_HOUR
        group = groups.get(hour)
        if group is None:
            groups[hour] = (offsets[i], [i])
        else:
            group[1].append(i)
    return groups


def writer_for(topic: str, partition: int, workers: int) -> int:
    """The database writer that owns a partition (stable, so its progress stays ordered)."""
    return (hash(topic) * 31 + partition) % workers if workers > 1 else 0
