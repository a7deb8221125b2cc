"""One recorder process: Kafka consumers feeding every enabled sink, exactly once.

Owns the coordination of DESIGN.md's data flow: decode and dead-letter, offer to the sinks,
pause on full buffers, seek on assignment, wait on revocation, commit hot-path progress, and
the shutdown sequence. Sinks and consumers talk to it through callbacks and shared state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition

from recorder import metrics, supervise
from recorder.core import backpressure
from recorder.core.columns import decode_batch
from recorder.core.offsets import (
    TP,
    beyond_log_end,
    partition_lag,
    seek_position,
    unknown_progress,
)
from recorder.core.records import Limits
from recorder.dlq import DeadLetter, DeadLetterRefused, DeadLetters
from recorder.kafka_options import client_options, is_kafka_retriable
from recorder.settings import Settings, TopicKind
from recorder.sinks.base import Sink, retry_forever
from recorder.sinks.lake.sink import S3Sink
from recorder.sinks.lake.store import make_lake
from recorder.sinks.timescale.sink import TimescaleSink
from recorder.source import KafkaSource

log = structlog.get_logger("recorder.pipeline")

REVOKE_DEADLINE_SEC = 25.0
COMMIT_INTERVAL_SEC = 0.25
HELD_RETRY_MIN_SEC = 2.0
HELD_RETRY_MAX_SEC = 30.0


# cgroup v2, then v1: a container sees its own cgroup at these paths.
CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def container_memory_limit(paths: Sequence[Path] = CGROUP_MEMORY_LIMITS) -> int | None:
    """The container's memory limit, None when unlimited or not in a cgroup."""
    for path in paths:
        try:
            return backpressure.parse_memory_max(path.read_text())
        except OSError:
            continue
    return None


@dataclass
class Health:
    started: bool = False
    stopping: bool = False
    consumer_error: str | None = None
    failed: str | None = None  # a long-running task died: the recorder stops and exits with 1
    last_fetch: float = field(default_factory=time.monotonic)
    assigned_once: bool = False

    def consumer_ok(self) -> bool:
        """Joined the group (not still waiting for Kafka), not failed, and fetching."""
        return (
            self.started and self.consumer_error is None and time.monotonic() - self.last_fetch < 60
        )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, recorder: Recorder, source: KafkaSource) -> None:
        self._recorder = recorder
        self._source = source

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._recorder.on_revoked(self._source, {TP(t.topic, t.partition) for t in revoked})

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self._recorder.on_assigned(self._source, {TP(t.topic, t.partition) for t in assigned})


