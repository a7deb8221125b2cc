"""One write of the database sink: CAS -> COPY -> rollups in one transaction, exactly once.

Owns `TimescaleStore` (the driver's Store: a partition's lane is its writer, and a write is one
transaction that compare-and-sets every batch's progress in `recorder_offsets`, COPYs the rows
and (plain PostgreSQL and TimescaleDB Apache modes) upserts the OHLCV rollups, so a crash never
writes a row twice), the bisection of rows the database refuses, and their dead letters, sent
after the transaction rolled back and before the write is tried again without them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass

import asyncpg
import numpy as np
import pyarrow as pa

from recorder.core.batching import Batch, writer_for
from recorder.core.columns import offsets_of
from recorder.core.kinds import FALLBACK, Kind, TopicKind, all_kinds, kind_of
from recorder.core.offsets import TP, CasOutcome, cas_outcome
from recorder.core.rollups import ROLLUPS, Bars, bars_by_width
from recorder.kafka.dlq import DeadLetters
from recorder.runtime import telemetry
from recorder.runtime.retry import Transient, retry_forever
from recorder.sinks.driver import Fence, Outcome, Written
from recorder.sinks.timescale import progress as progress_rows
from recorder.sinks.timescale.config import SINK, TimescaleConfig
from recorder.sinks.timescale.encode import COPY_PLANS, copy_chunks
from recorder.sinks.timescale.migrate import DbMode
from recorder.sinks.timescale.upkeep import Upkeep

WRITE_LOCK_TIMEOUT_MS = 30_000


def rollup_bars(rows: pa.Table, rollups: Mapping[str, int] = ROLLUPS) -> dict[str, Bars]:
    """Every rollup's bars of a flush's columns (time_ns, symbol, price, volume), vectorised."""
    time_ns = rows.column("time_ns").to_numpy()
    symbol = rows.column("symbol").combine_chunks()
    price = rows.column("price").to_numpy()
    volume = rows.column("volume").to_numpy()
    return bars_by_width(time_ns, symbol, price, volume, rollups)


async def _stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Each piece of the COPY stream encoded only when asyncpg asks for it: one piece of
    encoder transients in memory at a time."""
    for chunk in chunks:
        yield chunk


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


