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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any

import asyncpg
import structlog

from recorder import metrics, supervise
from recorder.compression import apply_compression
from recorder.core.batching import Batch, PartitionBuffer, is_due, next_due_in, writer_for
from recorder.core.offsets import TP, CasOutcome, cas_outcome
from recorder.core.records import OrderBookRow, Row, TickRow, levels_json
from recorder.core.rollups import ROLLUPS, Bar, aggregate, merge
from recorder.dlq import DeadLetters
from recorder.migrate import DbMode, current_mode, migrate
from recorder.retention import apply_retention
from recorder.settings import Settings, TopicKind
from recorder.sinks.base import ProgressCallback, ResyncCallback, SinkHealth, retry_forever

log = structlog.get_logger("recorder.sinks.timescale")

SINK = "timescaledb"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICK_COLUMNS = ("time", "symbol", "price", "volume", "change", "change_rate")
_BOOK_COLUMNS = ("time", "symbol", "bids", "asks")
NS_PER_DAY = 86_400 * 1_000_000_000
_TIME_NS = itemgetter(0)  # TickRow.time_ns / OrderBookRow.time_ns


_US = timedelta


def to_datetime(time_ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=time_ns // 1000)


def tick_record(row: TickRow) -> tuple[Any, ...]:
    return (
        to_datetime(row.time_ns),
        row.symbol,
        row.price,
        row.volume,
        row.change,
        row.change_rate,
    )


def book_record(row: OrderBookRow) -> tuple[Any, ...]:
    return (
        to_datetime(row.time_ns),
        row.symbol,
        levels_json(row.bids).decode(),
        levels_json(row.asks).decode(),
    )


def coarsen(bars: list[Bar], bucket_ns: int) -> list[Bar]:
    """Bars of `bucket_ns` from finer bars sorted by (symbol, bucket) (as `aggregate` returns
    them): the same bars `aggregate` gives from the ticks, for a fraction of the work."""
    out: list[Bar] = []
    for bar in bars:
        bucket = bar.bucket_ns - bar.bucket_ns % bucket_ns
        last = out[-1] if out else None
        if last is not None and last.symbol == bar.symbol and last.bucket_ns == bucket:
            out[-1] = merge(last, bar)
        else:
            out.append(bar._replace(bucket_ns=bucket))
    return out


def rollup_bars(ticks: list[TickRow]) -> dict[str, list[Bar]]:
    """Every rollup's bars; the finest is aggregated from the ticks, the others from it."""
    finest = min(ROLLUPS.values())
    base = aggregate(ticks, finest)
    out: dict[str, list[Bar]] = {}
    for view, bucket_ns in ROLLUPS.items():
        if bucket_ns == finest:
            out[view] = base
        elif bucket_ns % finest == 0:
            out[view] = coarsen(base, bucket_ns)
        else:
            out[view] = aggregate(ticks, bucket_ns)
    return out


class PartitionMissing(RuntimeError):
    """A row's day partition is gone although we had it as known (dropped by retention or by
    hand): the cache is cleared and the write retried, which creates the partition again."""


def is_retriable(exc: BaseException) -> bool:
    """Connection trouble, server shutdowns and a read-only server (a standby, or a primary
    just demoted by a failover: retried on fresh connections) are retried; data errors not."""
    if isinstance(exc, (OSError, ConnectionError, TimeoutError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, (PartitionMissing, asyncpg.ReadOnlySQLTransactionError)):
        return True
    if isinstance(
        exc,
        (
            asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError,
            asyncpg.ConnectionFailureError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            asyncpg.TooManyConnectionsError,
            asyncpg.DeadlockDetectedError,
            asyncpg.SerializationError,
        ),
    ):
        return True
    return isinstance(exc, asyncpg.PostgresConnectionError)


@dataclass
class _Writer:
    index: int
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    in_flight: dict[TP, Batch[Row]] = field(default_factory=dict)
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
        self._force: set[TP] = set()
        self._topics = dict(topics)
        self._dlq = dead_letters
        self._on_progress = on_progress
        self._pool: asyncpg.Pool | None = None
        self._buffers: dict[TP, PartitionBuffer[Row]] = {}
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
        self._failing = False  # the last flush failed for a reason that retrying did not fix
        self.healthy = False

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        async def connect() -> asyncpg.Pool:
            pool = await asyncpg.create_pool(
                min_size=1,
                max_size=self._settings.DB_WRITE_WORKERS + 2,
                command_timeout=60,
                **self._settings.db_dsn_kwargs(),
            )
            assert pool is not None
            return pool

        pool = await retry_forever(
            "connect", connect, is_retriable, self._settings.RETRY_MAX_BACKOFF_SEC, self._failed
        )
        self._pool = pool
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
        for w in self._writers:
            w.task = asyncio.create_task(self._run_writer(w), name=f"db-writer-{w.index}")
        if self._settings.DB_RETENTION_DAYS > 0:
            self._retention = asyncio.create_task(self._run_retention(), name="db-retention")
        log.info("sink_started", sink=SINK, mode=self._mode.value, writers=len(self._writers))

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in (*(w.task for w in self._writers), self._retention) if t is not None]
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
        topics = [tp.topic for tp in tps]
        parts = [tp.partition for tp in tps]

        async def read() -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await pool.fetch(
                """SELECT o.topic, o.partition, o.next_offset FROM recorder_offsets o
                   JOIN unnest($1::text[], $2::int[]) AS w(topic, partition)
                   USING (topic, partition)""",
                topics,
                parts,
            )
            return rows

        rows = await retry_forever(
            "load_progress", read, is_retriable, self._settings.RETRY_MAX_BACKOFF_SEC, self._failed
        )
        found = {TP(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
        return {tp: found.get(tp) for tp in tps}

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
            "store_start", store, is_retriable, self._settings.RETRY_MAX_BACKOFF_SEC, self._failed
        )
        # The CTE's second branch does not see the first one's inserts (one snapshot): a row
        # from `added` is ours, one from the table was there before.
        found = {TP(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
        return {tp: found.get(tp, starts[tp]) for tp in ordered}

    def assign(self, progress: Mapping[TP, int | None], first_offsets: Mapping[TP, int]) -> None:
        for tp, value in progress.items():
            self._progress[tp] = value
            self._buffers[tp] = PartitionBuffer(
                Batch(start=value, end=value if value is not None else -1)
            )

    def revoke(self, tps: Collection[TP]) -> None:
        for tp in tps:
            self._buffers.pop(tp, None)
            self._progress.pop(tp, None)

    def progress(self) -> dict[TP, int | None]:
        return dict(self._progress)

    def offer(
        self,
        tp: TP,
        offsets: Sequence[int],
        rows: Sequence[Row | None],
        end: int,
        row_bytes: int = 0,
    ) -> None:
        buffer = self._buffers.get(tp)
        if buffer is None:  # not (or no longer) ours: a fetch that raced a revocation
            return
        buffer.offer(offsets, rows, end, time.monotonic(), row_bytes)
        batch = buffer.batch
        if len(batch.rows) >= self._max_rows:
            self._writer_of(tp).wake.set()

    def buffered(self) -> int:
        open_rows = sum(len(b.batch.rows) for b in self._buffers.values())
        flying = sum(len(b.rows) for w in self._writers for b in w.in_flight.values())
        return open_rows + flying

    def buffered_bytes(self) -> int:
        open_bytes = sum(b.batch.nbytes for b in self._buffers.values())
        return open_bytes + sum(b.nbytes for w in self._writers for b in w.in_flight.values())

    def _writer_of(self, tp: TP) -> _Writer:
        return self._writers[writer_for(tp.topic, tp.partition, len(self._writers))]

    async def flush_all(self, tps: Collection[TP] | None = None) -> None:
        """Make everything buffered for `tps` (all when None) durable before returning."""
        wanted = set(self._buffers if tps is None else tps)
        while True:
            pending = [
                tp
                for tp in wanted
                if (tp in self._buffers and self._buffers[tp].batch.advanced)
                or any(tp in w.in_flight for w in self._writers)
            ]
            if not pending:
                return
            for tp in pending:
                w = self._writer_of(tp)
                w.wake.set()
            self._force.update(pending)
            await asyncio.sleep(0.01)

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
                or (tp in self._force and b.batch.advanced)
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
            w.idle.clear()
            try:
                await self._write_until_done(batches)
                failures = 0
            except asyncio.CancelledError:
                raise
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
                    self._force.discard(tp)
            if failures:
                await asyncio.sleep(
                    min(self._settings.RETRY_MAX_BACKOFF_SEC, 0.5 * 2 ** min(failures, 10))
                )

    async def _write_until_done(self, batches: dict[TP, Batch[Row]]) -> None:
        started = time.perf_counter()
        rows = sum(len(b) for b in batches.values())
        outcomes = await retry_forever(
            "copy",
            lambda: self._write(batches),
            is_retriable,
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
                log.warning(
                    "batch_fenced",
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
        log.info(
            "flush",
            sink=SINK,
            partitions=len(batches),
            rows=rows,
            seconds=round(elapsed, 4),
            fenced=len(fenced),
        )

    def _flush_failed(self, batches: dict[TP, Batch[Row]], exc: Exception) -> None:
        """Drop the batches and feed their partitions again from the stored progress."""
        log.error(
            "flush_failed",
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
        buffer = self._buffers.get(tp)
        if buffer is not None:
            buffer.restart(stored, stored if stored is not None else -1)
            self._progress[tp] = stored
        self._on_resync(tp)

    async def _write(
        self, batches: dict[TP, Batch[Row]]
    ) -> dict[TP, tuple[CasOutcome, int | None]]:
        pool = self._pool
        assert pool is not None
        try:
            return await self._write_once(pool, batches)
        except asyncpg.ReadOnlySQLTransactionError as exc:
            # After a failover the pool's connections may still reach the demoted server (same
            # address, new role, or a DNS name that now points elsewhere): replace them all.
            log.warning("db_read_only", sink=SINK, error=str(exc), action="reconnecting")
            await pool.expire_connections()
            raise
        except asyncpg.CheckViolationError as exc:
            if self._mode is not DbMode.POSTGRES or "no partition" not in str(exc):
                raise
            log.warning("partition_missing", sink=SINK, error=str(exc))
            self._known_days.clear()
            raise PartitionMissing(str(exc)) from exc

    async def _write_once(
        self, pool: asyncpg.Pool, batches: dict[TP, Batch[Row]]
    ) -> dict[TP, tuple[CasOutcome, int | None]]:
        if self._mode is DbMode.POSTGRES:
            await self._ensure_partitions(pool, batches)
        outcomes: dict[TP, tuple[CasOutcome, int | None]] = {}
        async with pool.acquire() as conn, conn.transaction():
            for tp in sorted(batches):
                outcomes[tp] = await self._cas(conn, tp, batches[tp])
            ticks: list[TickRow] = []
            books: list[OrderBookRow] = []
            # Where each row came from, for a dead letter if the database refuses it.
            tick_from: list[tuple[TP, list[int]]] = []
            book_from: list[tuple[TP, list[int]]] = []
            for tp, batch in batches.items():
                if outcomes[tp][0] is not CasOutcome.APPLIED:
                    continue
                if self._topics.get(tp.topic) is TopicKind.ORDERBOOK:
                    books.extend(batch.rows)  # type: ignore[arg-type]
                    book_from.append((tp, batch.offsets))
                else:
                    ticks.extend(batch.rows)  # type: ignore[arg-type]
                    tick_from.append((tp, batch.offsets))
            if ticks:
                # tick_record inlined: one tuple per row without two calls per row.
                records = [
                    (_EPOCH + _US(microseconds=t // 1000), sym, price, vol, chg, rate)
                    for t, sym, price, vol, chg, rate in ticks
                ]
                refused = await self._copy(conn, "tick_data", _TICK_COLUMNS, records, tick_from)
                if refused:  # a refused row is a dead letter, not a trade: no bar counts it
                    ticks = [t for i, t in enumerate(ticks) if i not in refused]
                if self._mode.recorder_rollups:
                    await self._upsert_rollups(conn, ticks)
            if books:
                records = [book_record(r) for r in books]
                await self._copy(conn, "orderbook", _BOOK_COLUMNS, records, book_from)
        return outcomes

    async def _cas(
        self, conn: asyncpg.Connection, tp: TP, batch: Batch[Row]
    ) -> tuple[CasOutcome, int | None]:
        """Fenced progress (DESIGN rule 1): move start -> end only if start is still stored."""
        if batch.start is None:
            status = await conn.execute(
                """INSERT INTO recorder_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
                   ON CONFLICT (topic, partition) DO NOTHING""",
                tp.topic,
                tp.partition,
                batch.end,
            )
        else:
            status = await conn.execute(
                """UPDATE recorder_offsets SET next_offset = $3, updated_at = now()
                   WHERE topic = $1 AND partition = $2 AND next_offset = $4""",
                tp.topic,
                tp.partition,
                batch.end,
                batch.start,
            )
        if status.endswith(" 1"):
            return CasOutcome.APPLIED, batch.end
        stored = await conn.fetchval(
            "SELECT next_offset FROM recorder_offsets WHERE topic = $1 AND partition = $2",
            tp.topic,
            tp.partition,
        )
        outcome = cas_outcome(stored, batch.start, batch.end)
        # The first branch failed, so "applied" here can only mean a concurrent equal write.
        return (CasOutcome.FENCED if outcome is CasOutcome.APPLIED else outcome), stored

    async def _copy(
        self,
        conn: asyncpg.Connection,
        table: str,
        columns: tuple[str, ...],
        records: list[tuple[Any, ...]],
        sources: list[tuple[TP, list[int]]],
    ) -> set[int]:
        """COPY the records; rows the database refuses for their data go to the dead letters
        of their source topic. Returns the indexes of the refused records."""
        try:
            async with conn.transaction():  # savepoint: a data error must not lose the batch
                await conn.copy_records_to_table(table, records=records, columns=columns)
            return set()
        except asyncpg.DataError as exc:
            refused: dict[int, str] = {}
            await self._copy_isolating_bad_rows(
                conn, table, columns, records, list(range(len(records))), refused, str(exc)
            )
        origin = [(tp, offset) for tp, offsets in sources for offset in offsets]
        await self._dlq.send_refused(
            [(origin[i][0].topic, origin[i][0].partition, origin[i][1]) for i in sorted(refused)],
            [f"{table}: the database refused this row: {refused[i]}" for i in sorted(refused)],
        )
        return set(refused)

    async def _copy_isolating_bad_rows(
        self,
        conn: asyncpg.Connection,
        table: str,
        columns: tuple[str, ...],
        records: list[tuple[Any, ...]],
        indexes: list[int],
        refused: dict[int, str],
        error: str = "",
    ) -> None:
        """Bisect a batch the database refused for its data; collects the bad rows' indexes
        (into `records` as first given) with the database's message."""
        if len(indexes) == 1:
            refused[indexes[0]] = error
            return
        mid = len(indexes) // 2
        for part in (indexes[:mid], indexes[mid:]):
            try:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        table, records=[records[i] for i in part], columns=columns
                    )
            except asyncpg.DataError as exc:
                await self._copy_isolating_bad_rows(
                    conn, table, columns, records, part, refused, str(exc)
                )

    async def _upsert_rollups(self, conn: asyncpg.Connection, ticks: list[TickRow]) -> None:
        for view, bars in rollup_bars(ticks).items():
            await conn.execute(
                f"""INSERT INTO recorder_{view}_state AS t
                      (bucket, symbol, open, high, low, close, volume, open_time, close_time)
                    SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::float8[], $4::float8[],
                                         $5::float8[], $6::float8[], $7::numeric[],
                                         $8::timestamptz[], $9::timestamptz[])
                    ON CONFLICT (symbol, bucket) DO UPDATE SET
                      open = CASE WHEN EXCLUDED.open_time < t.open_time THEN EXCLUDED.open ELSE t.open END,
                      open_time = LEAST(t.open_time, EXCLUDED.open_time),
                      high = GREATEST(t.high, EXCLUDED.high),
                      low = LEAST(t.low, EXCLUDED.low),
                      close = CASE WHEN EXCLUDED.close_time >= t.close_time
                                   THEN EXCLUDED.close ELSE t.close END,
                      close_time = GREATEST(t.close_time, EXCLUDED.close_time),
                      volume = t.volume + EXCLUDED.volume""",
                [to_datetime(b.bucket_ns) for b in bars],
                [b.symbol for b in bars],
                [b.open for b in bars],
                [b.high for b in bars],
                [b.low for b in bars],
                [b.close for b in bars],
                [b.volume for b in bars],
                [to_datetime(b.open_ns) for b in bars],
                [to_datetime(b.close_ns) for b in bars],
            )

    async def _ensure_partitions(self, pool: asyncpg.Pool, batches: dict[TP, Batch[Row]]) -> None:
        """Plain mode: create the daily partitions a batch needs, outside its transaction."""
        needed: set[tuple[str, int]] = set()
        for tp, batch in batches.items():
            table = (
                "orderbook" if self._topics.get(tp.topic) is TopicKind.ORDERBOOK else "tick_data"
            )
            if not batch.rows:
                continue
            times = list(map(_TIME_NS, batch.rows))
            first, last = min(times) // NS_PER_DAY, max(times) // NS_PER_DAY
            # Almost every batch lies within one day: skip the per-row pass then.
            days = {first} if first == last else {t // NS_PER_DAY for t in times}
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

    async def _apply_compression(self, conn: asyncpg.Connection) -> None:
        days = self._settings.DB_COMPRESS_AFTER_DAYS
        if self._mode is DbMode.TIMESCALEDB:
            await apply_compression(conn, days)
        elif days > 0:
            log.warning(
                "compression_unavailable", mode=self._mode.value, setting="DB_COMPRESS_AFTER_DAYS"
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
                log.warning("retention_failed", sink=SINK, error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self._settings.DB_RETENTION_INTERVAL_SEC)
