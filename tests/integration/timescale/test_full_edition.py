"""The full TimescaleDB edition (license `timescale`, 2.23) at SQL level, through our PGlite
bridge (scripts/stack.d/pglite_bridge.mjs): the migrations of `timescaledb` mode, binary COPY
into the hypertables, continuous aggregates refreshed -> the same OHLCV bars the other modes
keep, refresh policy definitions, late data, compression settings and policy, and retention by
drop_chunks.

One shared session (no CREATE DATABASE per test): the test starts by dropping our objects.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from recorder.core.batching import Batch
from recorder.core.columns import from_rows
from recorder.core.records import TickRow
from recorder.core.rollups import ROLLUPS, aggregate
from recorder.runtime.settings import TopicKind, load_settings
from recorder.sinks.timescale.compression import apply_compression
from recorder.sinks.timescale.config import TimescaleConfig
from recorder.sinks.timescale.encode import copy_bytes
from recorder.sinks.timescale.migrate import DbMode, migrate_explained
from recorder.sinks.timescale.retention import apply_retention
from recorder.sinks.timescale.upkeep import Upkeep, refresh_buckets
from tests.fixtures.stack import Stack
from tests.integration.recorder.test_rollups import T0, TICKS

pytestmark = pytest.mark.integration

COLUMNS = ("time", "symbol", "price", "volume", "change", "change_rate")


def to_datetime(time_ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_ns // 1000)


async def copy_ticks(conn: Any, ticks: list[TickRow]) -> None:
    """The recorder's own binary COPY stream (recorder.sinks.timescale.encode)."""

    async def stream() -> Any:
        yield copy_bytes(from_rows(TopicKind.TICK, list(range(len(ticks))), ticks), TopicKind.TICK)

    await conn.copy_to_table("tick_data", source=stream(), columns=COLUMNS, format="binary")


def known_ticks() -> list[TickRow]:
    """test_rollups' hand-checked ticks, then 3,000 more over two hours and three symbols (a
    COPY well over the 1,000 rows that stock pglite-socket cannot take)."""
    rng = random.Random(7)
    ticks = [TickRow(T0 + dt, sym, price, vol, None, None) for dt, sym, price, vol in TICKS]
    for _ in range(3000):
        t = T0 + rng.randrange(0, 2 * 3600 * 10**9, 1000)  # microsecond steps, as stored
        ticks.append(
            TickRow(
                t, rng.choice("ABC"), round(rng.uniform(50, 150), 2), rng.randrange(100), None, None
            )
        )
    return ticks


