"""The hot path when the database refuses a flush for a reason that retrying does not fix.

Found in CI: two writers creating the same day's partition raced into "relation already exists";
the writer task died with its batch, silently, and those rows were never written.
"""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from pathlib import Path

import asyncpg
import pytest

from recorder.sinks.timescale.migrate import migrate
from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.support.recorder_proc import RecorderProcess, produce, wait_exactly_once, wait_until

pytestmark = pytest.mark.integration


async def test_writers_creating_the_same_partitions_at_once_all_succeed(
    fresh_database: str, stack: Stack
) -> None:
    dsn = stack.pg_dsn(fresh_database)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
    assert pool is not None
    days = [date(2021, 1, 1) + timedelta(days=i) for i in range(30)]

    async def ensure(table: str, day: date) -> None:
        await pool.execute("SELECT recorder_ensure_partition($1, $2)", table, day)

    try:
        for day in days:  # eight callers per day, as many as the pool holds
            await asyncio.gather(*(ensure(t, day) for t in ("tick_data", "orderbook") * 4))
        created = await pool.fetchval(
            """SELECT count(*) FROM pg_inherits
               WHERE inhparent IN ('tick_data'::regclass, 'orderbook'::regclass)"""
        )
    finally:
        await pool.close()
    assert created == 2 * len(days)


async def test_a_refused_flush_is_retried_from_stored_progress(
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    stack: Stack,
    tmp_path: Path,
) -> None:
    """A column renamed by hand while the recorder runs: flushes fail (not a connection error, so
    the retry loop lets them through), /health says so, and once it is renamed back everything is
    recorded exactly once. (The stack's role is a superuser, so a revoked privilege would not do.)"""
    topics = await kafka_topics("market.tick", "market.orderbook", partitions=3)
    env = recorder_env(
        database=fresh_database,
        topics=topics,
        S3_WRITE_ENABLED="false",
        BATCH_TIMEOUT_MS=200,
        RETRY_MAX_BACKOFF_SEC=1,
    )
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    admin = await asyncpg.connect(stack.pg_dsn(fresh_database))
    try:
        await admin.execute("ALTER TABLE tick_data RENAME COLUMN volume TO volume_renamed")
        produce(env, "--ticks", "5000", "--orderbooks", "500")

        def refused() -> bool:
            return "flush_failed" in rec.log_path.read_text()

        await asyncio.to_thread(wait_until, refused, 60, 0.5, "a refused flush")

        def reports_unhealthy() -> bool:
            status, body = rec.health()
            return status == 503 and "timescaledb: unhealthy" in body

        await asyncio.to_thread(wait_until, reports_unhealthy, 30, 0.5, "/health unhealthy")
        assert rec.alive(), rec.tail()
        await admin.execute("ALTER TABLE tick_data RENAME COLUMN volume_renamed TO volume")
        report = await asyncio.to_thread(wait_exactly_once, env, rec, 120)
        assert report["ok"]
        assert rec.health()[0] == 200, rec.tail()
        code, _ = rec.terminate()
        assert code == 0, rec.tail()
    finally:
        await admin.close()
        rec.ensure_stopped()
