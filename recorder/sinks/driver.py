"""One buffered sink over a Store: what both stores used to repeat, each in its own way.

Owns the buffers and progress of a sink's partitions, the due/forced scheduling of flushes by
lane (a lane flushes one write at a time: a database writer, a lake partition), in-flight
tracking, `flush_all`, abandon and resync, the backoff after a failed flush, the health model
and the flush accounting (metrics and the `flush` event in one place). A store says only which
lane a partition is in, which range a partition must complete, and how to write batches.
A little over 400 lines: the scheduling, in-flight and accounting rules read best together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import pyarrow as pa

from recorder.core.backoff import Backoff
from recorder.core.batching import Batch, is_due, next_due_in
from recorder.core.offsets import TP
from recorder.runtime import metrics, supervise, telemetry
from recorder.runtime.retry import Abandoned
from recorder.sinks.base import NOT_ANSWERING, Health, ProgressCallback, ResyncCallback
from recorder.sinks.buffer import Buffers

PROBE_TIMEOUT_SEC = 3.0
# The scheduler looks at the buffers at least this often (a range recorded meanwhile, a clock
# that jumped), and never more often than the shortest wait (a batch due right now).
POLL_SEC = 0.2
MIN_WAIT_SEC = 0.005


class Outcome(Enum):
    """What one write did with one partition's batch."""

    WRITTEN = "written"  # made durable by this write
    DONE = "done"  # already durable (another writer, or a retry of a committed write)
    FENCED = "fenced"  # progress moved under the batch: dropped, fed again from `Fence.resume`


@dataclass(frozen=True, slots=True)
class Fence:
    """A fenced batch: where its partition is fed again from, whether it was dropped to adopt a
    range another writer recorded (the lake), and the store's fields of the event."""

    resume: int | None
    fields: dict[str, Any]
    adopts: bool = False


@dataclass(slots=True)
class Written:
    """The result of one write: an outcome per partition, a fence per fenced one, and the
    store's own fields of the `flush` event (files, bytes)."""

    outcomes: dict[TP, Outcome]
    fences: dict[TP, Fence] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)


# A lake's flush that failed with an error retrying does not fix (403, disk full) waits this long
# before its partitions are fed again, doubling per consecutive failure up to the cap.
FAILED_FILE_BACKOFF_SEC = 1.0
FAILED_FILE_BACKOFF_MAX_SEC = 60.0


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a store's batches are flushed, and how long a lane waits after a failed flush."""

    max_rows: int
    max_age: float
    failed: Backoff

    @classmethod
    def of_files(cls, max_rows: int, max_age: float) -> Schedule:
        """The schedule of a store of files (the Parquet lake, the Iceberg tables)."""
        return cls(max_rows, max_age, Backoff(FAILED_FILE_BACKOFF_SEC, FAILED_FILE_BACKOFF_MAX_SEC))


class Store(Protocol):
    """One store's side of a buffered sink."""

    def lane(self, tp: TP) -> Hashable:
        """The lane of `tp`: batches of one lane are written together, one write at a time."""
        ...

    def recorded_end(self, tp: TP, start: int | None) -> int | None:
        """The end of a range recorded for `tp` from `start` that the next write must be
        exactly (None: a batch may end anywhere)."""
        ...

    async def write(self, batches: dict[TP, Batch]) -> Written: ...

    async def probe(self) -> None:
        """The store's cheapest request; raises when the store does not answer."""
        ...


@dataclass(slots=True)
class _Lane:
    task: asyncio.Task[None]
    batches: dict[TP, Batch]


