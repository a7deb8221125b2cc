"""The cold path: Parquet files in a hive-partitioned lake (S3 or a local directory).

Owns per-partition file batches: a timer flushes them at S3_BATCH_SIZE rows or
S3_BATCH_TIMEOUT_SEC; keys come from topic, partition and the first offset per event hour; a
partition's next upload starts only after the previous one's progress is recorded (rule 2).

The lake protocol (DESIGN rule 4: a fenced writer cannot change the lake). An S3 PUT cannot be
fenced: a writer that stalled past its session timeout (a zombie) may wake up and upload after
a new owner moved on. So the protocol makes every upload harmless instead of preventing it.
A partition's progress object is `{next_offset: N}` or `{next_offset: N, flush_end: E}`, each
with a `generation` that every write increments (see `recorder.sinks.lake.store`):

1. *Intent.* Before uploading the batch [N, E) a writer records `flush_end: E` by a
   compare-and-set (If-Match on the ETag it read, If-None-Match for a new object). Only the
   state `{N}` (no range) may take an intent, and the only way out of `{N, E}` is the commit to
   `{E}`; progress never moves back (`reset-progress` refuses to, except from beyond the end of
   a replaced log, and never over a pending range). So for each N at most one E is ever
   recorded.
2. *Upload only a recorded range.* A writer uploads the files of [N, E) only after it saw that
   very range recorded (it wrote it, or read it). A writer whose batch [N, E') finds another
   range [N, E) recorded drops its batch and flushes exactly [N, E) once it holds those
   records ("adopt"), whoever recorded it; one that finds N moved on is fenced and uploads
   nothing.
3. *Commit.* After all files of [N, E) are uploaded, compare-and-set `{N, E}` -> `{E}`.

Why the lake then equals the log: a file's key is (topic, partition, event hour, first offset
of that hour within the range). Recorded ranges of a partition are disjoint and consecutive, so
two different ranges never produce the same key, and every upload under a key comes from the one
range [N, E) recorded for its N: the same Kafka records (the log is immutable), the same rows
(every decision is a function of the record alone), the same encoder settings, hence the same
Parquet bytes. A zombie waking up with a PUT in flight, an abandoned revocation whose PUT lands
later, or a replay after a crash can therefore only rewrite a file with its own contents. And a
commit to E happens only after every file of [N, E) is in the lake, so progress never covers a
missing file. The argument needs the store to honour conditional writes: `start()` checks that
and refuses to run where it does not. Progress objects are scoped by consumer group (see
`recorder.sinks.lake.parquet.progress_key`), and a second group recording one of our topics into the
same prefix is refused at start (it would write every record twice and share our file keys).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Collection, Mapping
from typing import Literal

import pyarrow as pa

from recorder import metrics, supervise, telemetry
from recorder.core.batching import Batch, is_due, split_by_hour
from recorder.core.columns import TICK_SCHEMA
from recorder.core.offsets import TP, IntentOutcome, intent_outcome
from recorder.retry import Abandoned, retry_forever
from recorder.settings import Settings, TopicKind
from recorder.sinks.base import ProgressCallback, ResyncCallback, SinkHealth
from recorder.sinks.buffer import Buffers
from recorder.sinks.lake.parquet import (
    groups_root,
    legacy_progress_key,
    object_key,
    progress_key,
    scratch_prefix,
    write_parquet,
)
from recorder.sinks.lake.store import Lake, StoredProgress

SINK = "s3"
PARALLEL_UPLOADS = 8
# A flush that failed with an error retrying does not fix (403, disk full) waits this long
# before its partition is fed again, doubling per consecutive failure up to the cap.
FAILED_FLUSH_BACKOFF_SEC = 1.0
FAILED_FLUSH_BACKOFF_MAX_SEC = 60.0


class LakeClaimed(RuntimeError):
    """Another consumer group already records one of our topics into this prefix."""


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
        self._group = settings.KAFKA_GROUP_ID
        self._on_progress = on_progress
        self._on_resync = on_resync
        self._buffers = Buffers()
        self._stored: dict[TP, StoredProgress] = {}
        self._tasks: dict[TP, asyncio.Task[None]] = {}
        # Partitions being given up after an abandoned revocation: the timer starts no new
        # upload for them between abandon() and revoke().
        self._closing: set[TP] = set()
        self._failures: dict[TP, int] = {}
        self._max_rows = settings.S3_BATCH_SIZE
        self._max_age = settings.S3_BATCH_TIMEOUT_SEC
        self._uploads = asyncio.Semaphore(PARALLEL_UPLOADS)
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._unit: Literal["ns", "us"] = settings.PARQUET_TIMESTAMP_UNIT
        self._levels: Literal["typed", "json"] = settings.PARQUET_ORDERBOOK_LEVELS
        self.healthy = False
        self.error: str | None = None  # the last error retrying does not fix, until a flush works
        self.stage = "connecting"  # where start-up is (the shutdown log names it)

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        await self._lake.start()
        await retry_forever(
            "lake_check",
            self._lake.check,
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._failed,
        )
        prefix = self._settings.S3_PREFIX
        self.stage = "checking conditional writes"
        await retry_forever(
            "conditional_writes_check",
            lambda: self._lake.check_conditional_writes(scratch_prefix(prefix, self._group)),
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._failed,
        )
        await self._check_unclaimed()
        self._set_healthy(True)
        self.stage = "started"
        self._timer = asyncio.create_task(self._run_timer(), name="s3-flush-timer")
        telemetry.emit(
            telemetry.SINK_STARTED, sink=SINK, lake=self._lake.description, group=self._group
        )

    async def _check_unclaimed(self) -> None:
        root = groups_root(self._settings.S3_PREFIX)
        for group in await self._lake.list_groups(root):
            if group == self._group:
                continue
            for topic in self._topics:
                if await self._lake.has_objects(f"{root}{group}/progress/{topic}/"):
                    raise LakeClaimed(
                        f"{self._lake.description} already holds topic {topic!r} recorded by "
                        f"consumer group {group!r} (this one is {self._group!r}): two groups "
                        "would write every record twice under the same file keys. Give this "
                        "deployment its own S3_PREFIX, or, if that group is retired, delete "
                        f"{root}{group}/ from the bucket"
                    )

    def failure(self) -> str | None:
        return supervise.failure([self._timer])

    async def close(self) -> None:
        tasks = [t for t in (self._timer, *self._tasks.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._lake.close()

    async def check_health(self) -> bool:
        ok = await self._probe(self._lake.check)
        if ok and self.error is not None:
            self._set_healthy(False)  # the bucket answers, but writes keep failing
        return self.healthy

    # --- partitions ---------------------------------------------------------------------
    def _key(self, tp: TP) -> str:
        return progress_key(self._settings.S3_PREFIX, self._group, tp.topic, tp.partition)

    async def _read_stored(self, tp: TP) -> StoredProgress:
        stored = await self._lake.read_progress(self._key(tp))
        if stored.offset is None:
            # Carried over from before group scoping: the first write creates our own object.
            legacy = await self._lake.read_progress(
                legacy_progress_key(self._settings.S3_PREFIX, tp.topic, tp.partition)
            )
            if legacy.offset is not None:
                return StoredProgress(legacy.offset, None, None, legacy.generation)
        return stored

    async def load_progress(self, tps: Collection[TP]) -> dict[TP, int | None]:
        async def read_all() -> dict[TP, StoredProgress]:
            ordered = list(tps)
            values = await asyncio.gather(*(self._read_stored(tp) for tp in ordered))
            return dict(zip(ordered, values, strict=True))

        stored = await retry_forever(
            "load_progress",
            read_all,
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._failed,
        )
        self._stored.update(stored)
        return {tp: s.offset for tp, s in stored.items()}

    async def store_start(self, starts: Mapping[TP, int]) -> dict[TP, int]:
        """Record where partitions without progress start (the reset policy's position), so a
        restart before the first flush resumes there instead of asking the policy again."""

        async def store(tp: TP, offset: int) -> tuple[TP, StoredProgress]:
            expected = self._stored.get(tp, StoredProgress(None, None))
            token = await self._lake.write_progress(self._key(tp), expected, offset)
            if token is not None:
                return tp, expected.successor(token, offset)
            return tp, await self._lake.read_progress(self._key(tp))

        async def store_all() -> list[tuple[TP, StoredProgress]]:
            return await asyncio.gather(*(store(tp, off) for tp, off in starts.items()))

        done = await retry_forever("store_start", store_all, self._settings.RETRY_MAX_BACKOFF_SEC)
        out: dict[TP, int] = {}
        for tp, stored in done:
            self._stored[tp] = stored
            out[tp] = stored.offset if stored.offset is not None else starts[tp]
        return out

    def assign(self, progress: Mapping[TP, int | None]) -> None:
        for tp in progress:
            self._closing.discard(tp)
            self._failures.pop(tp, None)
        self._buffers.assign(progress)

    def revoke(self, tps: Collection[TP]) -> None:
        for tp in tps:
            self._stored.pop(tp, None)
            self._closing.discard(tp)
            self._failures.pop(tp, None)
        self._buffers.revoke(tps)

    def progress(self) -> dict[TP, int | None]:
        return {tp: s.offset for tp, s in self._stored.items() if tp in self._buffers}

    def offer(self, tp: TP, columns: pa.Table, end: int) -> None:
        batch = self._buffers.offer(tp, columns, end, time.monotonic())
        if batch is None:
            return
        recorded = self._recorded_end(tp)
        if batch.count >= self._max_rows or (recorded is not None and end >= recorded):
            self._wake.set()

    def buffered(self) -> int:
        return self._buffers.buffered()

    def buffered_bytes(self) -> int:
        """In-flight batches count until uploaded: their Parquet (no larger than the decoded
        rows) may sit in a spill file under /tmp, so this bounds the spill files too."""
        return self._buffers.buffered_bytes()

    def _recorded_end(self, tp: TP) -> int | None:
        """End of the recorded flush range that the open batch of `tp` must complete next."""
        stored = self._stored.get(tp)
        buffer = self._buffers.get(tp)
        if stored is None or stored.flush_end is None or buffer is None:
            return None
        return stored.flush_end if buffer.batch.start == stored.offset else None

    def _flushable(self, tp: TP) -> bool:
        """Whether the open batch of `tp` can be flushed now (a recorded range needs all of its
        records; nothing else to wait for otherwise)."""
        buffer = self._buffers.get(tp)
        if buffer is None or tp in self._closing:
            return False
        recorded = self._recorded_end(tp)
        if recorded is not None:
            return buffer.batch.end >= recorded
        return buffer.batch.advanced

    async def flush_all(self, tps: Collection[TP] | None = None) -> None:
        def pending(tp: TP) -> bool:
            return self._flushable(tp) or tp in self._buffers.in_flight

        await self._buffers.flush(tps, pending, lambda _tps: self._wake.set())

    async def abandon(self, tps: Collection[TP]) -> None:
        self._closing.update(tps)
        self._buffers.changed()  # a flush waiting for these gives them up too
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
                if tp in self._buffers.in_flight or not self._flushable(tp):
                    continue  # rule 2: one unrecorded file set per partition
                recorded = self._recorded_end(tp)
                if recorded is not None:
                    batch = buffer.take_until(recorded)  # complete the recorded range first
                elif tp in self._buffers.force or is_due(
                    buffer.batch, now, self._max_rows, self._max_age
                ):
                    batch = buffer.take()
                else:
                    continue
                self._buffers.flying(tp, batch)
                self._tasks[tp] = asyncio.create_task(self._flush(tp, batch), name=f"s3-{tp}")
            self._wake.clear()
            try:
                async with asyncio.timeout(min(0.2, self._max_age)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _flush(self, tp: TP, batch: Batch) -> None:
        try:
            await self._flush_batch(tp, batch)
            self._failures.pop(tp, None)
        except asyncio.CancelledError:
            raise
        except Abandoned:
            return  # the shutdown's deadline: left to be replayed, not a failed flush
        except Exception as exc:
            failures = self._failures.get(tp, 0) + 1
            self._failures[tp] = failures
            self.error = f"{type(exc).__name__}: {exc}"
            self._set_healthy(False)
            metrics.STORE_ERRORS.labels(SINK, "flush").inc()
            wait = min(FAILED_FLUSH_BACKOFF_MAX_SEC, FAILED_FLUSH_BACKOFF_SEC * 2 ** (failures - 1))
            telemetry.emit(
                telemetry.FLUSH_FAILED,
                sink=SINK,
                topic=tp.topic,
                partition=tp.partition,
                error=self.error,
                retry_in_seconds=wait,
            )
            # Still in flight while waiting: no re-fetch and re-encode loop against a store that
            # refuses (rule 2 holds too); a revocation or shutdown cancels the wait.
            await asyncio.sleep(wait)
            self._resync(tp)
        finally:
            self._tasks.pop(tp, None)
            self._buffers.landed(tp)

    async def _flush_batch(self, tp: TP, batch: Batch) -> None:
        started = time.perf_counter()
        outcome = await retry_forever(
            "flush_intent",
            lambda: self._record_intent(tp, batch),
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._on_retry,
        )
        if outcome is IntentOutcome.DONE:
            self._on_progress(tp, batch.end)  # someone else flushed exactly these records
            return
        if outcome is not IntentOutcome.RECORDED:
            self._fenced(tp, batch, outcome)
            return
        kind = self._topics.get(tp.topic, TopicKind.TICK)
        files = await asyncio.to_thread(self._encode, tp, kind, batch)
        nbytes = sum(size for _, _, size in files)
        try:
            await asyncio.gather(*(self._upload(key, body, size) for key, body, size in files))
        finally:
            for _, body, _ in files:
                body.close()
        committed = await retry_forever(
            "progress",
            lambda: self._commit(tp, batch),
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._on_retry,
        )
        self.error = None
        self._set_healthy(True)
        elapsed = time.perf_counter() - started
        metrics.FLUSH_DURATION.labels(SINK).observe(elapsed)
        if committed is IntentOutcome.FENCED:
            # Our files are the recorded range's own bytes (rule 4), so the lake is intact.
            self._fenced(tp, batch, committed)
            return
        metrics.FLUSHES.labels(SINK, "ok").inc()
        metrics.LAST_FLUSH.labels(SINK).set(time.time())
        if committed is IntentOutcome.RECORDED:
            metrics.RECORDS_WRITTEN.labels(tp.topic, SINK).inc(len(batch))
            metrics.S3_BYTES_UPLOADED.labels(tp.topic).inc(nbytes)
        self._on_progress(tp, batch.end)
        telemetry.emit(
            telemetry.FLUSH,
            sink=SINK,
            topic=tp.topic,
            partition=tp.partition,
            rows=len(batch),
            files=len(files),
            bytes=nbytes,
            seconds=round(elapsed, 4),
        )

    async def _upload(
        self, key: str, body: tempfile.SpooledTemporaryFile[bytes], size: int
    ) -> None:
        async with self._uploads:
            await retry_forever(
                "upload",
                lambda: self._lake.put_file(key, body, size),
                self._settings.RETRY_MAX_BACKOFF_SEC,
                self._on_retry,
            )

    def _fenced(self, tp: TP, batch: Batch, outcome: IntentOutcome) -> None:
        metrics.FLUSHES.labels(SINK, "fenced").inc()
        stored = self._stored.get(tp)
        telemetry.emit(
            telemetry.BATCH_FENCED
            if outcome is IntentOutcome.FENCED
            else telemetry.BATCH_ADOPTS_RECORDED_RANGE,
            sink=SINK,
            topic=tp.topic,
            partition=tp.partition,
            batch=[batch.start, batch.end],
            stored=None if stored is None else [stored.offset, stored.flush_end],
            dropped_rows=len(batch),
        )
        self._resync(tp)

    def _on_retry(self, _exc: BaseException) -> None:
        self._set_healthy(False)
        metrics.FLUSHES.labels(SINK, "retry").inc()

    def _columns(self, kind: TopicKind) -> list[str]:
        """The batch columns a file of `kind` is made of (order books: one form of levels)."""
        if kind is TopicKind.TICK:
            return list(TICK_SCHEMA.names)
        sides = ["bid_levels", "ask_levels"] if self._levels == "typed" else ["bids", "asks"]
        return ["offset", "time_ns", "symbol", *sides]

    def _encode(
        self, tp: TP, kind: TopicKind, batch: Batch
    ) -> list[tuple[str, tempfile.SpooledTemporaryFile[bytes], int]]:
        """One Parquet file per UTC event hour, spilled to disk above the part size."""
        out: list[tuple[str, tempfile.SpooledTemporaryFile[bytes], int]] = []
        spill = self._settings.S3_PART_SIZE_MB * 1024 * 1024
        try:
            groups = split_by_hour(batch.table(self._columns(kind))) if batch.count else []
            for hour, first_offset, part in groups:
                # Closed by _flush_batch after the upload.
                body: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
                    max_size=spill
                )
                key = object_key(
                    self._settings.S3_PREFIX, kind, hour, tp.topic, tp.partition, first_offset
                )
                out.append((key, body, 0))
                write_parquet(
                    body,
                    kind,
                    part,
                    self._unit,
                    self._levels,
                    self._settings.PARQUET_ROW_GROUP_SIZE,
                )
                out[-1] = (key, body, body.tell())
        except BaseException:
            for _, spilled, _ in out:
                spilled.close()  # the spill files of a failed encode (disk full) must not linger
            raise
        return out

    # --- the progress object ------------------------------------------------------------
    async def _record_intent(self, tp: TP, batch: Batch) -> IntentOutcome:
        """Step 1 of the protocol: make [start, end) the recorded range, or find out why not.
        A decision other than FREE is taken on the store's view, never on a stale cache alone."""
        key = self._key(tp)
        # A partition never written before (the pipeline stores a start at assignment; direct
        # users of the sink may not): its range starts at the batch's first record.
        first = batch.start
        if first is None:
            first_row = batch.first_offset()
            first = first_row if first_row is not None else batch.end
        stored = self._stored.get(tp)
        fresh = False
        if stored is None:
            stored, fresh = await self._read_stored(tp), True
        for _ in range(5):
            outcome = intent_outcome(stored.offset, stored.flush_end, batch.start, batch.end)
            if outcome is IntentOutcome.FREE:
                token = await self._lake.write_progress(key, stored, first, batch.end)
                if token is not None:
                    self._remember(tp, stored.successor(token, first, batch.end))
                    return IntentOutcome.RECORDED
            elif outcome is not IntentOutcome.FENCED or fresh:
                return outcome
            stored, fresh = await self._read_stored(tp), True
            self._remember(tp, stored)
        return IntentOutcome.FENCED  # lost five races in a row: drop the batch, replay from store

    async def _commit(self, tp: TP, batch: Batch) -> IntentOutcome:
        """Step 3: `{start, end}` -> `{end}`. RECORDED when ours moved it; DONE when another
        writer committed the same range first; FENCED otherwise."""
        key = self._key(tp)
        expected = self._stored.get(tp, StoredProgress(batch.start, None, batch.end))
        token = await self._lake.write_progress(key, expected, batch.end)
        if token is not None:
            self._remember(tp, expected.successor(token, batch.end))
            return IntentOutcome.RECORDED
        current = await self._read_stored(tp)
        self._remember(tp, current)
        if current.offset == batch.end and current.flush_end is None:
            return IntentOutcome.DONE
        return IntentOutcome.FENCED

    def _remember(self, tp: TP, stored: StoredProgress) -> None:
        if tp in self._buffers:  # not for a partition revoked meanwhile
            self._stored[tp] = stored
            self._buffers.changed()  # a recorded range decides what a flush waits for

    def _resync(self, tp: TP) -> None:
        """Forget what is buffered for `tp`; the pipeline re-seeks it to the stored progress."""
        if tp not in self._buffers:
            return
        stored = self._stored.get(tp, StoredProgress(None, None))
        self._buffers.restart(tp, stored.offset)
        self._on_resync(tp)
