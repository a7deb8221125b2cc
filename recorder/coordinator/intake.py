"""The fetch loop of one consumer: backpressure and the pause plan, fetch, decode, dead letters,
offer to the sinks, and the periodic commit of hot-path progress to Kafka.

Owns the loop's running estimates (decoded and raw bytes per record, which size the next
fetch) and the relief flush of full buffers; the decisions are `recorder.core`'s
(`backpressure.decide`, the table's pause plan, the dead-letter floors).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import pyarrow as pa

from recorder.coordinator.health import Health
from recorder.coordinator.ports import DeadLetterQueue, Source
from recorder.coordinator.rebalance import Rebalance
from recorder.core import backpressure
from recorder.core.backpressure import Buffered, BufferLimits
from recorder.core.columns import decode_batch, value_bytes
from recorder.core.offsets import TP, PositionLost, SentLetters, beyond_log_end
from recorder.core.partitions import PartitionTable
from recorder.core.records import Limits
from recorder.kafka.dlq import DeadLetter, DeadLetterRefused
from recorder.runtime import metrics, telemetry
from recorder.runtime.settings import TopicKind
from recorder.sinks.base import Sink

COMMIT_INTERVAL_SEC = 0.25
_OFFSET = attrgetter("offset")
_VALUE = attrgetter("value")
_TIMESTAMP = attrgetter("timestamp")
# Fetch waits: short while paused (the loop only keeps the membership alive and watches for
# room), longer while reading (more records per round trip).
FETCH_WAIT_PAUSED_MS = 100
FETCH_WAIT_MS = 250


class Intake:
    """Feeds every sink from every consumer of the process."""

    def __init__(
        self,
        rebalance: Rebalance,
        dead_letters: DeadLetterQueue,
        buffer_limits: BufferLimits,
        stop: Callable[[], None],
    ) -> None:
        self.settings = settings = rebalance.settings
        self.topics: dict[str, TopicKind] = settings.topics()
        self.sinks: Sequence[Sink] = rebalance.sinks
        self.sources: Sequence[Source] = rebalance.sources
        self.dlq = dead_letters
        self.rebalance = rebalance
        self.partitions: PartitionTable = rebalance.partitions
        self.letters: SentLetters = rebalance.letters
        self.health: Health = rebalance.health
        self.buffer_limits = buffer_limits
        metrics.BUFFER_LIMIT.set(buffer_limits.records)
        metrics.BUFFER_LIMIT_BYTES.set(buffer_limits.nbytes)
        self._stop = stop
        self._limits = Limits(settings.MAX_MESSAGE_BYTES)
        self.relief: asyncio.Task[None] | None = None
        self._row_bytes = 0  # running average of decoded row sizes, to size the next fetch
        # ... and of the fetched values themselves: they are in memory beside their decoded
        # rows until the fetch is handled, so a fetch's room counts both.
        self._raw_bytes = 0

    def buffered(self) -> Buffered:
        # Both sinks hold the same row objects: memory follows the larger of the two.
        return Buffered(
            max(sink.buffered() for sink in self.sinks),
            max(sink.buffered_bytes() for sink in self.sinks),
        )

    def fetch_limit(self, full: bool) -> int:
        """Records the next fetch may bring: what the bytes left can hold at the recent row
        size, so a fetch of large order books does not overshoot the limit by much."""
        if full:
            return self.settings.FETCH_MAX_RECORDS
        room = max(0, self.buffer_limits.nbytes - self.buffered().nbytes)
        per_record = self._row_bytes + self._raw_bytes
        return backpressure.fetch_limit(self.settings.FETCH_MAX_RECORDS, room, per_record)

    async def consume(self, source: Source) -> None:
        last_commit = -math.inf  # the first progress is committed at once
        clock = self.health.clock
        try:
            while True:
                await self.rebalance.apply_resyncs(source)
                full = self._backpressure(source)
                # getmany also keeps the group membership alive while paused. Its records always
                # continue from the partition's current position: aiokafka drops fetched data
                # whose offset no longer matches it (a seek in a rebalance callback or a resync)
                # and data of partitions no longer assigned, and the returned records move the
                # position on. So a batch that arrives after a rebalance must be kept: dropping
                # it would skip its offsets for good (the next fetch starts after them).
                if self.settings.PAUSED:
                    # Paused on purpose: the plan pauses every owned partition, every round (a
                    # rebalance assigns them unpaused); getmany still keeps the membership.
                    full = True
                wait = FETCH_WAIT_PAUSED_MS if full else FETCH_WAIT_MS
                try:
                    data = await source.fetch(wait, self.fetch_limit(full))
                except PositionLost as lost:
                    await self.rebalance.reposition(source, lost.positions)
                    continue
                self.health.fetched()
                if data and not self.settings.PAUSED:
                    await self.handle(source, dict(data), self.partitions.epochs(data))
                now = clock.monotonic()
                if self.partitions.has_pending() and now - last_commit >= COMMIT_INTERVAL_SEC:
                    await source.commit(self.partitions.take_commits(source.assignment()))
                    last_commit = now
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.health.consumer_error = f"{type(exc).__name__}: {exc}"
            telemetry.emit(telemetry.CONSUMER_FAILED, exc_info=True)
            self._stop()

    def _backpressure(self, source: Source) -> bool:
        """Decide whether the member's buffers are full, which partitions complete a pending
        lake range meanwhile, and apply the table's pause plan (every round: a rebalance assigns
        partitions unpaused). Returns whether the buffers are full."""
        table = self.partitions
        owned = source.assignment()
        self._forget_revoked_refusals()
        action = backpressure.decide(
            self.buffered(), self.buffer_limits, table.is_full(source.index)
        )
        full = action.full
        # While full, partitions whose pending lake range can only be flushed whole are fed on:
        # pausing them too would wedge the pod (full buffers that no flush can empty).
        ranges = {
            tp: span
            for sink in (self.sinks if full else ())
            for tp, span in sink.completing().items()
            if tp in owned
        }
        for tp in table.complete(owned, ranges):
            first, end = ranges[tp]
            telemetry.emit(
                telemetry.RANGE_COMPLETING,
                topic=tp.topic,
                partition=tp.partition,
                first=first,
                end=end,
            )
        table.fill(source.index, full)
        self.rebalance.pause_as_planned(source)
        if action.changes:
            telemetry.emit(
                telemetry.CONSUMER_PAUSED if full else telemetry.CONSUMER_RESUMED,
                consumers_paused=table.members_full(),
                buffered={s.name: s.buffered() for s in self.sinks},
                buffered_bytes={s.name: s.buffered_bytes() for s in self.sinks},
            )
            self._relieve(full)
        return full

    def _forget_revoked_refusals(self) -> None:
        """A partition whose dead letters were refused and that no consumer of this process owns
        any more is not waited for: its new owner sends the dead letters."""
        for tp in self.partitions.blocked():
            if not any(tp in s.assignment() for s in self.sources):
                self.partitions.unblock(tp)
        metrics.DEAD_LETTER_BLOCKED.set(len(self.partitions.blocked()))

    def _relieve(self, full: bool) -> None:
        """Full buffers flush now instead of at their size or age trigger, and stop doing so on
        resume. Without this a backlog stalls: S3_BATCH_SIZE rows for every partition can be
        more than MAX_BUFFER_SIZE in all (10,000 x 24 > 100,000 by default), so the paused
        consumer waited for S3_BATCH_TIMEOUT_SEC (60 s) before the lake flushed anything."""
        if self.relief is not None and not self.relief.done():
            if not full:
                self.relief.cancel()  # flushes already started finish in their sinks' tasks
            return
        if full:

            async def flush_everything() -> None:
                await asyncio.gather(*(sink.flush_all() for sink in self.sinks))

            self.relief = asyncio.create_task(flush_everything(), name="relieve-buffers")

    async def handle(
        self, source: Source, data: dict[TP, list[Any]], epochs: dict[TP, int]
    ) -> None:
        limits = self._limits
        decoded: list[tuple[TP, pa.Table, int, int]] = []
        dead: list[DeadLetter] = []
        for tp, messages in data.items():
            if not self.partitions.takes(tp, epochs[tp], source.index):
                continue
            end = source.fetched_end(tp)
            if not messages and end is None:
                continue
            log_end = source.highwater(tp)
            if beyond_log_end((s.progress().get(tp) for s in self.sinks), log_end) is not None:
                assert log_end is not None
                await self.rebalance.halt_running(source, tp, log_end)
                continue
            offsets = list(map(_OFFSET, messages))
            values = list(map(_VALUE, messages))
            if values:
                raw = value_bytes(values) // len(values)
                self._raw_bytes = max(raw, (self._raw_bytes * 7 + raw) // 8)
            columns, rejected = decode_batch(
                self.topics[tp.topic], values, offsets, list(map(_TIMESTAMP, messages)), limits
            )
            for i, exc in rejected:
                m = messages[i]
                dead.append(
                    DeadLetter(
                        tp.topic, tp.partition, m.offset, m.key, m.value, exc.reason, str(exc)
                    )
                )
            self._average_bytes(columns)
            # Past the last record when markers or aborted records follow it (read_committed).
            last = messages[-1].offset + 1 if messages else 0
            decoded.append((tp, columns, max(last, end or 0), len(messages)))
        # One acknowledged send for the whole fetch (not one round trip per partition), and
        # before any sink may record progress past a dead record.
        refused = await self._dead_letter(dead) if dead else set()
        for tp, columns, end, fetched in decoded:
            if tp in refused:
                continue  # not offered: fetched again from stored progress after the backoff
            if self.partitions.epoch(tp) != epochs[tp]:
                # Seeked while this batch waited (a rebalance during the dead-letter send): the
                # position was reset behind these records, so they come again from there.
                continue
            for sink in self.sinks:  # the same columns for every sink: decoded once
                sink.offer(tp, columns, end)
            metrics.RECORDS_CONSUMED.labels(tp.topic).inc(fetched)

    def _average_bytes(self, columns: pa.Table) -> int:
        """Decoded bytes of one row of this partition's fetch (its Arrow buffers' size)."""
        if not columns.num_rows:
            return 0
        average = backpressure.row_bytes(columns)
        self._row_bytes = max(average, (self._row_bytes * 7 + average) // 8)
        return average

    async def _dead_letter(self, dead: list[DeadLetter]) -> set[TP]:
        """Send the dead letters; returns the partitions whose letters were refused."""
        floors = {
            tp: self.letters.floor(tp, (sink.progress().get(tp) for sink in self.sinks))
            for tp in {TP(d.topic, d.partition) for d in dead}
        }
        fresh = [d for d in dead if d.offset >= floors[TP(d.topic, d.partition)]]
        try:
            await self.dlq.send_many(fresh)
        except DeadLetterRefused as exc:
            return self._refused(exc)
        for d in fresh:
            self.letters.acknowledged(TP(d.topic, d.partition), d.offset)
        for tp in {TP(d.topic, d.partition) for d in fresh}:
            if self.partitions.unblock(tp):
                telemetry.emit(
                    telemetry.DEAD_LETTERS_ACCEPTED, topic=tp.topic, partition=tp.partition
                )
        return set()

    def _refused(self, exc: DeadLetterRefused) -> set[TP]:
        """The cluster refused these partitions' dead letters: none of their records of this
        fetch may be offered (progress must not pass an unsent dead letter), so they are fed
        again from stored progress, after a backoff during which they stay paused."""
        now = self.health.clock.monotonic()
        tps = {TP(t, p) for t, p in exc.partitions}
        for tp in tps:
            previous = self.partitions.state(tp).blocked
            self.partitions.block(
                tp,
                backpressure.block(previous, now, exc.reason, self.settings.RETRY_MAX_BACKOFF_SEC),
            )
            self.partitions.resync(tp)  # not ready, fetched again from the stored progress
        metrics.DEAD_LETTER_BLOCKED.set(len(self.partitions.blocked()))
        return tps
