"""The hot path: rows into TimescaleDB/PostgreSQL by binary COPY, exactly once.

Owns the database writers: each partition belongs to one writer; one transaction per flush
does a compare-and-set of every batch's progress in `recorder_offsets`, the COPY of the rows
and (plain PostgreSQL and TimescaleDB Apache modes) the OHLCV rollup upserts, so a crash never
writes a row twice. Also runs the retention (DB_RETENTION_DAYS) on its schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

import asyncpg
import numpy as np
import pyarrow as pa

from recorder import metrics, supervise, telemetry
from recorder.compression import apply_compression
from recorder.core.batching import Batch, is_due, next_due_in, writer_for
from recorder.core.columns import offsets_of, times_of
from recorder.core.offsets import TP, CasOutcome, cas_outcome
from recorder.core.rollups import ROLLUPS, Bars, bars
from recorder.dlq import DeadLetters
from recorder.migrate import DbMode, current_mode, migrate
from recorder.retention import apply_retention
from recorder.retry import Abandoned, Transient, retry_forever
from recorder.settings import Settings, TopicKind
from recorder.sinks.base import ProgressCallback, ResyncCallback, SinkHealth
from recorder.sinks.buffer import Buffers
from recorder.sinks.timescale import progress as progress_rows
from recorder.sinks.timescale.encode import BOOK_COLUMNS, TICK_COLUMNS, copy_chunks

SINK = "timescaledb"
NS_PER_DAY = 86_400 * 1_000_000_000
# Plain mode creates daily partitions ahead of the data on this period (and at start).
PARTITION_MAINTENANCE_SEC = 3600.0


def rollup_bars(ticks: pa.Table) -> dict[str, Bars]:
    """Every rollup's bars of a flush's tick columns, vectorised."""
    time_ns = ticks.column("time_ns").to_numpy()
    symbol = ticks.column("symbol").combine_chunks()
    price = ticks.column("price").to_numpy()
    volume = ticks.column("volume").to_numpy()
    return {view: bars(time_ns, symbol, price, volume, ns) for view, ns in ROLLUPS.items()}


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Each piece of the COPY stream encoded only when asyncpg asks for it: one piece of
    encoder transients in memory at a time."""
    for chunk in chunks:
        yield chunk


IDLE_IN_TRANSACTION_MS = "60000"
WRITE_LOCK_TIMEOUT_MS = 30_000


class PartitionMissing(Transient):
    """A row's day partition is gone although we had it as known (dropped by retention or by
    hand): the cache is cleared and the write retried, which creates the partition again."""


@dataclass
class _RowsRefused(Exception):
    """Rows the database refused for their data: the transaction is rolled back (nothing of
    the flush recorded) so that their dead letters are sent with no transaction open, before
    the flush is tried again without them."""

    positions: list[tuple[str, int, int]]  # (topic, partition, offset) of each refused row
    messages: list[str]


def _without(
    rows: pa.Table, sources: list[tuple[TP, int]], skip: set[tuple[str, int, int]]
) -> pa.Table:
    """The rows but those at the positions in `skip` (already dead letters); `sources` (the
    partition and row count of each batch, in order) is updated to match."""
    if not skip:
        return rows
    offsets = offsets_of(rows)
    keep = np.ones(rows.num_rows, bool)
    first = 0
    for n, (tp, count) in enumerate(sources):
        for i in range(first, first + count):
            if (tp.topic, tp.partition, int(offsets[i])) in skip:
                keep[i] = False
        sources[n] = (tp, int(keep[first : first + count].sum()))
        first += count
    return rows if bool(keep.all()) else rows.filter(pa.array(keep))