class TimescaleStore:
    """The database side of the sink: lanes are writers, a write is one transaction."""

    def __init__(
        self,
        config: TimescaleConfig,
        topics: Mapping[str, TopicKind],
        dead_letters: DeadLetters,
        upkeep: Upkeep,
        on_retry: Callable[[BaseException], None],
    ) -> None:
        self._config = config
        self._topics = dict(topics)
        self._dlq = dead_letters
        self._upkeep = upkeep
        self._on_retry = on_retry
        self.pool: asyncpg.Pool | None = None

    def _kind(self, tp: TP) -> TopicKind:
        return self._topics.get(tp.topic, FALLBACK)

    def lane(self, tp: TP) -> Hashable:
        return writer_for(tp.topic, tp.partition, self._config.writers)

    def recorded_end(self, tp: TP, start: int | None) -> int | None:
        return None  # a database batch may end anywhere

    async def probe(self) -> None:
        pool = self.pool
        assert pool is not None
        conn = await pool.acquire()
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await pool.release(conn)

    async def write(self, batches: dict[TP, Batch]) -> Written:
        outcomes = await retry_forever(
            "copy",
            lambda: self._write(batches),
            self._config.retry_max_backoff_sec,
            self._on_retry,
        )
        for kind in all_kinds():
            if kind.rollups:
                self._upkeep.late_rows(
                    [
                        batches[tp]
                        for tp, (outcome, _) in outcomes.items()
                        if outcome is CasOutcome.APPLIED
                        and self._kind(tp) is kind.topic_kind
                        and batches[tp].count
                    ],
                    kind.rollups,
                )
        written = Written({})
        for tp, (outcome, stored) in outcomes.items():
            if outcome is CasOutcome.FENCED:
                written.outcomes[tp] = Outcome.FENCED
                fields = {"expected": batches[tp].start, "stored": stored}
                written.fences[tp] = Fence(stored, fields)
            elif outcome is CasOutcome.APPLIED:
                written.outcomes[tp] = Outcome.WRITTEN
            else:
                written.outcomes[tp] = Outcome.DONE
        return written

    async def _write(self, batches: dict[TP, Batch]) -> dict[TP, tuple[CasOutcome, int | None]]:
        pool = self.pool
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
            if self._upkeep.mode is not DbMode.POSTGRES or "no partition" not in str(exc):
                raise
            telemetry.emit(telemetry.PARTITION_MISSING, sink=SINK, error=str(exc))
            self._upkeep.known_days.clear()
            raise PartitionMissing(str(exc)) from exc

    async def _write_once(
        self, pool: asyncpg.Pool, batches: dict[TP, Batch], skip: set[tuple[str, int, int]]
    ) -> dict[TP, tuple[CasOutcome, int | None]]:
        if self._upkeep.mode is DbMode.POSTGRES:
            await self._upkeep.ensure_partitions(pool, batches)
        outcomes: dict[TP, tuple[CasOutcome, int | None]] = {}
        async with pool.acquire() as conn, conn.transaction():
            # A write waiting for a lock this long rolls back and is retried (transient), so
            # a stuck lock holder shows as retries and an unhealthy sink, not a silent stall.
            await conn.execute(f"SET LOCAL lock_timeout = '{WRITE_LOCK_TIMEOUT_MS}ms'")
            for tp in sorted(batches):
                outcomes[tp] = await self._cas(conn, tp, batches[tp])
            gathered: dict[TopicKind, list[pa.Table]] = {}
            # Where each row came from, for a dead letter if the database refuses it.
            sources: dict[TopicKind, list[tuple[TP, int]]] = {}
            for tp, batch in batches.items():
                if outcomes[tp][0] is not CasOutcome.APPLIED or not batch.count:
                    continue
                kind = self._kind(tp)
                contiguous = COPY_PLANS[kind].contiguous
                rows = batch.table() if contiguous else pa.concat_tables(batch.chunks)
                gathered.setdefault(kind, []).append(rows)
                sources.setdefault(kind, []).append((tp, batch.count))
            refused = _RowsRefused([], [])
            rolled: list[tuple[Kind, pa.Table]] = []
            for kind, plan in COPY_PLANS.items():  # every write COPYs in one order
                if kind not in gathered:
                    continue
                spec = kind_of(kind)
                joined = pa.concat_tables(gathered[kind])
                rows = _without(
                    joined.combine_chunks() if plan.contiguous else joined, sources[kind], skip
                )
                await self._copy(conn, spec, rows, sources[kind], refused)
                if spec.rollups and rows.num_rows:
                    rolled.append((spec, rows))
            # Last in the transaction: the upsert's row locks on the hot bars are held from
            # here to the commit only, not during the COPYs (writers serialise there).
            if self._upkeep.mode.recorder_rollups and not refused.positions:
                for spec, rows in rolled:
                    await self._upsert_rollups(conn, spec, rows)
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
        kind: Kind,
        rows: pa.Table,
        sources: list[tuple[TP, int]],
        refused: _RowsRefused,
    ) -> None:
        """Binary COPY of the rows (`sources`: the partition and row count of each batch in
        them, in order); rows the database refuses for their data are added to `refused`,
        with their source position and the database's message."""
        try:
            async with conn.transaction():  # savepoint: a data error must not lose the batch
                await self._copy_rows(conn, kind, rows)
            return
        except asyncpg.DataError as exc:
            bad: dict[int, str] = {}
            await self._copy_isolating_bad_rows(conn, kind, rows, 0, rows.num_rows, bad, str(exc))
        offsets = offsets_of(rows)
        ends = np.cumsum([count for _, count in sources])
        for i in sorted(bad):
            tp = sources[int(np.searchsorted(ends, i, side="right"))][0]
            refused.positions.append((tp.topic, tp.partition, int(offsets[i])))
            refused.messages.append(f"{kind.table}: the database refused this row: {bad[i]}")

    @staticmethod
    async def _copy_rows(conn: asyncpg.Connection, kind: Kind, rows: pa.Table) -> None:
        chunks = copy_chunks(rows, kind.topic_kind)
        await conn.copy_to_table(
            kind.table, source=_stream(chunks), columns=kind.db_column_names, format="binary"
        )

    async def _copy_isolating_bad_rows(
        self,
        conn: asyncpg.Connection,
        kind: Kind,
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
                    await self._copy_rows(conn, kind, rows.slice(lo, hi - lo))
            except asyncpg.DataError as exc:
                await self._copy_isolating_bad_rows(conn, kind, rows, lo, hi, refused, str(exc))

    async def _upsert_rollups(self, conn: asyncpg.Connection, kind: Kind, rows: pa.Table) -> None:
        # Times travel as int8 microseconds since the epoch (no datetime per bar).
        for view, b in rollup_bars(rows, kind.rollups).items():
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
