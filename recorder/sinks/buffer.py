"""The buffer core every sink shares: open and in-flight batches per partition, awaitable flush.

Owns the bookkeeping both sinks used to repeat (assign, revoke, offer, buffered records and
bytes, forced flushes) and `flush`, which waits for a change of state instead of polling: every
change a flush waits for (a batch done, a buffer restarted, a partition revoked) goes through
`changed()`, which wakes the waiters once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterator, Mapping

import pyarrow as pa

from recorder.core.batching import Batch, PartitionBuffer
from recorder.core.offsets import TP


class Buffers:
    """One sink's partitions: the open batch of each, the batches being flushed, and the
    partitions a caller of `flush` is waiting for (flushed whether due or not)."""

    def __init__(self) -> None:
        self.open: dict[TP, PartitionBuffer] = {}
        self.in_flight: dict[TP, Batch] = {}
        self.force: set[TP] = set()
        self._changed = asyncio.Event()

    # --- partitions ---------------------------------------------------------------------
    def assign(self, progress: Mapping[TP, int | None]) -> None:
        """Open an empty batch at each partition's progress (end -1: never written, the first
        offered offset starts it)."""
        for tp, value in progress.items():
            self.open[tp] = PartitionBuffer(
                Batch(start=value, end=value if value is not None else -1)
            )
        self.changed()

    def revoke(self, tps: Collection[TP]) -> None:
        for tp in tps:
            self.open.pop(tp, None)
            self.force.discard(tp)
        self.changed()

    def get(self, tp: TP) -> PartitionBuffer | None:
        return self.open.get(tp)

    def __contains__(self, tp: object) -> bool:
        return tp in self.open

    def __iter__(self) -> Iterator[TP]:
        return iter(self.open)

    def items(self) -> list[tuple[TP, PartitionBuffer]]:
        return list(self.open.items())

    # --- records ------------------------------------------------------------------------
    def offer(self, tp: TP, columns: pa.Table, end: int, now: float) -> Batch | None:
        """Add a fetch to `tp`'s open batch; None when `tp` is not (or no longer) ours (a fetch
        that raced a revocation)."""
        buffer = self.open.get(tp)
        if buffer is None:
            return None
        buffer.offer(columns, end, now)
        return buffer.batch

    def buffered(self) -> int:
        """Records held: open batches and batches being flushed."""
        open_rows = sum(b.batch.count for b in self.open.values())
        return open_rows + sum(b.count for b in self.in_flight.values())

    def buffered_bytes(self) -> int:
        """Estimated memory of the open and in-flight batches (in-flight ones count until
        durable: their encoded files may sit in a spill file meanwhile)."""
        open_bytes = sum(b.batch.nbytes for b in self.open.values())
        return open_bytes + sum(b.nbytes for b in self.in_flight.values())

    # --- flushing -----------------------------------------------------------------------
    def flying(self, tp: TP, batch: Batch) -> None:
        """`batch` of `tp` is being flushed (taken from its open batch)."""
        self.in_flight[tp] = batch

    def landed(self, tp: TP) -> None:
        """The flush of `tp` ended (durable, fenced, failed or abandoned)."""
        self.in_flight.pop(tp, None)
        self.force.discard(tp)
        self.changed()

    def restart(self, tp: TP, progress: int | None) -> None:
        """Forget `tp`'s open batch; it is fed again from `progress`."""
        buffer = self.open.get(tp)
        if buffer is not None:
            buffer.restart(progress, progress if progress is not None else -1)
        self.changed()

    def changed(self) -> None:
        """Wake every `flush` waiting now; later ones wait for the next change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def flush(
        self,
        tps: Collection[TP] | None,
        pending: Callable[[TP], bool],
        kick: Callable[[Collection[TP]], None],
    ) -> None:
        """Return once no partition of `tps` (all when None) is `pending`; each round marks
        the pending ones forced and `kick`s the sink's flusher, then waits for a change."""
        wanted = set(self.open if tps is None else tps)
        while True:
            changed = self._changed  # taken before the check: a change after it wakes us
            waiting = [tp for tp in wanted if pending(tp)]
            if not waiting:
                return
            self.force.update(waiting)
            kick(waiting)
            await changed.wait()