@dataclass
class _Writer:
    index: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    in_flight: dict[TP, Batch] = field(default_factory=dict)
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class TimescaleSink(SinkHealth):
    """Hot-path sink; `DB_WRITE_WORKERS` writers share one asyncpg pool."""

    name = SINK

    def __init__(
        self,
        settings: Settings,
        topics: Mapping[str, TopicKind],
        dead_letters: DeadLetters,
        on_progress: ProgressCallback,
        on_resync: ResyncCallback,
    ) -> None:
        self._settings = settings
        self._on_resync = on_resync
        self._topics = dict(topics)
        self._dlq = dead_letters
        self._on_progress = on_progress
        self._pool: asyncpg.Pool | None = None
        self._buffers = Buffers()
        self._progress: dict[TP, int | None] = {}
        self._writers = [_Writer(i) for i in range(settings.DB_WRITE_WORKERS)]
        for w in self._writers:
            w.idle.set()
        self._mode: DbMode = DbMode.POSTGRES
        self._known_days: set[tuple[str, int]] = set()
        self._max_rows = settings.BATCH_SIZE
        self._max_age = settings.BATCH_TIMEOUT_MS / 1000
        self._closing = False
        self._retention: asyncio.Task[None] | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._failing = False  # the last flush failed for a reason that retrying did not fix
        self.healthy = False
        self.stage = "connecting"  # where start-up is (the shutdown log names it)

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        async def connect() -> asyncpg.Pool:
            pool = await asyncpg.create_pool(
                min_size=1,
                max_size=self._settings.DB_WRITE_WORKERS + 2,
                command_timeout=60,
                # A member frozen inside a transaction (SIGSTOP, a GC pause, a partition from
                # the database) holds its row locks on the hot bars: the server ends its
                # session, so the other writers are not stalled behind it for good.
                server_settings={"idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_MS},
                **self._settings.db_dsn_kwargs(),
            )
            assert pool is not None
            return pool

        pool = await retry_forever(
            "connect", connect, self._settings.RETRY_MAX_BACKOFF_SEC, self._failed
        )
        self._pool = pool
        self.stage = "migrating" if self._settings.MIGRATE_ON_START else "reading the schema"
        async with pool.acquire() as conn:
            if self._settings.MIGRATE_ON_START:
                self._mode = await migrate(conn)
            else:
                mode = await current_mode(conn)
                if mode is None:
                    raise RuntimeError(
                        "the database has no schema: run `datarecorder migrate` or set MIGRATE_ON_START=true"
                    )
                self._mode = mode
            await self._apply_compression(conn)
        self._set_healthy(True)
        self.stage = "started"
        for w in self._writers:
            w.task = asyncio.create_task(self._run_writer(w), name=f"db-writer-{w.index}")
        if self._settings.DB_RETENTION_DAYS > 0:
            self._retention = asyncio.create_task(self._run_retention(), name="db-retention")
        if self._mode is DbMode.POSTGRES:
            self._maintenance = asyncio.create_task(
                self._maintain_partitions(), name="db-partitions"
            )
        telemetry.emit(
            telemetry.SINK_STARTED, sink=SINK, mode=self._mode.value, writers=len(self._writers)
        )

    async def close(self) -> None:
        self._closing = True
        timers = (self._retention, self._maintenance)
        tasks = [t for t in (*(w.task for w in self._writers), *timers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()

    def failure(self) -> str | None:
        return supervise.failure(w.task for w in self._writers)

    @property
    def mode(self) -> DbMode:
        return self._mode

    async def check_health(self) -> bool:
        """Probe the database (used by /health while no flush is running); a flush refused for
        good keeps the sink unhealthy until one succeeds."""
        pool = self._pool
        if pool is None:
            return False
        if self._failing:  # reachable is not enough while flushes are refused
            self._set_healthy(False)
            return False

        async def select_one() -> None:
            conn = await pool.acquire()
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await pool.release(conn)

        return await self._probe(select_one)

    # --- partitions ---------------------------------------------------------------------
    async def load_progress(self, tps: Collection[TP]) -> dict[TP, int | None]:
        pool = self._pool
        assert pool is not None

        async def read() -> dict[TP, int | None]:
            return await progress_rows.load(pool, tps)

        return await retry_forever(
            "load_progress", read, self._settings.RETRY_MAX_BACKOFF_SEC, self._failed
        )

    async def store_start(self, starts: Mapping[TP, int]) -> dict[TP, int]:
        """Record where partitions without progress start (the reset policy's position), so a
        restart before the first flush resumes there; a row another writer stored first wins."""
        pool = self._pool
        assert pool is not None
        ordered = list(starts)

        async def store() -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await pool.fetch(
                """WITH wanted AS (
                       SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
                           AS w(topic, partition, next_offset)),
                   added AS (
                       INSERT INTO recorder_offsets (topic, partition, next_offset)
                       SELECT topic, partition, next_offset FROM wanted
                       ON CONFLICT (topic, partition) DO NOTHING
                       RETURNING topic, partition, next_offset)
                   SELECT topic, partition, next_offset FROM added
                   UNION ALL
                   SELECT o.topic, o.partition, o.next_offset FROM recorder_offsets o
                   JOIN wanted USING (topic, partition)""",
                [tp.topic for tp in ordered],
                [tp.partition for tp in ordered],
                [starts[tp] for tp in ordered],
            )
            return rows

        rows = await retry_forever(
            "store_start", store, self._settings.RETRY_MAX_BACKOFF_SEC, self._failed
        )
        # The CTE's second branch does not see the first one's inserts (one snapshot): a row
        # from `added` is ours, one from the table was there before.
        found = {TP(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
        return {tp: found.get(tp, starts[tp]) for tp in ordered}

    def assign(self, progress: Mapping[TP, int | None]) -> None:
        self._progress.update(progress)
        self._buffers.assign(progress)

    def revoke(self, tps: Collection[TP]) -> None:
        for tp in tps:
            self._progress.pop(tp, None)
        self._buffers.revoke(tps)

    def progress(self) -> dict[TP, int | None]:
        return dict(self._progress)

    def offer(self, tp: TP, columns: pa.Table, end: int) -> None:
        batch = self._buffers.offer(tp, columns, end, time.monotonic())
        if batch is not None and batch.count >= self._max_rows:
            self._writer_of(tp).wake.set()

    def buffered(self) -> int:
        return self._buffers.buffered()

    def buffered_bytes(self) -> int:
        return self._buffers.buffered_bytes()

    def _writer_of(self, tp: TP) -> _Writer:
        return self._writers[writer_for(tp.topic, tp.partition, len(self._writers))]

    async def flush_all(self, tps: Collection[TP] | None = None) -> None:
        """Make everything buffered for `tps` (all when None) durable before returning."""

        def pending(tp: TP) -> bool:
            buffer = self._buffers.get(tp)
            return (buffer is not None and buffer.batch.advanced) or tp in self._buffers.in_flight

        def kick(tps: Collection[TP]) -> None:
            for tp in tps:
                self._writer_of(tp).wake.set()

        await self._buffers.flush(tps, pending, kick)

    async def abandon(self, tps: Collection[TP]) -> None:
        """Give up in-flight writes that touch `tps` (a revocation that cannot wait longer).

        Their progress is not recorded, so whoever owns the partitions next replays them; other
        partitions caught in the same transaction resume from their stored progress."""
        wanted = set(tps)
        for w in self._writers:
            if w.task is None or not (wanted & set(w.in_flight)):
                continue
            hit = list(w.in_flight)
            w.task.cancel()
            await asyncio.gather(w.task, return_exceptions=True)
            for tp in hit:
                if tp not in wanted and tp in self._buffers:
                    self._replay_from(tp, self._progress.get(tp))
            w.task = asyncio.create_task(self._run_writer(w), name=f"db-writer-{w.index}")

    # --- writing ------------------------------------------------------------------------
    async def _run_writer(self, w: _Writer) -> None:
        failures = 0
        while True:
            now = time.monotonic()
            owned = [(tp, b) for tp, b in self._buffers.items() if self._writer_of(tp) is w]
            due = any(
                is_due(b.batch, now, self._max_rows, self._max_age)
                or (tp in self._buffers.force and b.batch.advanced)
                for tp, b in owned
            )
            if not due:
                wait = next_due_in((b.batch for _, b in owned), now, self._max_age)
                w.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(w.wake.wait(), timeout=max(wait, 0.005))
                continue
            # Once one batch is due, flush every open batch of this writer in one transaction.
            batches = {tp: b.take() for tp, b in owned if b.batch.advanced}
            w.in_flight = batches
            for tp, batch in batches.items():
                self._buffers.flying(tp, batch)
            w.idle.clear()
            try:
                await self._write_until_done(batches)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Abandoned:
                return  # the shutdown's deadline: left to be replayed, not a failed flush
            except Exception as exc:
                # Connection trouble is retried inside; this is what retrying cannot fix (a
                # revoked privilege, a table changed by hand, a bug). The writer must survive it:
                # a dead writer task keeps its partitions' rows unwritten for good, silently.
                failures += 1
                self._flush_failed(batches, exc)
            finally:
                w.in_flight = {}
                w.idle.set()
                for tp in batches:
                    self._buffers.landed(tp)
            if failures:
                await asyncio.sleep(
                    min(self._settings.RETRY_MAX_BACKOFF_SEC, 0.5 * 2 ** min(failures, 10))
                )

    async def _write_until_done(self, batches: dict[TP, Batch]) -> None:
        started = time.perf_counter()
        rows = sum(len(b) for b in batches.values())
        outcomes = await retry_forever(
            "copy",
            lambda: self._write(batches),
            self._settings.RETRY_MAX_BACKOFF_SEC,
            self._on_retry,
        )
        self._failing = False
        self._set_healthy(True)
        elapsed = time.perf_counter() - started
        metrics.FLUSH_DURATION.labels(SINK).observe(elapsed)
        metrics.LAST_FLUSH.labels(SINK).set(time.time())
        fenced = [tp for tp, o in outcomes.items() if o[0] is CasOutcome.FENCED]
        metrics.FLUSHES.labels(SINK, "fenced" if fenced else "ok").inc()
        for tp, (outcome, stored) in outcomes.items():
            batch = batches[tp]
            if outcome is CasOutcome.FENCED:
                telemetry.emit(
                    telemetry.BATCH_FENCED,
                    sink=SINK,
                    topic=tp.topic,
                    partition=tp.partition,
                    expected=batch.start,
                    stored=stored,
                    dropped_rows=len(batch),
                )
                self._replay_from(tp, stored)
                continue
            if outcome is CasOutcome.APPLIED:
                metrics.RECORDS_WRITTEN.labels(tp.topic, SINK).inc(len(batch))
            if tp in self._progress:
                self._progress[tp] = batch.end
            self._on_progress(tp, batch.end)
        telemetry.emit(
            telemetry.FLUSH,
            sink=SINK,
            partitions=len(batches),
            rows=rows,
            seconds=round(elapsed, 4),
            fenced=len(fenced),
        )

    def _flush_failed(self, batches: dict[TP, Batch], exc: Exception) -> None:
        """Drop the batches and feed their partitions again from the stored progress."""
        telemetry.emit(
            telemetry.FLUSH_FAILED,
            sink=SINK,
            partitions=len(batches),
            rows=sum(len(b) for b in batches.values()),
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        self._failing = True
        self._set_healthy(False)
        metrics.FLUSHES.labels(SINK, "failed").inc()
        for tp in batches:
            if tp in self._buffers:
                self._replay_from(tp, self._progress.get(tp))

    def _on_retry(self, exc: BaseException) -> None:
        self._set_healthy(False)
        metrics.FLUSHES.labels(SINK, "retry").inc()

    def _replay_from(self, tp: TP, stored: int | None) -> None:
        """Forget our buffer of `tp` and have it fed again from `stored` (the progress another
        owner recorded, for a fenced batch; our own, for an abandoned or failed one)."""
        if tp in self._buffers:
            self._progress[tp] = stored
        self._buffers.restart(tp, stored)
        self._on_resync(tp)

    async def _write(self, batches: dict[TP, Batch]) -> dict[TP, tuple[CasOutcome, int | None]]:
        pool = self._pool
        assert pool is not None
        skip: set[tuple[str, int, int]] = set()  # rows dead-lettered by an earlier attempt
        try:
            while True:
                try:
                    return await self._write_once(pool, batches, skip)
                except _RowsRefused as refused:
                    # Kafka I/O (reading the originals, the acknowledged send) never holds a
                    # transaction open; the letters are out before progress passes them.
                    await self._dlq.send_refused(refused.positions, refused.messages)
                    skip.update(refused.positions)
        except asyncpg.ReadOnlySQLTransactionError as exc:
            # After a failover the pool's connections may still reach the demoted server (same
            # address, new role, or a DNS name that now points elsewhere): replace them all.
            telemetry.emit(telemetry.DB_READ_ONLY, sink=SINK, error=str(exc), action="reconnecting")
            await pool.expire_connections()
            raise
        except asyncpg.CheckViolationError as exc:
            if self._mode is not DbMode.POSTGRES or "no partition" not in str(exc):
                raise
            telemetry.emit(telemetry.PARTITION_MISSING, sink=SINK, error=str(exc))
            self._known_days.clear()
            raise PartitionMissing(str(exc)) from exc

    async def _write_once(
        self, pool: asyncpg.Pool, batches: dict[TP, Batch], skip: set[tuple[str, int, int]]
    ) -> dict[TP, tuple[CasOutcome, int | None]]:
        if self._mode is DbMode.POSTGRES:
            await self._ensure_partitions(pool, batches)
        outcomes: dict[TP, tuple[CasOutcome, int | None]] = {}
        async with pool.acquire() as conn, conn.transaction():
            # A write waiting for a lock this long rolls back and is retried (transient), so
            # a stuck lock holder shows as retries and an unhealthy sink, not a silent stall.
            await conn.execute(f"SET LOCAL lock_timeout = '{WRITE_LOCK_TIMEOUT_MS}ms'")
            for tp in sorted(batches):
                outcomes[tp] = await self._cas(conn, tp, batches[tp])
            ticks: list[pa.Table] = []
            books: list[pa.Table] = []
            # Where each row came from, for a dead letter if the database refuses it.
            tick_from: list[tuple[TP, int]] = []
            book_from: list[tuple[TP, int]] = []
            for tp, batch in batches.items():
                if outcomes[tp][0] is not CasOutcome.APPLIED or not batch.count:
                    continue
                if self._topics.get(tp.topic) is TopicKind.ORDERBOOK:
                    # Not made contiguous: a copy of every book of the flush (and past 2 GiB
                    # of JSON text, more than a 32-bit-offset string array holds).
                    books.append(pa.concat_tables(batch.chunks))
                    book_from.append((tp, batch.count))
                else:
                    ticks.append(batch.table())
                    tick_from.append((tp, batch.count))
            refused = _RowsRefused([], [])
            if books:
                rows = _without(pa.concat_tables(books), book_from, skip)
                await self._copy(conn, "orderbook", BOOK_COLUMNS, rows, book_from, refused)
            if ticks:
                tick_table = _without(pa.concat_tables(ticks).combine_chunks(), tick_from, skip)
                await self._copy(conn, "tick_data", TICK_COLUMNS, tick_table, tick_from, refused)
                # Last in the transaction: the upsert's row locks on the hot bars are held
                # from here to the commit only, not during the COPYs (writers serialise there).
                if self._mode.recorder_rollups and tick_table.num_rows and not refused.positions:
                    await self._upsert_rollups(conn, tick_table)
            if refused.positions:
                raise refused  # rolls the transaction back; `_write` sends the letters
        return outcomes

    async def _cas(
        self, conn: asyncpg.Connection, tp: TP, batch: Batch
    ) -> tuple[CasOutcome, int | None]:
        """Fenced progress (DESIGN rule 1): move start -> end only if start is still stored."""
        if await progress_rows.compare_and_set(conn, tp, batch.start, batch.end):
            return CasOutcome.APPLIED, batch.end
        stored = await progress_rows.load_one(conn, tp)
        outcome = cas_outcome(stored, batch.start, batch.end)
        # The first branch failed, so "applied" here can only mean a concurrent equal write.
        return (CasOutcome.FENCED if outcome is CasOutcome.APPLIED else outcome), stored

    async def _copy(
        self,
        conn: asyncpg.Connection,
        table: str,
        columns: tuple[str, ...],
        rows: pa.Table,
        sources: list[tuple[TP, int]],
        refused: _RowsRefused,
    ) -> None:
        """Binary COPY of the rows (`sources`: the partition and row count of each batch in
        them, in order); rows the database refuses for their data are added to `refused`,
        with their source position and the database's message."""
        try:
            async with conn.transaction():  # savepoint: a data error must not lose the batch
                await self._copy_rows(conn, table, columns, rows)
            return
        except asyncpg.DataError as exc:
            bad: dict[int, str] = {}
            await self._copy_isolating_bad_rows(
                conn, table, columns, rows, 0, rows.num_rows, bad, str(exc)
            )
        offsets = offsets_of(rows)
        ends = np.cumsum([count for _, count in sources])
        for i in sorted(bad):
            tp = sources[int(np.searchsorted(ends, i, side="right"))][0]
            refused.positions.append((tp.topic, tp.partition, int(offsets[i])))
            refused.messages.append(f"{table}: the database refused this row: {bad[i]}")

    @staticmethod
    async def _copy_rows(
        conn: asyncpg.Connection, table: str, columns: tuple[str, ...], rows: pa.Table
    ) -> None:
        chunks = copy_chunks(rows, "tick" if table == "tick_data" else "book")
        await conn.copy_to_table(table, source=_stream(chunks), columns=columns, format="binary")

    async def _copy_isolating_bad_rows(
        self,
        conn: asyncpg.Connection,
        table: str,
        columns: tuple[str, ...],
        rows: pa.Table,
        first: int,
        stop: int,
        refused: dict[int, str],
        error: str = "",
    ) -> None:
        """Bisect rows [first, stop) that the database refused for their data; collects the
        bad rows' indexes with the database's message."""
        if stop - first == 1:
            refused[first] = error
            return
        mid = (first + stop) // 2
        for lo, hi in ((first, mid), (mid, stop)):
            try:
                async with conn.transaction():
                    await self._copy_rows(conn, table, columns, rows.slice(lo, hi - lo))
            except asyncpg.DataError as exc:
                await self._copy_isolating_bad_rows(
                    conn, table, columns, rows, lo, hi, refused, str(exc)
                )

    async def _upsert_rollups(self, conn: asyncpg.Connection, ticks: pa.Table) -> None:
        # Times travel as int8 microseconds since the epoch (no datetime per bar).
        for view, b in rollup_bars(ticks).items():
            await conn.execute(
                f"""INSERT INTO recorder_{view}_state AS t
                      (bucket, symbol, open, high, low, close, volume, open_time, close_time)
                    SELECT 'epoch'::timestamptz + w.bucket * interval '1 microsecond', w.symbol,
                           w.open, w.high, w.low, w.close, w.volume,
                           'epoch'::timestamptz + w.open_time * interval '1 microsecond',
                           'epoch'::timestamptz + w.close_time * interval '1 microsecond'
                    FROM unnest($1::int8[], $2::text[], $3::float8[], $4::float8[],
                                $5::float8[], $6::float8[], $7::numeric[],
                                $8::int8[], $9::int8[])
                      AS w(bucket, symbol, open, high, low, close, volume, open_time, close_time)
                    ON CONFLICT (symbol, bucket) DO UPDATE SET
                      open = CASE WHEN EXCLUDED.open_time < t.open_time THEN EXCLUDED.open ELSE t.open END,
                      open_time = LEAST(t.open_time, EXCLUDED.open_time),
                      high = GREATEST(t.high, EXCLUDED.high),
                      low = LEAST(t.low, EXCLUDED.low),
                      close = CASE WHEN EXCLUDED.close_time >= t.close_time
                                   THEN EXCLUDED.close ELSE t.close END,
                      close_time = GREATEST(t.close_time, EXCLUDED.close_time),
                      volume = t.volume + EXCLUDED.volume""",
                (b.bucket_ns // 1000).tolist(),
                b.symbol.to_pylist(),
                b.open.tolist(),
                b.high.tolist(),
                b.low.tolist(),
                b.close.tolist(),
                b.volume.tolist(),
                (b.open_ns // 1000).tolist(),
                (b.close_ns // 1000).tolist(),
            )

    async def _ensure_partitions(self, pool: asyncpg.Pool, batches: dict[TP, Batch]) -> None:
        """Plain mode: create the daily partitions a batch needs, outside its transaction."""
        needed: set[tuple[str, int]] = set()
        for tp, batch in batches.items():
            table = (
                "orderbook" if self._topics.get(tp.topic) is TopicKind.ORDERBOOK else "tick_data"
            )
            if not batch.count:
                continue
            days_of = [times_of(chunk) // NS_PER_DAY for chunk in batch.chunks]
            first = min(int(d.min()) for d in days_of if len(d))
            last = max(int(d.max()) for d in days_of if len(d))
            # Almost every batch lies within one day: skip the per-row pass then.
            days = {first} if first == last else {int(d) for x in days_of for d in np.unique(x)}
            needed.update((table, day) for day in days if (table, day) not in self._known_days)
        if not needed:
            return
        async with pool.acquire() as conn:
            for table, day in sorted(needed):
                await conn.execute(
                    "SELECT recorder_ensure_partition($1, $2)",
                    table,
                    date(1970, 1, 1) + timedelta(days=day),
                )
                self._known_days.add((table, day))

    async def ensure_days_ahead(self, days: int = 2) -> None:
        """Create today's and the next days' partitions ahead of the data (plain mode)."""
        if self._mode is not DbMode.POSTGRES or self._pool is None:
            return
        today = int(time.time() // 86_400)
        async with self._pool.acquire() as conn:
            for table in ("tick_data", "orderbook"):
                for day in range(today, today + days + 1):
                    if (table, day) not in self._known_days:
                        await conn.execute(
                            "SELECT recorder_ensure_partition($1, $2)",
                            table,
                            date(1970, 1, 1) + timedelta(days=day),
                        )
                        self._known_days.add((table, day))

    async def _maintain_partitions(self) -> None:
        """Plain mode: the coming days' partitions exist before their first row (a failed run
        is logged and tried again next period; the writers create a missing day themselves)."""
        while True:
            try:
                await self.ensure_days_ahead()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                telemetry.emit(telemetry.PARTITION_MAINTENANCE_FAILED, sink=SINK, error=str(exc))
            await asyncio.sleep(PARTITION_MAINTENANCE_SEC)

    async def _apply_compression(self, conn: asyncpg.Connection) -> None:
        days = self._settings.DB_COMPRESS_AFTER_DAYS
        if self._mode is DbMode.TIMESCALEDB:
            await apply_compression(conn, days)
        elif days > 0:
            telemetry.emit(
                telemetry.COMPRESSION_UNAVAILABLE,
                mode=self._mode.value,
                setting="DB_COMPRESS_AFTER_DAYS",
            )

    async def _run_retention(self) -> None:
        """DB_RETENTION_DAYS by the recorder (no policies in the Apache edition or plain
        PostgreSQL): at start, then every DB_RETENTION_INTERVAL_SEC. A failed run is logged
        and tried again next time; it never stops the writers."""
        pool = self._pool
        assert pool is not None
        while True:
            try:
                async with pool.acquire() as conn:
                    dropped = await apply_retention(
                        conn, self._mode, self._settings.DB_RETENTION_DAYS, time.time()
                    )
                for d in dropped:
                    # The writer recreates a dropped day if a (late) row for it still arrives.
                    self._known_days = {k for k in self._known_days if k[0] != d.table}
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                telemetry.emit(
                    telemetry.RETENTION_FAILED, sink=SINK, error=f"{type(exc).__name__}: {exc}"
                )
            await asyncio.sleep(self._settings.DB_RETENTION_INTERVAL_SEC)
