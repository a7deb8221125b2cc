"""Retention by the recorder (DB_RETENTION_DAYS): old days go, recent rows and rollups stay.

Runs here on PostgreSQL 15 (day partitions detached and dropped) and, re-exported from
tests/integration/timescale/, on TimescaleDB's Apache edition (drop_chunks).
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.fixtures.stack import RecorderEnv, Stack, TopicFactory
from tests.support.recorder_proc import RecorderProcess
from tests.support.ticks import days_ago_ns, send_ticks, wait_for

pytestmark = pytest.mark.integration


async def test_retention_drops_old_days_and_keeps_recent_rows_and_rollups(
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    stack: Stack,
    tmp_path: Path,
) -> None:
    (topic,) = await kafka_topics("market.tick", partitions=1)
    env = recorder_env(
        database=fresh_database,
        topics=[topic],
        S3_WRITE_ENABLED="false",
        BATCH_TIMEOUT_MS=100,
        DB_RETENTION_DAYS=3,
        DB_RETENTION_INTERVAL_SEC=0.5,
    )
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    try:
        old, recent = (
            [days_ago_ns(10) + i for i in range(5)],
            [days_ago_ns(0) + i for i in range(7)],
        )
        await send_ticks(stack.kafka_bootstrap, topic, old + recent)

        async def old_gone_recent_kept() -> bool:
            n_old = await conn.fetchval(
                "SELECT count(*) FROM tick_data WHERE time < now() - interval '5 days'"
            )
            n_recent = await conn.fetchval(
                "SELECT count(*) FROM tick_data WHERE time > now() - interval '1 day'"
            )
            return bool(n_old == 0 and n_recent == len(recent))

        await wait_for(old_gone_recent_kept, 60, "old rows dropped, recent ones kept", rec.tail)
        # The rows did arrive before retention took them: their rollup bars are still there.
        old_volume = await conn.fetchval(
            "SELECT sum(volume) FROM tick_1min WHERE bucket < now() - interval '5 days'"
        )
        assert int(old_volume) == len(old)
        assert "retention_dropped" in rec.tail(200)
        assert rec.health()[0] == 200, rec.tail()
    finally:
        await conn.close()
        code, _ = rec.terminate()
    assert code == 0, rec.tail()


async def test_a_detached_day_table_does_not_stall_the_writer(
    kafka_topics: TopicFactory,
    fresh_database: str,
    recorder_env: RecorderEnv,
    stack: Stack,
    tmp_path: Path,
) -> None:
    """Plain PostgreSQL: a day table detached and not dropped (retention interrupted between
    its DETACH and its DROP, or a DBA) is kept under another name and the day gets a new
    partition; before, every late row of that day failed to route and its writer retried
    forever."""
    (topic,) = await kafka_topics("market.tick", partitions=1)
    env = recorder_env(
        database=fresh_database, topics=[topic], S3_WRITE_ENABLED="false", BATCH_TIMEOUT_MS=100
    )
    rec = RecorderProcess(env, tmp_path / "recorder.log").start()
    conn = await asyncpg.connect(stack.pg_dsn(fresh_database))
    try:
        day = [days_ago_ns(2) + i for i in range(3)]
        await send_ticks(stack.kafka_bootstrap, topic, day)

        async def rows(n: int) -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM tick_data") == n)

        await wait_for(lambda: rows(3), 60, "the day's first rows", rec.tail)
        child = await conn.fetchval("SELECT tableoid::regclass::text FROM tick_data LIMIT 1")
        await conn.execute(f'ALTER TABLE tick_data DETACH PARTITION "{child}"')
        await send_ticks(stack.kafka_bootstrap, topic, [t + 100 for t in day])
        assert await rows(0)  # the day's rows left with their table
        await wait_for(lambda: rows(3), 60, "the day's late rows in a new partition", rec.tail)
        kept = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname LIKE $1", f"{child}_detached_%"
        )
        assert kept == 1
        assert rec.health()[0] == 200, rec.tail()
    finally:
        await conn.close()
        rec.terminate()