class BufferedSink:
    """The driver half of a `Sink`: a store's sink adds start-up, progress loading and close."""

    name: str

    def __init__(
        self,
        name: str,
        store: Store,
        schedule: Schedule,
        on_progress: ProgressCallback,
        on_resync: ResyncCallback,
    ) -> None:
        self.name = name
        self.healthy = False
        self._store = store
        self._schedule = schedule
        self._on_progress = on_progress
        self._on_resync = on_resync
        self._buffers = Buffers()
        self._progress: dict[TP, int | None] = {}
        self._lanes: dict[Hashable, _Lane] = {}
        self._failures: dict[Hashable, int] = {}
        # Partitions being given up after an abandoned revocation: no new write starts for them
        # between abandon() and revoke().
        self._closing: set[TP] = set()
        self._error: str | None = None  # the last failed flush's error, until a flush works
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------
    def _start_flushing(self) -> None:
        self._set_healthy(True)
        self._scheduler = asyncio.create_task(self._run(), name=f"{self.name}-flush")

    async def _stop_flushing(self) -> None:
        tasks = [t for t in (self._scheduler, *(n.task for n in self._lanes.values())) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def failure(self) -> str | None:
        return supervise.failure([self._scheduler])

    # --- health -------------------------------------------------------------------------
    def health(self) -> Health:
        if self._error is not None:
            return Health(False, f"its writes fail: {self._error}")
        return Health(True) if self.healthy else Health(False, NOT_ANSWERING)

    def _set_healthy(self, ok: bool) -> None:
        self.healthy = ok
        metrics.SINK_HEALTHY.labels(self.name).set(1 if ok else 0)

    def _failed(self, _exc: BaseException) -> None:
        """A request of the sink failed and is retried: unhealthy meanwhile."""
        self._set_healthy(False)

    def _on_retry(self, exc: BaseException) -> None:
        """A write's request failed and is retried."""
        self._failed(exc)
        metrics.FLUSHES.labels(self.name, "retry").inc()

    async def _probe(self, check: Callable[[], Awaitable[object]]) -> bool:
        """Healthy when `check` answers within PROBE_TIMEOUT_SEC."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SEC):
                await check()
            self._set_healthy(True)
        except Exception:
            self._set_healthy(False)
        return self.healthy

    async def check_health(self) -> bool:
        """Probe the store (/health's view between flushes); a failed flush keeps the sink
        unhealthy until one works: answering is not enough while writes are refused."""
        if self._scheduler is None:
            return False
        if self._error is not None:
            self._set_healthy(False)
            return False
        return await self._probe(self._store.probe)

    # --- partitions ---------------------------------------------------------------------
    def assign(self, progress: Mapping[TP, int | None]) -> None:
        for tp in progress:
            self._closing.discard(tp)
        self._progress.update(progress)
        self._buffers.assign(progress)

    def revoke(self, tps: Collection[TP]) -> None:
        for tp in tps:
            self._progress.pop(tp, None)
            self._closing.discard(tp)
        self._buffers.revoke(tps)

    def progress(self) -> dict[TP, int | None]:
        return dict(self._progress)

    def offer(self, tp: TP, columns: pa.Table, end: int) -> None:
        batch = self._buffers.offer(tp, columns, end, time.monotonic())
        if batch is None:
            return
        recorded = self._recorded_end(tp)
        if batch.count >= self._schedule.max_rows or (recorded is not None and end >= recorded):
            self._wake.set()

    def buffered(self) -> int:
        return self._buffers.buffered()

    def buffered_bytes(self) -> int:
        """Estimated decoded bytes of open and in-flight batches (in flight until durable)."""
        return self._buffers.buffered_bytes()

    def _recorded_end(self, tp: TP) -> int | None:
        buffer = self._buffers.get(tp)
        return None if buffer is None else self._store.recorded_end(tp, buffer.batch.start)

    def completing(self) -> dict[TP, tuple[int, int]]:
        out: dict[TP, tuple[int, int]] = {}
        for tp, buffer in self._buffers.items():
            recorded = self._recorded_end(tp)
            start = buffer.batch.start
            if recorded is not None and start is not None and buffer.batch.end < recorded:
                out[tp] = (start, recorded)
        return out

    def _flushable(self, tp: TP) -> bool:
        """Whether the open batch of `tp` can be written now (a recorded range needs all of its
        records; otherwise anything new)."""
        buffer = self._buffers.get(tp)
        if buffer is None or tp in self._closing:
            return False
        recorded = self._recorded_end(tp)
        if recorded is not None:
            return buffer.batch.end >= recorded
        return buffer.batch.advanced

    async def flush_all(self, tps: Collection[TP] | None = None) -> None:
        """Make everything buffered for `tps` (all when None) durable before returning."""

        def pending(tp: TP) -> bool:
            return self._flushable(tp) or tp in self._buffers.in_flight

        await self._buffers.flush(tps, pending, lambda _tps: self._wake.set())

    async def abandon(self, tps: Collection[TP]) -> None:
        """Give up in-flight writes that touch `tps` (a revocation that cannot wait longer).
        Their progress is not recorded, so whoever owns them next replays them; the other
        partitions of the same write are fed again from their progress."""
        wanted = set(tps)
        self._closing.update(wanted)
        self._buffers.changed()  # a flush waiting for these gives them up too
        hit = [lane for lane in self._lanes.values() if wanted & set(lane.batches)]
        for lane in hit:
            lane.task.cancel()
        await asyncio.gather(*(lane.task for lane in hit), return_exceptions=True)
        for lane in hit:
            for tp in lane.batches:
                if tp not in wanted:
                    self._resync(tp, self._progress.get(tp))

    def _resync(self, tp: TP, stored: int | None) -> None:
        """Forget what is buffered for `tp` and have it fed again from `stored` (another
        owner's progress for a fenced batch; ours for a failed or abandoned one)."""
        if tp not in self._buffers:
            return  # revoked meanwhile: its next owner starts from the store
        self._progress[tp] = stored
        self._buffers.restart(tp, stored)
        self._on_resync(tp)

    # --- scheduling ---------------------------------------------------------------------
    def _due(self, now: float) -> dict[Hashable, dict[TP, Batch]]:
        """Pure on the buffers: the batches to take now, by lane. A lane with one batch due
        (full, timed out, forced, or completing its recorded range) takes every flushable
        batch it has; a lane already writing takes nothing (one write at a time)."""
        lanes: dict[Hashable, list[TP]] = {}
        for tp in self._buffers:
            lanes.setdefault(self._store.lane(tp), []).append(tp)
        out: dict[Hashable, dict[TP, Batch]] = {}
        s = self._schedule
        for lane, tps in lanes.items():
            if lane in self._lanes:
                continue
            ready = [tp for tp in tps if self._flushable(tp)]
            if not any(
                self._recorded_end(tp) is not None
                or tp in self._buffers.force
                or is_due(self._buffers.open[tp].batch, now, s.max_rows, s.max_age)
                for tp in ready
            ):
                continue
            taken: dict[TP, Batch] = {}
            for tp in ready:
                buffer = self._buffers.open[tp]
                recorded = self._recorded_end(tp)
                taken[tp] = buffer.take() if recorded is None else buffer.take_until(recorded)
            out[lane] = taken
        return out

    async def _run(self) -> None:
        """Start the due writes, then sleep until a batch may be due or an offer wakes us."""
        while True:
            now = time.monotonic()
            for lane, batches in self._due(now).items():
                for tp, batch in batches.items():
                    self._buffers.flying(tp, batch)
                task = asyncio.create_task(self._flush(lane, batches), name=f"{self.name}-write")
                self._lanes[lane] = _Lane(task, batches)
            idle = (b.batch for tp, b in self._buffers.items() if tp not in self._buffers.in_flight)
            wait = min(next_due_in(idle, now, self._schedule.max_age), POLL_SEC)
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that arrives
            # as the wake-up completes, and close() would wait for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, MIN_WAIT_SEC)):
                    await self._wake.wait()

    async def _flush(self, lane: Hashable, batches: dict[TP, Batch]) -> None:
        try:
            started = time.perf_counter()
            written = await self._store.write(batches)
            self._failures.pop(lane, None)
            self._flushed(batches, written, time.perf_counter() - started)
        except asyncio.CancelledError:
            raise
        except Abandoned:
            return  # the shutdown's deadline: left to be replayed, not a failed flush
        except Exception as exc:
            # Requests that retrying fixes are retried inside the write; this is what it does
            # not fix (a refused privilege, a full disk, a table changed by hand, a bug).
            failures = self._failures.get(lane, 0) + 1
            self._failures[lane] = failures
            wait = self._schedule.failed.delay(failures)
            self._flush_failed(batches, exc, wait)
            # Still in flight while waiting: no re-fetch and rewrite loop against a store that
            # refuses (and rule 2 holds); a revocation or shutdown cancels the wait.
            await asyncio.sleep(wait)
            for tp in batches:
                self._resync(tp, self._progress.get(tp))
        finally:
            self._lanes.pop(lane, None)
            for tp in batches:
                self._buffers.landed(tp)
            self._wake.set()

    # --- accounting ---------------------------------------------------------------------
    def _flushed(self, batches: dict[TP, Batch], written: Written, seconds: float) -> None:
        """One write ended: its metrics, its event, each partition's progress or resync."""
        self._error = None
        self._set_healthy(True)
        metrics.FLUSH_DURATION.labels(self.name).observe(seconds)
        fenced = [tp for tp, o in written.outcomes.items() if o is Outcome.FENCED]
        metrics.FLUSHES.labels(self.name, "fenced" if fenced else "ok").inc()
        for tp, outcome in written.outcomes.items():
            batch = batches[tp]
            if outcome is Outcome.FENCED:
                fence = written.fences[tp]
                telemetry.emit(
                    telemetry.BATCH_ADOPTS_RECORDED_RANGE
                    if fence.adopts
                    else telemetry.BATCH_FENCED,
                    sink=self.name,
                    topic=tp.topic,
                    partition=tp.partition,
                    dropped_rows=len(batch),
                    **fence.fields,
                )
                self._resync(tp, fence.resume)
                continue
            if outcome is Outcome.WRITTEN:
                metrics.RECORDS_WRITTEN.labels(tp.topic, self.name).inc(len(batch))
            if tp in self._progress:
                self._progress[tp] = batch.end
            self._on_progress(tp, batch.end)
        if len(fenced) == len(written.outcomes):
            return  # nothing of it is durable by this write
        metrics.LAST_FLUSH.labels(self.name).set(time.time())
        telemetry.emit(
            telemetry.FLUSH,
            sink=self.name,
            **_where(batches),
            rows=sum(len(b) for b in batches.values()),
            seconds=round(seconds, 4),
            fenced=len(fenced),
            **written.log,
        )

    def _flush_failed(self, batches: dict[TP, Batch], exc: Exception, wait: float) -> None:
        self._error = f"{type(exc).__name__}: {exc}"
        self._set_healthy(False)
        metrics.FLUSHES.labels(self.name, "failed").inc()
        metrics.STORE_ERRORS.labels(self.name, "flush").inc()
        telemetry.emit(
            telemetry.FLUSH_FAILED,
            sink=self.name,
            **_where(batches),
            rows=sum(len(b) for b in batches.values()),
            error=self._error,
            retry_in_seconds=wait,
            exc_info=exc,
        )


def _where(batches: Mapping[TP, Batch]) -> dict[str, Any]:
    """The partition of a one-partition write, or how many partitions a write had."""
    if len(batches) == 1:
        (tp,) = batches
        return {"topic": tp.topic, "partition": tp.partition}
    return {"partitions": len(batches)}