def bars_of(rows: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    return [
        (r["bucket"], r["symbol"], r["open"], r["high"], r["low"], r["close"], Decimal(r["volume"]))
        for r in rows
    ]


def expected(ticks: list[TickRow], bucket_ns: int) -> list[tuple[Any, ...]]:
    """What plain and Apache modes hold for these ticks (their upserts store exactly these)."""
    return [
        (to_datetime(b.bucket_ns), b.symbol, b.open, b.high, b.low, b.close, Decimal(b.volume))
        for b in sorted(aggregate(ticks, bucket_ns), key=lambda b: (b.bucket_ns, b.symbol))
    ]


async def test_full_edition_migrations_copy_and_continuous_aggregates(stack: Stack) -> None:
    full = stack.on_server("timescaledb-full")
    conn = await asyncpg.connect(full.pg_dsn(), timeout=60)
    try:
        # Our objects only: the extension must stay (it cannot be created again in a session
        # that has loaded it, and the bridge has one session).
        for view in ROLLUPS:
            await conn.execute(f"DROP MATERIALIZED VIEW IF EXISTS {view} CASCADE")
        # (a hypertable cannot be dropped along with other objects: one statement each)
        for table in ("tick_data", "orderbook", "recorder_offsets", "recorder_schema_migrations"):
            await conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        result = await migrate_explained(conn)
        assert result.mode is DbMode.TIMESCALEDB, result
        assert result.reason.startswith("timescaledb.license = timescale")
        assert [m.name for m in result.applied] == ["offsets", "tables", "rollups", "topic_ids"]

        jobs = await conn.fetch(
            """SELECT hypertable_name, config->>'start_offset' AS start_offset,
                      config->>'end_offset' AS end_offset, schedule_interval::text AS every
               FROM timescaledb_information.jobs
               WHERE proc_name = 'policy_refresh_continuous_aggregate'
               ORDER BY hypertable_name"""
        )  # (for a continuous aggregate, hypertable_name is the view's name)
        assert [tuple(r) for r in jobs] == [
            ("tick_1hour", "7 days", "01:00:00", "00:30:00"),
            ("tick_1min", "03:00:00", "00:01:00", "00:01:00"),
            ("tick_5min", "1 day", "00:05:00", "00:05:00"),
        ]

        ticks = known_ticks()
        await copy_ticks(conn, ticks)
        assert await conn.fetchval("SELECT count(*) FROM tick_data") == len(ticks)
        chunks = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'tick_data'"
        )
        assert chunks >= 1

        # T0 lies days in the past: every tick is late for the policies' windows. A refresh of
        # the range makes the aggregates agree with the other modes, bar for bar.
        for view in ROLLUPS:
            await conn.execute(f"CALL refresh_continuous_aggregate('{view}', NULL, NULL)")
        for view, bucket_ns in ROLLUPS.items():
            got = bars_of(await conn.fetch(f"SELECT * FROM {view} ORDER BY bucket, symbol"))
            assert got == expected(ticks, bucket_ns), view

        # A late tick into a materialised bucket: not in the view until its range is refreshed
        # (README, Stores: the guarantee of this mode), then it is.
        late = TickRow(T0 + 45 * 10**9, "005930", 999.0, 1000, None, None)
        await copy_ticks(conn, [late])
        bucket = to_datetime(T0)
        high = "SELECT high FROM tick_1min WHERE symbol = '005930' AND bucket = $1"
        assert await conn.fetchval(high, bucket) == 105.0
        await conn.execute(
            "CALL refresh_continuous_aggregate('tick_1min', $1::timestamptz, $2::timestamptz)",
            bucket,
            bucket + timedelta(minutes=1),
        )
        assert await conn.fetchval(high, bucket) == 999.0

        # Late ticks far outside every policy's window, as the recorder writes them: it
        # refreshes exactly the buckets they touched (queued after the commit, batched per
        # aggregate), so the bars equal what plain and Apache modes keep. Before, they stayed
        # out of the bars until someone refreshed the range by hand.
        upkeep = Upkeep(
            TimescaleConfig.of(load_settings(KAFKA_TOPICS="t.tick")), {"t.tick": TopicKind.TICK}
        )
        upkeep.mode = DbMode.TIMESCALEDB
        more = [
            TickRow(T0 + 90 * 60 * 10**9 + i * 7 * 10**9, "005930", 500.0 + i, 3, None, None)
            for i in range(40)
        ]
        await copy_ticks(conn, more)
        # (with the late tick above: the recorder would have queued its buckets too)
        written = [late, *more]
        columns = from_rows(TopicKind.TICK, list(range(len(written))), written)
        upkeep.late_rows([Batch(0, len(written), [columns], len(written))], ROLLUPS)
        windows = upkeep.take_late()
        assert set(windows) == set(ROLLUPS)
        for view, (start, end) in windows.items():
            await refresh_buckets(conn, view, start, end)
        for view, bucket_ns in ROLLUPS.items():
            got = bars_of(await conn.fetch(f"SELECT * FROM {view} ORDER BY bucket, symbol"))
            assert got == expected([*ticks, late, *more], bucket_ns), view

        # DB_COMPRESS_AFTER_DAYS: settings and policy; the policy's job compresses the old
        # chunks (jobs never run by themselves in PGlite: run it), and a late row still lands.
        await apply_compression(conn, 2)
        settings = await conn.fetch(
            """SELECT hypertable_name, attname, segmentby_column_index, orderby_asc
               FROM timescaledb_information.compression_settings ORDER BY 1, 2"""
        )
        assert {(r[0], r[1]): (r[2], r[3]) for r in settings} == {
            ("orderbook", "symbol"): (1, None),
            ("orderbook", "time"): (None, False),
            ("tick_data", "symbol"): (1, None),
            ("tick_data", "time"): (None, False),
        }
        job = await conn.fetchval(
            """SELECT job_id FROM timescaledb_information.jobs
               WHERE proc_name = 'policy_compression' AND hypertable_name = 'tick_data'
                 AND config->>'compress_after' = '2 days'"""
        )
        assert job is not None
        # A second start with the same setting changes nothing (before: a new policy job at
        # every start, and an ALTER that TimescaleDB < 2.14 refuses once chunks are compressed).
        await apply_compression(conn, 2)
        jobs = (
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'"
        )
        again = {r[0] for r in await conn.fetch(jobs + " AND hypertable_name = 'tick_data'")}
        assert again == {job}
        await conn.execute(f"CALL run_job({job})")
        compressed = await conn.fetchval(
            """SELECT bool_and(is_compressed) FROM timescaledb_information.chunks
               WHERE hypertable_name = 'tick_data'"""
        )
        assert compressed is True
        await copy_ticks(conn, [late._replace(price=1.0)])
        assert await conn.fetchval("SELECT count(*) FROM tick_data") == len(ticks) + 2 + len(more)

        # Retention by the recorder (drop_chunks) works here too; the aggregates keep the bars.
        now = (datetime.fromtimestamp(T0 // 10**9, tz=UTC) + timedelta(days=10)).timestamp()
        dropped = await apply_retention(conn, DbMode.TIMESCALEDB, 3, now)
        assert [d.table for d in dropped] == ["tick_data"]
        assert await conn.fetchval("SELECT count(*) FROM tick_data") == 0
        assert await conn.fetchval("SELECT count(*) FROM tick_1min") == len(
            expected([*ticks, *more], ROLLUPS["tick_1min"])
        )
    finally:
        await conn.close()
