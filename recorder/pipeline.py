"""One recorder process: Kafka consumers feeding every enabled sink, exactly once.

Owns the process's life (start-up, the tasks it runs, the stop and the shutdown within its
deadline) and wires the coordinator's jobs (`recorder.coordinator`) to the sinks and sources
that `recorder.app` built, which it knows only by their protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from recorder.coordinator import health
from recorder.coordinator.intake import Intake
from recorder.coordinator.ports import Clock, DeadLetterQueue, Source, SystemClock
from recorder.coordinator.rebalance import Rebalance
from recorder.core.backpressure import BufferLimits
from recorder.core.partitions import PartitionTable
from recorder.core.shutdown import Outcome, budget, exit_code
from recorder.runtime import retry, supervise, telemetry
from recorder.runtime.settings import Settings
from recorder.sinks.base import Sink


class Recorder:
    def __init__(
        self,
        settings: Settings,
        sinks: Sequence[Sink],
        sources: Sequence[Source],
        dead_letters: DeadLetterQueue,
        table: PartitionTable,
        buffer_limits: BufferLimits,
        clock: Clock | None = None,
    ) -> None:
        if not sinks:
            raise ValueError("a recorder needs at least one sink")
        self.settings = settings
        self.health = health.Health(clock or SystemClock())
        self.dlq = dead_letters
        self.sinks: list[Sink] = list(sinks)
        self.sources: list[Source] = list(sources)
        # One state per partition (status, seek epoch, pending commit, every pause reason); the
        # sinks' progress and resync callbacks write to it (see recorder.app).
        self.partitions = table
        table.paused = settings.PAUSED
        self.rebalance = Rebalance(settings, self.sinks, self.sources, table, self.health)
        self.intake = Intake(self.rebalance, dead_letters, buffer_limits, self.stop)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The shutdown: when the stop came (the process's monotonic time, which recorder.cli's
        # hard stop counts too), what the flush and the deadline left.
        self._stop_at: float | None = None
        self._retries: retry.RetryScope | None = None
        self._flushed: bool | None = None
        self._cut: list[str] = []

    async def start(self) -> None:
        # Kafka may come up after the recorder (a cluster starting, a broker restarting): wait
        # for it like for the stores, instead of exiting into a crash loop.
        for sink in self.sinks:
            self.health.step = sink.name
            await sink.start()
        self.health.step = "kafka: connecting"
        topics = list(self.settings.topics())
        backoff = self.settings.RETRY_MAX_BACKOFF_SEC
        await retry.retry_forever("kafka_connect", lambda: self.dlq.start(topics), backoff)
        for source in self.sources:
            self.health.step = "kafka: joining the group"  # and loading progress of what it assigns
            await retry.retry_forever("kafka_join", partial(self.rebalance.join, source), backoff)
        self.health.fetched()  # the wait for Kafka is not a stalled fetch
        self.health.started = True
        self.health.step = "running"
        # What start-up built (modules, classes, clients: ~140,000 objects) lives as long as the
        # process; out of the collector's sight, its full collections walk only the data path's
        # objects (they cost ~0.15 s each on this much, a third of a drain's CPU).
        gc.freeze()
        jobs = {f"consume-{s.index}": self.intake.consume(s) for s in self.sources}
        jobs["health"] = health.watch(self.health, self.sinks, self.sources, self._fail)
        for name, job in jobs.items():
            self._tasks.append(
                supervise.on_failure(asyncio.create_task(job, name=name), self._fail)
            )
        sinks, consumers = [s.name for s in self.sinks], len(self.sources)
        telemetry.emit(telemetry.RECORDER_STARTED, topics=topics, sinks=sinks, consumers=consumers)
        if self.settings.PAUSED:
            telemetry.emit(telemetry.RECORDER_PAUSED, consumers=consumers)

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
        failed = self.health.consumer_error is not None or self.health.failed is not None
        return Outcome(self.health.started, failed, self._flushed, tuple(self._cut))

    def state(self) -> dict[str, Any]:
        """Where the recorder is, for the shutdown's log (recorder.coordinator.health.report)."""
        waiting = self._retries.waiting_for() if self._retries is not None else {}
        return health.report(self.health, waiting, self.sinks, self.partitions)

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
        seconds = round(time.monotonic() - stop_at, 3)
        waiting, step = state["waiting_for"], state["step"]
        telemetry.emit(telemetry.STARTUP_ABANDONED, step=step, waiting_for=waiting, seconds=seconds)

    async def shutdown(self) -> None:
        """Flush what can be flushed in the flush share of the deadline; then commit, leave the
        group and close the stores in the time left. Whatever is still buffered is left to be
        replayed: progress is recorded only by committed writes, and only it is committed."""
        stop_at = self._stop_at if self._stop_at is not None else time.monotonic()
        share, end = budget(self.settings.SHUTDOWN_TIMEOUT_SEC), self.deadline()
        flush_until = stop_at + share.flush
        phase = "running" if self.health.started else "starting"
        helpers = [t for t in (self.intake.relief, self.rebalance.held_retry) if t is not None]
        for task in [*self._tasks, *helpers]:
            task.cancel()
        stopped = asyncio.gather(*self._tasks, *helpers, return_exceptions=True)
        if not await supervise.within("stop_consuming", stopped, flush_until):
            self._cut.append("stop_consuming")
        try:
            async with asyncio.timeout(max(0.0, flush_until - time.monotonic())):
                await asyncio.gather(*(sink.flush_all() for sink in self.sinks))
            self._flushed = True
        except TimeoutError:
            self._flushed = False
            telemetry.emit(
                telemetry.SHUTDOWN_DEADLINE_EXCEEDED,
                seconds=share.flush,
                buffered={s.name: s.buffered() for s in self.sinks},
            )
        left = {s.name: n for s in self.sinks if (n := s.buffered())}
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
        seconds = round(time.monotonic() - stop_at, 3)
        telemetry.emit(
            telemetry.RECORDER_STOPPED,
            phase=phase,
            flushed=self._flushed,
            left=left,
            cut=self._cut,
            exit_code=int(exit_code(self.outcome())),
            seconds=seconds,
        )
