"""The cold path: Parquet files in a hive-partitioned lake (S3 or a local directory).

Owns per-partition file batches: a timer flushes them at S3_BATCH_SIZE rows or
S3_BATCH_TIMEOUT_SEC; keys come from topic, partition and first offset per hour, so a replay
overwrites; a partition's next upload starts only after the previous one's progress is recorded.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import structlog

from recorder import metrics, supervise
from recorder.batching import Batch, PartitionBuffer, is_due, split_by_hour
from recorder.offsets import TP, CasOutcome, cas_outcome
from recorder.records import OrderBookRow, Row, TickRow
from recorder.settings import Settings, TopicKind
from recorder.sinks.base import ProgressCallback, ResyncCallback, SinkHealth, retry_forever
from recorder.sinks.lake import Lake, StoredProgress, is_retriable
from recorder.sinks.parquet import object_key, progress_key, write_parquet

log = structlog.get_logger("recorder.sinks.s3")

SINK = "s3"


class S3Sink(SinkHealth):
    name = SINK

    def __init__(
        self,
        settings: Settings,
        topics: Mapping[str, TopicKind],
        lake: Lake,
        on_progress: ProgressCallback,
        on_resync: ResyncCallback,
    ) -> None:
        self._settings = settings
        self._topics = dict(topics)
        self._lake = lake
        self._on_progress = on_progress
        self._on_resync = on_resync
        self._buffers: dict[TP, PartitionBuffer[Row]] = {}
        self._stored: dict[TP, StoredProgress] = {}
        self._in_flight: dict[TP, Batch[Row]] = {}
        self._tasks: dict[TP, asyncio.Task[None]] = {}
        self._force: set[TP] = set()
        self._max_rows = settings.S3_BATCH_SIZE
        self._max_age = settings.S3_BATCH_TIMEOUT_SEC
        self._uploads = asyncio.Semaphore(8)
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._unit: Literal["ns", "us"] = settings.PARQUET_TIMESTAMP_UNIT
        self._levels: Literal["typed", "json"] = settings.PARQUET_ORDERBOOK_LEVELS
        self.healthy = False

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self._lake.start()
        await retry_forever(
            "lake_check",
            self._lake.check,
            is_retriable,
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._failed,
        )
        self._set_healthy(True)
        self._timer = asyncio.create_task(self._run_timer(), name="s3-flush-timer")
        log.info("sink_started", sink=SINK, lake=self._lake.description)

    def failure(self) -> str | None:
        return supervise.failure([self._timer])

    async def close(self) -> None:
        tasks = [t for t in (self._timer, *self._tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._lake.close()

    async def check_health(self) -> bool:
        return await self._probe(self._lake.check)

    # --- partitions ---------------------------------------------------------------------
    async def load_progress(self, tps: Collection[TP]) -> dict[TP, int | None]:
        async def read_all() -> dict[TP, StoredProgress]:
            keys = {
                tp: progress_key(self._settings.S3_PREFIX, tp.topic, tp.partition) for tp in tps
            }
            values = await asyncio.gather(*(self._lake.read_progress(k) for k in keys.values()))
            return dict(zip(keys, values, strict=True))

        stored = await retry_forever(
            "load_progress",
            read_all,
            is_retriable,
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._failed,
        )
        self._stored.update(stored)
        return {tp: s.offset for tp, s in stored.items()}

    def assign(self, progress: Mapping[TP, int | None], first_offsets: Mapping[TP, int]) -> None:
        for tp, value in progress.items():
            self._buffers[tp] = PartitionBuffer(
                Batch(start=value, end=value if value is not None else -1)
            )

    def revoke(self, tps: Collection[TP]) -> None:
        for tp in tps:
            self._buffers.pop(tp, None)
            self._stored.pop(tp, None)

    def progress(self) -> dict[TP, int | None]:
        return {tp: s.offset for tp, s in self._stored.items() if tp in self._buffers}

    def offer(
        self,
        tp: TP,
        offsets: Sequence[int],
        rows: Sequence[Row | None],
        end: int,
        row_bytes: int = 0,
    ) -> None:
        buffer = self._buffers.get(tp)
        if buffer is None:
            return
        buffer.offer(offsets, rows, end, time.monotonic(), row_bytes)
        if len(buffer.batch.rows) >= self._max_rows:
            self._wake.set()

    def buffered(self) -> int:
        return sum(len(b.batch.rows) for b in self._buffers.values()) + sum(
            len(b.rows) for b in self._in_flight.values()
        )

    def buffered_bytes(self) -> int:
        """In-flight batches count until uploaded: their Parquet (no larger than the decoded
        rows) may sit in a spill file under /tmp, so this bounds the spill files too."""
        return sum(b.batch.nbytes for b in self._buffers.values()) + sum(
            b.nbytes for b in self._in_flight.values()
        )

    async def flush_all(self, tps: Collection[TP] | None = None) -> None:
        wanted = set(self._buffers if tps is None else tps)
        while True:
            pending = [
                tp
                for tp in wanted
                if (tp in self._buffers and self._buffers[tp].batch.advanced)
                or tp in self._in_flight
            ]
            if not pending:
                return
            self._force.update(pending)
            self._wake.set()
            await asyncio.sleep(0.01)

    async def abandon(self, tps: Collection[TP]) -> None:
        tasks = [self._tasks[tp] for tp in tps if tp in self._tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- writing ------------------------------------------------------------------------
    async def _run_timer(self) -> None:
        """Flush due partitions, including ones that receive nothing new (a timer, not arrival)."""
        while True:
            now = time.monotonic()
            for tp, buffer in list(self._buffers.items()):
                if tp in self._in_flight:
                    continue  # rule 2: one unrecorded file set per partition
                forced = tp in self._force and buffer.batch.advanced
                if forced or is_due(buffer.batch, now, self._max_rows, self._max_age):
                    batch = buffer.take()
                    self._in_flight[tp] = batch
                    self._tasks[tp] = asyncio.create_task(self._flush(tp, batch), name=f"s3-{tp}")
            self._wake.clear()
            try:
                async with asyncio.timeout(min(0.2, self._max_age)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _flush(self, tp: TP, batch: Batch[Row]) -> None:
        try:
            async with self._uploads:
                await self._flush_batch(tp, batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("flush_failed", sink=SINK, topic=tp.topic, partition=tp.partition)
            self._resync(tp)
        finally:
            self._in_flight.pop(tp, None)
            self._tasks.pop(tp, None)
            self._force.discard(tp)

    async def _flush_batch(self, tp: TP, batch: Batch[Row]) -> None:
        started = time.perf_counter()
        kind = self._topics.get(tp.topic, TopicKind.TICK)
        files = await asyncio.to_thread(self._encode, tp, kind, batch)
        nbytes = sum(size for _, _, size in files)
        try:
            for key, body, size in files:
                await retry_forever(
                    "upload",
                    lambda key=key, body=body, size=size: self._lake.put_file(key, body, size),  # type: ignore[misc]
                    is_retriable,
                    self._settings.RETRY_MAX_BACKOFF_SEC,
                    self._on_retry,
                )
        finally:
            for _, body, _ in files:
                body.close()
        outcome = await retry_forever(
            "progress",
            lambda: self._record_progress(tp, batch),
            is_retriable,
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._on_retry,
        )
        self._set_healthy(True)
        elapsed = time.perf_counter() - started
        metrics.FLUSH_DURATION.labels(SINK).observe(elapsed)
        if outcome is CasOutcome.FENCED:
            metrics.FLUSHES.labels(SINK, "fenced").inc()
            log.warning(
                "batch_fenced",
                sink=SINK,
                topic=tp.topic,
                partition=tp.partition,
                expected=batch.start,
                dropped_rows=len(batch),
            )
            self._resync(tp)
            return
        metrics.FLUSHES.labels(SINK, "ok").inc()
        metrics.LAST_FLUSH.labels(SINK).set(time.time())
        if outcome is CasOutcome.APPLIED:
            metrics.RECORDS_WRITTEN.labels(tp.topic, SINK).inc(len(batch))
            metrics.S3_BYTES_UPLOADED.labels(tp.topic).inc(nbytes)
        self._on_progress(tp, batch.end)
        log.info(
            "flush",
            sink=SINK,
            topic=tp.topic,
            partition=tp.partition,
            rows=len(batch),
            files=len(files),
            bytes=nbytes,
            seconds=round(elapsed, 4),
        )

    def _on_retry(self, _exc: BaseException) -> None:
        self._set_healthy(False)
        metrics.FLUSHES.labels(SINK, "retry").inc()

    def _encode(
        self, tp: TP, kind: TopicKind, batch: Batch[Row]
    ) -> list[tuple[str, tempfile.SpooledTemporaryFile[bytes], int]]:
        """One Parquet file per UTC event hour, spilled to disk above the part size."""
        rows = batch.rows
        groups = split_by_hour([r.time_ns for r in rows], batch.offsets)
        out = []
        spill = self._settings.S3_PART_SIZE_MB * 1024 * 1024
        for hour, (first_offset, indexes) in sorted(groups.items()):
            part: list[TickRow] | list[OrderBookRow] = [rows[i] for i in indexes]  # type: ignore[assignment]
            # Closed by _flush_batch after the upload.
            body: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
                max_size=spill
            )
            write_parquet(
                body, kind, part, self._unit, self._levels, self._settings.PARQUET_ROW_GROUP_SIZE
            )
            size = body.tell()
            key = object_key(
                self._settings.S3_PREFIX, kind, hour, tp.topic, tp.partition, first_offset
            )
            out.append((key, body, size))
        return out

    async def _record_progress(self, tp: TP, batch: Batch[Row]) -> CasOutcome:
        key = progress_key(self._settings.S3_PREFIX, tp.topic, tp.partition)
        expected = self._stored.get(tp, StoredProgress(batch.start, None))
        if expected.offset != batch.start:
            # Our cached view already disagrees with the batch (a resync raced it): re-read.
            expected = await self._lake.read_progress(key)
            if cas_outcome(expected.offset, batch.start, batch.end) is not CasOutcome.APPLIED:
                self._stored[tp] = expected
                return cas_outcome(expected.offset, batch.start, batch.end)
        token = await self._lake.write_progress(key, expected, batch.end)
        if token is not None:
            if tp in self._buffers:
                self._stored[tp] = StoredProgress(batch.end, token)
            return CasOutcome.APPLIED
        current = await self._lake.read_progress(key)
        outcome = cas_outcome(current.offset, batch.start, batch.end)
        if outcome is CasOutcome.APPLIED:
            outcome = CasOutcome.FENCED  # the write failed, so it was not ours
        if tp in self._buffers:
            self._stored[tp] = current
        return outcome

    def _resync(self, tp: TP) -> None:
        """Forget what is buffered for `tp`; the pipeline re-seeks it to the stored progress."""
        buffer = self._buffers.get(tp)
        if buffer is None:
            return
        stored = self._stored.get(tp, StoredProgress(None, None))
        buffer.restart(stored.offset, stored.offset if stored.offset is not None else -1)
        self._on_resync(tp)
