"""Per-partition batch buffers and the pure rules of when to flush them.

Owns what a sink holds in memory between fetch and flush: the decoded columns (an Arrow table
per offered fetch, rows with their Kafka offsets), the progress the batch started from (its
compare-and-set expectation) and the next offset after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from recorder.core.columns import offsets_of, table_bytes, times_of

NS_PER_HOUR = 3600 * 1_000_000_000


@dataclass(slots=True)
class Batch:
    """Records of one partition in offset order; durable means progress moves start -> end."""

    start: int | None  # stored progress when the batch began (None: never written before)
    end: int  # next offset after the last record offered (valid or not)
    chunks: list[pa.Table] = field(default_factory=list)  # one per offered fetch, in order
    count: int = 0  # rows in `chunks`
    opened_at: float | None = None  # monotonic time the batch got its first offset
    nbytes: int = 0  # estimated memory of `chunks` (recorder.core.backpressure.table_bytes)

    def __len__(self) -> int:
        return self.count

    @property
    def advanced(self) -> bool:
        """True when the batch moves progress (it may hold only skipped, invalid offsets).

        A partition never written before starts with end -1 until its first offset arrives;
        flushing it then would record progress -1, which no consumer can seek to."""
        return self.end >= 0 and self.start != self.end

    def table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows as one contiguous table (chunks combined: encoders see plain arrays);
        only `columns` when given, so a sink copies only what it writes."""
        chunks = self.chunks if columns is None else [c.select(list(columns)) for c in self.chunks]
        if len(chunks) == 1:
            return chunks[0].combine_chunks()
        return pa.concat_tables(chunks).combine_chunks()

    def first_offset(self) -> int | None:
        for chunk in self.chunks:
            if chunk.num_rows:
                return int(offsets_of(chunk)[0])
        return None


@dataclass(slots=True)
class PartitionBuffer:
    """The open batch of one partition of one sink."""

    batch: Batch

    def offer(self, columns: pa.Table, end: int, now: float) -> int:
        """Append the rows at or above the batch end (`columns` holds the valid records of a
        fetch; `end` is the offset after its last record, valid or not). Returns how many rows
        were taken. Offsets below the end were already buffered or made durable (a re-seek or
        replay) and are skipped."""
        batch = self.batch
        if end <= batch.end:
            return 0
        if columns.num_rows:
            offsets = offsets_of(columns)
            if offsets[0] < batch.end:
                columns = columns.slice(int(np.searchsorted(offsets, batch.end)))
        taken = int(columns.num_rows)
        if taken:
            batch.chunks.append(columns)
            batch.count += taken
            batch.nbytes += table_bytes(columns)
        batch.end = end
        if batch.opened_at is None:
            batch.opened_at = now
        return taken

    def take(self) -> Batch:
        """Detach the open batch for flushing; a new one continues from its end."""
        done = self.batch
        self.batch = Batch(start=done.end, end=done.end)
        return done

    def take_until(self, end: int) -> Batch:
        """Detach the records below `end` (a recorded flush range's end); the rest stays open."""
        b = self.batch
        table = b.table() if b.chunks else None
        k = int(np.searchsorted(offsets_of(table), end)) if table is not None else 0
        done = Batch(b.start, end, opened_at=b.opened_at)
        rest = Batch(end, max(end, b.end), opened_at=b.opened_at if b.end > end else None)
        if table is not None:
            for part, target in ((table.slice(0, k), done), (table.slice(k), rest)):
                if part.num_rows:
                    target.chunks.append(part)
                    target.count = part.num_rows
                    target.nbytes = table_bytes(part)
        self.batch = rest
        return done

    def restart(self, progress: int | None, end: int) -> None:
        """Forget buffered records (after a fence or a failed flush that is to be replayed)."""
        self.batch = Batch(start=progress, end=end)


def is_due(batch: Batch, now: float, max_rows: int, max_age: float) -> bool:
    """A batch is flushed when it is full or its oldest offset has waited long enough."""
    if not batch.advanced:
        return False
    if batch.count >= max_rows:
        return True
    return batch.opened_at is not None and now - batch.opened_at >= max_age


def next_due_in(batches: Iterable[Batch], now: float, max_age: float) -> float:
    """Seconds until the oldest open batch times out (max_age when none is open)."""
    wait = max_age
    for batch in batches:
        if batch.advanced and batch.opened_at is not None:
            wait = min(wait, max(0.0, batch.opened_at + max_age - now))
    return wait


def split_by_hour(table: pa.Table) -> list[tuple[int, int, pa.Table]]:
    """The rows grouped by UTC event hour, in hour order: (hour start ns, first offset, rows).

    The first offset of each hour named the file in releases before encoders were recorded
    with flush ranges (`recorder.sinks.lake.encoder`); ranges they left pending keep it.
    """
    if not table.num_rows:
        return []
    times = times_of(table)
    hours = times - times % NS_PER_HOUR
    first, last = hours.min(), hours.max()
    offsets = offsets_of(table)
    if first == last:  # almost every flush lies within one hour: no per-hour filter then
        return [(int(first), int(offsets[0]), table)]
    unique, first_rows = np.unique(hours, return_index=True)
    return [
        (int(hour), int(offsets[row]), table.filter(pa.array(hours == hour)))
        for hour, row in zip(unique, first_rows, strict=True)
    ]


def writer_for(topic: str, partition: int, workers: int) -> int:
    """The database writer that owns a partition (stable, so its progress stays ordered)."""
    return (hash(topic) * 31 + partition) % workers if workers > 1 else 0