class Recorder:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics: dict[str, TopicKind] = settings.topics()
        self.health = Health()
        self._options: dict[str, Any] = client_options(settings)
        self.dlq = DeadLetters(settings, self._options)
        self.sinks: list[Sink] = []
        self.db: TimescaleSink | None = None
        self.s3: S3Sink | None = None
        if settings.DB_WRITE_ENABLED:
            self.db = TimescaleSink(
                settings, self.topics, self.dlq, self._on_db_progress, self._on_resync
            )
            self.sinks.append(self.db)
        if settings.S3_WRITE_ENABLED:
            lake = make_lake(settings)
            self.s3 = S3Sink(settings, self.topics, lake, self._on_s3_progress, self._on_resync)
            self.sinks.append(self.s3)
        if not self.sinks:
            raise ValueError(
                "both sinks are disabled (DB_WRITE_ENABLED=false, S3_WRITE_ENABLED=false)"
            )
        self.sources = [
            KafkaSource(settings, self._options, i) for i in range(settings.NUM_CONSUMERS)
        ]
        self._limits = Limits(settings.MAX_MESSAGE_BYTES)
        self._stopping = asyncio.Event()
        self._pending_commit: dict[TP, int] = {}
        self._resync: set[TP] = set()
        # Bumped at every seek of a partition; a fetched batch is offered only if no seek of its
        # partition happened since the fetch returned.
        self._seek_epoch: dict[TP, int] = {}
        # Partitions assigned and seeked: records of others (fetched around a rebalance) are
        # neither dead-lettered nor offered; they come again from the seek position.
        self._ready: set[TP] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._paused: dict[int, bool] = {}
        # Partitions whose dead letters the cluster refused: paused, unready, retried after a
        # backoff (DESIGN: a DLQ that refuses writes must not crash-loop the pod).
        self._dlq_blocked: dict[TP, backpressure.Blocked] = {}
        self._dlq_held: dict[int, set[TP]] = {}  # per consumer: paused for their dead letters
        self._relief: asyncio.Task[None] | None = None
        # Partitions assigned but not taken: halted past the log end, or their progress could
        # not be loaded; reason shown on /ready. Kept paused; retried by `_retry_held`.
        self._held: dict[TP, str] = {}
        self._held_retry: asyncio.Task[None] | None = None
        # Progress of each sink when a partition halted past its log end, with the numbers.
        self._halted_at: dict[TP, tuple[tuple[int | None, ...], int, int]] = {}
        metrics.BUFFER_LIMIT.set(settings.MAX_BUFFER_SIZE)
        self.max_buffer_bytes = backpressure.buffer_bytes_limit(
            settings.MAX_BUFFER_BYTES, container_memory_limit()
        )
        metrics.BUFFER_LIMIT_BYTES.set(self.max_buffer_bytes)
        self._row_bytes = 0  # running average of decoded row sizes, to size the next fetch

    # --- callbacks from sinks -----------------------------------------------------------
    def _on_db_progress(self, tp: TP, offset: int) -> None:
        self._pending_commit[tp] = offset

    def _on_s3_progress(self, tp: TP, offset: int) -> None:
        if self.db is None:  # the committed offset follows the hot path when there is one
            self._pending_commit[tp] = offset

    def _on_resync(self, tp: TP) -> None:
        # A sink restarted this partition's buffer at its stored progress. Until the consumer is
        # seeked there, fetched records continue from the old position: offered now, they would
        # open the new buffer past a gap, and the re-fetch from the seek would then be skipped as
        # already buffered. So the partition takes nothing until `_apply_resyncs` has seeked it.
        self._resync.add(tp)
        self._ready.discard(tp)
        self._seek_epoch[tp] = self._seek_epoch.get(tp, 0) + 1

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        # Kafka may come up after the recorder (a cluster starting, a broker restarting): wait
        # for it like for the stores, instead of exiting into a crash loop.
        for sink in self.sinks:
            await sink.start()
        await self._when_kafka_answers("kafka_connect", lambda: self.dlq.start(list(self.topics)))
        for source in self.sources:
            listener = _Listener(self, source)
            await self._when_kafka_answers("kafka_join", partial(source.start, listener))
        self.health.last_fetch = time.monotonic()  # the wait for Kafka is not a stalled fetch
        self.health.started = True
        self._tasks = [
            asyncio.create_task(self._consume(s), name=f"consume-{s.index}") for s in self.sources
        ]
        self._tasks.append(asyncio.create_task(self._watch_health(), name="health"))
        if self.db is not None:
            self._tasks.append(asyncio.create_task(self._maintain_partitions(), name="partitions"))
        for task in self._tasks:
            supervise.on_failure(task, self._fail)
        log.info(
            "recorder_started",
            topics=list(self.topics),
            sinks=[s.name for s in self.sinks],
            consumers=len(self.sources),
        )

    async def _when_kafka_answers(self, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
        await retry_forever(what, attempt, is_kafka_retriable, self.settings.RETRY_MAX_BACKOFF_SEC)

    async def run(self) -> None:
        """Run until `stop()`; then flush and commit everything within the deadline."""
        await self.start()
        await self._stopping.wait()
        await self.shutdown()

    def stop(self) -> None:
        self.health.stopping = True
        self._stopping.set()

    def _fail(self, reason: str) -> None:
        if self.health.failed is None:
            log.error("recorder_failed", reason=reason)
            self.health.failed = reason
        self.stop()

    async def shutdown(self) -> None:
        started = time.monotonic()
        relief = [t for t in (self._relief, self._held_retry) if t is not None]
        for task in [*self._tasks, *relief]:
            task.cancel()
        await asyncio.gather(*self._tasks, *relief, return_exceptions=True)
        try:
            async with asyncio.timeout(self.settings.SHUTDOWN_TIMEOUT_SEC):
                await asyncio.gather(*(sink.flush_all() for sink in self.sinks))
            flushed = True
        except TimeoutError:
            flushed = False
            log.error(
                "shutdown_deadline_exceeded",
                seconds=self.settings.SHUTDOWN_TIMEOUT_SEC,
                buffered={s.name: s.buffered() for s in self.sinks},
            )
        for source in self.sources:
            await source.commit(self._take_commits())
        for source in self.sources:
            try:
                await source.stop()
            except Exception as exc:  # leaving the group is best effort
                log.warning("consumer_stop_failed", error=str(exc))
        for sink in self.sinks:
            await sink.close()
        await self.dlq.close()
        log.info("recorder_stopped", flushed=flushed, seconds=round(time.monotonic() - started, 3))

    # --- rebalancing --------------------------------------------------------------------
    async def on_revoked(self, source: KafkaSource, tps: set[TP]) -> None:
        """DESIGN rule 3: finish (or abandon) the revoked partitions' work before giving them up."""
        if not tps:
            return
        self._ready.difference_update(tps)
        started = time.monotonic()
        try:
            async with asyncio.timeout(REVOKE_DEADLINE_SEC):
                await asyncio.gather(*(sink.flush_all(tps) for sink in self.sinks))
        except TimeoutError:
            log.warning("revoke_abandoned", partitions=len(tps))
            for sink in self.sinks:
                await sink.abandon(tps)
        await source.commit({tp: off for tp, off in self._pending_commit.items() if tp in tps})
        for tp in tps:
            self._pending_commit.pop(tp, None)
            self._resync.discard(tp)
        for sink in self.sinks:
            sink.revoke(tps)
        for tp in tps:
            self._halted_at.pop(tp, None)
            if self._held.pop(tp, None) is not None:
                metrics.PARTITION_HALTED.labels(tp.topic, str(tp.partition)).set(0)
            for sink in self.sinks:  # no stale per-partition series for partitions gone
                with contextlib.suppress(KeyError):
                    metrics.PARTITION_LAG.remove(tp.topic, str(tp.partition), sink.name)
        metrics.ASSIGNED_PARTITIONS.dec(len(tps))
        log.info("partitions_revoked", count=len(tps), seconds=round(time.monotonic() - started, 3))

    async def on_assigned(self, source: KafkaSource, tps: set[TP]) -> None:
        self.health.assigned_once = True
        if not tps:
            return
        metrics.ASSIGNED_PARTITIONS.inc(len(tps))
        try:
            await self._take_over(source, tps)
        except Exception as exc:
            # aiokafka swallows what a rebalance callback raises, which would leave these
            # partitions assigned but never read while /health said OK. Hold them instead
            # (paused, unready, counted) and retry in the background with backoff.
            reason = f"{type(exc).__name__}: {exc}"
            metrics.STORE_ERRORS.labels("pipeline", "assign").inc()
            log.error("assignment_failed", partitions=len(tps), error=reason)
            for tp in tps:
                self._hold(source, tp, f"cannot load progress: {reason}")
            self._retry_held_soon()

    async def _take_over(self, source: KafkaSource, tps: set[TP]) -> None:
        """Seek newly assigned partitions to the smallest position any sink needs (DESIGN):
        each sink's stored progress, or for a sink with none the reset policy's start, which
        that sink then stores. A partition whose progress lies past its log end halts."""
        progress = {sink.name: await sink.load_progress(tps) for sink in self.sinks}
        ends = await source.end_offsets(tps)
        halted: set[TP] = set()
        for tp in tps:
            values = tuple(p[tp] for p in progress.values())
            earlier = self._halted_at.get(tp)
            if earlier is not None and earlier[0] == values:
                # Sticky: a recreated log may outgrow the old progress, but resuming there would
                # still skip its first records. Only a changed progress (reset-progress) frees it.
                halted.add(tp)
                self._halt(source, tp, earlier[1], earlier[2])
                continue
            self._halted_at.pop(tp, None)
            beyond = beyond_log_end(values, ends.get(tp))
            if beyond is not None:
                halted.add(tp)
                self._halted_at[tp] = (values, beyond, ends[tp])
                self._halt(source, tp, beyond, ends[tp])
        live = tps - halted
        unknown = unknown_progress(progress, live)
        if unknown:
            starts = await source.reset_positions(unknown)
            for sink in self.sinks:
                missing = {tp: starts[tp] for tp in unknown if progress[sink.name][tp] is None}
                if missing:
                    progress[sink.name].update(await sink.store_start(missing))
        positions = {tp: seek_position(p[tp] for p in progress.values()) for tp in live}
        live &= source.assignment()  # a retry outside the callback may race a revocation
        # No await from here to the last seek: aiokafka keeps fetching while this callback runs,
        # and a fetch landing between a buffer's creation and its partition's seek would leave
        # a gap that the re-fetch from the seek position then skips as already buffered.
        for sink in self.sinks:
            sink.assign({tp: progress[sink.name][tp] for tp in live}, {})
        for tp in sorted(live):
            position = positions.get(tp)
            if position is not None:
                source.seek(tp, position)
            self._seek_epoch[tp] = self._seek_epoch.get(tp, 0) + 1
            self._release(source, tp)
        self._ready.update(live)
        log.info(
            "partitions_assigned",
            count=len(live),
            halted=len(halted),
            progress={
                f"{tp.topic}[{tp.partition}]": {n: p[tp] for n, p in progress.items()}
                for tp in sorted(live)
            },
        )

    # --- held partitions (halted past the log end, or waiting for their progress) -----------
    def _hold(self, source: KafkaSource, tp: TP, reason: str) -> None:
        self._held[tp] = reason
        self._ready.discard(tp)
        source.pause([tp])

    def _release(self, source: KafkaSource, tp: TP) -> None:
        if self._held.pop(tp, None) is not None:
            metrics.PARTITION_HALTED.labels(tp.topic, str(tp.partition)).set(0)
            log.info("partition_released", topic=tp.topic, partition=tp.partition)
            if not self._paused.get(source.index, False):
                source.resume([tp])

    def _halt(self, source: KafkaSource, tp: TP, progress: int, log_end: int) -> None:
        reason = (
            f"{tp.topic}[{tp.partition}] progress {progress} is beyond the log end {log_end} "
            "(topic deleted and recreated, or an unclean leader election): halted; resolve with "
            f"`datarecorder reset-progress --topic {tp.topic} --partition {tp.partition} "
            "--to earliest --apply`"
        )
        if self._held.get(tp) != reason:
            log.error(
                "partition_halted",
                topic=tp.topic,
                partition=tp.partition,
                progress=progress,
                log_end=log_end,
                reason=reason,
            )
        metrics.PARTITION_HALTED.labels(tp.topic, str(tp.partition)).set(1)
        self._hold(source, tp, reason)
        self._retry_held_soon()

    async def _halt_running(self, source: KafkaSource, tp: TP, log_end: int) -> None:
        """The log of an assigned partition now ends before our progress: stop taking it."""
        values = tuple(s.progress().get(tp) for s in self.sinks)
        progress = max(v for v in values if v is not None)
        self._halted_at[tp] = (values, progress, log_end)
        self._halt(source, tp, progress, log_end)
        for sink in self.sinks:
            await sink.abandon([tp])
            sink.revoke([tp])
        self._pending_commit.pop(tp, None)
        self._retry_held_soon()

    def _retry_held_soon(self) -> None:
        if self._held_retry is None or self._held_retry.done():
            self._held_retry = asyncio.create_task(self._retry_held(), name="retry-held")

    async def _retry_held(self) -> None:
        """Take held partitions over again until each loads its progress and lies within its
        log: a store that comes back, or an operator's `reset-progress`, releases them."""
        wait = HELD_RETRY_MIN_SEC
        while self._held:
            await asyncio.sleep(wait)
            for source in self.sources:
                owned = source.assignment()
                for tp in [tp for tp in self._held if tp not in owned]:
                    self._held.pop(tp, None)  # revoked meanwhile: its next owner decides
                mine = {tp for tp in self._held if tp in owned}
                if not mine:
                    continue
                try:
                    await self._take_over(source, mine)
                except Exception as exc:
                    log.warning(
                        "held_partitions_retry_failed", error=f"{type(exc).__name__}: {exc}"
                    )
            wait = min(HELD_RETRY_MAX_SEC, wait * 2)

    def problems(self) -> dict[str, str]:
        """What keeps this pod from being ready, by part (the readiness endpoint shows it)."""
        out: dict[str, str] = {}
        if self._held:
            out["partitions"] = "; ".join(sorted(self._held.values()))
        dead_letters_ok, why = self.dead_letter_part()
        if not dead_letters_ok:
            out["dead_letters"] = why
        for sink in self.sinks:
            error = getattr(sink, "error", None)
            if error:
                out[sink.name] = error
        return out

    # --- consuming ----------------------------------------------------------------------
    def _buffered_bytes(self) -> int:
        # Both sinks hold the same row objects: memory follows the larger of the two.
        return max(sink.buffered_bytes() for sink in self.sinks)

    def _full(self) -> bool:
        return backpressure.is_full(
            max(sink.buffered() for sink in self.sinks),
            self._buffered_bytes(),
            self.settings.MAX_BUFFER_SIZE,
            self.max_buffer_bytes,
        )

    def _fetch_limit(self, full: bool) -> int:
        """Records the next fetch may bring: what the bytes left can hold at the recent row
        size, so a fetch of large order books does not overshoot the limit by much."""
        if full:
            return self.settings.FETCH_MAX_RECORDS
        room = max(0, self.max_buffer_bytes - self._buffered_bytes())
        return backpressure.fetch_limit(self.settings.FETCH_MAX_RECORDS, room, self._row_bytes)

    async def _consume(self, source: KafkaSource) -> None:
        last_commit = 0.0
        try:
            while True:
                await self._apply_resyncs(source)
                full = self._full()
                if full:
                    # Every round, not only on the change: partitions assigned by a rebalance
                    # while paused start unpaused.
                    source.pause(source.assignment())
                self._hold_refused(source, full)
                if full != self._paused.get(source.index, False):
                    owned = source.assignment()
                    if full:
                        source.pause(owned)
                    else:
                        held = self._held.keys() | self._dlq_held.get(source.index, set())
                        source.resume(owned - held)
                    self._paused[source.index] = full
                    metrics.CONSUMER_PAUSED.set(1 if any(self._paused.values()) else 0)
                    log.info(
                        "consumer_paused" if full else "consumer_resumed",
                        buffered={s.name: s.buffered() for s in self.sinks},
                        buffered_bytes={s.name: s.buffered_bytes() for s in self.sinks},
                    )
                    self._relieve(full)
                # getmany also keeps the group membership alive while paused. Its records always
                # continue from the partition's current position: aiokafka drops fetched data
                # whose offset no longer matches it (a seek in a rebalance callback or a resync)
                # and data of partitions no longer assigned, and the returned records move the
                # position on. So a batch that arrives after a rebalance must be kept: dropping
                # it would skip its offsets for good (the next fetch starts after them).
                data = await source.fetch(100 if full else 250, self._fetch_limit(full))
                self.health.last_fetch = time.monotonic()
                if data:
                    epochs = {tp: self._seek_epoch.get(tp, 0) for tp in data}
                    await self._handle(source, data, epochs)
                now = time.monotonic()
                if self._pending_commit and now - last_commit >= COMMIT_INTERVAL_SEC:
                    await source.commit(self._take_commits(source.assignment()))
                    last_commit = now
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.health.consumer_error = f"{type(exc).__name__}: {exc}"
            log.exception("consumer_failed")
            self.stop()

    def _hold_refused(self, source: KafkaSource, full: bool) -> None:
        """Keep partitions whose dead letters were refused paused until their backoff ends;
        then they fetch again from their stored progress and the send is retried."""
        owned = source.assignment()
        for tp in list(self._dlq_blocked):
            if not any(tp in s.assignment() for s in self.sources):
                del self._dlq_blocked[tp]  # revoked: its new owner sends the dead letters
        metrics.DEAD_LETTER_BLOCKED.set(len(self._dlq_blocked))
        holding = backpressure.held(self._dlq_blocked, owned, time.monotonic())
        before = self._dlq_held.get(source.index, set())
        if holding == before:
            return
        self._dlq_held[source.index] = holding
        if holding:
            source.pause(holding)
        if not full and before - holding:
            source.resume((before - holding) & owned - self._held.keys())

    def dead_letter_part(self) -> tuple[bool, str]:
        """Readiness part "dead_letters": not ready while a partition waits for its dead
        letters to be accepted (the reason is the cluster's refusal)."""
        if not self._dlq_blocked:
            return True, ""
        tps = sorted(self._dlq_blocked)
        names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps[:5])
        more = f" and {len(tps) - 5} more" if len(tps) > 5 else ""
        reason = self._dlq_blocked[tps[0]].reason
        return False, f"{len(tps)} partition(s) paused ({names}{more}): {reason}"

    def _relieve(self, full: bool) -> None:
        """Full buffers flush now instead of at their size or age trigger, and stop doing so on
        resume. Without this a backlog stalls: S3_BATCH_SIZE rows for every partition can be
        more than MAX_BUFFER_SIZE in all (10,000 x 24 > 100,000 by default), so the paused
        consumer waited for S3_BATCH_TIMEOUT_SEC (60 s) before the lake flushed anything."""
        if self._relief is not None and not self._relief.done():
            if not full:
                self._relief.cancel()  # flushes already started finish in their sinks' tasks
            return
        if full:

            async def flush_everything() -> None:
                await asyncio.gather(*(sink.flush_all() for sink in self.sinks))

            self._relief = asyncio.create_task(flush_everything(), name="relieve-buffers")

    def _take_commits(self, owned: Collection[TP] | None = None) -> dict[TP, int]:
        if owned is None:
            taken, self._pending_commit = self._pending_commit, {}
            return taken
        taken = {tp: off for tp, off in self._pending_commit.items() if tp in owned}
        for tp in taken:
            del self._pending_commit[tp]
        return taken

    async def _apply_resyncs(self, source: KafkaSource) -> None:
        """A sink dropped a buffer (fenced or failed): feed it again from the stored progress."""
        if not self._resync:
            return
        owned = source.assignment()
        for tp in [tp for tp in self._resync if tp in owned]:
            self._resync.discard(tp)
            if tp in self._held:
                continue  # halted or waiting for its progress: taken over as a whole later
            position = seek_position(sink.progress().get(tp) for sink in self.sinks)
            log.info("partition_resync", topic=tp.topic, partition=tp.partition, position=position)
            if position is None:
                position = (await source.reset_positions([tp]))[tp]
            if tp in self._resync or tp not in source.assignment():
                continue  # failed again, or revoked, while the position was looked up
            source.seek(tp, position)
            self._seek_epoch[tp] = self._seek_epoch.get(tp, 0) + 1
            self._ready.add(tp)

    async def _handle(
        self, source: KafkaSource, data: dict[TP, list[Any]], epochs: dict[TP, int]
    ) -> None:
        limits = self._limits
        decoded: list[tuple[TP, pa.Table, int, int]] = []
        dead: list[DeadLetter] = []
        for tp, messages in data.items():
            if not messages or tp not in self._ready or self._seek_epoch.get(tp, 0) != epochs[tp]:
                continue
            log_end = source.highwater(tp)
            if beyond_log_end((s.progress().get(tp) for s in self.sinks), log_end) is not None:
                assert log_end is not None
                await self._halt_running(source, tp, log_end)
                continue
            offsets = [m.offset for m in messages]
            columns, rejected = decode_batch(
                self.topics[tp.topic],
                [m.value for m in messages],
                offsets,
                [m.timestamp for m in messages],
                limits,
            )
            for i, exc in rejected:
                m = messages[i]
                dead.append(
                    DeadLetter(
                        tp.topic, tp.partition, m.offset, m.key, m.value, exc.reason, str(exc)
                    )
                )
            self._average_bytes(columns)
            decoded.append((tp, columns, messages[-1].offset + 1, len(messages)))
        # One acknowledged send for the whole fetch (not one round trip per partition), and
        # before any sink may record progress past a dead record.
        refused = await self._dead_letter(dead) if dead else set()
        for tp, columns, end, fetched in decoded:
            if tp in refused:
                continue  # not offered: fetched again from stored progress after the backoff
            if self._seek_epoch.get(tp, 0) != epochs[tp]:
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
        # A dead letter below every sink's progress was sent before that progress was recorded.
        floors: dict[TP, int] = {}
        for tp in {TP(d.topic, d.partition) for d in dead}:
            recorded = [sink.progress().get(tp) for sink in self.sinks]
            floors[tp] = max((p for p in recorded if p is not None), default=-1)
        fresh = [d for d in dead if d.offset >= floors[TP(d.topic, d.partition)]]
        try:
            await self.dlq.send_many(fresh)
        except DeadLetterRefused as exc:
            return self._refused(exc)
        for tp in {TP(d.topic, d.partition) for d in fresh}:
            if self._dlq_blocked.pop(tp, None) is not None:
                log.info("dead_letters_accepted", topic=tp.topic, partition=tp.partition)
        return set()

    def _refused(self, exc: DeadLetterRefused) -> set[TP]:
        """The cluster refused these partitions' dead letters: none of their records of this
        fetch may be offered (progress must not pass an unsent dead letter), so they are fed
        again from stored progress, after a backoff during which they stay paused."""
        now = time.monotonic()
        tps = {TP(t, p) for t, p in exc.partitions}
        for tp in tps:
            self._dlq_blocked[tp] = backpressure.block(
                self._dlq_blocked.get(tp), now, exc.reason, self.settings.RETRY_MAX_BACKOFF_SEC
            )
            self._on_resync(tp)  # not ready, fetched again from the stored progress
        metrics.DEAD_LETTER_BLOCKED.set(len(self._dlq_blocked))
        return tps

    # --- background ---------------------------------------------------------------------
    async def _watch_health(self) -> None:
        while True:
            for sink in self.sinks:
                reason = sink.failure()
                if reason is not None:
                    self._fail(f"{sink.name} {reason}")
                await sink.check_health()
            for name in ("consumer",):
                metrics.SINK_HEALTHY.labels(name).set(1 if self.health.consumer_ok() else 0)
            self._update_lag()
            total = {s.name: s.buffered() for s in self.sinks}
            for name, value in total.items():
                metrics.BUFFER_RECORDS.labels(name).set(value)
            for sink in self.sinks:
                metrics.BUFFER_BYTES.labels(sink.name).set(sink.buffered_bytes())
            await asyncio.sleep(2)

    def _update_lag(self) -> None:
        for sink in self.sinks:
            total = 0
            progress = sink.progress()
            for source in self.sources:
                for tp in source.assignment():
                    lag = partition_lag(source.highwater(tp), progress.get(tp))
                    metrics.PARTITION_LAG.labels(tp.topic, str(tp.partition), sink.name).set(lag)
                    total += lag
            metrics.LAG.labels(sink.name).set(total)

    async def _maintain_partitions(self) -> None:
        assert self.db is not None
        while True:
            try:
                await self.db.ensure_days_ahead()
            except Exception as exc:
                log.warning("partition_maintenance_failed", error=str(exc))
            await asyncio.sleep(3600)
