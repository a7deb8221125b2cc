"""One recorder process: Kafka consumers feeding every enabled sink, exactly once.

Owns the coordination of DESIGN.md's data flow: decode and dead-letter, offer to the sinks,
pause on full buffers, seek on assignment, wait on revocation, commit hot-path progress, and
the shutdown sequence. The decisions are pure and live in `recorder.core` (the partition
table, `backpressure.decide`, the commit policy); this module does their I/O. It is built by
`recorder.app` and knows the sinks and sources only by their protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any, Protocol

import pyarrow as pa

from recorder.core import backpressure
from recorder.core.backpressure import Buffered, BufferLimits
from recorder.core.columns import decode_batch, value_bytes
from recorder.core.offsets import (
    TP,
    PositionLost,
    beyond_log_end,
    partition_lag,
    recreated_topic,
    seek_position,
    unknown_progress,
    vanished_progress,
)
from recorder.core.partitions import HaltedAt, PartitionTable, Status
from recorder.core.readiness import Problem, halt_cause, partitions_problem
from recorder.core.records import Limits
from recorder.core.shutdown import Outcome, budget, exit_code
from recorder.kafka.dlq import DeadLetter, DeadLetterRefused
from recorder.kafka.options import REVOKE_DEADLINE_SEC
from recorder.runtime import metrics, retry, supervise, telemetry
from recorder.runtime.retry import retry_forever
from recorder.runtime.settings import Settings, TopicKind
from recorder.sinks.base import NOT_ANSWERING, Sink

COMMIT_INTERVAL_SEC = 0.25
_OFFSET = attrgetter("offset")
_VALUE = attrgetter("value")
_TIMESTAMP = attrgetter("timestamp")
HELD_RETRY_MIN_SEC = 2.0
HELD_RETRY_MAX_SEC = 30.0
# Fetch waits: short while paused (the loop only keeps the membership alive and watches for
# room), longer while reading (more records per round trip).
FETCH_WAIT_PAUSED_MS = 100
FETCH_WAIT_MS = 250
# A consumer that has not returned from a fetch for this long is not "fetching" on /ready.
STALLED_FETCH_SEC = 60
HEALTH_INTERVAL_SEC = 2.0

RebalanceCallback = Callable[[set[TP]], Awaitable[None]]


class Source(Protocol):
    """One consumer-group member, as the coordinator uses it (recorder.kafka.source.KafkaSource)."""

    index: int

    async def start(
        self, on_revoked: RebalanceCallback, on_assigned: RebalanceCallback
    ) -> None: ...
    async def stop(self) -> None: ...
    def assignment(self) -> set[TP]: ...
    async def fetch(self, timeout_ms: int, max_records: int) -> Mapping[TP, list[Any]]: ...
    def fetched_end(self, tp: TP) -> int | None: ...
    def seek(self, tp: TP, offset: int) -> None: ...
    async def reset_positions(self, tps: Collection[TP]) -> dict[TP, int]: ...
    async def log_starts(self, tps: Collection[TP]) -> dict[TP, int]: ...
    async def topic_ids(self, topics: Collection[str]) -> dict[str, str | None]: ...
    def pause(self, tps: Collection[TP]) -> None: ...
    def resume(self, tps: Collection[TP]) -> None: ...
    async def commit(self, offsets: Mapping[TP, int]) -> None: ...
    def highwater(self, tp: TP) -> int | None: ...
    def stable_end(self, tp: TP) -> int | None: ...
    async def end_offsets(self, tps: Collection[TP]) -> dict[TP, int]: ...


class DeadLetterQueue(Protocol):
    """Where invalid records go (recorder.kafka.dlq.DeadLetters): `send_many` is acknowledged or
    raises DeadLetterRefused naming the partitions the cluster refused."""

    async def start(self, topics: Sequence[str]) -> None: ...
    async def send_many(self, letters: Sequence[DeadLetter]) -> None: ...
    async def close(self) -> None: ...


@dataclass
class Health:
    started: bool = False
    stopping: bool = False
    consumer_error: str | None = None
    failed: str | None = None  # a long-running task died: the recorder stops and exits with 1
    last_fetch: float = field(default_factory=time.monotonic)

    def consumer_ok(self) -> bool:
        """Joined the group (not still waiting for Kafka), not failed, and fetching."""
        return (
            self.started
            and self.consumer_error is None
            and time.monotonic() - self.last_fetch < STALLED_FETCH_SEC
        )


class Recorder:
    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Sink],
        sources: Sequence[Source],
        dead_letters: DeadLetterQueue,
        table: PartitionTable,
        buffer_limits: BufferLimits,
    ) -> None:
        if not sinks:
            raise ValueError("a recorder needs at least one sink")
        self.settings = settings
        self.topics: dict[str, TopicKind] = settings.topics()
        self.health = Health()
        self.dlq = dead_letters
        self.sinks: list[Sink] = list(sinks)
        self.sources: list[Source] = list(sources)
        # One state per partition (status, seek epoch, pending commit, hold, dead-letter
        # backoff); the sinks' progress and resync callbacks write to it (see recorder.app).
        self.partitions = table
        self.buffer_limits = buffer_limits
        self._limits = Limits(settings.MAX_MESSAGE_BYTES)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._paused: dict[int, bool] = {}
        self._dlq_held: dict[int, set[TP]] = {}  # per consumer: paused for their dead letters
        # Per partition: the offset after the last dead letter Kafka acknowledged from this
        # process. Kept across revocations: a partition taken over again (a rebalance, a
        # resync) re-reads records whose letters were sent already, and must not send them
        # twice. Forgotten when the partition halts (its log may have been replaced).
        self._letters_sent: dict[TP, int] = {}
        # Per consumer, while its buffers are full: partitions fed on to complete a pending
        # lake range, with the range.
        self._completing: dict[int, dict[TP, tuple[int, int]]] = {}
        self._relief: asyncio.Task[None] | None = None
        self._held_retry: asyncio.Task[None] | None = None
        # The shutdown: when the stop came, where start-up was, what the flush and the deadline
        # left (the exit code follows from these, recorder.core.shutdown).
        self._stop_at: float | None = None
        self._step = "not started"
        self._retries: retry.RetryScope | None = None
        self._flushed: bool | None = None
        self._cut: list[str] = []
        metrics.BUFFER_LIMIT.set(buffer_limits.records)
        metrics.BUFFER_LIMIT_BYTES.set(buffer_limits.nbytes)
        self._row_bytes = 0  # running average of decoded row sizes, to size the next fetch
        # ... and of the fetched values themselves: they are in memory beside their decoded
        # rows until the fetch is handled, so a fetch's room counts both.
        self._raw_bytes = 0

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        # Kafka may come up after the recorder (a cluster starting, a broker restarting): wait
        # for it like for the stores, instead of exiting into a crash loop.
        for sink in self.sinks:
            self._step = sink.name
            await sink.start()
        self._step = "kafka: connecting"
        await self._when_kafka_answers("kafka_connect", lambda: self.dlq.start(list(self.topics)))
        for source in self.sources:
            self._step = "kafka: joining the group"  # and loading progress of what it assigns
            join = partial(
                source.start, partial(self.on_revoked, source), partial(self.on_assigned, source)
            )
            await self._when_kafka_answers("kafka_join", join)
        self.health.last_fetch = time.monotonic()  # the wait for Kafka is not a stalled fetch
        self.health.started = True
        self._step = "running"
        # What start-up built (modules, classes, clients: ~140,000 objects) lives as long as the
        # process; out of the collector's sight, its full collections walk only the data path's
        # objects (they cost ~0.15 s each on this much, a third of a drain's CPU).
        gc.freeze()
        self._tasks = [
            asyncio.create_task(self._consume(s), name=f"consume-{s.index}") for s in self.sources
        ]
        self._tasks.append(asyncio.create_task(self._watch_health(), name="health"))
        for task in self._tasks:
            supervise.on_failure(task, self._fail)
        telemetry.emit(
            telemetry.RECORDER_STARTED,
            topics=list(self.topics),
            sinks=[s.name for s in self.sinks],
            consumers=len(self.sources),
        )
        if self.settings.PAUSED:
            telemetry.emit(telemetry.RECORDER_PAUSED, consumers=len(self.sources))

    async def _when_kafka_answers(self, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
        await retry_forever(what, attempt, self.settings.RETRY_MAX_BACKOFF_SEC)

    async def run(self) -> None:
        """Start, run until `stop()`, then shut down within SHUTDOWN_TIMEOUT_SEC of the stop. A
        stop during start-up abandons it: nothing is buffered before the group is joined."""
        self._retries = retry.enter_scope()  # the tasks started from here on share it
        starting = asyncio.create_task(self.start(), name="start-up")
        stopped = asyncio.create_task(self._stopping.wait(), name="stop-requested")
        try:
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not starting.done():
            await self._abandon_start_up(starting)
        elif not self._stopping.is_set():
            starting.result()  # a start-up that failed by itself raises as before
        await self._stopping.wait()
        await self.shutdown()

    def stop(self) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self.health.stopping = True
        self._stopping.set()

    async def stopping(self) -> None:
        """Return once a stop was asked for (a signal, or a failure)."""
        await self._stopping.wait()

    def _fail(self, reason: str) -> None:
        if self.health.failed is None:
            telemetry.emit(telemetry.RECORDER_FAILED, reason=reason)
            self.health.failed = reason
        self.stop()

    def deadline(self) -> float:
        """The monotonic time by which the process must have ended: SHUTDOWN_TIMEOUT_SEC after
        the stop (from now while none came)."""
        stop_at = self._stop_at if self._stop_at is not None else time.monotonic()
        return stop_at + self.settings.SHUTDOWN_TIMEOUT_SEC

    def outcome(self) -> Outcome:
        """How the run ends, as far as known now (the exit code follows from it)."""
        return Outcome(
            started=self.health.started,
            failed=self.health.consumer_error is not None or self.health.failed is not None,
            flushed=self._flushed,
            cut=tuple(self._cut),
        )

    def state(self) -> dict[str, Any]:
        """Where the recorder is, for the shutdown's log: starting (at which step, waiting for
        which requests) or running (partitions loading their progress, held or halted, sinks
        reporting an outage), and what the buffers hold."""
        started = self.health.started
        step = self._step
        stage = next((getattr(s, "stage", None) for s in self.sinks if s.name == step), None)
        statuses = Counter(self.partitions.status(tp) for tp in self.partitions)
        partitions = {
            "assigning": statuses[Status.ASSIGNED],
            "held": statuses[Status.HELD],
            "halted": statuses[Status.HALTED],
        }
        return {
            "phase": "running" if started else "starting",
            "step": f"{step}: {stage}" if stage else step,
            "waiting_for": self._retries.waiting_for() if self._retries is not None else {},
            "partitions": {k: n for k, n in partitions.items() if n},
            "unhealthy": [s.name for s in self.sinks if started and not s.healthy],
            "buffered": {s.name: s.buffered() for s in self.sinks},
        }

    async def _abandon_start_up(self, starting: asyncio.Task[None]) -> None:
        """Give start-up up at once: every retry waiting for a store or Kafka (in our tasks or in
        aiokafka's, where assignment loads progress) stops, and the start-up task is cancelled."""
        state = self.state()
        if self._retries is not None:
            self._retries.abandon()
        starting.cancel()
        # An exception is start-up giving up by itself meanwhile (Abandoned): as intended.
        with contextlib.suppress(Exception):
            if not await supervise.within("start-up", starting, self.deadline()):
                self._cut.append("start-up")
        stop_at = self._stop_at if self._stop_at is not None else time.monotonic()
        telemetry.emit(
            telemetry.STARTUP_ABANDONED,
            step=state["step"],
            waiting_for=state["waiting_for"],
            seconds=round(time.monotonic() - stop_at, 3),
        )

    async def shutdown(self) -> None:
        """Flush what can be flushed in the flush share of the deadline; then commit, leave the
        group and close the stores in the time left. Whatever is still buffered is left to be
        replayed: progress is recorded only by committed writes, and only it is committed."""
        stop_at = self._stop_at if self._stop_at is not None else time.monotonic()
        share = budget(self.settings.SHUTDOWN_TIMEOUT_SEC)
        end = self.deadline()
        phase = "running" if self.health.started else "starting"
        relief = [t for t in (self._relief, self._held_retry) if t is not None]
        for task in [*self._tasks, *relief]:
            task.cancel()
        stopped = asyncio.gather(*self._tasks, *relief, return_exceptions=True)
        if not await supervise.within("stop_consuming", stopped, stop_at + share.flush):
            self._cut.append("stop_consuming")
        try:
            async with asyncio.timeout(max(0.0, stop_at + share.flush - time.monotonic())):
                await asyncio.gather(*(sink.flush_all() for sink in self.sinks))
            self._flushed = True
        except TimeoutError:
            self._flushed = False
            telemetry.emit(
                telemetry.SHUTDOWN_DEADLINE_EXCEEDED,
                seconds=share.flush,
                buffered={s.name: s.buffered() for s in self.sinks},
            )
        left = {s.name: s.buffered() for s in self.sinks}
        if self._retries is not None:
            self._retries.abandon()  # a retry still waiting (a flush, a rebalance callback) ends
        commits = self.partitions.take_commits()
        for source in self.sources:  # each commits what it owns
            if not await supervise.within("commit", source.commit(commits), end):
                self._cut.append("commit")
        for source in self.sources:
            try:
                if not await supervise.within("leave_group", source.stop(), end):
                    self._cut.append("leave_group")
            except Exception as exc:  # leaving the group is best effort
                telemetry.emit(telemetry.CONSUMER_STOP_FAILED, error=str(exc))
        closing = [(f"close_{s.name}", s.close) for s in self.sinks]
        for step, close in [*closing, ("close_dead_letters", self.dlq.close)]:
            try:
                if not await supervise.within(step, close(), end):
                    self._cut.append(step)
            except Exception as exc:
                telemetry.emit(telemetry.SHUTDOWN_STEP_FAILED, step=step, error=str(exc))
        telemetry.emit(
            telemetry.RECORDER_STOPPED,
            phase=phase,
            flushed=self._flushed,
            left={name: n for name, n in left.items() if n},
            cut=self._cut,
            exit_code=int(exit_code(self.outcome())),
            seconds=round(time.monotonic() - stop_at, 3),
        )

    # --- rebalancing --------------------------------------------------------------------
    async def on_revoked(self, source: Source, tps: set[TP]) -> None:
        """DESIGN rule 3: finish (or abandon) the revoked partitions' work before giving them up."""
        # With NUM_CONSUMERS>1 a late revocation of one member may name partitions a sibling
        # in this process was given meanwhile (before this callback or during its awaits):
        # their state and buffers are the sibling's then, and stay untouched.
        tps = self._still_owned(source, tps)
        if not tps:
            return
        self.partitions.revoking(tps)  # nothing more is offered; what flushes is committed
        started = time.monotonic()
        try:
            async with asyncio.timeout(REVOKE_DEADLINE_SEC):
                await asyncio.gather(*(sink.flush_all(tps) for sink in self.sinks))
        except TimeoutError:
            telemetry.emit(telemetry.REVOKE_ABANDONED, partitions=len(tps))
            for sink in self.sinks:
                await sink.abandon(self._still_owned(source, tps))
        tps = self._still_owned(source, tps)
        await source.commit(self.partitions.take_commits(tps))
        tps = self._still_owned(source, tps)
        for sink in self.sinks:
            sink.revoke(tps)
        for tp in self.partitions.revoke(tps):
            metrics.PARTITION_HALTED.labels(tp.topic, str(tp.partition)).set(0)
        for tp in tps:
            for sink in self.sinks:  # no stale per-partition series for partitions gone
                with contextlib.suppress(KeyError):
                    metrics.PARTITION_LAG.remove(tp.topic, str(tp.partition), sink.name)
        seconds = round(time.monotonic() - started, 3)
        telemetry.emit(telemetry.PARTITIONS_REVOKED, count=len(tps), seconds=seconds)

    def _still_owned(self, source: Source, tps: set[TP]) -> set[TP]:
        """Those of `tps` no sibling member was given since `source` owned them."""
        siblings = set().union(*(s.assignment() for s in self.sources if s is not source))
        return self.partitions.owned_by(tps - siblings, source.index)

    async def on_assigned(self, source: Source, tps: set[TP]) -> None:
        if not tps:
            return
        metrics.ASSIGNED_PARTITIONS.inc(len(tps))
        self.partitions.assign(tps, source.index)
        await self._take_over_or_hold(source, tps)

    async def _take_over_or_hold(self, source: Source, tps: set[TP]) -> None:
        try:
            await self._take_over(source, tps)
        except Exception as exc:
            # aiokafka swallows what a rebalance callback raises, which would leave these
            # partitions assigned but never read while /health said OK. Hold them instead
            # (paused, unready, counted) and retry in the background with backoff.
            reason = f"{type(exc).__name__}: {exc}"
            telemetry.emit(telemetry.ASSIGNMENT_FAILED, partitions=len(tps), error=reason)
            for tp in tps:
                self._hold(source, tp, f"cannot load progress: {reason}")
            self._retry_held_soon()

    async def _take_over(self, source: Source, tps: set[TP]) -> None:
        """Seek newly assigned partitions to the smallest position any sink needs (DESIGN):
        each sink's stored progress, or for a sink with none the reset policy's start, which
        that sink then stores. A partition whose progress lies past its log end halts."""
        progress = {sink.name: await sink.load_progress(tps) for sink in self.sinks}
        topics = {tp.topic for tp in tps}
        current_ids = await source.topic_ids(topics)
        recorded_ids = {sink.name: await sink.load_identity(tps) for sink in self.sinks}
        known = await self._known_partitions(progress, tps)
        ends = await source.end_offsets(tps)
        halted: set[TP] = set()
        for tp in tps:
            values = tuple(p[tp] for p in progress.values())
            earlier = self.partitions.halted_at(tp)
            if earlier is not None and earlier.progress == values:
                # Sticky: a recreated log may outgrow the old progress, but resuming there would
                # still skip its first records. Only a changed progress (reset-progress) frees it.
                halted.add(tp)
                self._halt(source, tp, earlier)
                continue
            self.partitions.clear_halt(tp)
            beyond = beyond_log_end(values, ends.get(tp))
            top = max((v for v in values if v is not None), default=0)
            end = ends.get(tp, 0)
            recreated = recreated_topic(current_ids.get(tp.topic), recorded_ids, tp)
            vanished = vanished_progress(progress, known, tp)
            if beyond is not None:
                self._halt(source, tp, HaltedAt(values, beyond, ends[tp]))
            elif recreated is not None:
                self._halt(source, tp, HaltedAt(values, top, end, recreated=recreated))
            elif vanished is not None:
                self._halt(source, tp, HaltedAt(values, top, end, vanished=vanished))
            else:
                continue
            halted.add(tp)
        live = tps - halted
        unknown = unknown_progress(progress, live)
        if unknown:
            starts = await source.reset_positions(unknown)
            for sink in self.sinks:
                missing = {tp: starts[tp] for tp in unknown if progress[sink.name][tp] is None}
                if missing:
                    progress[sink.name].update(await sink.store_start(missing))
        positions = {tp: seek_position(p[tp] for p in progress.values()) for tp in live}
        starts = await source.log_starts(live)
        for tp in sorted(live):
            position, start = positions[tp], starts.get(tp)
            if position is None or start is None or position >= start:
                continue
            if self.settings.ON_LOG_TRUNCATION == "halt":
                values = tuple(p[tp] for p in progress.values())
                self._halt(source, tp, HaltedAt(values, position, start, truncated=True))
                halted.add(tp)
                live.discard(tp)
            else:
                self._lost(tp, position, start)
                positions[tp] = start
        for sink in self.sinks:  # each store learns the topic ID its progress counts
            learn = {
                tp: topic_id
                for tp in live
                if (topic_id := current_ids.get(tp.topic)) is not None
                and recorded_ids[sink.name].get(tp) is None
                and progress[sink.name][tp] is not None
            }
            if learn:
                await sink.store_identity(learn)
        live &= source.assignment()  # a retry outside the callback may race a revocation
        # No await from here to the last seek: aiokafka keeps fetching while this callback runs,
        # and a fetch landing between a buffer's creation and its partition's seek would leave
        # a gap that the re-fetch from the seek position then skips as already buffered.
        for sink in self.sinks:
            sink.assign({tp: progress[sink.name][tp] for tp in live})
        for tp in sorted(live):
            position = positions.get(tp)
            if position is not None:
                source.seek(tp, position)
            if self.partitions.seeked(tp):
                self._released(source, tp)
        telemetry.emit(
            telemetry.PARTITIONS_ASSIGNED,
            count=len(live),
            halted=len(halted),
            progress={
                f"{tp.topic}[{tp.partition}]": {n: p[tp] for n, p in progress.items()}
                for tp in sorted(live)
            },
        )

    async def _known_partitions(
        self, progress: Mapping[str, Mapping[TP, int | None]], tps: Collection[TP]
    ) -> dict[str, dict[str, set[int]]]:
        """For partitions some sink has progress for and another has none: the partitions each
        sink holds progress for, by topic (asked only then: one listing per topic)."""
        gaps = {tp.topic for tp in tps if len({p[tp] is None for p in progress.values()}) > 1}
        if not gaps:
            return {}
        return {sink.name: await sink.known_partitions(gaps) for sink in self.sinks}

    # --- held partitions (halted past the log end, or waiting for their progress) -----------
    def _hold(self, source: Source, tp: TP, reason: str) -> None:
        self.partitions.hold(tp, reason)
        source.pause([tp])

    def _released(self, source: Source, tp: TP) -> None:
        telemetry.emit(telemetry.PARTITION_RELEASED, topic=tp.topic, partition=tp.partition)
        if not self._paused.get(source.index, False):
            source.resume([tp])

    def _halt(self, source: Source, tp: TP, at: HaltedAt) -> None:
        self._letters_sent.pop(tp, None)
        fix = (
            "stopping this consumer group's recorders (scale to 0), then "
            f"`datarecorder reset-progress --topic {tp.topic} --partition {tp.partition} "
            "--to earliest --apply` (it refuses partitions a running member owns)"
        )
        if at.recreated is not None:
            old, new = at.recreated
            reason = (
                f"{tp.topic}[{tp.partition}] progress {at.beyond} counts the log of topic ID "
                f"{old}, but the topic's ID is now {new}: the topic was deleted and recreated; "
                f"halted; resolve with {fix}"
            )
        elif at.vanished is not None:
            held = {s.name: v for s, v in zip(self.sinks, at.progress, strict=True)}
            fix = fix.replace("--to earliest", "--to <offset>")
            reason = (
                f"{tp.topic}[{tp.partition}] has no progress in {at.vanished} (its progress "
                f"object or row was deleted: a lifecycle rule, by hand) while the stores hold "
                f"{held} and {at.vanished} holds progress for other partitions of the topic: "
                "starting it from the reset policy would record records twice or skip them; "
                f"halted; resolve with {fix}, the offset being where {at.vanished} is complete"
            )
        elif at.truncated:
            reason = (
                f"{tp.topic}[{tp.partition}] progress {at.beyond} is below the log start "
                f"{at.log_end}: records {at.beyond}..{at.log_end - 1} were deleted by retention "
                f"before they were recorded; halted (ON_LOG_TRUNCATION=halt); resolve with {fix}"
            )
        else:
            reason = (
                f"{tp.topic}[{tp.partition}] progress {at.beyond} is beyond the log end "
                f"{at.log_end} (topic deleted and recreated, or an unclean leader election): "
                f"halted; resolve with {fix}"
            )
        if self.partitions.halt(tp, at, reason):
            telemetry.emit(
                telemetry.PARTITION_HALTED,
                topic=tp.topic,
                partition=tp.partition,
                progress=at.beyond,
                log_end=at.log_end,
                reason=reason,
            )
        source.pause([tp])
        self._retry_held_soon()

    async def _halt_running(self, source: Source, tp: TP, log_end: int) -> None:
        """The log of an assigned partition now ends before our progress: stop taking it."""
        values = tuple(s.progress().get(tp) for s in self.sinks)
        progress = max(v for v in values if v is not None)
        self._halt(source, tp, HaltedAt(values, progress, log_end))
        for sink in self.sinks:
            await sink.abandon([tp])
            sink.revoke([tp])
        self.partitions.take_commits({tp})  # progress past the log end is never committed
        self._retry_held_soon()

    def _lost(self, tp: TP, position: int, log_start: int) -> None:
        """Records [position, log_start) left the log before any sink wrote them: loud, counted,
        and the partition goes on at its log start (never at its end)."""
        telemetry.emit(
            telemetry.RECORDS_LOST,
            topic=tp.topic,
            partition=tp.partition,
            first=position,
            end=log_start,
            count=log_start - position,
            reason="retention",
        )

    async def _reposition(self, source: Source, lost: Mapping[TP, int | None]) -> None:
        """The broker refused fetch positions (PositionLost): below the log start goes on at
        the log start (or halts), past the log end halts, no position takes the partition
        over again from the sinks' progress."""
        owned = source.assignment()
        # Held or halted partitions have no position on purpose (paused until their progress
        # loads): the held-partition retry takes them over, not this.
        tps = {tp for tp in lost if tp in owned and not self.partitions.is_held(tp)}
        if not tps:
            return
        starts = await source.log_starts(tps)
        ends = await source.end_offsets(tps)
        for tp in sorted(tps):
            position = lost[tp]
            if position is None or tp not in starts or tp not in ends:
                await self._take_over_or_hold(source, {tp})
            elif position > ends[tp]:
                await self._halt_running(source, tp, ends[tp])
            elif position < starts[tp]:
                if self.settings.ON_LOG_TRUNCATION == "halt":
                    values = tuple(s.progress().get(tp) for s in self.sinks)
                    self._halt(source, tp, HaltedAt(values, position, starts[tp], True))
                else:
                    self._lost(tp, position, starts[tp])
                    source.seek(tp, starts[tp])
            else:
                source.seek(tp, position)  # within the log again (a leader change): retry

    def _retry_held_soon(self) -> None:
        if self.health.stopping:
            return  # the shutdown cancelled the retries; a later owner takes them over
        if self._held_retry is None or self._held_retry.done():
            self._held_retry = asyncio.create_task(self._retry_held(), name="retry-held")

    async def _retry_held(self) -> None:
        """Take held partitions over again until each loads its progress and lies within its
        log: a store that comes back, or an operator's `reset-progress`, releases them."""
        wait = HELD_RETRY_MIN_SEC
        while self.partitions.held():
            await asyncio.sleep(wait)
            owned_anywhere = set().union(*(s.assignment() for s in self.sources))
            gone = [tp for tp in self.partitions.held() if tp not in owned_anywhere]
            self.partitions.revoke(gone)  # revoked meanwhile: its next owner decides
            for source in self.sources:
                mine = {tp for tp in self.partitions.held() if tp in source.assignment()}
                if not mine:
                    continue
                try:
                    await self._take_over(source, mine)
                except Exception as exc:
                    telemetry.emit(
                        telemetry.HELD_PARTITIONS_RETRY_FAILED,
                        error=f"{type(exc).__name__}: {exc}",
                    )
            wait = min(HELD_RETRY_MAX_SEC, wait * 2)

    def problems(self) -> dict[str, Problem]:
        """What keeps this pod from being ready, by part, as codes (the readiness endpoint
        shows them; each raw error is in the log event that reported it)."""
        out: dict[str, Problem] = {}
        held = self.partitions.held()
        if held:
            causes: list[tuple[str, int, str | None]] = []
            for tp in held:
                at = self.partitions.halted_at(tp)
                cause = halt_cause(at) if at is not None else "partition_held"
                causes.append((tp.topic, tp.partition, cause))
            halted = any(cause != "partition_held" for _, _, cause in causes)
            out["partitions"] = partitions_problem(
                "partition_halted" if halted else "partition_held", causes
            )
        blocked = self.partitions.blocked()
        if blocked:
            out["dead_letters"] = partitions_problem(
                "dead_letters_refused", ((tp.topic, tp.partition, None) for tp in blocked)
            )
        completing = {tp for ranges in self._completing.values() for tp in ranges}
        if completing:
            out["buffers"] = partitions_problem(
                "buffers_full_completing_range",
                ((tp.topic, tp.partition, None) for tp in completing),
            )
        for sink in self.sinks:
            health = sink.health()
            if not health.ok:
                code = "store_unreachable" if health.reason == NOT_ANSWERING else "writes_failing"
                out[sink.name] = Problem(code)
        return out

    # --- consuming ----------------------------------------------------------------------
    def _buffered(self) -> Buffered:
        # Both sinks hold the same row objects: memory follows the larger of the two.
        return Buffered(
            max(sink.buffered() for sink in self.sinks),
            max(sink.buffered_bytes() for sink in self.sinks),
        )

    def _fetch_limit(self, full: bool) -> int:
        """Records the next fetch may bring: what the bytes left can hold at the recent row
        size, so a fetch of large order books does not overshoot the limit by much."""
        if full:
            return self.settings.FETCH_MAX_RECORDS
        room = max(0, self.buffer_limits.nbytes - self._buffered().nbytes)
        per_record = self._row_bytes + self._raw_bytes
        return backpressure.fetch_limit(self.settings.FETCH_MAX_RECORDS, room, per_record)

    async def _consume(self, source: Source) -> None:
        last_commit = 0.0
        try:
            while True:
                await self._apply_resyncs(source)
                paused = self._paused.get(source.index, False)
                action = backpressure.decide(self._buffered(), self.buffer_limits, paused)
                full = action.full
                if full:
                    # Every round, not only on the change: partitions assigned by a rebalance
                    # while paused start unpaused.
                    self._pause_all_but_completing(source)
                else:
                    self._completing.pop(source.index, None)
                self._hold_refused(source, full)
                if action.changes:
                    if not full:
                        held = self.partitions.held().keys() | self._dlq_held.get(
                            source.index, set()
                        )
                        source.resume(source.assignment() - held)
                    self._paused[source.index] = full
                    telemetry.emit(
                        telemetry.CONSUMER_PAUSED if full else telemetry.CONSUMER_RESUMED,
                        consumers_paused=sum(self._paused.values()),
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
                if self.settings.PAUSED:
                    # Paused on purpose: every owned partition, every round (a rebalance or a
                    # released hold may have resumed some), never resumed. aiokafka returns no
                    # records of a paused partition; getmany still keeps the membership alive.
                    source.pause(source.assignment())
                    full = True
                wait = FETCH_WAIT_PAUSED_MS if full else FETCH_WAIT_MS
                try:
                    data = await source.fetch(wait, self._fetch_limit(full))
                except PositionLost as lost:
                    await self._reposition(source, lost.positions)
                    continue
                self.health.last_fetch = time.monotonic()
                if data and not self.settings.PAUSED:
                    await self._handle(source, dict(data), self.partitions.epochs(data))
                now = time.monotonic()
                if self.partitions.has_pending() and now - last_commit >= COMMIT_INTERVAL_SEC:
                    await source.commit(self.partitions.take_commits(source.assignment()))
                    last_commit = now
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.health.consumer_error = f"{type(exc).__name__}: {exc}"
            telemetry.emit(telemetry.CONSUMER_FAILED, exc_info=True)
            self.stop()

    def _pause_all_but_completing(self, source: Source) -> None:
        """Pause every partition but those whose pending lake range can only be flushed whole:
        pausing them too would wedge the pod (full buffers that no flush can empty)."""
        owned = source.assignment()
        ranges = {
            tp: span for sink in self.sinks for tp, span in sink.completing().items() if tp in owned
        }
        source.pause(owned - ranges.keys())
        blocked = self.partitions.held().keys() | self._dlq_held.get(source.index, set())
        source.resume(ranges.keys() - blocked)
        before = self._completing.get(source.index, {})
        for tp in sorted(ranges.keys() - before.keys()):
            first, end = ranges[tp]
            telemetry.emit(
                telemetry.RANGE_COMPLETING,
                topic=tp.topic,
                partition=tp.partition,
                first=first,
                end=end,
            )
        self._completing[source.index] = ranges

    def _hold_refused(self, source: Source, full: bool) -> None:
        """Keep partitions whose dead letters were refused paused until their backoff ends;
        then they fetch again from their stored progress and the send is retried."""
        owned = source.assignment()
        for tp in self.partitions.blocked():
            if not any(tp in s.assignment() for s in self.sources):
                self.partitions.unblock(tp)  # revoked: its new owner sends the dead letters
        blocked = self.partitions.blocked()
        metrics.DEAD_LETTER_BLOCKED.set(len(blocked))
        holding = backpressure.held(blocked, owned, time.monotonic())
        before = self._dlq_held.get(source.index, set())
        if holding == before:
            return
        self._dlq_held[source.index] = holding
        if holding:
            source.pause(holding)
        if not full and before - holding:
            source.resume((before - holding) & owned - self.partitions.held().keys())

    def dead_letter_part(self) -> tuple[bool, str]:
        """Readiness part "dead_letters": not ready while a partition waits for its dead
        letters to be accepted (the reason is the cluster's refusal)."""
        blocked = self.partitions.blocked()
        if not blocked:
            return True, ""
        tps = sorted(blocked)
        names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps[:5])
        more = f" and {len(tps) - 5} more" if len(tps) > 5 else ""
        reason = blocked[tps[0]].reason
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

    async def _apply_resyncs(self, source: Source) -> None:
        """A sink dropped a buffer (fenced or failed): feed it again from the stored progress."""
        for tp in self.partitions.resyncs(source.assignment()):
            if not self.partitions.begin_resync(tp):
                continue
            position = seek_position(sink.progress().get(tp) for sink in self.sinks)
            telemetry.emit(
                telemetry.PARTITION_RESYNC,
                topic=tp.topic,
                partition=tp.partition,
                position=position,
            )
            if position is None:
                position = (await source.reset_positions([tp]))[tp]
            if not self.partitions.may_seek(tp) or tp not in source.assignment():
                continue  # failed again, held or revoked while the position was looked up
            source.seek(tp, position)
            self.partitions.seeked(tp)

    async def _handle(
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
                await self._halt_running(source, tp, log_end)
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
        # A dead letter below every sink's progress was sent before that progress was recorded;
        # one below what this process already had acknowledged was sent before a re-read.
        floors: dict[TP, int] = {}
        for tp in {TP(d.topic, d.partition) for d in dead}:
            recorded = [sink.progress().get(tp) for sink in self.sinks]
            floor = max((p for p in recorded if p is not None), default=-1)
            floors[tp] = max(floor, self._letters_sent.get(tp, -1))
        fresh = [d for d in dead if d.offset >= floors[TP(d.topic, d.partition)]]
        try:
            await self.dlq.send_many(fresh)
        except DeadLetterRefused as exc:
            return self._refused(exc)
        for d in fresh:
            tp = TP(d.topic, d.partition)
            self._letters_sent[tp] = max(self._letters_sent.get(tp, -1), d.offset + 1)
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
        now = time.monotonic()
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

    # --- background ---------------------------------------------------------------------
    async def _watch_health(self) -> None:
        while True:
            for sink in self.sinks:
                reason = sink.failure()
                if reason is not None:
                    self._fail(f"{sink.name} {reason}")
                await sink.check_health()
            metrics.SINK_HEALTHY.labels("consumer").set(1 if self.health.consumer_ok() else 0)
            self._update_lag()
            for sink in self.sinks:
                metrics.BUFFER_RECORDS.labels(sink.name).set(sink.buffered())
                metrics.BUFFER_BYTES.labels(sink.name).set(sink.buffered_bytes())
            await asyncio.sleep(HEALTH_INTERVAL_SEC)

    def _update_lag(self) -> None:
        for sink in self.sinks:
            total = 0
            progress = sink.progress()
            for source in self.sources:
                for tp in source.assignment():
                    lag = partition_lag(source.stable_end(tp), progress.get(tp))
                    metrics.PARTITION_LAG.labels(tp.topic, str(tp.partition), sink.name).set(lag)
                    total += lag
            metrics.LAG.labels(sink.name).set(total)
